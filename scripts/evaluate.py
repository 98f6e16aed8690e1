"""Test loss and accuracy of a checkpoint, run by either twin (a checkpoint from either twin works).

    python scripts/evaluate.py --backend flax runs/torch.safetensors
    [flax] test_loss 0.3012  test_acc 89.74%  (10000 images, checkpoint runs/torch.safetensors)
"""

from __future__ import annotations

import argparse

import _cli  # first: puts the repository root on sys.path

from fashion_common.data import load_fashion_mnist
from fashion_common.text import format_eval_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_backend_argument(parser)
    parser.add_argument("checkpoint", metavar="CKPT", help="a .safetensors checkpoint written by either twin")
    _cli.add_data_arguments(parser)
    _cli.add_device_argument(parser)
    parser.add_argument("--limit-test", metavar="N", type=int, default=None, help="use only the first N test images, as train.py's --limit-test (default: all)")
    return parser


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit_test is not None and args.limit_test < 1:
        parser.error("--limit-test must be >= 1")
    twin = _cli.backend_module(args.backend)
    device = twin.resolve_device(args.device)
    # The checkpoint is read (and rejected, if bad) before the data: it is the cheaper of the two.
    loaded = twin.load_checkpoint(args.checkpoint, device)
    data = load_fashion_mnist(args.data_dir, download=args.download).limit(train=0, test=args.limit_test)
    on_device = twin.train.put_data(data, device)  # train=0 above: evaluation never reads the training images

    # The twins' evaluate_model differ only in how the model arrives: a module, or apply_fn and params.
    if args.backend == "torch":
        metrics = twin.train.evaluate_model(loaded, on_device.test_images, on_device.test_labels)
    else:
        model, params = loaded
        metrics = twin.train.evaluate_model(model.apply, params, on_device.test_images, on_device.test_labels)
    print(format_eval_line(args.backend, metrics, len(data.test_labels), args.checkpoint))
    return 0


if __name__ == "__main__":
    _cli.main_wrapper(main)
