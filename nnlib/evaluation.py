"""Evaluating a trained model: one pass over a labelled set, and what the evaluate stage reports from it.

:func:`evaluate` (loss, accuracy, predictions) is what training validates with after every epoch;
:func:`run` keeps everything a report needs: the final outputs and the penultimate-layer features.
:func:`scalars` and :func:`details` turn an :class:`Evaluation` into ``metrics/eval.json`` (scalars
only: every key is a column of ``dvc exp show``) and ``metrics/eval_details.json``. No plotting here:
the application draws the figures from what these functions return.

Both passes take the data as *batches*: an iterable of ``(x, y)`` pairs, x: (B, ...) float on the
model's backend and y: (B,) int64 labels, as the application makes them (for MNIST,
:func:`nnlib.mnist.data.stream.minibatches` turns uint8 images into float32 batches).
Shapes: N examples in all, K classes, D penultimate features. A :class:`~nnlib.committee.Committee`
is evaluated as a model whose logits are its log-probabilities; its features and first-layer images
are its first member's (:func:`nnlib.committee.first_network`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import metrics
from .backend import to_numpy
from .committee import first_network
from .functional import softmax

TOP_CONFUSIONS = 5
MAX_FIRST_LAYER_IMAGES = 64


@dataclass
class Evaluation:
    """One eval-mode pass over a labelled set.

    y: (N,) int64 labels; logits: (N, K) the final outputs; loss: the mean of the loss function the
    pass ran with; features: (N, D) the input of the last dense layer (None when not asked for).
    """

    y: np.ndarray
    logits: np.ndarray
    loss: float
    features: np.ndarray | None = None

    @cached_property
    def probabilities(self) -> np.ndarray:
        """(N, K) float64 softmax of the final outputs (whatever loss the model trained with)."""
        return softmax(self.logits.astype(np.float64))

    @cached_property
    def predictions(self) -> np.ndarray:
        """(N,) int64 argmax of the final outputs."""
        return self.logits.argmax(axis=1).astype(np.int64)

    @property
    def confidence(self) -> np.ndarray:
        """(N,) the probability given to the predicted class."""
        return self.probabilities.max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool."""
        return self.predictions == self.y

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @cached_property
    def confusion(self) -> np.ndarray:
        """(K, K) int64, row = true class."""
        return metrics.confusion_matrix(self.y, self.predictions, self.logits.shape[1])


def feature_layer(model) -> int:
    """Index of the layer whose input is the penultimate representation: the last dense layer
    (the last layer when there is no dense one, e.g. a network ending in global average pooling);
    a committee's first member's."""
    model = first_network(model)
    dense = [i for i, layer in enumerate(model.layers) if layer.type_name == "dense"]
    return dense[-1] if dense else len(model.layers) - 1


def run(model, loss_fn, batches, features: bool = True) -> Evaluation:
    """``batches`` (an iterable of (x: (B, ...) float, y: (B,) int64)) through ``model`` in eval mode.

    The loss is ``loss_fn``'s batch mean weighted by batch size; with ``features`` the input of the
    last dense layer is kept too, flattened to (N, D). The model's mode is restored afterwards
    (:meth:`~nnlib.model.Sequential.evaluating`). Raises ValueError when there is no batch.
    """
    with model.evaluating():
        return _run(model, loss_fn, batches, features)


def _run(model, loss_fn, batches, features: bool) -> Evaluation:
    split = feature_layer(model) if features else None
    total, labels, outputs, hidden = 0.0, [], [], []
    for xb, yb in batches:
        if features:
            logits, h = model.forward_with_input_of(split, xb)
        else:
            logits = model.forward(xb)
        value, _ = loss_fn(logits, yb)
        total += value * len(yb)
        labels.append(to_numpy(yb).astype(np.int64, copy=False))
        outputs.append(to_numpy(logits))
        if features:
            hidden.append(to_numpy(h).reshape(len(yb), -1))
    if not labels:
        raise ValueError("evaluation: no batches to evaluate")
    y = np.concatenate(labels)
    return Evaluation(y, np.concatenate(outputs), total / len(y), np.concatenate(hidden) if features else None)


def evaluate(model, loss_fn, batches):
    """Mean loss, accuracy and predictions over ``batches`` (an iterable of (x, y int64 (B,)) pairs).

    Runs in eval mode; returns (loss: float, accuracy: float, predictions: int64 (N,)).
    """
    result = run(model, loss_fn, batches, features=False)
    return result.loss, result.accuracy, result.predictions


