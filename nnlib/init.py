"""Weight initialisers. Each takes an explicit ``numpy.random.Generator``; none touches global state.

``fan_in``/``fan_out`` follow PyTorch: for a weight of shape (in, out) they are in/out; for a conv
kernel of shape (out_c, in_c, kh, kw) they are in_c*kh*kw and out_c*kh*kw.
"""
from __future__ import annotations

import numpy as np

from .backend import DEFAULT_DTYPE


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a Dense weight (in, out) or a conv kernel (out_c, in_c, kh, kw)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def he_normal(shape, rng: np.random.Generator, dtype=DEFAULT_DTYPE) -> np.ndarray:
    """He/Kaiming normal: N(0, 2/fan_in). Suits ReLU networks."""
    fan_in, _ = fans(shape)
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def he_uniform(shape, rng: np.random.Generator, dtype=DEFAULT_DTYPE) -> np.ndarray:
    """He/Kaiming uniform: U(-a, a) with a = sqrt(6/fan_in)."""
    fan_in, _ = fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_uniform(shape, rng: np.random.Generator, dtype=DEFAULT_DTYPE) -> np.ndarray:
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6/(fan_in+fan_out)). Suits tanh/sigmoid."""
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_normal(shape, rng: np.random.Generator, dtype=DEFAULT_DTYPE) -> np.ndarray:
    """Glorot/Xavier normal: N(0, 2/(fan_in+fan_out))."""
    fan_in, fan_out = fans(shape)
    return (rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def normal(shape, rng: np.random.Generator, dtype=DEFAULT_DTYPE) -> np.ndarray:
    """N(0, 1/fan_in) for weights, as in Nielsen's network.py 'large weight' fix."""
    fan_in, _ = fans(shape)
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)


INITIALIZERS = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "normal": normal,
}


def get(name: str):
    """Look an initialiser up by name; the error lists the valid names."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}: expected one of {sorted(INITIALIZERS)}") from None
