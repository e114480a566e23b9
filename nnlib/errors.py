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

import os
import signal
import sys
import threading
import time
from typing import Callable


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


class Terminated(BaseException):
    """SIGTERM, raised wherever the stage is, so it unwinds like Ctrl-C and temporary files are removed.

    A BaseException, so no ``except Exception`` stops it on the way out.
    """


EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
ERRORS = (ParamsError, InputError, OutputError, Diverged)


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

    An error becomes one line on stderr (``error: <message>``), never a traceback. SIGTERM unwinds the
    run like Ctrl-C (so temporary files are cleaned up on the way out; exit 143), and so does the death
    of the parent process: a stage never runs on as an orphan after `dvc repro` itself was killed.
    """
    signal.signal(signal.SIGTERM, _terminate)
    exit_with_parent(os.getppid())
    try:
        code = main()
    except ERRORS as err:
        print(f"{prefix}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    sys.exit(code or 0)
