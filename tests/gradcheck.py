"""Test helpers: float64 layers and models, and central-difference gradient checks.

Imported by the test modules as ``from gradcheck import ...`` (pytest puts ``tests/`` on sys.path).
"""
from __future__ import annotations

import numpy as np

from nnlib import layers


def to_float64(layer: layers.Layer) -> layers.Layer:
    """Cast a built layer's params, grads and buffers to float64 in place (grads as fresh zeros)."""
    layer.params = {k: np.array(v, dtype=np.float64) for k, v in layer.params.items()}
    layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    layer.buffers = {k: np.array(v, dtype=np.float64) for k, v in layer.buffers.items()}
    return layer


def model_to_float64(model):
    """Cast every layer of a Sequential to float64 (before an optimizer takes its parameters)."""
    for layer in model.layers:
        to_float64(layer)
    return model


def build_layer(spec: dict, input_shape: tuple, seed: int = 0, randomize: bool = True) -> layers.Layer:
    """``from_spec`` + ``build`` + float64. With ``randomize`` every param is redrawn from N(0, 1), so
    biases and BatchNorm's gamma/beta are not their trivial 0/1 initial values."""
    rng = np.random.default_rng(seed)
    layer = layers.from_spec(spec)
    layer.build(tuple(input_shape), rng)
    to_float64(layer)
    if randomize:
        for value in layer.params.values():
            value[...] = rng.standard_normal(value.shape)
    return layer


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x``, perturbed in place."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        f_plus = f()
        x[idx] = old - eps
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(analytic, numeric) -> float:
    """max |a - n| relative to the largest entry of either (0 when both are zero)."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(analytic - numeric).max() / scale)


def check_layer_gradients(layer, x, train: bool = True, before_forward=None, rtol: float = 1e-6, seed: int = 1):
    """Compare ``layer.backward`` with central differences for the input and every parameter.

    The scalar loss is a fixed random projection of the output, ``sum(R * layer.forward(x))``, so
    ``dL/dy = R``. ``before_forward`` (optional) runs before every forward, e.g. to reseed a mask.
    Returns ``{name: relative error}`` and asserts each is below ``rtol``.
    """
    def forward():
        if before_forward is not None:
            before_forward()
        return layer.forward(x, train=train)

    r = np.random.default_rng(seed).standard_normal(forward().shape)

    def loss():
        return float((forward() * r).sum())

    forward()
    dx = layer.backward(r.copy())
    analytic = {"x": dx, **{k: v.copy() for k, v in layer.grads.items()}}
    numeric = {"x": numeric_grad(loss, x), **{k: numeric_grad(loss, v) for k, v in layer.params.items()}}
    errors = {name: rel_error(analytic[name], numeric[name]) for name in numeric}
    bad = {name: err for name, err in errors.items() if not err < rtol}
    assert not bad, f"gradient mismatch (relative error > {rtol}): {bad}"
    return errors
