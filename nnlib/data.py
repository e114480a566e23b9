"""Data on disk and in batches: IDX files, shards, and seeded minibatch iterators.

Pixels stay uint8 on disk and in memory; they become float32 in [0, 1] with shape (N, 1, 28, 28)
once, per batch, in the iterators here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import current, to_device
from .errors import InputError

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


def to_batch(x_uint8):
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1], on the active backend."""
    x = current().asarray(x_uint8).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    return x.reshape(x.shape[0], 1, *x.shape[1:])


def minibatches(x, y, batch_size: int, rng: np.random.Generator | None = None):
    """Yield ``(x_batch, y_batch)`` over in-memory arrays, shuffled by ``rng`` (in order if None).

    x: (N, 28, 28) uint8, y: (N,) -> float32 (B, 1, 28, 28), int64 (B,). The last batch may be short.
    """
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield to_batch(x[idx]), to_device(y[idx].astype(np.int64))


def load_shard(path, made_by: str = "the prepare stage (dvc repro -s prepare)") -> tuple[np.ndarray, np.ndarray]:
    """Read one shard ``.npz`` -> (x uint8 (N, 28, 28), y uint8 (N,)), with clear errors."""
    from .files import load_npz  # noqa: PLC0415 - only shard readers need it

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by {made_by}")
    try:
        arrays = load_npz(path)
        x, y = arrays["x"], arrays["y"]
    except Exception as err:  # noqa: BLE001 - any failure to read means a corrupt shard
        raise InputError(f"{path} is corrupt ({err}): re-run {made_by}") from None
    if x.dtype != np.uint8 or x.ndim != 3 or y.shape != (len(x),):
        raise InputError(f"{path} has unexpected arrays x{x.shape}/{x.dtype}, y{y.shape}: re-run {made_by}")
    return x, y


def read_manifest(shard_dir, made_by: str = "the prepare stage (dvc repro -s prepare)") -> dict:
    """Read ``manifest.json`` of a shard directory (written last by prepare, so it marks completeness)."""
    import json  # noqa: PLC0415

    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by {made_by}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is corrupt ({err}): re-run {made_by}") from None


class ShardStream:
    """An endless, shuffled stream of training images read from shards with bounded memory.

    Each pass over the data visits the shards in a new random order, loads ``window`` shards at a
    time, and shuffles the images within that window. Only the current window is in memory, so the
    peak footprint is ``window * shard_size`` images however many augmented copies exist.
    ``epoch(n, batch_size)`` yields the next ``n`` images of the stream as batches: epochs continue
    where the last one stopped, so successive epochs see fresh distorted copies until the data wrap.
    """

    def __init__(self, shard_dir, files: list[str], rng: np.random.Generator, window: int = 3):
        self.shard_dir, self.files, self.rng, self.window = Path(shard_dir), list(files), rng, window
        self._chunks = self._chunk_stream()
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (x, y, order still to take)
        self._buffer: tuple[np.ndarray, np.ndarray] | None = None  # reused window storage, grown on demand

    def _read_window(self, shard_indices) -> tuple[np.ndarray, np.ndarray]:
        """Read the given shards one after another into the reusable window buffer.

        Returns views x: (M, 28, 28) uint8 and y: (M,) of the buffer; they stay valid until the next call.
        """
        loaded = [load_shard(self.shard_dir / self.files[i]) for i in shard_indices]
        total = sum(len(x) for x, _ in loaded)
        if self._buffer is None or len(self._buffer[0]) < total:
            x0, y0 = loaded[0]
            self._buffer = (np.empty((total, *x0.shape[1:]), x0.dtype), np.empty(total, y0.dtype))
        buf_x, buf_y, at = *self._buffer, 0
        for x, y in loaded:
            buf_x[at : at + len(x)], buf_y[at : at + len(x)] = x, y
            at += len(x)
        return buf_x[:total], buf_y[:total]

    def _chunk_stream(self):
        """Endless generator of (x, y, order): one window of shards and the shuffled order to read it in.

        The images are not copied into shuffled order here; ``_take`` gathers each batch through ``order``.
        """
        while True:
            order = self.rng.permutation(len(self.files))
            for start in range(0, len(order), self.window):
                x, y = self._read_window(order[start : start + self.window])
                yield x, y, self.rng.permutation(len(x))

    def _take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` images of the stream (fewer never: the stream is endless), as new arrays."""
        parts_x, parts_y, need = [], [], count
        while need:
            if self._pending is None or len(self._pending[2]) == 0:
                self._pending = next(self._chunks)  # overwrites the buffer: earlier parts are copies already
            x, y, order = self._pending
            idx = order[:need]
            parts_x.append(x[idx])
            parts_y.append(y[idx])
            self._pending = (x, y, order[need:])
            need -= len(idx)
        if len(parts_x) == 1:
            return parts_x[0], parts_y[0]
        return np.concatenate(parts_x), np.concatenate(parts_y)

    def epoch(self, images: int, batch_size: int):
        """Yield ``(x, y)`` float32/int64 batches covering the next ``images`` images of the stream."""
        for start in range(0, images, batch_size):
            x, y = self._take(min(batch_size, images - start))
            yield to_batch(x), to_device(y.astype(np.int64))
