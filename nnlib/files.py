"""Files written atomically, and ``.npz`` archives that are byte-for-byte deterministic.

Every output of the pipeline goes through ``atomic_path`` (a file), ``OutputSet`` (a stage's files,
together) or ``atomic_dir`` (a whole directory): readers (and DVC) see either the old output or the
complete new one, never a half-written one. What a killed run leaves is ``.NAME.<random>.tmp``
beside the output, which ``remove_stale_temporaries`` deletes. Archives are read with
``allow_pickle=False``, so loading a shard or a model never executes code. ``file_sha256`` and
``data_sha256`` are the one SHA-256 helper (hex digests of a file, or of bytes or text).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

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


def data_sha256(data: bytes | str) -> str:
    """Hex SHA-256 of some bytes, or of a text's UTF-8 bytes (what :func:`write_text` writes)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


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


def temporaries(folders, names=("*",)) -> list[Path]:
    """The temporaries beside outputs in ``folders``: every ``.NAME.<random>.tmp``, file or directory.

    ``names`` are the outputs' names (glob patterns; default: any). :func:`atomic_path`,
    :class:`OutputSet` and :func:`atomic_dir` name their temporaries so. Sorted; absent folders give none.
    """
    found = set()
    for folder in map(Path, folders):
        if folder.is_dir():
            for name in names:
                found.update(folder.glob(f".{name}.*.tmp"))
    return sorted(found)


def remove_tree(path: Path) -> None:
    """Delete a directory tree, a file or a link, if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folders, names=("*",)) -> list[Path]:
    """Delete the :func:`temporaries` that killed runs (SIGKILL) left in ``folders``; return them.

    Run before a stage writes: a temporary is never data, only the garbage of a run that died before
    renaming it into place (so its disk space counts as free).
    """
    stale = temporaries(folders, names)
    for path in stale:
        remove_tree(path)
    return stale


# --- replacing a whole directory ---------------------------------------------------------------


def _new_temp_dir(target: Path) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` beside ``target`` (its mode from the umask, as for mkdir)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold these signals during the block and deliver them after it (main thread only).

    Python runs signal handlers in the main thread between bytecodes; swapping the handlers (rather
    than masking the signal, which other threads might still receive) holds them whichever thread
    the kernel picks.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in caught:
            signal.raise_signal(signum)


def _swap_in(new_dir: Path, target: Path) -> None:
    """Rename ``new_dir`` to ``target``; the old ``target``, if any, is renamed aside, then deleted.

    Both renames happen or neither (signals are held between them). If the deletion is cut short,
    the aside ``.<name>.<random>.old.tmp`` is a stale temporary for :func:`remove_stale_temporaries`.
    """
    aside = new_dir.with_name(new_dir.name.removesuffix(".tmp") + ".old.tmp")
    with signals_deferred():
        had_old = target.exists() or target.is_symlink()
        if had_old:
            os.rename(target, aside)
        os.rename(new_dir, target)
    if had_old:
        remove_tree(aside)


@contextlib.contextmanager
def atomic_dir(target) -> Iterator[Path]:
    """Yield a new empty directory beside ``target``; when the block succeeds, swap it in for ``target``.

    The directory analogue of :func:`atomic_path`. Afterwards no temporary directory is left, and
    ``target`` is either untouched (the block raised, including KeyboardInterrupt and SystemExit) or
    the complete new directory; SIGINT and SIGTERM are held during the two renames of the swap.
    """
    target = Path(target)
    new_dir = _new_temp_dir(target)
    try:
        yield new_dir
        _swap_in(new_dir, target)
    finally:
        remove_tree(new_dir)  # already gone after a swap; a partial directory otherwise


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
