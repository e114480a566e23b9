"""``python -m nnlib ...`` runs the ``nnlib`` command (see :mod:`nnlib.mnist.cli`)."""
from nnlib.mnist.cli import main

main()
