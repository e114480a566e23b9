"""Test helpers: float64 layers and models, and central-difference gradient checks.

Imported by the test modules as ``from gradcheck import ...`` (pytest puts ``tests/`` on sys.path).
Everything works on the active nnlib backend (NumPy, the strict CuPy stand-in, or CuPy; see the
``device`` fixture in conftest.py): layers are built there, :func:`on_device` moves test inputs
there and :func:`on_host` brings results back for NumPy assertions.
"""
from __future__ import annotations

import numpy as np

from nnlib import backend, layers
from nnlib.model import pack_parameters


def on_device(x):
    """A host array (or a device one) as an array of the active backend; NumPy arrays pass through."""
    return backend.current().asarray(x)


def on_host(x):
    """A NumPy array of ``x``'s values, whatever backend holds it."""
    return backend.to_numpy(x)


def to_float64(layer: layers.Layer) -> layers.Layer:
    """Cast a built layer's params, grads and buffers to float64 in place (grads as fresh zeros)."""
    xp = backend.current()
    layer.params = {k: xp.array(on_host(v), dtype=np.float64) for k, v in layer.params.items()}
    layer.grads = {k: xp.zeros_like(v) for k, v in layer.params.items()}
    layer.buffers = {k: xp.array(on_host(v), dtype=np.float64) for k, v in layer.buffers.items()}
    return layer


def model_to_float64(model):
    """Cast every layer of a Sequential to float64 (before an optimizer takes its parameters), and pack
    the new arrays into the model's flat arrays again (:func:`nnlib.model.pack_parameters`)."""
    for layer in model.layers:
        to_float64(layer)
    model.flat_params, model.flat_grads = pack_parameters(model.layers)
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
            value[...] = on_device(rng.standard_normal(value.shape))
    return layer


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x``, perturbed in place."""
    grad = np.zeros(x.shape)  # on the host: one entry per perturbation of x (which may be on a device)
    for idx in np.ndindex(x.shape):
        old = float(x[idx])  # a copy: CuPy's x[idx] is a 0-d view that the next line would change
        x[idx] = old + eps
        f_plus = f()
        x[idx] = old - eps
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(analytic, numeric) -> float:
    """max |a - n| relative to the largest entry of either (0 when both are zero)."""
    analytic, numeric = on_host(analytic), on_host(numeric)
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

    x = on_device(x)
    r = on_device(np.random.default_rng(seed).standard_normal(forward().shape))

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
