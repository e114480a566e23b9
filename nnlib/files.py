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
import math
import errno
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .backend import to_numpy
from .errors import OutputError, ParamsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What an errno means to a user, and what to do about it (for one-line OutputErrors).
_ERRNO_WORDS = {
    errno.ENOSPC: ("disk full", "free disk space"),
    errno.EDQUOT: ("disk quota exceeded", "free disk space"),
    errno.EFBIG: ("file too large", "free disk space or choose another file system"),
    errno.EROFS: ("read-only file system", "choose a writable location"),
    errno.EACCES: ("permission denied", "make it writable or choose another location"),
    errno.EPERM: ("operation not permitted", "make it writable or choose another location"),
    errno.EISDIR: ("is a directory", "give a file name, not a folder"),
    errno.ENOTDIR: ("a parent is not a folder", "choose another location"),
    errno.ENOENT: ("cannot create a file there", "choose another location"),
    errno.EIO: ("input/output error", "check the disk"),
}
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def os_error_line(path, err: OSError) -> str:
    """One line naming ``path``, what the errno means (disk full, read-only, is a directory) and what to do."""
    meaning, remedy = _ERRNO_WORDS.get(err.errno, (err.strerror or type(err).__name__, "choose another location"))
    detail = f" [{err.strerror}]" if err.strerror and err.strerror.lower() != meaning else ""
    return f"cannot write {path}: {meaning}{detail}: {remedy}"


def check_destination(path, make_parents: bool = True) -> None:
    """Raise :class:`OutputError` unless ``path`` can become a regular file by a rename.

    Refused: an existing directory, a device, FIFO or socket, a write-protected file (no write bit:
    its owner protected it; a symlink is fine, the rename replaces the link), a parent that is not a folder, and, with ``make_parents=False``, a
    missing parent folder (never created silently).
    """
    path = Path(path)
    try:
        st = os.lstat(path)  # a symlink (a DVC cache link) is replaced by the rename, never written through
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise OutputError(os_error_line(path, err)) from None
    if st is not None and not stat.S_ISLNK(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"cannot write {path}: is a directory: give a file name, not a folder")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"cannot write {path}: not a regular file (a device, FIFO or socket): "
                              "give the path of an ordinary file")
        if not st.st_mode & 0o222:
            raise OutputError(f"cannot write {path}: the file is read-only: make it writable (chmod u+w) or remove it")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"cannot write {path}: {folder} is not a folder: choose another location")
            break
    if not parent.is_dir() and not make_parents:
        raise OutputError(f"cannot write {path}: no such folder {parent}/: create it first or choose another location")


def check_user_output(path, inputs=()) -> None:
    """Check an output path that a user named on the command line, before any work is done.

    Refused with :class:`~nnlib.errors.ParamsError` (exit 2): a path that resolves to one of ``inputs``
    (the file would be lost), a device, FIFO or socket. Then :func:`check_destination`: a directory,
    a read-only file, or a missing parent folder outside the working directory (never created
    silently; inside it, as in ``--show seen/grid.png``, it is) is an OutputError.
    """
    path = Path(path)
    for source in map(Path, inputs):
        same = path.resolve() == source.resolve()
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(path, source)
        if same:
            raise ParamsError(f"{path} is the input {source}: writing there would destroy it; choose another output file")
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ParamsError(f"{path} is not a regular file (a device, FIFO or socket): give the path of an ordinary file")
    check_destination(path, make_parents=Path.cwd().resolve() in path.resolve().parents)


def _temp_beside(destination: Path, make_parents: bool = True) -> Path:
    """An empty ``.<name>.<random>.tmp`` file beside ``destination``, after :func:`check_destination`.

    Its folder is created when missing; an OSError becomes one :class:`OutputError` naming ``destination``.
    """
    check_destination(destination, make_parents)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
        os.close(fd)
    except OSError as err:
        raise OutputError(os_error_line(destination, err)) from None
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path, make_parents: bool = True):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file: either the old one or the complete new one. The
    destination is checked first (:func:`check_destination`); an OSError of the file system (disk
    full, read-only, is a directory) becomes one :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = _temp_beside(path, make_parents)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if err.errno in _DISK_ERRNOS or err.filename in (str(tmp), str(path)):
            raise OutputError(os_error_line(path, err)) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
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
    """Read every array of an ``.npz`` into memory, refusing pickled objects.

    Every member's header is checked against the member's size first (:func:`npz_sizes`), so a
    small file that declares a huge array is refused before anything is allocated.
    """
    with np.load(path, allow_pickle=False) as archive:
        npz_sizes(archive.zip)
        return {name: archive[name] for name in archive.files}


