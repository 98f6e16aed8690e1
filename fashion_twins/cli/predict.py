"""fashion-twins predict: the class of image files, or of stored test images, with any twin.

fashion-twins predict --backend torch runs/flax.safetensors shoe.png bag.jpg --top 3
[torch] shoe.png  inverted no  pred Sneaker  top-3: Sneaker 91.20%, Sandal 6.02%, Ankle boot 2.11%
fashion-twins predict --backend flax runs/flax.safetensors --test-index 0 1
[flax] test[0]  pred Ankle boot  true Ankle boot  top-3: Ankle boot 97.51%, Sneaker 1.90%, Sandal 0.41%

A top score under LOW_CONFIDENCE adds "low confidence" to the line; --json prints one JSON document
instead (schema JSON_SCHEMA, every key in README; per image a top-k list of {"label", "score"}
with scores as fractions, as transformers' image-classification pipeline gives), and
--save-preprocessed DIR writes the 28x28 image the model saw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from fashion_common.images import INVERT_CHOICES, MAX_PIXELS
from fashion_common.spec import CLASS_NAMES

from . import common
from .evaluate import load_model

# A top score under 0.5 means the other nine classes together are likelier than the one named. Measured
# on the 10,000 test images with the recipe trained 3 epochs (86.95 % accurate): the 1,081 predictions
# under 0.5 were right 49.7 % of the time (a coin flip) and hold 42 % of all its errors; those at 0.5
# and above were right 91 % of the time. (Label smoothing 0.1 keeps even sure scores under ~0.95.)
LOW_CONFIDENCE = 0.5
# The --json layout's version (README, "predict --json"): raised when a key is renamed, removed or changes meaning;
# new keys alone do not raise it.
JSON_SCHEMA = 1

IMAGE_HELP = (
    "Each image is prepared as Fashion-MNIST's own pipeline made its pictures (Xiao et al. 2017): grayscale "
    "(16-bit scaled by its range, EXIF rotation applied); the garment found (the alpha channel where there is one, "
    "else what stands out from a smooth surface fitted to the border, so gradients, noise and soft shadows stay "
    "background) and cropped to; its longest edge resized to 28 (the "
    "dataset's garments fill all 28 pixels of their longer side), aspect ratio kept, centred on black. Fashion-MNIST "
    "shows LIGHT garments on a BLACK background: --invert auto inverts a dark garment on a light background (or on "
    "transparency, as the dataset negated its product photos shot on white). A 28x28 image is taken as already "
    f"framed and only inverted as asked. Images above {MAX_PIXELS:,} pixels (the square on the longer edge) are "
    f"refused before decoding. A top score under {LOW_CONFIDENCE:.0%} is marked low confidence: on the test set such "
    "predictions are right about half the time."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify image files or stored test images, with any twin",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=IMAGE_HELP,
        parents=[
            common.backend_parent(),
            common.checkpoint_parent(),
            common.data_parent(),
            common.device_parent(),
            common.precision_parent(choices=common.ONE_PRECISION),
        ],
    )
    p.add_argument("images", metavar="IMAGE", nargs="*", help="PNG or JPEG files to classify (default: none)")
    p.add_argument(
        "--test-index",
        metavar="I",
        type=common.int_in(0),
        nargs="+",
        default=[],
        help="predict these Fashion-MNIST test images instead (or as well), and print their true labels "
        "(default: none)",
    )
    p.add_argument(
        "--top",
        metavar="K",
        type=common.int_in(1, len(CLASS_NAMES)),
        default=3,
        help=f"how many classes to list, 1 to {len(CLASS_NAMES)} (default: 3)",
    )
    p.add_argument(
        "--invert",
        choices=INVERT_CHOICES,
        default="auto",
        help="invert image files (light <-> dark): auto when a dark garment lies on a light background (default: auto)",
    )
    p.add_argument(
        "--save-preprocessed",
        metavar="DIR",
        default=None,
        help="write the 28x28 image the model saw for each input to DIR/<name>.png, created if missing; never over a "
        "file: where DIR/<name>.png exists (an input image itself) the first free DIR/<name>-2.png, -3 ... instead, "
        "said on stderr (default: off)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help=f"print one JSON document instead of text lines (schema {JSON_SCHEMA}, every key in the README): per "
        'image the top-k as [{"label", "score"}], scores as fractions (the text shows percent), as transformers\' '
        "image-classification pipeline, with checkpoint, backend, inverted, low_confidence (default: off)",
    )
    p.set_defaults(run=run)


def top_k(row: np.ndarray, k: int) -> list[dict]:
    """One softmax row (10,) -> [{"label", "score"}] of the k likeliest classes; ties keep label order."""
    ranked = sorted(range(len(row)), key=lambda i: -float(row[i]))[:k]
    return [{"label": CLASS_NAMES[i], "score": float(row[i])} for i in ranked]


def preprocessed_paths(folder, names: list[str]) -> list[Path]:
    """DIR/<stem>.png for each input name, made unique and free; DIR is created.

    Never an existing file: an input image in DIR, a user's photo2.png beside the photo2.jpg classified,
    a link, a folder. The first free of <stem>.png, <stem>-2.png, <stem>-3.png ... is taken (shoe.png,
    shoe.jpg -> shoe.png, shoe-2.png), and a name moved off an existing file is said on stderr.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise common.UsageError(f"argument --save-preprocessed: {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise common.UsageError(f"argument --save-preprocessed: cannot create {folder} ({e.strerror})") from None
    paths, taken = [], set()
    for name in names:
        stem = Path(name).stem.replace("[", "-").replace("]", "")  # test[3] -> test-3
        candidate, n, existing = stem, 1, None
        while candidate in taken or os.path.lexists(folder / f"{candidate}.png"):
            if candidate not in taken and existing is None:
                existing = folder / f"{candidate}.png"
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate)
        paths.append(folder / f"{candidate}.png")
        if existing is not None:
            common.note(f"note: {existing} exists and is kept; {name} as the model saw it goes to {paths[-1]}")
    return paths


