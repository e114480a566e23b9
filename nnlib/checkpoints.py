"""Checkpoints: everything an unfinished training run needs to continue exactly where it stopped.

After every epoch the train stage writes ``models/checkpoints/checkpoint-<epoch>.npz`` atomically and
deletes the older one. The archive (no pickle, like model files) holds arrays

* ``model/<name>``: every parameter and buffer (``Sequential.state()``);
* ``optim/<slot>/<name>``: the optimizer's momentum buffers or Adam moments;
* ``best/<name>``: the best-validation weights so far, when ``train.select: best_val``;
* ``ema/<name>``: the float64 moving average of the weights, when ``train.optimizer.ema`` is on
  (its update count is the meta's ``ema_updates``);

and a JSON ``__meta__``: the epoch, the schedule step, the optimizer's step count, the shard
stream's position (images taken; the stream is rebuilt from the seed and fast-forwarded), the state
of every dropout layer's Generator, the log rows so far, the BLAS thread count (a run resumed under
``threads: auto`` keeps it, so that it ends byte-identical to an uninterrupted run), and the run's
**digest**: a SHA-256 of the seed and train params, the shard manifest, the ``init_from`` model and
the sources of nnlib and the train stage. A checkpoint whose digest differs (other params, other data, other code) is never resumed.

The meta also holds ``content_sha256``, a SHA-256 of every array (name, dtype, shape, bytes) and of
the rest of the meta: a checkpoint edited after it was written (``step: 0``, a weight changed) is
ignored with a line, never resumed.

A run that completes deletes its checkpoints, so resuming only ever continues an unfinished run and
``dvc repro -f`` always trains from scratch. :func:`lock` keeps a second training out of the folder
while one runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .errors import OutputError
from .files import load_npz, save_npz

PATTERN = "checkpoint-*.npz"
META_KEY = "__meta__"
FORMAT = 1


def run_digest(seed: int, train_params: dict, manifest_sha256: str, init_sha256: str | None, sources: list) -> str:
    """SHA-256 naming one training run: params, data, starting weights and code."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"seed": seed, "train": train_params, "manifest": manifest_sha256, "init": init_sha256},
                             sort_keys=True).encode())
    for path in sorted(map(Path, sources)):
        digest.update(path.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def content_sha256(meta: dict, arrays: dict) -> str:
    """SHA-256 of a checkpoint's arrays (names, dtypes, shapes, bytes) and its meta without this hash."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(to_numpy(arrays[name]))
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
    return digest.hexdigest()


def lock(folder):
    """Take an exclusive lock (``fcntl.flock``) on ``folder/.lock``; return the open file that holds it.

    The lock lasts while that file is open, i.e. until the process ends (also by SIGKILL: a killed
    run never leaves the folder locked). A second training in the same folder meanwhile gets one
    :class:`~nnlib.errors.OutputError` line.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".lock", "a+")
    except OSError as err:
        raise OutputError(f"cannot lock {folder}/ ({err.strerror or err}): make it writable") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()[:20] or "another process"
        handle.close()
        raise OutputError(f"another training is running in this folder ({folder}/ is locked by process {holder}): "
                          "wait for it to end, or stop it, before training again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _rng_layers(model) -> dict:
    """The layers that draw random numbers while training (dropout), by index."""
    return {str(i): layer for i, layer in enumerate(model.layers) if hasattr(layer, "rng")}


@dataclass
class Checkpoint:
    """A loaded checkpoint; :meth:`restore` puts its state back into a freshly built run."""

    path: Path
    meta: dict
    arrays: dict

    @property
    def stream_position(self) -> int:
        return self.meta["stream_position"]

    @property
    def threads(self) -> int | None:
        """The BLAS thread count the run used (None in checkpoints written before it was recorded)."""
        return self.meta.get("threads")

    def restore(self, model, optimizer, history) -> None:
        """Copy weights, optimizer state, generator states and the log so far into the run's objects."""
        def part(prefix):
            return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

        model.load_state(part("model/"))
        optimizer.load_state(self.meta["optimizer_steps"], part("optim/"))
        average = part("ema/")
        if optimizer.ema is not None:
            optimizer.ema.load_state(self.meta["ema_updates"], average)
        elif average:
            raise ValueError("it holds a weight average (train.optimizer.ema) that this run does not keep")
        for index, layer in _rng_layers(model).items():
            layer.rng.bit_generator.state = self.meta["rngs"][index]
        history.rows = [dict(row) for row in self.meta["rows"]]
        history.best_epoch = self.meta["best_epoch"]
        best = part("best/")
        history.best_state = best or None


def save(folder, digest: str, *, model, optimizer, history, step: int, stream_position: int,
         threads: int | None = None) -> Path:
    """Write the checkpoint of the epoch just finished (atomically), then delete older ones."""
    folder = Path(folder)
    epoch = len(history.rows)
    steps, optim_arrays = optimizer.state()
    meta = {"format": FORMAT, "digest": digest, "epoch": epoch, "step": step, "optimizer_steps": steps,
            "stream_position": stream_position, "rows": history.rows, "best_epoch": history.best_epoch, "threads": threads,
            "rngs": {index: layer.rng.bit_generator.state for index, layer in _rng_layers(model).items()}}
    arrays = {f"model/{k}": v for k, v in model.state().items()}
    arrays.update({f"optim/{k}": v for k, v in optim_arrays.items()})
    arrays.update({f"best/{k}": v for k, v in (history.best_state or {}).items()})
    if optimizer.ema is not None:
        meta["ema_updates"], average = optimizer.ema.state()
        arrays.update({f"ema/{k}": v for k, v in average.items()})
    meta["content_sha256"] = content_sha256(meta, arrays)
    arrays[META_KEY] = np.array(json.dumps(meta))
    path = folder / f"checkpoint-{epoch:04d}.npz"
    save_npz(path, arrays)
    for old in folder.glob(PATTERN):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def find(folder, digest: str) -> tuple[Checkpoint | None, str]:
    """The latest checkpoint in ``folder`` written by this very run, or None; plus one line saying why.

    A checkpoint that cannot be read or whose digest differs is ignored, never resumed.
    """
    paths = sorted(Path(folder).glob(PATTERN))
    if not paths:
        return None, ""
    path = paths[-1]
    try:
        arrays = load_npz(path)
        meta = json.loads(str(arrays.pop(META_KEY)))
        ok = isinstance(meta, dict) and meta.get("format") == FORMAT
    except Exception as err:  # noqa: BLE001 - a checkpoint that does not read is simply not resumed
        return None, f"train: ignoring {path}: unreadable ({err or type(err).__name__}); starting afresh"
    if not ok or meta.get("digest") != digest:
        return None, f"train: ignoring {path}: written by another run (params, data or code differ); starting afresh"
    if meta.get("content_sha256") != content_sha256(meta, arrays):
        return None, (f"train: ignoring {path}: its contents do not match the hash stored in it (edited or corrupt); "
                      "starting afresh")
    return Checkpoint(path, meta, arrays), f"train: resuming from {path} (epoch {meta['epoch']} done, step {meta['step']})"


def clear(folder) -> None:
    """Delete every checkpoint in ``folder`` (after a completed run)."""
    for path in Path(folder).glob(PATTERN):
        path.unlink(missing_ok=True)
