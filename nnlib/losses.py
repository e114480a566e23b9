"""Losses. Each is a callable ``loss(outputs, labels) -> (value, d_outputs)``.

``value`` is a Python float (the mean over the batch); ``d_outputs`` has the shape of ``outputs``
and is the gradient of ``value`` with respect to them, ready for ``model.backward``.
``loss.value_and_grad(outputs, labels)`` returns the value as a 0-d array of the outputs' backend
instead, so that a training loop on a GPU need not wait for it (:func:`nnlib.training.fit`).
Labels are integer class indices ``y: (N,)``.
"""
from __future__ import annotations

from .backend import get_array_module
from .checks import check_bool, check_choice, check_float
from .factory import from_section
from .functional import log_softmax, sigmoid
from .options import CROSS_ENTROPY, LABEL_SMOOTHING
from .options import MSE as MSE_NAME


def one_hot(y, num_classes: int, dtype):
    """y: (N,) ints -> (N, num_classes) with ones at the labels."""
    xp = get_array_module(y)
    out = xp.zeros((y.shape[0], num_classes), dtype=dtype)
    out[xp.arange(y.shape[0]), y] = 1
    return out


class Loss:
    """Base class: ``__call__`` is :meth:`value_and_grad` with the value read back as a Python float."""

    type_name = "loss"  # the name in LOSSES (from nnlib.options), and in its error messages

    def value_and_grad(self, outputs, y):
        """(mean loss as a 0-d array on the outputs' backend, d_outputs: outputs.shape)."""
        raise NotImplementedError

    def __call__(self, outputs, y):
        value, grad = self.value_and_grad(outputs, y)
        return float(value), grad


class SoftmaxCrossEntropy(Loss):
    """Fused softmax + cross-entropy on logits, with optional label smoothing.

    logits: (N, K) float, y: (N,) int. With smoothing s the target is (1-s)*onehot + s/K
    (PyTorch's convention). The gradient is simply (softmax(logits) - target) / N.
    """

    type_name = CROSS_ENTROPY

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = check_float(self.type_name, "label_smoothing", label_smoothing, **LABEL_SMOOTHING)

    def value_and_grad(self, logits, y):
        xp = get_array_module(logits)
        n, k = logits.shape
        logp = log_softmax(logits)
        target = one_hot(y, k, logits.dtype)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / k
        value = -(target * logp).sum() / n
        grad = (xp.exp(logp) - target) / n
        return value, grad.astype(logits.dtype, copy=False)


class MSE(Loss):
    """Quadratic cost against one-hot targets.

    With ``half=True`` (Nielsen's network.py) it is 1/2 * ||a - y||^2 per example, averaged over the
    batch; with ``half=False`` it is the mean of the squared error over all N*K entries (PyTorch's
    MSELoss). ``on`` selects what the outputs are compared with: ``"sigmoid"`` applies a sigmoid to
    the raw outputs first (Nielsen's network ends in sigmoid units), ``"identity"`` compares them as they are.
    """

    type_name = MSE_NAME

    def __init__(self, half: bool = True, on: str = "identity"):
        self.half = check_bool(self.type_name, "half", half)
        self.on = check_choice(self.type_name, "on", on, ("identity", "sigmoid"))

    def value_and_grad(self, outputs, y):
        n, k = outputs.shape
        a = sigmoid(outputs) if self.on == "sigmoid" else outputs
        diff = a - one_hot(y, k, outputs.dtype)
        if self.half:
            value = 0.5 * (diff * diff).sum() / n
            grad = diff / n
        else:
            value = (diff * diff).mean()
            grad = 2.0 * diff / diff.size
        if self.on == "sigmoid":
            grad = grad * a * (1.0 - a)
        return value, grad.astype(outputs.dtype, copy=False)


LOSSES = {cls.type_name: cls for cls in (SoftmaxCrossEntropy, MSE)}  # keys: nnlib.options.LOSS_NAMES


def make_loss(cfg: dict) -> Loss:
    """The loss of a params section such as ``{"name": "cross_entropy", "label_smoothing": 0.1, "half": True}``
    (``train.loss``): ``name`` picks it in :data:`LOSSES`, the keys its constructor takes configure it."""
    return from_section(LOSSES, cfg)
