"""Predict the class of image files, or of stored test images, with either twin.

    python scripts/predict.py --backend torch runs/flax.safetensors shoe.png bag.jpg --top 3
    [torch] shoe.png  pred Sneaker  top-3: Sneaker 91.20%, Sandal 6.02%, Ankle boot 2.11%
    python scripts/predict.py --backend flax runs/flax.safetensors --test-index 0 1
    [flax] test[0]  pred Ankle boot  true Ankle boot  top-3: Ankle boot 97.51%, Sneaker 1.90%, Sandal 0.41%
"""

from __future__ import annotations

import argparse

import numpy as np

import _cli  # first: puts the repository root on sys.path

from fashion_common.data import load_fashion_mnist, scale_images
from fashion_common.images import load_image
from fashion_common.spec import CLASS_NAMES
from fashion_common.text import format_prediction

IMAGE_HELP = (
    "PNG or JPEG files; each is made grayscale, padded to a square with black and resized to 28x28. "
    "Fashion-MNIST shows LIGHT garments on a BLACK background and images are NOT inverted "
    "automatically: invert a dark-on-white photo yourself first"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=IMAGE_HELP + ".")
    _cli.add_backend_argument(parser)
    parser.add_argument("checkpoint", metavar="CKPT", help="a .safetensors checkpoint written by either twin")
    parser.add_argument("images", metavar="IMAGE", nargs="*", help="PNG or JPEG files to classify; see the note below: they are not inverted")
    parser.add_argument("--test-index", metavar="I", type=int, nargs="+", default=[], help="predict these Fashion-MNIST test images instead (or as well), and print their true labels (default: none)")
    parser.add_argument("--top", metavar="K", type=int, default=3, help=f"how many classes to list, 1 to {len(CLASS_NAMES)} (default: 3)")
    _cli.add_data_arguments(parser)
    _cli.add_device_argument(parser)
    return parser


def predict_proba(twin, loaded, images: np.ndarray) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1] -> softmax (N, 10), through the twin's own predict_proba."""
    if twin.BACKEND == "torch":
        return twin.train.predict_proba(loaded, images)
    model, params = loaded  # flax keeps params apart from the module
    return twin.train.predict_proba(model, params, images)


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.images and not args.test_index:
        parser.error("give at least one IMAGE or --test-index")
    if not 1 <= args.top <= len(CLASS_NAMES):
        parser.error(f"--top must be between 1 and {len(CLASS_NAMES)}")
    # Image files are read before the framework import, so a bad file fails in well under a second.
    names = list(args.images)
    images = [load_image(path) for path in args.images]  # each (28, 28)
    labels = [None] * len(images)

    twin = _cli.backend_module(args.backend)
    device = twin.resolve_device(args.device)
    loaded = twin.load_checkpoint(args.checkpoint, device)
    if args.test_index:
        test = load_fashion_mnist(args.data_dir, download=args.download)
        n = len(test.test_labels)
        for i in args.test_index:
            if not 0 <= i < n:
                raise ValueError(f"--test-index {i} is out of range; the test set has {n} images (0 to {n - 1})")
        names += [f"test[{i}]" for i in args.test_index]
        images += list(scale_images(test.test_images[args.test_index]))  # /255 as in training
        labels += [int(test.test_labels[i]) for i in args.test_index]

    probs = predict_proba(twin, loaded, np.stack(images))  # (N, 10)
    for name, row, label in zip(names, probs, labels):
        print(format_prediction(args.backend, name, row, args.top, label))
    return 0


if __name__ == "__main__":
    _cli.main_wrapper(main)
