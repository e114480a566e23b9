"""examples/learn.ipynb runs top to bottom (nbclient, the dev extra) within 2 minutes, on a copy of the
repository layout (data/raw fetched there, a small models/model.npz), so that it neither reads nor
writes this checkout's data/ and models/."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from nnlib.model import Sequential
from nnlib.modelfile import save_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = (ROOT / ".." / "shared" / "mnist").resolve()
NOTEBOOK = ROOT / "examples" / "learn.ipynb"


def test_the_notebook_runs_within_two_minutes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    (tmp_path / "examples").mkdir()
    shutil.copy2(NOTEBOOK, tmp_path / "examples" / NOTEBOOK.name)
    if SHARED_MNIST.is_dir() and "MNIST_MIRROR" not in os.environ:
        monkeypatch.setenv("MNIST_MIRROR", str(SHARED_MNIST))  # the notebook fetches into its own data/raw
    monkeypatch.setenv("LEARN_SECONDS", "15")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    model = Sequential.from_specs([{"type": "flatten"}, {"type": "dense", "out": 32}, {"type": "relu"}, {"type": "dense", "out": 10}],
                                  (1, 28, 28), np.random.default_rng(0), num_classes=10)
    (tmp_path / "models").mkdir()
    save_model(tmp_path / "models" / "model.npz", model, {"seed": 7, "epoch": 3})  # as the pipeline leaves it
    notebook = nbformat.read(tmp_path / "examples" / NOTEBOOK.name, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "examples")}}).execute()
    assert time.perf_counter() - start < 120
    text = "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "test accuracy" in text and "relative error" in text and "<-- check this" not in text, text
    assert "models/model.npz: 25,450 parameters, seed 7, epoch 3; test accuracy" in text  # the last cell loaded it
    images = sum("image/png" in o.get("data", {}) for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert images >= 3, "curves, predictions, first-layer weights"
