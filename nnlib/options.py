"""The names and ranges a loss section may use: the one source for the library's constructors
(:mod:`nnlib.losses`), the model files' metadata check (:mod:`nnlib.modelfile`) and the application's
params schema.

It imports only :mod:`nnlib.checks`, so a schema that reads it does not depend on the array code.
"""
from __future__ import annotations

from .checks import float_range, in_range

CROSS_ENTROPY, MSE = "cross_entropy", "mse"
LOSS_NAMES = (CROSS_ENTROPY, MSE)

LABEL_SMOOTHING = {"low": 0.0, "high": 1.0, "open_high": True}  # [0, 1), as PyTorch's CrossEntropyLoss
LABEL_SMOOTHING_RANGE = float_range(**LABEL_SMOOTHING)  # "a number in [0, 1)"


def valid_label_smoothing(value) -> bool:
    """Whether ``value`` is a finite number in :data:`LABEL_SMOOTHING` (ints accepted, bools not)."""
    return in_range(value, **LABEL_SMOOTHING)


def spelled(names) -> str:
    """``'a' or 'b'``, ``'a', 'b' or 'c'``: the names as a schema's description writes them."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
