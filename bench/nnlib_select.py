"""Which nnlib a benchmark imports: this checkout's, or another one given by ``--nnlib-root DIR``.

Each bench script calls :func:`select_nnlib` before it imports nnlib, so the flag is read ahead of
argparse (it decides what gets imported). This is how before/after runs compare two checkouts.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nnlib_root(argv) -> str:
    """The DIR of ``--nnlib-root DIR`` (or ``--nnlib-root=DIR``) in argv; this checkout by default."""
    for i, arg in enumerate(argv):
        if arg == "--nnlib-root" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--nnlib-root="):
            return arg.split("=", 1)[1]
    return str(REPO)


def select_nnlib(argv=None) -> None:
    """Put the chosen nnlib first on sys.path."""
    sys.path.insert(0, nnlib_root(sys.argv[1:] if argv is None else argv))
