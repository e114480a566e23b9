"""Files: atomic writes, deterministic ``.npz`` archives, and models saved as arrays + JSON.

Nothing here pickles or unpickles: archives are read with ``allow_pickle=False``, so loading a
model or a shard never executes code.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .backend import to_numpy

META_KEY = "__meta__"
FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file: either the old one or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    """Write JSON (indented, keys in insertion order, trailing newline) atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_npz(path, arrays: dict) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically and byte-for-byte deterministically.

    ``numpy.savez`` stamps each member with the current time; here every member gets a fixed
    timestamp, so the same arrays always give the same bytes (and the same DVC hash).
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(to_numpy(array)), allow_pickle=False)


def load_npz(path) -> dict:
    """Read every array of an ``.npz`` into memory, refusing pickled objects."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


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
    from .model import Sequential  # noqa: PLC0415 - avoids an import cycle

    arrays = load_npz(path)
    if META_KEY not in arrays:
        raise ValueError(f"{path} is not an nnlib model: it has no {META_KEY} entry")
    meta = json.loads(str(arrays.pop(META_KEY)))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model format {meta.get('format_version')}, this nnlib reads {FORMAT_VERSION}")
    model = Sequential.from_specs(meta["layers"], tuple(meta["input_shape"]), np.random.default_rng(0))
    model.load_state(arrays)
    return model.eval(), meta["metadata"]
