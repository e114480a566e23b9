"""Data on disk and in batches: IDX files, shards, and seeded minibatch iterators.

Pixels stay uint8 on disk and in memory; they become float32 in [0, 1] with shape (N, 1, 28, 28)
once, per batch, in the iterators here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .params import InputError

IDX_DTYPES = {0x08: np.uint8}


def read_idx(path, made_by: str = "the fetch stage (dvc repro -s fetch)") -> np.ndarray:
    """Read an uncompressed IDX file (MNIST's format) into a uint8 array of its declared shape.

    Raises InputError naming the file and the stage that makes it when it is missing or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by {made_by}")
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file of unsigned bytes: re-run {made_by}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise InputError(f"{path} is truncated or corrupt (size does not match its header {dims}): re-run {made_by}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
