"""fashion-twins evaluate: test loss and accuracy of a checkpoint, run by any twin
(a checkpoint from any twin works).

fashion-twins evaluate --backend flax runs/torch.safetensors
[flax] test_loss 0.3012  test_acc 89.74%  (10000 images, checkpoint runs/torch.safetensors)
fashion-twins evaluate --backend torch runs/flax.safetensors --json   # one JSON document, per-class accuracy too
"""

from __future__ import annotations

import json
import math

from fashion_common.errors import NonFiniteLossError

from . import common


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="test loss and accuracy of a checkpoint, with any twin",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        parents=[
            common.backend_parent(),
            common.checkpoint_parent(),
            common.data_parent(),
            common.device_parent(),
            common.precision_parent(choices=common.ONE_PRECISION),
        ],
    )
    p.add_argument(
        "--limit-test",
        metavar="N",
        type=common.positive_int,
        default=None,
        help="use only the first N test images, as train's --limit-test (default: all)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout instead of the text line: backend, checkpoint, num_images, test_loss, "
        "test_accuracy and per_class_accuracy (class name -> share right; null for a class with no image) "
        "(default: off, one line of text)",
    )
    p.set_defaults(run=run)


def load_model(twin, args, device):
    """The checkpoint through the twin's own loader, with the spec from its header or the one assumed.

    An assumed spec is said on stderr.
    """
    spec, message = common.checkpoint_spec(args.checkpoint, args.output_activation)
    loaded = twin.load_checkpoint(args.checkpoint, device, spec=spec)
    if message:
        common.note(message)
    return loaded


def run(args) -> int:
    from fashion_common.data import load_fashion_mnist, scale_images
    from fashion_common.text import format_eval_line

    twin = common.backend_module(args.backend)
    device = twin.resolve_device(args.device)
    twin.set_matmul_precision(args.precision)
    # The checkpoint is read (and rejected, if bad) before the data: it is the cheaper of the two.
    loaded = load_model(twin, args, device)
    data = load_fashion_mnist(args.data_dir, download=args.download).limit(train=0, test=args.limit_test)
    on_device = twin.train.put_data(data, device)  # train=0 above: evaluation never reads the training images
    metrics = twin.train.evaluate_model(loaded, on_device.test_images, on_device.test_labels)
    check_finite_metrics(metrics, args.checkpoint, len(data.test_labels))
    if not args.json:
        print(format_eval_line(args.backend, metrics, len(data.test_labels), args.checkpoint))
        return 0
    # Per class needs each image's prediction, which evaluate_model does not return: the twin's predict_proba.
    images = scale_images(data.test_images)  # (N, 28, 28) float32 in [0, 1], as ToTensor
    probs = twin.train.predict_proba(loaded, images)
    document = evaluation_document(args.backend, args.checkpoint, metrics, data.test_labels, probs.argmax(1))
    print(json.dumps(document, indent=2))
    return 0


def evaluation_document(backend: str, checkpoint, metrics: dict, labels, predictions) -> dict:
    """`evaluate --json`'s document; a class without images has accuracy null (JSON has no NaN)."""
    from fashion_common.metrics import confusion_matrix, per_class_accuracy
    from fashion_common.spec import CLASS_NAMES

    per_class = per_class_accuracy(confusion_matrix(labels, predictions))  # (10,), NaN where a class has no image
    return {
        "backend": backend,
        "checkpoint": str(checkpoint),
        "num_images": int(len(labels)),
        "test_loss": float(metrics["test_loss"]),
        "test_accuracy": float(metrics["test_accuracy"]),
        "per_class_accuracy": {
            name: (None if math.isnan(value) else float(value))
            for name, value in zip(CLASS_NAMES, per_class, strict=True)
        },
    }


def check_finite_metrics(metrics: dict, checkpoint, count: int) -> None:
    """A NaN or Inf test loss is an error, not a result: the weights overflow (or were damaged) on these images."""
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{checkpoint}: {key} is {value} on the {count} test images; the weights give non-finite "
                "logits or losses (a damaged or diverged checkpoint), so there is no result to report"
            )
