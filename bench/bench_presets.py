"""The effective ``train`` section of a preset, wherever the presets live.

    from bench_presets import PRESETS, load_preset
    cfg = load_preset("cnn")      # every key of the train section: model, batch_size, optimizer, loss, ...

Presets are moving from Hydra files (``conf/config.yaml`` defaults + ``conf/preset/NAME.yaml`` with
``# @package _global_``) to ``nnlib/mnist/config/presets/*.yaml`` with a loader in ``nnlib/mnist/config/presets.py``. This module
asks ``nnlib.mnist.config.presets`` first and otherwise composes the Hydra files itself (a recursive dict merge,
lists replaced, as Hydra does), so bench scripts work before and after the move; either way every key
the preset leaves out gets the default of ``nnlib.mnist.config.schema.TRAIN``.
"""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["nielsen", "mlp-l2", "mlp-momentum", "mlp-xavier", "mlp", "cnn-small", "cnn"]


def merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``, recursively for dicts; lists and scalars are replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _from_nnlib(name: str) -> dict | None:
    """The preset's sections through ``nnlib.mnist.config.presets`` when that module exists (None otherwise)."""
    try:
        from nnlib.mnist.config import presets  # noqa: PLC0415 - exists once the presets moved into the package
    except ImportError:
        return None
    for attr in ("load_preset", "load"):
        loader = getattr(presets, attr, None)
        if callable(loader):
            config = loader(name)
            if isinstance(config, dict):
                return config
    return None


def _with_defaults(train: dict) -> dict:
    """The train section with every key the preset leaves out at the schema's default."""
    from nnlib.mnist.config.params import validate  # noqa: PLC0415
    from nnlib.mnist.config.schema import TRAIN as TRAIN_SCHEMA  # noqa: PLC0415

    return validate(train, TRAIN_SCHEMA, "train")


def _from_hydra_files(name: str) -> dict:
    """conf/config.yaml merged with conf/preset/NAME.yaml (every section)."""
    base = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    base.pop("defaults", None)
    path = ROOT / "conf" / "preset" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"unknown preset {name!r}: expected one of {known}")
    return merge(base, yaml.safe_load(path.read_text()))


def load_preset(name: str) -> dict:
    """The effective ``train`` section of preset ``name`` (model, batch_size, loss, optimizer, schedule, ...)."""
    config = _from_nnlib(name)
    return _with_defaults((config if config is not None else _from_hydra_files(name)).get("train"))


def load_prepare(name: str) -> dict:
    """The effective ``prepare`` section of preset ``name`` (augmentation, split, shard size), checked."""
    from nnlib.mnist.data.shards import check_params  # noqa: PLC0415

    config = _from_nnlib(name)
    return check_params((config if config is not None else _from_hydra_files(name)).get("prepare"))