def save_preprocessed(path: Path, pixels: np.ndarray) -> None:
    """(28, 28) float in [0, 1], already a multiple of 1/255 -> an 8-bit grayscale PNG with those exact levels.

    Created exclusively (O_EXCL): a file that appeared at `path` since preprocessed_paths chose it is never
    overwritten; that is one error line naming it.
    """
    from PIL import Image

    try:
        with open(path, "xb") as f:
            Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L").save(f, format="PNG")
    except FileExistsError:
        raise common.UsageError(
            f"argument --save-preprocessed: {path} appeared while predicting; it was kept, nothing written there"
        ) from None


def run(args) -> int:
    from fashion_common.images import prepare_image
    from fashion_common.text import format_prediction

    if not args.images and not args.test_index:
        raise common.UsageError("give at least one IMAGE or --test-index")
    # Image files are read before the framework import, so a bad file fails in well under a second.
    entries, images = [], []  # entries: {"image", "inverted", "true_label"} per input, in order
    for path in args.images:
        pixels, inverted = prepare_image(path, invert=args.invert)  # (28, 28)
        entries.append({"image": str(path), "inverted": inverted, "true_label": None})
        images.append(pixels)
    if args.test_index:
        from fashion_common.data import load_fashion_mnist, scale_images

        test = load_fashion_mnist(args.data_dir, download=args.download)
        n = len(test.test_labels)
        for i in args.test_index:  # checked before the model is built
            if i >= n:
                raise common.UsageError(
                    f"argument --test-index: {i} is out of range; the test set has {n} images (0 to {n - 1})"
                )
        entries += [
            {"image": f"test[{i}]", "inverted": None, "true_label": int(test.test_labels[i])} for i in args.test_index
        ]
        images += list(scale_images(test.test_images[args.test_index]))  # /255 as in training
    saved = [None] * len(entries)
    if args.save_preprocessed is not None:
        saved = preprocessed_paths(args.save_preprocessed, [e["image"] for e in entries])  # the folder, checked now

    twin = common.backend_module(args.backend)
    device = twin.resolve_device(args.device)
    twin.set_matmul_precision(args.precision)
    loaded = load_model(twin, args, device)
    probs = twin.train.predict_proba(loaded, np.stack(images))  # (N, 10)
    for path, pixels in zip(saved, images, strict=True):
        if path is not None:
            save_preprocessed(path, pixels)  # the (28, 28) the model saw, written once it has seen it
    low = [bool(row.max() < LOW_CONFIDENCE) for row in probs]
    if args.json:
        document = {
            "schema": JSON_SCHEMA,
            "checkpoint": str(args.checkpoint),
            "backend": args.backend,
            "top_k": args.top,
            "low_confidence_below": LOW_CONFIDENCE,
            "images": [
                {
                    "image": e["image"],
                    "predictions": top_k(row, args.top),  # transformers' pipeline output for one image
                    "low_confidence": is_low,
                    "inverted": e["inverted"],  # null for stored test images: they are never candidates
                    "true_label": None if e["true_label"] is None else CLASS_NAMES[e["true_label"]],
                    "preprocessed": None if path is None else str(path),
                }
                for e, row, is_low, path in zip(entries, probs, low, saved, strict=True)
            ],
        }
        json.dump(document, sys.stdout, indent=2)
        print()
        return 0
    for e, row, is_low, path in zip(entries, probs, low, saved, strict=True):
        name = e["image"]
        if e["inverted"] is not None:
            name += f"  inverted {'yes' if e['inverted'] else 'no'}"
        if path is not None:
            name += f"  saw {path}"
        print(format_prediction(args.backend, name, row, args.top, e["true_label"], low_confidence=is_low))
    return 0
