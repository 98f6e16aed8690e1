"""fashion_common.metrics on small arrays whose answers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fashion_common.metrics import NUM_CLASSES, accuracy, agreement, confusion_matrix, per_class_accuracy
from fashion_common.spec import CLASS_NAMES

# 3 classes, 6 images. true -> predicted: 0->0, 0->1, 1->1, 1->1, 2->0, 2->2
LABELS = np.array([0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 1, 1, 1, 0, 2])


def test_confusion_matrix_counts_true_class_by_row_and_predicted_class_by_column():
    expected = np.array(
        [
            [1, 1, 0],  # class 0: one right, one taken for class 1
            [0, 2, 0],  # class 1: both right
            [1, 0, 1],  # class 2: one taken for class 0, one right
        ]
    )
    got = confusion_matrix(LABELS, PREDICTED, num_classes=3)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got.sum() == len(LABELS)


def test_confusion_matrix_defaults_to_the_ten_fashion_classes_and_counts_each_image_once():
    labels = np.arange(10)
    predicted = (labels + 1) % 10  # every image taken for the next class
    got = confusion_matrix(labels, predicted)
    assert got.shape == (NUM_CLASSES, NUM_CLASSES) == (len(CLASS_NAMES), len(CLASS_NAMES))
    assert np.trace(got) == 0 and got.sum() == 10
    assert all(got[i, (i + 1) % 10] == 1 for i in range(10))


def test_per_class_accuracy_is_the_diagonal_over_each_row_and_nan_for_an_absent_class():
    confusion = confusion_matrix(LABELS, PREDICTED, num_classes=4)  # class 3 has no images
    got = per_class_accuracy(confusion)
    np.testing.assert_array_equal(got[:3], [0.5, 1.0, 0.5])  # 1/2, 2/2, 1/2
    assert math.isnan(got[3])


def test_accuracy_is_the_trace_over_the_total():
    assert accuracy(confusion_matrix(LABELS, PREDICTED, num_classes=3)) == 4 / 6  # 1 + 2 + 1 right of 6
    assert math.isnan(accuracy(np.zeros((3, 3), dtype=np.int64)))


def test_agreement_is_the_share_of_images_with_the_same_predicted_class():
    other = np.array([0, 1, 2, 1, 0, 0])  # same as PREDICTED at images 0, 1, 3, 4: 4 of 6
    assert agreement(PREDICTED, other, num_classes=3) == 4 / 6
    assert agreement(PREDICTED, PREDICTED, num_classes=3) == 1.0
    assert agreement(PREDICTED, (PREDICTED + 1) % 3, num_classes=3) == 0.0


def test_agreement_ignores_whether_either_prediction_is_right():
    labels = np.array([0, 1])
    both_wrong_same = np.array([2, 2])
    assert agreement(both_wrong_same, both_wrong_same.copy(), num_classes=3) == 1.0
    assert accuracy(confusion_matrix(labels, both_wrong_same, num_classes=3)) == 0.0


@pytest.mark.parametrize(
    "labels, predicted, message",
    [
        ([0, 1], [0], "labels has 2 entries but predictions has 1"),
        ([0, 10], [0, 1], "outside the classes 0..9"),
        ([0, -1], [0, 1], "holds -1"),
        ([0.0, 1.0], [0, 1], "integer class indices"),
        ([[0, 1]], [[0, 1]], "1-D vector"),
    ],
)
def test_confusion_matrix_rejects_mismatched_or_out_of_range_labels_with_a_clear_message(labels, predicted, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        confusion_matrix(labels, predicted)


def test_agreement_of_no_images_is_an_error_not_a_perfect_score():
    with pytest.raises(ValueError, match="at least one prediction"):
        agreement(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


def test_confusion_matrix_of_no_images_is_all_zero():
    got = confusion_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert got.shape == (10, 10) and got.sum() == 0
