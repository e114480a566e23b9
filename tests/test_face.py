"""``nnlib``'s face: every name of ``__all__`` resolves, lazily, so ``import nnlib`` alone imports no submodule."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnlib

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter that imports this checkout's nnlib; return its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.parametrize("name", nnlib.__all__)
def test_every_name_of_the_face_is_the_object_of_its_module(name):
    module = importlib.import_module(f"nnlib.{nnlib._MODULE_OF[name]}")
    assert getattr(nnlib, name) is getattr(module, name)


def test_the_face_is_listed_and_unknown_names_still_fail():
    assert len(set(nnlib.__all__)) == len(nnlib.__all__)
    assert set(nnlib.__all__) <= set(dir(nnlib))
    with pytest.raises(AttributeError, match="no attribute 'Dense2D'"):
        nnlib.Dense2D  # noqa: B018
    from nnlib import files  # a submodule still imports as one: the face does not shadow it
    assert files.__name__ == "nnlib.files"


def test_import_nnlib_alone_imports_no_submodule():
    loaded = python("import sys, nnlib\n"
                    "print(nnlib.__file__)\n"
                    "print(sorted(m for m in sys.modules if m.startswith('nnlib.')))\n"
                    "nnlib.Dense\n"
                    "print(sorted(m for m in sys.modules if m.startswith('nnlib.')))").splitlines()
    assert loaded[0] == str(ROOT / "nnlib" / "__init__.py")
    assert loaded[1] == "[]"
    after = eval(loaded[2])  # noqa: S307 - our own subprocess's list of names
    assert "nnlib.layers" in after and not any(m.startswith(("nnlib.mnist", "nnlib.training")) for m in after)


def docstring_example(doc: str) -> str:
    """The code block (after ``::``) of a docstring, dedented."""
    block = doc.split("::\n\n", 1)[1].split("\n\n")
    code = []
    for part in block:
        if part.strip() and not part.startswith("    "):
            break
        code.append(part)
    return textwrap.dedent("\n\n".join(code))


def test_the_example_of_the_docstring_trains_a_network_with_the_face_alone():
    """nnlib's docstring shows a training loop; run it: the loss falls from chance's (ln 10 = 2.3)."""
    namespace: dict = {}
    exec(docstring_example(nnlib.__doc__), namespace)  # noqa: S102 - our own docstring
    assert namespace["step"] == 19 and namespace["loss"] < 2.0
