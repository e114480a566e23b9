"""dvc.yaml lists, for every stage, exactly the nnlib modules its script can import.

A stage depends on single modules (not the whole ``nnlib/`` folder) so that editing, say, a layer
re-runs train and evaluate but not fetch and prepare. This test keeps those lists honest: it follows
every import (top-level and inside functions) from ``stages/NAME.py`` through nnlib, statically.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NNLIB = ROOT / "nnlib"


def imported_modules(path: Path) -> set[str]:
    """Names of the nnlib modules (``"layers"``, ...) that ``path`` imports anywhere in its code."""
    found = set()
    in_package = path.parent == NNLIB
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nnlib.")}
        elif isinstance(node, ast.ImportFrom):
            relative = node.level == 1 and in_package
            if (relative and node.module is None) or (node.level == 0 and node.module == "nnlib"):
                found |= {a.name for a in node.names if (NNLIB / f"{a.name}.py").exists()}  # from . import x
            elif relative:
                found.add(node.module.split(".")[0])  # from .x import y
            elif node.level == 0 and node.module and node.module.startswith("nnlib."):
                found.add(node.module.split(".")[1])  # from nnlib.x import y
    return found


def module_closure(script: Path) -> set[str]:
    """Repo-relative paths of every nnlib file reachable from ``script``, ``nnlib/__init__.py`` included."""
    seen, todo = set(), list(imported_modules(script))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(NNLIB / f"{name}.py"))
    found = {"nnlib/__init__.py"} | {f"nnlib/{name}.py" for name in seen}
    if "presets" in seen:
        found.add("nnlib/presets")  # the recipe files nnlib/presets.py reads are data the stage depends on
    return found


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_modules_it_imports(stage):
    deps = {d for d in STAGES[stage]["deps"] if d == "nnlib" or d.startswith("nnlib/")}
    needed = module_closure(ROOT / "stages" / f"{stage}.py")
    assert "nnlib" not in deps, f"dvc.yaml stage {stage}: list nnlib modules one by one, not the folder"
    assert not needed - deps, f"dvc.yaml stage {stage} misses deps {sorted(needed - deps)}"
    assert not deps - needed, f"dvc.yaml stage {stage} lists deps it never imports: {sorted(deps - needed)}"


def test_closure_follows_imports_inside_functions(tmp_path):
    """The walk must see lazy imports (``from .files import load_npz`` inside a function of data.py)."""
    assert "nnlib/files.py" in module_closure(ROOT / "stages" / "train.py")
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from nnlib.data import read_idx\n")
    assert module_closure(script) == {"nnlib/__init__.py", "nnlib/data.py", "nnlib/backend.py",
                                      "nnlib/errors.py", "nnlib/files.py"}


def dvc_paths() -> set[str]:
    """Every data path dvc.yaml names as a stage dep or out (not the code)."""
    found = set()
    for stage in STAGES.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            if not path.startswith(("nnlib", "stages/")):
                found.add(path)
    return found


def test_dvc_yaml_and_nnlib_paths_name_the_same_files():
    from nnlib import paths  # noqa: PLC0415
    named = dvc_paths()
    for constant in ("RAW", "SHARDS", "MODEL", "INIT"):
        assert getattr(paths, constant).as_posix() in named, constant
    for path in named:  # every file dvc.yaml names lies where nnlib.paths says outputs go
        assert path.startswith((paths.RAW.as_posix(), paths.SHARDS.as_posix(), "models/", paths.METRICS.as_posix() + "/")), path
    assert paths.PREVIEW.as_posix() in named and f"{paths.METRICS.as_posix()}/train_log.tsv" in named


def test_the_model_is_a_dvc_artifact():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    (entry,) = artifacts.values()
    assert entry["path"] == "models/model.npz" and entry["type"] == "model" and entry["desc"]
