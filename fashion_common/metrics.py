"""Classifier figures from label vectors: confusion matrix, per-class accuracy, agreement of two classifiers.

Framework-free (numpy only): each twin produces its predictions with its own code, and these
functions compare them, so both twins are measured by the same arithmetic.
"""

from __future__ import annotations

import numpy as np

from .spec import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)  # 10


def _labels(name: str, values, num_classes: int) -> np.ndarray:
    """A 1-D integer vector with every entry in [0, num_classes); anything else raises ValueError naming `name`."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"{name} holds {int(array.min() if array.min() < 0 else array.max())}, outside the classes "
            f"0..{num_classes - 1}"
        )
    return array.astype(np.int64)


def _pair(a_name: str, a, b_name: str, b, num_classes: int):
    a, b = _labels(a_name, a, num_classes), _labels(b_name, b, num_classes)
    if len(a) != len(b):
        raise ValueError(f"{a_name} has {len(a)} entries but {b_name} has {len(b)}")
    return a, b


def confusion_matrix(labels, predictions, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class.

    The matrix sums to len(labels); its diagonal is the correct predictions of each class.
    """
    labels, predictions = _pair("labels", labels, "predictions", predictions, num_classes)
    # one bincount over the flat index true * C + predicted, instead of a (N, C, C) one-hot
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion) -> np.ndarray:
    """(C,) float64: the share of each true class predicted correctly (diagonal / row sum).

    NaN for a class with no images.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {confusion.shape}")
    totals = confusion.sum(axis=1).astype(np.float64)  # (C,) images of each true class
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


def accuracy(confusion) -> float:
    """Overall share of correct predictions (trace / total); NaN for an empty matrix."""
    confusion = np.asarray(confusion)
    total = int(confusion.sum())
    return float(np.trace(confusion) / total) if total else float("nan")


def agreement(predictions_a, predictions_b, num_classes: int = NUM_CLASSES) -> float:
    """The share of images on which two classifiers predict the same class (1.0 = identical predictions).

    Raises ValueError for two empty vectors: agreement over no images is undefined, not 1.
    """
    a, b = _pair("predictions_a", predictions_a, "predictions_b", predictions_b, num_classes)
    if len(a) == 0:
        raise ValueError("agreement needs at least one prediction in each vector")
    return float(np.mean(a == b))


# ----------------------------------------------------------------------------- twin against twin


def max_abs_diff(a, b) -> float:
    """max |a - b| over two arrays of one shape, in float64; NaN positions must match (a NaN in one only is inf).

    The one comparison every proof uses: a max absolute difference, never a signed sum.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return float("inf")
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same inf: masked out just below
        diff = np.abs(np.where(nan_a | same_inf, 0.0, a - b))
    return float(diff.max()) if diff.size else 0.0


def max_weight_diff(a: dict, b: dict) -> float:
    """The largest max_abs_diff over two canonical state_dicts, which must hold the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"keys differ: {sorted(set(a) ^ set(b))}")
    return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
