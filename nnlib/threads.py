"""How many BLAS threads a run uses: ``auto`` shares the cores with the nnlib runs already going.

OpenBLAS's threads spin while they wait for a core. Two trainings with 2 threads each on 2 cores
therefore spin against each other and each runs many times slower than alone; with 1 thread each
they together beat one run alone. ``auto`` (the default of ``train.threads``, ``evaluate.threads``
and ``nnlib predict --threads``) picks the count once, when the run starts, from

* the cores this process may use (:func:`available_cores`, ``os.sched_getaffinity``);
* the nnlib runs already going on this machine for this user: a :class:`Registry` of lock files,
  one per run, each holding the run's PID and thread count under an ``fcntl`` lock, so the entry of
  a run that died (even by SIGKILL) is seen as stale and removed;
* DVC queue workers (``dvc queue start -j N``, which ``bench/study.py -j N`` uses), counted from
  ``/proc``, and ``$NNLIB_JOBS`` (runs started together by a script that knows how many).

:func:`choose` is the rule, a pure function. An explicit number always wins (0 = every core this
process may use). The count is fixed for the whole run: results are byte-identical for a given count,
and may differ between counts (BLAS sums in another order), so a run under ``auto`` is reproduced
exactly by pinning the count it recorded (see docs/threads.md).

A server or a one-shot prediction shares the cores without announcing itself (a run that is mostly
idle, or over in a second, should not halve the trainings that start meanwhile)::

    with threads.limit("auto", register=False) as choice:   # choice.threads, choice.describe()
        ...
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

AUTO = "auto"
REGISTRY_ENV = "NNLIB_REGISTRY"  # folder of the registry (default: a private per-user temp folder)
JOBS_ENV = "NNLIB_JOBS"  # runs started together (bench/study.py -j N sets it for its queue)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose(cores: int, claims: Sequence[int] = (), peers: int = 0) -> int:
    """Threads for a run starting now: its fair share of ``cores``, and no more than the cores left free.

    ``claims``: the thread counts of the runs already going (from the registry); ``peers``: runs
    known to be going at the same time whose counts are unknown (queue workers, ``$NNLIB_JOBS``).
    The fair share divides the cores by all runs, this one included; what the registered runs already
    hold is not given twice. Never less than 1.
    """
    cores = max(1, int(cores))
    others = max(len(claims), int(peers))
    fair = cores // (others + 1)
    free = cores - sum(max(1, int(c)) for c in claims)
    return max(1, min(fair, free))


# --- the registry ---------------------------------------------------------------------------------

def default_folder() -> Path:
    """``$NNLIB_REGISTRY``, else ``$XDG_RUNTIME_DIR/nnlib-runs``, else ``<tmp>/nnlib-<uid>/runs``.

    Per user and per machine, not per repository: the cores are the machine's, and DVC's queued
    experiments run in temporary copies of the repository (``.dvc/tmp/exps/...``) that would each have
    their own ``.dvc/tmp``.
    """
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "nnlib-runs"
    return Path(tempfile.gettempdir()) / f"nnlib-{os.getuid()}" / "runs"


def _private_folder(folder: Path) -> bool:
    """Create ``folder`` (mode 0700) and check that it is a real folder of this user; False if not usable."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return False
    import stat  # noqa: PLC0415
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


