"""``python -m nnlib ...`` runs the ``nnlib`` command (see :mod:`nnlib.cli`)."""
from .cli import main

main()
