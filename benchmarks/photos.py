"""Photo-like pictures made from Fashion-MNIST test images, and how often `predict` agrees with the originals.

A user photographs a garment on paper: the light falls off across the sheet, the sensor adds noise,
the garment casts a soft shadow, it sits anywhere in the frame, and the phone stores the picture
sideways with an EXIF orientation tag. `photo_like` makes each of these from a (28, 28) test image,
alone or all together; `agreement` classifies the photos and the originals with one checkpoint and
counts how often the predicted class is the same (the photo pipeline's job is to give the model back
the image it would have seen). Not shipped in the wheel: a measuring tool, as scripts/ are.

python3 -m benchmarks.photos runs/torch.safetensors --per-condition 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# "flat" is the baseline: the garment, dark on white paper with a margin, as README measured before issue 24.
CONDITIONS = ("flat", "gradient", "noise", "shadow", "off_centre", "exif", "combined")
GRADIENT = (200.0, 250.0)  # the paper's light across the frame, in 8-bit levels: a grey sheet under a lamp
NOISE_SIGMA = 3.0  # sensor noise, 8-bit levels, Gaussian per pixel
SHADOW_STRENGTH = 0.35  # the share of the paper's light the shadow takes under the garment's middle
SHADOW_BLUR, SHADOW_OFFSET = 0.04, 0.03  # soft-shadow radius and offset, shares of the garment's side
# EXIF orientation -> the turn that stores an upright picture under it (exif_transpose turns it back)
EXIF_ROTATIONS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def photo_like(image: np.ndarray, condition: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """(28, 28) uint8 dataset image -> (a photo of it under `condition`, the save() keywords it needs).

    The garment is upscaled 4-8x (bicubic) and multiplies the paper's light by (1 - its value): the
    dataset's negation undone, so a perfect pipeline gets the original's values back. The photo is
    RGB; "exif" and "combined" are JPEG (quality 90) stored rotated with the tag that turns them upright.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    on = {c: condition in (c, "combined") for c in ("gradient", "noise", "shadow", "off_centre", "exif")}
    side = 28 * int(rng.integers(4, 9))
    big = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
    ink = np.asarray(big, np.float32) / 255.0  # (side, side) in [0, 1]: how much light the garment takes
    if on["off_centre"]:  # anywhere on a frame up to twice the garment's side
        h, w = side + int(rng.integers(side // 4, side + 1)), side + int(rng.integers(side // 4, side + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    else:  # centred with a margin of a quarter side
        h = w = side + side // 2
        top = left = side // 4
    layer = np.zeros((h, w), np.float32)
    layer[top : top + side, left : left + side] = ink
    paper = np.full((h, w), 255.0, np.float32)
    if on["gradient"]:  # linear, in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        t = np.cos(angle) * x + np.sin(angle) * y
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        paper = GRADIENT[0] + (GRADIENT[1] - GRADIENT[0]) * t
    if on["shadow"]:  # the garment's silhouette, blurred and shifted down-right, darkens the paper
        shadow = Image.fromarray(np.round(layer * 255).astype(np.uint8))
        shadow = shadow.filter(ImageFilter.GaussianBlur(SHADOW_BLUR * side))
        shift = max(1, round(SHADOW_OFFSET * side))
        shadow = np.roll(np.asarray(shadow, np.float32) / 255.0, (shift, shift), axis=(0, 1))
        paper = paper * (1.0 - SHADOW_STRENGTH * shadow)
    photo = paper * (1.0 - layer)
    if on["noise"]:
        photo = photo + rng.normal(0.0, NOISE_SIGMA, photo.shape)
    picture = Image.fromarray(np.clip(np.round(photo), 0, 255).astype(np.uint8)).convert("RGB")
    if not on["exif"]:
        return picture, {}
    orientation = int(rng.choice(list(EXIF_ROTATIONS)))
    stored = picture.transpose(EXIF_ROTATIONS[orientation])  # as the sensor saw it: the tag's turn undone
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, {"format": "JPEG", "quality": 90, "exif": exif.tobytes()}


def write_photos(images: np.ndarray, condition: str, folder: Path, seed: int = 0) -> list[Path]:
    """(N, 28, 28) uint8 -> N files in folder, one photo_like(condition) of each, seeded."""
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        picture, options = photo_like(image, condition, rng)
        path = folder / f"{condition}-{i}.{'jpg' if options.get('format') == 'JPEG' else 'png'}"
        picture.save(path, **options)
        paths.append(path)
    return paths


def agreement(checkpoint, indices, folder: Path, backend: str = "torch", seed: int = 0) -> dict[str, np.ndarray]:
    """Per condition, (N,) bool: the photo of test image indices[i] gets the class the original gets."""
    import importlib

    from fashion_common.data import load_fashion_mnist, scale_images
    from fashion_common.images import load_image

    twin = importlib.import_module(f"fashion_{backend}")
    importlib.import_module(f"fashion_{backend}.train")
    model = twin.load_checkpoint(checkpoint)
    originals = load_fashion_mnist().test_images[list(indices)]  # (N, 28, 28) uint8
    reference = twin.train.predict_proba(model, scale_images(originals)).argmax(1)  # (N,)
    result = {}
    for condition in CONDITIONS:
        paths = write_photos(originals, condition, folder / condition, seed)
        photos = np.stack([load_image(p) for p in paths])  # (N, 28, 28)
        result[condition] = twin.train.predict_proba(model, photos).argmax(1) == reference
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .safetensors checkpoint of any twin")
    parser.add_argument("--backend", default="torch", choices=("torch", "flax", "nnx"), help="(default: torch)")
    parser.add_argument("--per-condition", type=int, default=300, help="test images per condition (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="photo randomness (default: 0)")
    parser.add_argument("--folder", default="runs/photos", help="where the photos are written (default: runs/photos)")
    args = parser.parse_args(argv)
    step = 10_000 // args.per_condition
    indices = list(range(0, step * args.per_condition, step))  # spread over the test set: every class
    result = agreement(args.checkpoint, indices, Path(args.folder), args.backend, args.seed)
    print("| condition | agree with the original |")
    print("|---|---|")
    for condition, same in result.items():
        print(f"| {condition} | {same.mean():.1%} ({int(same.sum())} / {same.size}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
