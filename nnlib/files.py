"""Files written atomically, and ``.npz`` archives that are byte-for-byte deterministic.

Every output of the pipeline goes through ``atomic_path``: readers (and DVC) see either the old file
or the complete new one, never a half-written one. Archives are read with ``allow_pickle=False``, so
loading a shard or a model never executes code.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .errors import OutputError


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


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (what :func:`write_text` writes)."""
    return hashlib.sha256(text.encode()).hexdigest()


def check_writable(folders) -> None:
    """Create each folder if needed and make sure a file can be created in it; else one OutputError.

    Stages call this before any long work, so a read-only ``metrics/`` is found in a second, not
    after ten minutes of training.
    """
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise OutputError(f"cannot write to {folder}/ ({err.strerror or err}): make it writable, or free disk space") from None


def remove_stale_temporaries(folders) -> list[Path]:
    """Delete ``.*.tmp`` files that a killed run (SIGKILL) left behind in ``folders``; return them."""
    removed = []
    for folder in map(Path, folders):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class OutputSet:
    """A stage's outputs, written to temporary files and renamed into place together at the end.

    ``with OutputSet() as out: save_npz(out.path("models/model.npz"), ...); write_json(out.path(...), ...)``
    writes every file beside its destination; only when the block ends without an error are they all
    renamed into place (so a stage's outputs always belong to one run); on any error the temporary
    files are removed and the previous outputs stay as they were. An ``OSError`` while writing or
    renaming becomes one :class:`~nnlib.errors.OutputError` naming the path.
    """

    def __init__(self):
        self._pending: list[tuple[Path, Path]] = []  # (temporary, destination)

    def path(self, destination) -> Path:
        """A temporary path beside ``destination``, renamed onto it when the set commits."""
        destination = Path(destination)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
            os.close(fd)
        except OSError as err:
            raise OutputError(f"cannot write {destination} ({err.strerror or err}): make {destination.parent}/ writable") from None
        self._pending.append((Path(tmp), destination))
        return Path(tmp)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self._commit()
        else:
            self._discard()
            if isinstance(error, OSError):
                raise OutputError(f"cannot write {error.filename or 'an output'} ({error.strerror or error}): "
                                  "make the folder writable, or free disk space") from None

    def _commit(self) -> None:
        mode = 0o666 & ~_umask()
        try:
            for tmp, _ in self._pending:
                os.chmod(tmp, mode)
            for tmp, destination in self._pending:
                os.replace(tmp, destination)
        except OSError as err:
            self._discard()
            raise OutputError(f"cannot write {err.filename} ({err.strerror or err}): make the folder writable, or free disk space") from None

    def _discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
