"""Presets: named recipes (augmentation, network, training) in ``nnlib/mnist/config/presets/<name>.yaml``.

A preset file holds only what its recipe changes, in the shape of params.yaml's sections. The
effective params of a stage are, key by key, the first that is set of:

1. ``params.yaml`` (a key set to ``null`` there means "not set");
2. the preset named by ``params.yaml``'s ``preset`` key;
3. the schema's default (:mod:`nnlib.mnist.config.schema`).

So a hand edit of params.yaml always wins, ``dvc exp run -S preset=NAME`` switches every value the
user did not set, and no file is ever composed or overwritten behind the user's back.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from nnlib.errors import ParamsError, did_you_mean

PRESETS_DIR = Path(__file__).parent / "presets"


def names() -> list[str]:
    """Every preset's name, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load(name: str) -> dict:
    """The sections a preset sets (``{"prepare": {...}, "train": {...}}``); ParamsError for an unknown name."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise ParamsError(f"params.yaml: preset must be one of {names()}, got {name!r}{did_you_mean(name, names())}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must be a mapping of sections (prepare, train, evaluate)")
    return data


def overlay(base, override):
    """``override`` on top of ``base``, recursively for mappings; ``None`` in ``override`` keeps ``base``.

    Lists (the layer list) are replaced whole, never merged element by element.
    """
    if override is None:
        return base
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = overlay(base.get(key), value)
        return out
    return override