def npy_header(fp) -> tuple[tuple, np.dtype]:
    """The (shape, dtype) that an ``.npy`` stream's header declares; the stream is left after the header."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return tuple(shape), dtype


def npz_sizes(archive: zipfile.ZipFile) -> dict[str, tuple[tuple, np.dtype, int]]:
    """Each member of an ``.npz`` (name without ``.npy``) -> (shape, dtype, bytes of data it declares).

    Only the headers are read. Raises ValueError when a header declares more data than the member's
    uncompressed size (a small archive claiming a huge array, which reading would allocate).
    """
    out = {}
    for info in archive.infolist():
        with archive.open(info) as member:
            shape, dtype = npy_header(member)
        nbytes = math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and nbytes > info.file_size:
            raise ValueError(f"member {info.filename} declares an array of shape {shape[:8]} ({nbytes:,} bytes) "
                             f"but holds {info.file_size:,} bytes")
        out[info.filename.removesuffix(".npy")] = (shape, dtype, nbytes)
    return out


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
    renamed into place (so a stage's outputs always belong to one run). Every destination is checked
    when it is named and again before the first rename (:func:`check_destination`); the previous
    files are kept aside until the last rename succeeded, and put back if any rename fails, so the
    outputs are all new or all old. On any error the temporary files are removed. An ``OSError``
    while writing or renaming becomes one :class:`~nnlib.errors.OutputError` naming the path.
    """

    def __init__(self):
        self._pending: list[tuple[Path, Path]] = []  # (temporary, destination)

    def path(self, destination) -> Path:
        """A temporary path beside ``destination``, renamed onto it when the set commits."""
        destination = Path(destination)
        tmp = _temp_beside(destination)
        self._pending.append((tmp, destination))
        return tmp

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self._commit()
        else:
            self._discard()
            if isinstance(error, OSError):
                where = next((dest for tmp, dest in self._pending if str(tmp) == error.filename), error.filename or "an output")
                raise OutputError(os_error_line(where, error)) from None

    def _commit(self) -> None:
        mode = 0o666 & ~_umask()
        moved: list[tuple[Path, Path | None]] = []  # (destination, its previous file kept aside, or None)
        current = None
        try:
            for tmp, destination in self._pending:
                check_destination(destination)
                os.chmod(tmp, mode)
            for tmp, destination in self._pending:
                current = destination
                aside = None
                if os.path.lexists(destination):
                    aside = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.old.tmp")
                    try:
                        os.link(destination, aside, follow_symlinks=False)  # the old file stays in place meanwhile
                    except OSError:
                        os.rename(destination, aside)
                moved.append((destination, aside))
                os.replace(tmp, destination)
        except BaseException as err:
            self._roll_back(moved)
            self._discard()
            if isinstance(err, OSError):
                raise OutputError(os_error_line(current or err.filename, err)) from None
            raise
        for _, aside in moved:
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.unlink(aside)

    def _roll_back(self, moved) -> None:
        """Put every previous file back where it was (a destination that had none is removed)."""
        done = {tmp for tmp, _ in self._pending if not tmp.exists()}
        renamed = {destination for tmp, destination in self._pending if tmp in done}
        for destination, aside in reversed(moved):
            with contextlib.suppress(OSError):
                if aside is not None:
                    os.replace(aside, destination)
                    if os.path.lexists(aside):  # a hard link to the destination itself: rename did nothing
                        os.unlink(aside)
                elif destination in renamed:
                    os.unlink(destination)

    def _discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
