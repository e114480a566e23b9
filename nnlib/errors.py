"""The errors a user can cause, and the exit code each one gets.

Every stage script and every ``nnlib`` subcommand runs through :func:`run_stage`, which turns these
errors into one line on stderr and the exit code of this table (README, "Errors"):

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      ok
1      a missing or corrupt input file: image, raw file, shard or model (or an output that cannot be written)
2      bad params, flags or layer spec, including an ``init_from`` architecture mismatch
3      training diverged (the loss stopped being finite)
130    interrupted (Ctrl-C)
143    terminated (SIGTERM, or the parent process died: e.g. a killed ``dvc repro``)
=====  ==========================================================================
"""
from __future__ import annotations

import difflib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable


class ParamsError(ValueError):
    """A key of params.yaml, a command-line flag or a layer spec is wrong (exit code 2)."""

    exit_code = 2


class MissingExtra(ParamsError):
    """An optional package is needed and not installed; the message names the extra (exit code 2)."""


class InputError(RuntimeError):
    """An input file is missing or corrupt (exit code 1). The message names the file and its maker."""

    exit_code = 1


class ModelFileError(InputError):
    """A model file is missing, unreadable, malformed or holds non-finite weights (exit code 1)."""


class OutputError(RuntimeError):
    """An output cannot be written (read-only folder, disk full); the message names the path (exit code 1)."""

    exit_code = 1


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (exit code 3)."""

    exit_code = 3


class WorkerFailed(RuntimeError):
    """A data-parallel worker process stopped (killed, out of memory) (exit code 1); a rerun resumes."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM, raised wherever the stage is, so it unwinds like Ctrl-C and temporary files are removed.

    A BaseException, so no ``except Exception`` stops it on the way out.
    """


def did_you_mean(word, choices: Iterable[str]) -> str:
    """``"; did you mean `epochs`?"`` for the choice closest to a mistyped ``word`` (difflib), or ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def dvc_restore_hint(environ=os.environ) -> str:
    """When DVC runs this stage (``DVC_STAGE`` is set), the command that brings back the outputs DVC
    deleted before the stage ran, as the last commit has them: ``dvc.lock`` and the folders of the
    uncached outputs (kept in git) from git, then every cached output from DVC's cache.

    ``params.yaml`` is left as it is: it holds the change to fix.
    """
    if not environ.get("DVC_STAGE"):
        return ""
    folders = set()
    try:
        import yaml  # noqa: PLC0415 - only on this error path

        stages = yaml.safe_load((Path(environ.get("DVC_ROOT", ".")) / "dvc.yaml").read_text())["stages"]
        for spec in stages.values():
            for entry in [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
                if isinstance(entry, dict):
                    (path, options), = entry.items()
                    if isinstance(options, dict) and options.get("cache") is False:
                        folders.add(Path(path).parts[0])
    except Exception:  # noqa: BLE001 - a hint must never hide the error itself
        folders = set()
    return (" [dvc deleted this stage's outputs before it ran; back to the last commit's outputs: "
            f"git checkout HEAD -- {' '.join(['dvc.lock', *sorted(folders)])} && dvc checkout]")


def _tree(folder: Path) -> dict:
    """{relative path: bytes} of a package folder, compiled files left out."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def check_own_nnlib(script: str | Path, package: str | Path | None = None) -> None:
    """Refuse a stage script (``<repo>/stages/*.py``) that imported another repository's nnlib.

    With one virtual environment and two clones, ``python stages/train.py`` imports the nnlib the
    environment was installed from, while DVC tracks the clone's own files: the run would silently
    use code that no dvc.lock records. An identical copy is accepted (``dvc exp run --temp`` and
    ``--queue`` run a copy of the workspace with the environment's nnlib). ``package`` is the
    imported nnlib folder (default: this one).
    """
    script = Path(script).resolve()
    root = script.parent.parent
    own = root / "nnlib"
    if script.parent.name != "stages" or not (own / "__init__.py").is_file():
        return  # not a stage script of a repository (e.g. the nnlib command)
    package = Path(package or Path(__file__).parent).resolve()
    if package == own.resolve() or _tree(package) == _tree(own):
        return
    raise ParamsError(f"stages/{script.name} belongs to {root} but imported nnlib from {package}, a different copy: "
                      f"run it with PYTHONPATH={root}, or pip install -e {root} in this environment")


EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
ERRORS = (ParamsError, InputError, OutputError, Diverged, WorkerFailed)


def _terminate(signum, frame):
    raise Terminated


PARENT_POLL_S = 0.2  # how often an orphan checks for its parent: it ends within this long of the parent's death


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def exit_with_parent(parent: int, interval: float = PARENT_POLL_S) -> None:
    """End this process with SIGTERM soon after process ``parent`` dies (e.g. a killed ``dvc repro``).

    The one way a process of nnlib ends as an orphan: a daemon thread polls ``os.getppid()`` and sends
    this process SIGTERM, so a stage under :func:`run_stage` unwinds like Ctrl-C (temporary files
    removed, exit 143) and a worker process that left SIGTERM at its default ends at once.
    """
    threading.Thread(target=_watch_parent, args=(parent, interval), daemon=True, name="exit-with-parent").start()


def run_stage(main: Callable[[], int | None], prefix: str = "error") -> None:
    """Run ``main`` and exit with its return value (0 if None), or with the code of the error it raised.

    An error becomes one line on stderr (``error: <message>``), never a traceback; under DVC the line
    ends with the command that restores the outputs DVC deleted before the stage ran. SIGTERM unwinds the
    run like Ctrl-C (so temporary files are cleaned up on the way out; exit 143), and so does the death
    of the parent process: a stage never runs on as an orphan after `dvc repro` itself was killed.
    A stage script whose ``nnlib`` is not its own repository's is refused (:func:`check_own_nnlib`).
    """
    signal.signal(signal.SIGTERM, _terminate)
    exit_with_parent(os.getppid())
    try:
        if hasattr(main, "__code__"):
            check_own_nnlib(main.__code__.co_filename)
        code = main()
    except ERRORS as err:
        print(f"{prefix}: {err}{dvc_restore_hint()}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    sys.exit(code or 0)
