"""The CuPy path without a GPU: a training step and an evaluation under a strict stand-in for CuPy.

``tests/strict_cupy.py`` wraps every array in a type that refuses implicit conversion to NumPy and
refuses host arrays mixed into device operations, as CuPy does. A step that passes here sends every
array operation through the backend switch; its numbers must equal the NumPy backend's.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import strict_cupy
from nnlib import backend
from nnlib.data import minibatches
from nnlib.evaluation import evaluate
from nnlib.model import Sequential
from nnlib.training import make_loss, make_optimizer

SPECS = [
    {"type": "conv", "out": 4, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 6, "k": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "avgpool", "k": 2},
    {"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "batchnorm"}, {"type": "tanh"},
    {"type": "dropout", "p": 0.3}, {"type": "dense", "out": 12}, {"type": "sigmoid"}, {"type": "dense", "out": 10},
]
OPTIMIZER = {"name": "adamw", "lr": 0.01, "momentum": 0.0, "nesterov": False, "betas": [0.9, 0.999], "eps": 1e-8,
             "weight_decay": 0.01, "decay_bias_and_norm": False}
LOSS = {"name": "cross_entropy", "label_smoothing": 0.1, "half": True}


@pytest.fixture
def cupy_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", strict_cupy)
    backend.use("cupy")
    try:
        yield strict_cupy
    finally:
        backend.use("numpy")


def data(n=24):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def train_steps(steps=3):
    """A few training steps and an evaluation on the active backend; everything returned on the host."""
    model = Sequential.from_specs(SPECS, (1, 28, 28), np.random.default_rng(0))
    loss_fn, optimizer = make_loss(LOSS), make_optimizer(model, OPTIMIZER)
    x, y = data()
    model.train()
    losses = []
    for xb, yb in list(minibatches(x, y, 8, np.random.default_rng(1)))[:steps]:
        logits = model.forward(xb)
        value, dlogits = loss_fn(logits, yb)
        model.backward(dlogits)
        optimizer.step()
        losses.append(float(value))
    loss, accuracy, predictions = evaluate(model, loss_fn, x, y, batch_size=10)
    state = {k: backend.to_numpy(v) for k, v in model.state().items()}
    return model, losses, (loss, accuracy, predictions), state


def test_the_stand_in_is_strict(cupy_backend):
    a = cupy_backend.asarray(np.ones(3, np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.exp(a)
    with pytest.raises(TypeError):
        a + np.ones(3, np.float32)  # a host array mixed into a device operation
    assert isinstance(cupy_backend.exp(a), cupy_backend.DeviceArray) and a.get().sum() == 3


def without_dropout():
    return [spec for spec in SPECS if spec["type"] != "dropout"]


def test_training_and_evaluation_run_on_the_device_and_match_numpy(cupy_backend, monkeypatch):
    """Dropout masks come from another stream on the device, so the comparison leaves dropout out."""
    monkeypatch.setattr(sys.modules[__name__], "SPECS", without_dropout())
    model, losses, (loss, accuracy, predictions), state = train_steps()
    assert all(isinstance(p, cupy_backend.DeviceArray) for _, p, _ in model.parameters())
    backend.use("numpy")
    _, host_losses, (host_loss, host_accuracy, host_predictions), host_state = train_steps()
    np.testing.assert_allclose(losses, host_losses, rtol=1e-5)
    assert loss == pytest.approx(host_loss, rel=1e-5) and accuracy == host_accuracy
    assert np.array_equal(predictions, host_predictions)
    for name, value in host_state.items():
        np.testing.assert_allclose(state[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_dropout_masks_are_drawn_on_the_device_from_the_seed(cupy_backend):
    """A whole step with dropout runs on the device; the same seed gives the same result twice."""
    first, second = train_steps(), train_steps()
    dropout = next(layer for layer in first[0].layers if layer.type_name == "dropout")
    assert isinstance(dropout.device_rng, cupy_backend._Generator)  # the masks were drawn on the device
    assert first[1] == second[1]
    for name, value in first[3].items():
        assert np.array_equal(value, second[3][name]), name
