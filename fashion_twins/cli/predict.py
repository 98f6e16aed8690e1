"""fashion-twins predict: the class of image files, or of stored test images, with either twin.

fashion-twins predict --backend torch runs/flax.safetensors shoe.png bag.jpg --top 3
[torch] shoe.png  inverted no  pred Sneaker  top-3: Sneaker 91.20%, Sandal 6.02%, Ankle boot 2.11%
fashion-twins predict --backend flax runs/flax.safetensors --test-index 0 1
[flax] test[0]  pred Ankle boot  true Ankle boot  top-3: Ankle boot 97.51%, Sneaker 1.90%, Sandal 0.41%
"""

from __future__ import annotations

import numpy as np

from fashion_common.images import INVERT_CHOICES, MAX_PIXELS
from fashion_common.spec import CLASS_NAMES

from . import common
from .evaluate import load_model

IMAGE_HELP = (
    "Each image is made grayscale (16-bit scaled by its range, EXIF rotation applied), inverted if --invert says so, "
    "padded to a square with black and resized to 28x28. Fashion-MNIST shows LIGHT garments on a BLACK background: "
    "--invert auto inverts a picture whose border is light and lighter than its centre. "
    f"Images above {MAX_PIXELS:,} pixels (after padding to a square) are refused before decoding."
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify image files or stored test images, with either twin",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=IMAGE_HELP,
        parents=[common.backend_parent(), common.checkpoint_parent(), common.data_parent(), common.device_parent()],
    )
    p.add_argument("images", metavar="IMAGE", nargs="*", help="PNG or JPEG files to classify (default: none)")
    p.add_argument(
        "--test-index",
        metavar="I",
        type=common.int_in(0),
        nargs="+",
        default=[],
        help="predict these Fashion-MNIST test images instead (or as well), and print their true labels (default: none)",
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
        help="invert image files (light <-> dark): auto when the border is lighter than the centre (default: auto)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from fashion_common.images import prepare_image
    from fashion_common.text import format_prediction

    if not args.images and not args.test_index:
        raise common.UsageError("give at least one IMAGE or --test-index")
    # Image files are read before the framework import, so a bad file fails in well under a second.
    names, images, labels = [], [], []
    for path in args.images:
        pixels, inverted = prepare_image(path, invert=args.invert)  # (28, 28)
        names.append(f"{path}  inverted {'yes' if inverted else 'no'}")
        images.append(pixels)
        labels.append(None)
    if args.test_index:
        from fashion_common.data import load_fashion_mnist, scale_images

        test = load_fashion_mnist(args.data_dir, download=args.download)
        n = len(test.test_labels)
        for i in args.test_index:  # checked before the model is built
            if i >= n:
                raise common.UsageError(
                    f"argument --test-index: {i} is out of range; the test set has {n} images (0 to {n - 1})"
                )
        names += [f"test[{i}]" for i in args.test_index]
        images += list(scale_images(test.test_images[args.test_index]))  # /255 as in training
        labels += [int(test.test_labels[i]) for i in args.test_index]

    twin = common.backend_module(args.backend)
    device = twin.resolve_device(args.device)
    loaded = load_model(twin, args, device)
    probs = twin.train.predict_proba(loaded, np.stack(images))  # (N, 10)
    for name, row, label in zip(names, probs, labels):
        print(format_prediction(args.backend, name, row, args.top, label))
    return 0
