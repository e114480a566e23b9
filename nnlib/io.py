"""Models saved as arrays + JSON in one ``.npz`` (never pickle), and loaded back.

The archive holds every parameter and buffer under its name, plus a JSON description under
``__meta__``: format version, input shape, layer specs, and free metadata (e.g. the training params).
Loading reads it with ``allow_pickle=False`` and rebuilds the model from the specs: it never
executes code from the file.
"""
from __future__ import annotations

import json

import numpy as np

from .files import load_npz, save_npz
from .model import Sequential

META_KEY = "__meta__"
FORMAT_VERSION = 1


def save_model(path, model, metadata: dict | None = None) -> None:
    """Save a :class:`~nnlib.model.Sequential` as its arrays plus a JSON description.

    The JSON (stored as a string array under ``__meta__``) holds the format version, the input
    shape, the layer specs and any ``metadata`` given (e.g. the params it was trained with).
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "input_shape": list(model.input_shape),
        "layers": model.specs(),
        "metadata": metadata or {},
    }
    arrays = dict(model.state())
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    save_npz(path, arrays)


def load_model(path):
    """Rebuild a model saved by :func:`save_model`. Returns ``(model, metadata)``."""
    arrays = load_npz(path)
    if META_KEY not in arrays:
        raise ValueError(f"{path} is not an nnlib model: it has no {META_KEY} entry")
    meta = json.loads(str(arrays.pop(META_KEY)))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model format {meta.get('format_version')}, this nnlib reads {FORMAT_VERSION}")
    model = Sequential.from_specs(meta["layers"], tuple(meta["input_shape"]), np.random.default_rng(0))
    model.load_state(arrays)
    return model.eval(), meta["metadata"]
