"""The same training and evaluation on every available backend (the ``device`` fixture).

Without a GPU the non-NumPy backend is ``tests/strict_cupy.py``: it wraps every array in a type that
refuses implicit conversion to NumPy and refuses host arrays mixed into device operations, as CuPy
does. A run that passes there sends every array operation through the backend switch. On a machine
with CuPy and a GPU the same tests also run on CuPy. Results must match the NumPy backend's.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import strict_cupy
from nnlib import backend, layers
from nnlib.mnist.data.stream import ShardStream, minibatches
from nnlib.errors import Diverged
from nnlib.evaluation import evaluate
from nnlib.files import load_npz, save_npz
from nnlib.model import Sequential
from nnlib.losses import make_loss
from nnlib.training import fit, make_optimizer

SPECS = [
    {"type": "conv", "out": 4, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 6, "k": 5, "pad": 2, "algorithm": "winograd"}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "avgpool", "k": 2},
    {"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "batchnorm"}, {"type": "tanh"},
    {"type": "dropout", "p": 0.3}, {"type": "dense", "out": 12}, {"type": "sigmoid"}, {"type": "dense", "out": 10},
]
WITHOUT_DROPOUT = [spec for spec in SPECS if spec["type"] != "dropout"]
OPTIMIZER = {"name": "adamw", "lr": 0.01, "momentum": 0.0, "nesterov": False, "betas": [0.9, 0.999], "eps": 1e-8,
             "weight_decay": 0.01, "decay_bias_and_norm": False}
LOSS = {"name": "cross_entropy", "label_smoothing": 0.1, "half": True}
# The stand-in computes with NumPy, so it matches exactly; a GPU sums in other orders (float32).
TOLERANCE = {"numpy": 1e-6, "stand-in": 1e-6, "cupy": 2e-3}


def data(n=32):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def train_steps(specs, steps=20):
    """``steps`` training steps (4 batches of 8, seen 5 times) and an evaluation on the active backend.

    Returns the model, the step losses, (loss, accuracy, predictions) of the evaluation, and the
    model state on the host.
    """
    model = Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(0))
    loss_fn, optimizer = make_loss(LOSS), make_optimizer(model, OPTIMIZER)
    x, y = data()
    batches = list(minibatches(x, y, 8, np.random.default_rng(1)))
    model.train()
    losses = []
    for step in range(steps):
        xb, yb = batches[step % len(batches)]
        logits = model.forward(xb)
        value, dlogits = loss_fn(logits, yb)
        model.backward(dlogits)
        optimizer.step()
        losses.append(float(value))
    loss, accuracy, predictions = evaluate(model, loss_fn, minibatches(x, y, 10))
    state = {k: backend.to_numpy(v) for k, v in model.state().items()}
    return model, losses, (loss, accuracy, predictions), state


def use_numpy_as_on(device, monkeypatch):
    """Switch to NumPy for a reference run that computes what ``device`` computed.

    Off NumPy, BatchNorm -> max-pool runs as two layers (BatchNormMaxPool.fusable), so the reference
    does too: pooling first rounds differently, and AdamW turns the rounding noise of the conv biases'
    (zero) gradient into full steps that eval-mode losses see.
    """
    backend.use("numpy")
    if device != "numpy":
        monkeypatch.setattr(layers.BatchNormMaxPool, "fusable", lambda self, x, train: False)


def test_the_stand_in_is_strict(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", strict_cupy)
    a = strict_cupy.asarray(np.ones(3, np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.exp(a)
    with pytest.raises(TypeError):
        a + np.ones(3, np.float32)  # a host array mixed into a device operation
    assert isinstance(strict_cupy.exp(a), strict_cupy.DeviceArray) and a.get().sum() == 3


def test_20_training_steps_and_an_evaluation_run_on_each_backend_and_match_numpy(device, monkeypatch):
    """Dropout masks come from another stream on a device, so the comparison leaves dropout out."""
    model, losses, (loss, accuracy, predictions), state = train_steps(WITHOUT_DROPOUT)
    assert all(backend.get_array_module(p) is backend.current() for _, p, _ in model.parameters())
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns the four batches it keeps seeing
    use_numpy_as_on(device, monkeypatch)
    _, host_losses, (host_loss, host_accuracy, host_predictions), host_state = train_steps(WITHOUT_DROPOUT)
    tol = TOLERANCE[device]
    np.testing.assert_allclose(losses, host_losses, rtol=tol)
    assert loss == pytest.approx(host_loss, rel=tol)
    assert abs(accuracy - host_accuracy) <= (0 if device != "cupy" else 2 / len(predictions))
    for name, value in host_state.items():
        np.testing.assert_allclose(state[name], value, rtol=100 * tol, atol=tol, err_msg=name)


def test_dropout_masks_come_from_the_seed_on_each_backend(device):
    """A run with dropout gives the same result twice; off NumPy the masks are drawn on the device."""
    first, second = train_steps(SPECS, steps=5), train_steps(SPECS, steps=5)
    dropout = next(layer for layer in first[0].layers if layer.type_name == "dropout")
    if device != "numpy":
        assert dropout.device_rng is not None  # the masks were drawn by a device generator
    assert first[1] == second[1]
    for name, value in first[3].items():
        assert np.array_equal(value, second[3][name]), name


def fit_on_shards(tmp_path, lr=0.01, epochs=2):
    """nnlib.training.fit over a ShardStream of 3 small shards on the active backend; returns the history rows."""
    x, y = data(48)
    files = []
    for s in range(3):
        files.append(f"train-{s:05d}.npz")
        save_npz(tmp_path / files[-1], {"x": x[16 * s : 16 * (s + 1)], "y": y[16 * s : 16 * (s + 1)]})
    stream = ShardStream(tmp_path, files, np.random.default_rng(0), window=2, counts=[16, 16, 16])
    model = Sequential.from_specs(WITHOUT_DROPOUT, (1, 28, 28), np.random.default_rng(0))
    history = fit(model, make_loss(LOSS), make_optimizer(model, {**OPTIMIZER, "lr": lr}), lambda t: lr, stream,
                  epochs=epochs, images_per_epoch=40, batch_size=8, val=list(minibatches(*data(12), 128)), progress=False)
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.rows]


def test_fit_runs_on_each_backend_and_matches_numpy(device, tmp_path, monkeypatch):
    """The train loop itself (stream, tally, validation) on the device: the same history as NumPy's."""
    rows = fit_on_shards(tmp_path / "device")
    use_numpy_as_on(device, monkeypatch)
    host_rows = fit_on_shards(tmp_path / "host")
    for row, host_row in zip(rows, host_rows, strict=True):
        for key, value in host_row.items():
            assert row[key] == pytest.approx(value, rel=TOLERANCE[device], abs=TOLERANCE[device]), key