def scalars(result: Evaluation, loss_name: str) -> dict:
    """``metrics/eval.json``: numbers and one string, no nesting (each key is a ``dvc exp show`` column).

    No hash: the model's SHA-256 goes to ``eval_details.json``, so `dvc metrics show` stays narrow.

    ``nll`` is the cross-entropy of the softmax of the final outputs, comparable across runs whatever
    they trained with; ``loss`` is the training loss (``loss_fn``) on this set.
    """
    return {
        "accuracy": result.accuracy, "errors": int((~result.correct).sum()), "images": len(result.y),
        "nll": metrics.log_loss(result.logits, result.y), "loss_fn": loss_name, "loss": float(result.loss),
        "macro_f1": metrics.macro_f1(result.confusion),
        "ece": metrics.expected_calibration_error(result.confidence, result.correct),
    }


def details(result: Evaluation, top: int = TOP_CONFUSIONS) -> dict:
    """``metrics/eval_details.json``: precision, recall, F1 and support per class, and the ``top``
    most frequent confusions as {true, predicted, count}."""
    precision, recall, f1 = metrics.precision_recall_f1(result.confusion)
    support = result.confusion.sum(axis=1)
    return {
        "per_class": {str(k): {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                               "support": int(support[k])} for k in range(len(support))},
        "top_confusions": [{"true": t, "predicted": p, "count": c}
                           for t, p, c in metrics.top_confusions(result.confusion, top)],
    }


def confident_mistakes(result: Evaluation, n: int) -> np.ndarray:
    """Indices (M,) of the ``n`` wrong predictions with the highest confidence, most confident first
    (M = min(n, errors); ties in image order)."""
    wrong = np.flatnonzero(~result.correct)
    return wrong[np.argsort(-result.confidence[wrong], kind="stable")][:n]


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project features (N, D) on their first two principal components: the top eigenvectors of the
    centred data's (D, D) scatter matrix, in float64 (10x faster than an SVD of the (N, D) data itself,
    which computes N-long singular vectors that are not needed).

    Returns (points (N, 2), explained (2,): the share of the variance along each). The sign of each
    component is fixed (its largest loading positive) so the picture does not flip between runs.
    """
    centred = np.asarray(features, np.float64) - np.mean(features, axis=0, dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending
    order = np.argsort(eigenvalues, kind="stable")[::-1]
    top = eigenvectors[:, order[:2]].T
    top = top * np.sign(top[np.arange(len(top)), np.abs(top).argmax(axis=1)])[:, None]
    variance = np.clip(eigenvalues[order], 0, None)  # the squared singular values
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(len(top))
    missing = 2 - len(top)  # a single feature has no second direction: its coordinate is 0
    return np.pad(centred @ top.T, ((0, 0), (0, missing))), np.pad(explained, (0, missing))


def first_layer_images(model, limit: int = MAX_FIRST_LAYER_IMAGES) -> tuple[np.ndarray | None, str]:
    """What the first weight layer responds to, as images (M, h, w), with a one-line description.

    A conv layer gives its filters (M = out, h = w = k; averaged over input channels when there are
    several); a dense layer that sees whole images (its inputs are the C*H*W pixels, e.g. after
    flatten in an MLP) gives each unit's weights as an H x W image, the first ``limit`` units.
    Anything else gives (None, why). A committee shows its first member's.
    """
    model = first_network(model)
    layer = next((layer for layer in model.layers if layer.type_name in ("conv", "dense")), None)
    if layer is None:
        return None, "the network has no conv or dense layer"
    weights = to_numpy(layer.params["W"]).astype(np.float64)
    if layer.type_name == "conv":
        channels = "" if weights.shape[1] == 1 else f", averaged over {weights.shape[1]} input channels"
        return weights.mean(axis=1)[:limit], f"first conv layer: {min(len(weights), limit)} filters {layer.k}x{layer.k}{channels}"
    c, h, w = model.input_shape
    if weights.shape[0] != c * h * w:
        return None, f"the first dense layer sees {weights.shape[0]} features, not the {c * h * w} pixels"
    units = weights.T[:limit].reshape(-1, c, h, w).mean(axis=1)
    return units, f"first dense layer: weights of {len(units)} of its {weights.shape[1]} units as {h}x{w} images"
