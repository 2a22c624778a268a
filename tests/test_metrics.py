"""IoU metrics against small cases computed by hand."""

import json
import math

import numpy as np
import pytest

from slimeseg.metrics import ConfusionMatrix, PerImageIoU, evaluate, image_confusion

# 2x3 image, 3 classes. Rows = truth, columns = prediction:
#   t0: p0 1, p1 1      -> IoU0 = 1 / (2 + 2 - 1) = 1/3
#   t1: p1 2            -> IoU1 = 2 / (2 + 3 - 2) = 2/3
#   t2: p0 1, p2 1      -> IoU2 = 1 / (2 + 1 - 1) = 1/2      mIoU = 1/2
TARGET = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def test_confusion_matrix_hand_case():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.matrix.dtype == np.int64
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx(0.5)


def test_absent_class_is_nan_and_excluded():
    cm = ConfusionMatrix(4)  # class 3 is neither in the truth nor predicted
    cm.update(PRED, TARGET)
    iou = cm.iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)
    res = cm.result(["background", "a", "b", "c"])
    assert res.per_class["c"] is None
    assert res.excluded == ["c"]
    assert res.miou == pytest.approx(0.5)


def test_predicted_but_absent_class_scores_zero():
    target = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 1]], np.uint8)
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    np.testing.assert_allclose(cm.iou(), [3 / 4, 0.0])  # false positives make class 1 count
    assert cm.miou() == pytest.approx(3 / 8)


def test_ignored_pixel_changes_nothing():
    target = TARGET.copy()
    pred = PRED.copy()
    target = np.concatenate([target, [[255], [255]]], axis=1)  # an extra column of void pixels
    pred = np.concatenate([pred, [[2], [1]]], axis=1)  # ... predicted wrongly
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])


def test_ignore_index_none_makes_255_an_error():
    target = np.array([[0, 255]], np.uint8)
    with pytest.raises(ValueError, match="target holds class 255"):
        image_confusion(np.zeros((1, 2), np.uint8), target, 3, ignore_index=None)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        image_confusion(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="prediction holds class 5"):
        image_confusion(np.full((2, 2), 5, np.uint8), np.zeros((2, 2), np.uint8), 2)
    with pytest.raises(ValueError, match="target holds class 3"):
        image_confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 3, np.uint8), 2)
    with pytest.raises(ValueError, match="integer"):
        image_confusion(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8), 2)
    with pytest.raises(ValueError, match="real class"):
        ConfusionMatrix(3, ignore_index=1)


def test_per_image_differs_from_accumulated():
    # Image A: truth all background, one pixel wrongly predicted as class 1.
    # Image B: truth has class 1, predicted perfectly.
    a_t, a_p = np.zeros((2, 2), np.uint8), np.array([[0, 0], [0, 1]], np.uint8)
    b_t = np.array([[0, 1], [1, 1]], np.uint8)
    b_p = b_t.copy()
    out = evaluate([(a_p, a_t), (b_p, b_t)], ["background", "part"])
    # Accumulated: rows [[4, 1], [0, 3]] -> IoU0 = 4/5, IoU1 = 3/4.
    acc = out["accumulated"]
    assert acc.per_class == pytest.approx({"background": 0.8, "part": 0.75})
    assert acc.miou == pytest.approx(0.775)
    # Per image: A scores background 3/4 only (no class 1 in its truth, the false positive is
    # free); B scores 1 and 1. Background (3/4 + 1)/2 = 7/8, part 1.
    per = out["per_image"]
    assert per.per_class == pytest.approx({"background": 0.875, "part": 1.0})
    assert per.miou == pytest.approx(0.9375)
    assert per.num_images == acc.num_images == 2


def test_per_image_class_never_in_truth_is_excluded():
    per = PerImageIoU(3)
    per.update(np.array([[0, 2]], np.uint8), np.array([[0, 1]], np.uint8))
    iou = per.iou()
    assert iou[0] == pytest.approx(1.0) and iou[1] == pytest.approx(0.0)
    assert math.isnan(iou[2])  # predicted, but never in a ground truth: not scored
    assert per.result().excluded == ["2"]


def test_accumulating_equals_one_big_image():
    rng = np.random.default_rng(0)
    t1, t2 = rng.integers(0, 4, (2, 8, 8))
    p1, p2 = rng.integers(0, 4, (2, 8, 8))
    a = ConfusionMatrix(4)
    a.update(p1, t1)
    a.update(p2, t2)
    b = ConfusionMatrix(4)
    b.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    assert (a.matrix == b.matrix).all()
    for k in range(4):  # IoU straight from the definition
        inter = ((np.stack([p1, p2]) == k) & (np.stack([t1, t2]) == k)).sum()
        union = ((np.stack([p1, p2]) == k) | (np.stack([t1, t2]) == k)).sum()
        assert a.iou()[k] == pytest.approx(inter / union)


def test_result_is_valid_json():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    text = cm.result(["background", "a", "b"]).to_json()
    data = json.loads(text)  # NaN would not be valid JSON; undefined classes are null
    assert data == {
        "method": "accumulated",
        "per_class": {"background": 1.0, "a": None, "b": None},
        "miou": 1.0,
        "excluded": ["a", "b"],
        "num_images": 1,
    }
    assert "NaN" not in text


def test_empty_accumulator():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.miou())
    assert cm.result().miou is None
