"""Classification metrics on integer labels. y_true, y_pred: (N,) ints in [0, K).

Every function returns finite numbers: a ratio whose denominator is zero (a class with no samples,
a class never predicted, an empty calibration bin) counts as 0, never NaN, so the results are valid JSON.
"""
from __future__ import annotations

import numpy as np

from .functional import log_softmax

CALIBRATION_BINS = 15  # equal-width confidence bins for the expected calibration error


def confusion_matrix(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    flat = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise as float64, 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision (diagonal / column sums), recall (diagonal / row sums) and F1, each (K,) float64.

    F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall (0 when both are 0).
    """
    hits = np.diag(confusion)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    return _ratio(hits, predicted), _ratio(hits, actual), _ratio(2 * hits, predicted + actual)


def macro_f1(confusion: np.ndarray) -> float:
    """The unweighted mean of the per-class F1 scores, in [0, 1]."""
    return float(precision_recall_f1(confusion)[2].mean())


def top_confusions(confusion: np.ndarray, n: int = 5) -> list[tuple[int, int, int]]:
    """The ``n`` most frequent mistakes as (true, predicted, count), most frequent first.

    Off-diagonal cells only, zero counts left out; ties go to the lower (true, predicted) pair.
    """
    true, predicted = np.nonzero(confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype)))
    counts = confusion[true, predicted]
    order = np.lexsort((predicted, true, -counts))[:n]
    return [(int(true[i]), int(predicted[i]), int(counts[i])) for i in order]


def calibration_bins(confidence, correct, bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability table over ``bins`` equal-width confidence bins ((0, 1/B], (1/B, 2/B], ...).

    confidence: (N,) the probability given to the predicted class; correct: (N,) bool.
    Returns (count (B,) int64, mean confidence (B,), accuracy (B,)); an empty bin has 0 for both.
    """
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    return (count, _ratio(np.bincount(index, confidence, bins), count),
            _ratio(np.bincount(index, correct, bins), count))


def expected_calibration_error(confidence, correct, bins: int = CALIBRATION_BINS) -> float:
    """ECE: sum over bins of (share of images in the bin) x |accuracy - mean confidence|, in [0, 1]."""
    count, mean_confidence, bin_accuracy = calibration_bins(confidence, correct, bins)
    return float((_ratio(count, count.sum()) * np.abs(bin_accuracy - mean_confidence)).sum())


def log_loss(logits, y_true) -> float:
    """Mean cross-entropy -log softmax(logits)[y] in float64. logits: (N, K), y_true: (N,)."""
    logp = log_softmax(np.asarray(logits, np.float64))
    return float(-logp[np.arange(len(logp)), np.asarray(y_true, np.int64)].mean())
