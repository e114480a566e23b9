"""The library never imports the application: no module of nnlib/ outside nnlib/mnist/ imports nnlib.mnist.

``nnlib/`` is a general neural-network library; ``nnlib/mnist/`` is the MNIST application built on
it. The rule keeps the library usable (and testable) without MNIST's data, paths and params. The
check walks each module's syntax tree, so imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NNLIB = ROOT / "nnlib"
APPLICATION = "nnlib.mnist"
# ``python -m nnlib`` runs the application's command: nnlib/__main__.py is its entry point, not part of
# the library (``import nnlib`` never runs it, and no library module imports it).
ENTRY_POINTS = {NNLIB / "__main__.py"}


def package_of(path: Path) -> str:
    """The dotted package a module at ``path`` belongs to: ``nnlib/layers.py`` -> ``"nnlib"``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])


def _reaches(module: str) -> bool:
    return module == APPLICATION or module.startswith(APPLICATION + ".")


def violations(source: str, package: str) -> list[tuple[int, str]]:
    """(line, imported name) of every import of ``nnlib.mnist`` in ``source``, a module of ``package``.

    Absolute (``import nnlib.mnist.x``, ``from nnlib.mnist import x``, ``from nnlib import mnist``)
    and relative (``from .mnist import x``, ``from . import mnist``) imports are resolved against
    ``package``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if _reaches(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - (node.level - 1)], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base] if _reaches(base) else [f"{base}.{alias.name}" for alias in node.names
                                                   if _reaches(f"{base}.{alias.name}")]
            found += [(node.lineno, name) for name in names]
    return found


def library_modules() -> list[Path]:
    """Every .py file of nnlib/ outside nnlib/mnist/, but for the command's entry point."""
    return sorted(p for p in NNLIB.rglob("*.py") if NNLIB / "mnist" not in p.parents and p not in ENTRY_POINTS)


def test_the_library_never_imports_the_application():
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in library_modules() for line, name in violations(path.read_text(), package_of(path))]
    assert not found, "the library (nnlib/ outside nnlib/mnist/) must not import nnlib.mnist:\n" + "\n".join(found)


def test_the_library_has_modules_to_check():
    names = {p.name for p in library_modules()}
    assert {"layers.py", "training.py", "evaluation.py"} <= names and "stream.py" not in names


def test_the_checker_finds_every_form_of_import():
    source = "\n".join([
        "import numpy as np",
        "from . import layers",
        "from .backend import current",
        "import nnlib.mnist.data.stream",          # 4
        "from nnlib.mnist.data.stream import x",   # 5
        "from nnlib import mnist",                 # 6
        "from .mnist.paths import MODEL",          # 7
        "from . import mnist as app",              # 8
        "def f():",
        "    from .mnist import summary",          # 10
        "from nnlib import model",
        "from .mnistic import y",
    ])
    assert [line for line, _ in violations(source, "nnlib")] == [4, 5, 6, 7, 8, 10]
    assert violations("from ..mnist import paths\n", "nnlib.sub") == [(1, "nnlib.mnist")]
    assert violations("from .data import stream\n", "nnlib.mnist") == [(1, "nnlib.mnist.data")]
