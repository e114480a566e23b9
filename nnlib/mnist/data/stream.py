"""Data on disk and in batches: IDX files, shards, and seeded minibatch iterators.

Pixels stay uint8 on disk and in memory; they become float32 in [0, 1] with shape (N, 1, 28, 28)
once, per batch, in the iterators here.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from nnlib.backend import current, to_device
from nnlib.errors import InputError

IDX_DTYPES = {0x08: np.uint8}
NUM_CLASSES = 10


def parse_idx(raw: bytes, name: str, remedy: str = "") -> np.ndarray:
    """The bytes of an IDX file of unsigned bytes (MNIST's format) -> uint8 array of its declared shape.

    Raises InputError naming ``name`` (followed by ``remedy``) when the header is not IDX of unsigned
    bytes or the size does not match it.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(f"{name}: not an IDX file of unsigned bytes{remedy}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{name}: truncated IDX header{remedy}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(dims):
        raise InputError(f"{name}: IDX file truncated or corrupt (its size does not match its header {dims}){remedy}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path, made_by: str = "the fetch stage (dvc repro -s fetch)") -> np.ndarray:
    """Read an uncompressed IDX file (MNIST's format) into a uint8 array of its declared shape.

    Raises InputError naming the file and the stage that makes it when it is missing or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by {made_by}")
    return parse_idx(path.read_bytes(), str(path), f": re-run {made_by}")


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
    from nnlib.files import load_npz  # noqa: PLC0415 - only shard readers need it

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


def _fail(path, problem: str, made_by: str):
    raise InputError(f"{path} {problem}: re-run {made_by}")


def _check_entry(shard_dir: Path, entry, name: str, image_shape: tuple, made_by: str) -> int:
    """Check one manifest entry and its file: size, count, shape, dtype and label histogram.

    Reads the archive's directory, the array headers and the labels only, never the images.
    Returns the entry's image count.
    """
    manifest = shard_dir / "manifest.json"
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("count"), int)
            and entry["count"] > 0 and isinstance(entry.get("label_histogram"), list) and len(entry["label_histogram"]) == NUM_CLASSES):
        _fail(manifest, f"has a malformed {name} entry ({entry!r:.80})", made_by)
    path = shard_dir / entry["file"]
    if not path.is_file():
        _fail(path, "is missing", made_by)
    try:
        with zipfile.ZipFile(path) as archive:
            x_shape, x_dtype = _npy_header(archive, "x.npy")
            labels = np.lib.format.read_array(archive.open("y.npy"), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - a shard that does not open is corrupt, whatever the reason
        _fail(path, f"is truncated or corrupt ({err or type(err).__name__})", made_by)
    count = entry["count"]
    if x_dtype != np.uint8 or x_shape != (count, *image_shape):
        _fail(path, f"holds images {x_shape} {x_dtype}, the manifest says ({count}, {', '.join(map(str, image_shape))}) uint8", made_by)
    if labels.dtype != np.uint8 or labels.shape != (count,):
        _fail(path, f"holds labels {labels.shape} {labels.dtype}, the manifest says ({count},) uint8", made_by)
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        _fail(path, f"holds label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}", made_by)
    if np.bincount(labels, minlength=NUM_CLASSES).tolist() != entry["label_histogram"]:
        _fail(path, "has labels that do not match the manifest's label histogram", made_by)
    return count


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one ``.npy`` member of an open ``.npz``, from its header alone."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    return shape, dtype


def check_shards(shard_dir, manifest: dict, made_by: str = "the prepare stage (dvc repro -s prepare)") -> None:
    """Check the manifest's schema and every shard it lists against it, before training starts.

    Each shard's size on disk, image count, shape, dtype and label histogram must match the manifest
    (a truncated file, a swapped shard or a relabelled one is found here, not at epoch 7). Raises one
    :class:`~nnlib.errors.InputError` naming the file and ``made_by``.
    """
    shard_dir = Path(shard_dir)
    path = shard_dir / "manifest.json"
    if not isinstance(manifest, dict):
        _fail(path, f"must be a JSON object, got {type(manifest).__name__}", made_by)
    shape = manifest.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
        _fail(path, f"has a malformed image_shape ({shape!r})", made_by)
    shards = manifest.get("train_shards")
    if not isinstance(shards, list) or not shards:
        _fail(path, "lists no train shards", made_by)
    split = manifest.get("train_split_size")
    if not isinstance(split, int) or split < 1:
        _fail(path, f"has train_split_size {split!r}, expected an integer >= 1", made_by)
    total = sum(_check_entry(shard_dir, entry, f"train_shards[{i}]", tuple(shape), made_by) for i, entry in enumerate(shards))
    if total < split:
        _fail(path, f"lists {total} train images, fewer than its train_split_size {split}", made_by)
    for name in ("val", "test"):
        _check_entry(shard_dir, manifest.get(name), name, tuple(shape), made_by)


class ShardStream:
    """An endless, shuffled stream of training images read from shards with bounded memory.

    Each pass over the data visits the shards in a new random order, loads ``window`` shards at a
    time, and shuffles the images within that window. Only the current window is in memory, so the
    peak footprint is ``window * shard_size`` images however many augmented copies exist.
    ``epoch(n, batch_size)`` yields the next ``n`` images of the stream as batches: epochs continue
    where the last one stopped, so successive epochs see fresh distorted copies until the data wrap.

    ``counts`` (images per shard, from the manifest) lets :meth:`fast_forward` skip ahead without
    reading the shards it skips: the random draws depend only on the counts. ``position`` is the
    number of images taken so far, so ``ShardStream(same args).fast_forward(position)`` resumes the
    very same stream (a checkpoint stores just that number).
    """

    def __init__(self, shard_dir, files: list[str], rng: np.random.Generator, window: int = 3, counts: list[int] | None = None):
        self.shard_dir, self.files, self.rng, self.window = Path(shard_dir), list(files), rng, window
        if not self.files:
            raise InputError(f"{self.shard_dir}: no train shards to stream: re-run the prepare stage (dvc repro -s prepare)")
        self.counts = list(counts) if counts is not None else [self._count(f) for f in self.files]
        self.position = 0
        self._windows = self._window_stream()
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (x, y, order still to take)
        self._buffer: tuple[np.ndarray, np.ndarray] | None = None  # reused window storage, grown on demand

    def _count(self, file: str) -> int:
        """Images in one shard, from its ``x.npy`` header alone (the images are not read)."""
        path = self.shard_dir / file
        try:
            with zipfile.ZipFile(path) as archive:
                return _npy_header(archive, "x.npy")[0][0]
        except Exception as err:  # noqa: BLE001 - any failure to read means a missing or corrupt shard
            raise InputError(f"{path} is missing or corrupt ({err}): re-run the prepare stage (dvc repro -s prepare)") from None

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

    def _window_stream(self):
        """Endless generator of (shard indices, order): one window of shards and the shuffled order to read it in.

        Nothing is read here; ``_take`` loads a window when it needs its images and gathers each batch
        through ``order``.
        """
        while True:
            order = self.rng.permutation(len(self.files))
            for start in range(0, len(order), self.window):
                indices = order[start : start + self.window]
                yield indices, self.rng.permutation(sum(self.counts[i] for i in indices))

    def _next_window(self, skip: int = 0) -> None:
        indices, order = next(self._windows)  # overwrites the buffer: earlier batches are copies already
        x, y = self._read_window(indices)
        self._pending = (x, y, order[skip:])

    def fast_forward(self, images: int) -> None:
        """Advance the stream by ``images`` images, reading only the window where it lands."""
        if self._pending is not None:
            raise RuntimeError("fast_forward works only on a fresh stream")
        self.position += images
        while images > 0:
            indices, order = next(self._windows)
            if images < len(order):
                x, y = self._read_window(indices)
                self._pending = (x, y, order[images:])
                return
            images -= len(order)

    def _take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` images of the stream (fewer never: the stream is endless), as new arrays."""
        parts_x, parts_y, need = [], [], count
        while need:
            if self._pending is None or len(self._pending[2]) == 0:
                self._next_window()
            x, y, order = self._pending
            idx = order[:need]
            parts_x.append(x[idx])
            parts_y.append(y[idx])
            self._pending = (x, y, order[need:])
            need -= len(idx)
        self.position += count
        if len(parts_x) == 1:
            return parts_x[0], parts_y[0]
        return np.concatenate(parts_x), np.concatenate(parts_y)

    def epoch(self, images: int, batch_size: int):
        """Yield ``(x, y)`` float32/int64 batches covering the next ``images`` images of the stream."""
        for start in range(0, images, batch_size):
            x, y = self._take(min(batch_size, images - start))
            yield to_batch(x), to_device(y.astype(np.int64))