@dataclass
class Entry:
    """One registered run: this process holds the lock of ``path`` until :meth:`close`."""

    path: Path
    fd: int

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Registry:
    """Lock files of the nnlib runs going now, one per run: ``<pid>-<token>.run`` holding JSON.

    A run holds an exclusive ``flock`` on its file for its whole life; the kernel drops the lock when
    the process dies, however it dies. A reader that can take the lock knows the owner is gone and
    removes the file. A file is written under a temporary name and renamed once locked, so a reader
    never sees an unlocked live entry. Choosing and registering happen under a folder-wide lock, so
    runs started at the same instant see each other.
    """

    SUFFIX = ".run"

    def __init__(self, folder: Path | str | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()
        self.usable = _private_folder(self.folder)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder-wide lock (choose, then register, without another run in between)."""
        fd = -1
        if self.usable:
            try:
                fd = os.open(self.folder / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
                deadline = time.monotonic() + 5  # held for milliseconds; a holder stopped (Ctrl-Z) must not block us
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            break  # go on unlocked: at worst two runs starting together miss each other
                        time.sleep(0.005)
            except OSError:  # best effort: never stop a run for the registry's sake
                pass
        try:
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # closing drops the lock

    def running(self, exclude: Entry | None = None) -> list[dict]:
        """The live entries (JSON of each), stale ones removed on the way."""
        if not self.usable:
            return []
        found = []
        for path in sorted(self.folder.glob("*" + self.SUFFIX)):
            if exclude is not None and path == exclude.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        continue
                    try:  # locked: its owner lives
                        found.append(json.loads(os.read(fd, 65536).decode()))
                    except (ValueError, UnicodeDecodeError):
                        pass
                    continue
                try:  # we got the lock: the owner is dead; remove the file if it is still this one
                    if os.fstat(fd).st_ino == os.stat(path).st_ino:
                        path.unlink()
                except OSError:
                    pass
            finally:
                os.close(fd)
        self._sweep_temporaries()
        return found

    def _sweep_temporaries(self, age: float = 60.0) -> None:
        """Remove ``.tmp`` files of runs that died between creating and renaming their entry (older than ``age`` s)."""
        for path in self.folder.glob("*.tmp"):
            try:
                if time.time() - path.stat().st_mtime < age:
                    continue
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
            except OSError:
                pass
            finally:
                os.close(fd)

    def register(self, threads: int, kind: str = "train") -> Entry | None:
        """Add this process's run; returns the entry to close at its end (None when the folder is unusable).

        Stale entries are swept first, so that a run with a fixed count cleans up after killed runs too.
        """
        if not self.usable:
            return None
        self.running()
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        temporary = self.folder / f"{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            record = {"pid": os.getpid(), "threads": int(threads), "kind": kind, "cwd": os.getcwd(), "started": time.time()}
            os.write(fd, json.dumps(record).encode())
            path = self.folder / f"{name}{self.SUFFIX}"
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return Entry(path, fd)


# --- DVC queue workers ----------------------------------------------------------------------------

def _is_queue_worker(argv: list[str]) -> bool:
    """``dvc exp queue-worker dvc-exp-<hash>-<n>@localhost``, as ``dvc queue start`` spawns them."""
    return "queue-worker" in argv and any(a.startswith("dvc-exp-") for a in argv)


def _argv(pid: str | int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])  # the field after the state
    except (OSError, ValueError, IndexError):
        return 0


def queue_workers() -> tuple[int, bool]:
    """(DVC queue workers running on this machine, whether this process runs under one). (0, False) without /proc."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0, False
    workers = {int(p) for p in pids if _is_queue_worker(_argv(p))}
    pid, seen = os.getpid(), set()
    while pid > 1 and pid not in seen:
        if pid in workers:
            return len(workers), True
        seen.add(pid)
        pid = _parent(pid)
    return len(workers), False


def _jobs_from_env() -> int:
    try:
        return max(0, int(os.environ.get(JOBS_ENV, "0")))
    except ValueError:
        return 0


# --- the choice, applied --------------------------------------------------------------------------

@dataclass
class Choice:
    """The count a run uses, and why (for logs and metrics/timing.json)."""

    threads: int
    setting: object  # "auto" or the number asked for
    cores: int
    running: int = 0  # other registered runs seen
    peers: int = 0  # other runs known from the queue or $NNLIB_JOBS

    def describe(self, what: str = "BLAS thread") -> str:
        count = f"{self.threads} {what}{'' if self.threads == 1 else 's'}"
        if self.setting == AUTO:
            return f"{count} (auto: {self.cores} cores, {self.running} other nnlib runs registered, {self.peers} parallel peers)"
        return f"{count} (set to {self.setting})"


def resolve(setting, registry: Registry | None = None, cores: int | None = None) -> Choice:
    """The count for ``setting`` ('auto', or an int; 0 = every core this process may use), registering nothing."""
    cores = available_cores() if cores is None else cores
    if setting != AUTO:
        return Choice(int(setting) or cores, setting, cores)
    claims = [int(r.get("threads", 1)) for r in (registry.running() if registry else [])]
    workers, inside = queue_workers()
    peers = max(workers - (1 if inside else 0), _jobs_from_env() - 1, 0)
    return Choice(choose(cores, claims, peers), setting, cores, running=len(claims), peers=peers)


@contextmanager
def limit(setting, *, kind: str = "train", register: bool = True, registry: Registry | None = None,
          blas: int | None = None) -> Iterator[Choice]:
    """Pin NumPy's BLAS to the count of ``setting`` for the block; with ``register``, announce the run to others.

    ``blas`` pins BLAS to that count instead, while the run still claims ``choice.threads`` cores: a
    :class:`~nnlib.parallel.DataParallel` training runs its workers on ``choice.threads`` threads with
    ``blas=1``.

    Choosing and registering happen under the registry's lock; the entry is removed when the block ends
    (and ignored by others as soon as the process dies).
    """
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - a dependency, imported where used

    registry = registry or Registry()
    entry = None
    with registry.exclusive():
        choice = resolve(setting, registry)
        if register:
            try:
                entry = registry.register(choice.threads, kind)
            except OSError as err:  # a full disk or a vanished folder: run unannounced rather than not at all
                print(f"nnlib: could not register this run in {registry.folder} ({err}); other runs will not see it",
                      file=sys.stderr)
    try:
        with threadpool_limits(limits=choice.threads if blas is None else blas, user_api="blas"):
            yield choice
    finally:
        if entry is not None:
            entry.close()