def test_divergence_is_caught_on_each_backend(device, tmp_path):
    with pytest.raises(Diverged, match=r"became (nan|inf) in epoch 1"):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fit_on_shards(tmp_path, lr=1e12)


def test_a_model_trained_on_each_backend_saves_as_numpy_and_scores_the_same_anywhere(device, tmp_path):
    """save_model writes host arrays from any backend; load_model puts them on the active one."""
    from nnlib import evaluation
    from nnlib.modelfile import META_KEY, load_model, save_model

    model = train_steps(WITHOUT_DROPOUT, steps=5)[0]
    save_model(tmp_path / "model.npz", model, {"seed": 0})
    state = {name: backend.to_numpy(value) for name, value in model.state().items()}  # what the device holds
    saved = load_npz(tmp_path / "model.npz")
    assert set(saved) == {*state, META_KEY}
    for name, value in state.items():  # every parameter and buffer, bit for bit, in its own dtype
        assert saved[name].dtype == value.dtype and np.array_equal(saved[name], value), name
    x, y = data(20)
    loaded, _ = load_model(tmp_path / "model.npz")  # on the device again
    assert all(backend.get_array_module(p) is backend.current() for _, p, _ in loaded.parameters())
    on_device = evaluation.run(loaded, make_loss(LOSS), minibatches(x, y, 7))
    backend.use("numpy")
    on_host = evaluation.run(load_model(tmp_path / "model.npz")[0], make_loss(LOSS), minibatches(x, y, 7))
    np.testing.assert_allclose(on_device.logits, on_host.logits, rtol=TOLERANCE[device], atol=TOLERANCE[device])
    assert np.array_equal(on_device.predictions, on_host.predictions)
