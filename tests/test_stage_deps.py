"""dvc.yaml and committee/dvc.yaml list, for every stage, exactly the nnlib modules its script can import.

A stage depends on single modules (not the whole ``nnlib/`` folder) so that editing, say, a layer
re-runs train and evaluate but not fetch and prepare. This test keeps those lists honest: it follows
every import (top-level and inside functions) from the stage's script (``stages/NAME.py`` for the main
pipeline, the script its ``cmd`` runs for the committee's) through nnlib, statically. A committee stage's
script that imports a main stage's script (``import train``) depends on that script and its modules too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NNLIB = ROOT / "nnlib"


def module_file(dotted: str) -> Path | None:
    """The file of module ``nnlib.<dotted>`` (a module or a package's ``__init__.py``), None if not nnlib's."""
    base = NNLIB.joinpath(*dotted.split(".")) if dotted else NNLIB
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if dotted and candidate.is_file() or not dotted and candidate.name == "__init__.py":
            return candidate
    return None


def dotted_name(path: Path) -> str:
    """``nnlib/mnist/data/shards.py`` -> ``"mnist.data.shards"``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(NNLIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Dotted names under nnlib (``"layers"``, ``"mnist.data.shards"``) of what ``path`` imports anywhere."""
    found = set()
    inside = NNLIB in path.parents
    package = dotted_name(path) if inside else ""
    if inside and path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name[len("nnlib."):] for a in node.names if a.name.startswith("nnlib.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not inside:
                    continue
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            elif node.module == "nnlib" or (node.module or "").startswith("nnlib."):
                base = node.module[len("nnlib."):] if node.module != "nnlib" else ""
            else:
                continue
            found.add(base)
            for alias in node.names:  # from pkg import module
                sub = f"{base}.{alias.name}" if base else alias.name
                if module_file(sub) is not None:
                    found.add(sub)
    return {name for name in found if module_file(name) is not None}


def with_parents(name: str) -> set[str]:
    """A module and every package above it (importing ``a.b.c`` runs ``a`` and ``a.b`` first)."""
    parts = name.split(".") if name else []
    return {".".join(parts[:i]) for i in range(len(parts) + 1)}


def module_closure(script: Path) -> set[str]:
    """Repo-relative paths of every nnlib file reachable from ``script``, ``nnlib/__init__.py`` included."""
    seen, todo = set(), [""] + sorted(imported_modules(script))
    while todo:
        name = todo.pop()
        for module in with_parents(name) - seen:
            seen.add(module)
            todo.extend(imported_modules(module_file(module)))
    found = {module_file(name).relative_to(ROOT).as_posix() for name in seen}
    if "mnist.config.presets" in seen:
        found.add("nnlib/mnist/config/presets")  # the recipe files presets.py reads are data the stage depends on
    return found


def stage_scripts(script: Path) -> set[Path]:
    """``script`` and the stage scripts beside it that it imports (``import train``), theirs too."""
    found = {script}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                sibling = script.parent / f"{alias.name}.py"
                if sibling.is_file() and sibling not in found:
                    found |= stage_scripts(sibling)
    return found


def stage_closure(script: Path) -> set[str]:
    """Repo-relative paths of the stage scripts ``script`` runs and of every nnlib file they reach."""
    scripts = stage_scripts(script)
    return set().union(*(module_closure(path) for path in scripts)) | {path.relative_to(ROOT).as_posix() for path in scripts}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
COMMITTEE = yaml.safe_load((ROOT / "committee" / "dvc.yaml").read_text())
COMMITTEE_STAGES = {name: spec.get("do", spec) for name, spec in COMMITTEE["stages"].items()}  # a foreach's template


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_modules_it_imports(stage):
    deps = {d for d in STAGES[stage]["deps"] if d == "nnlib" or d.startswith("nnlib/")}
    needed = module_closure(ROOT / "stages" / f"{stage}.py")
    assert "nnlib" not in deps, f"dvc.yaml stage {stage}: list nnlib modules one by one, not the folder"
    assert not needed - deps, f"dvc.yaml stage {stage} misses deps {sorted(needed - deps)}"
    assert not deps - needed, f"dvc.yaml stage {stage} lists deps it never imports: {sorted(deps - needed)}"


@pytest.mark.parametrize("stage", sorted(COMMITTEE_STAGES))
def test_committee_stage_depends_on_exactly_the_code_it_runs(stage):
    spec = COMMITTEE_STAGES[stage]
    assert spec["wdir"] == "..", f"committee/dvc.yaml stage {stage}: runs from the repository root, as its cmd says"
    words = spec["cmd"].split()
    assert words[0] == "python" and words[1].startswith("stages/"), spec["cmd"]
    deps = {d for d in spec["deps"] if d.startswith(("nnlib", "stages/"))}
    needed = stage_closure(ROOT / words[1])
    assert not needed - deps, f"committee/dvc.yaml stage {stage} misses deps {sorted(needed - deps)}"
    assert not deps - needed, f"committee/dvc.yaml stage {stage} lists deps it never imports: {sorted(deps - needed)}"


def test_a_committee_member_trains_with_the_main_train_stage():
    assert "stages/train.py" in stage_closure(ROOT / "stages" / "member_train.py")
    assert "stages/evaluate.py" in stage_closure(ROOT / "stages" / "committee_evaluate.py")
    assert stage_closure(ROOT / "stages" / "train.py") == module_closure(ROOT / "stages" / "train.py") | {"stages/train.py"}


def test_committee_paths_are_those_of_nnlib_mnist_members():
    from nnlib.mnist import members, paths  # noqa: PLC0415
    named = set()
    for spec in COMMITTEE_STAGES.values():
        for entry in [*spec.get("deps", []), *spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]:
            named.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    member = members.member_dir("${key}")
    assert {(member / paths.SHARDS).as_posix(), (member / paths.MODEL).as_posix(), (member / "params.yaml").as_posix(),
            (member / paths.TRAIN_METRICS).as_posix(), members.MODEL.as_posix(), members.MEMBERS.as_posix(),
            (members.COMMITTEE / paths.EVAL_METRICS).as_posix(), paths.SHARDS.as_posix(), paths.RAW.as_posix()} <= named
    for path in named - {paths.SHARDS.as_posix(), paths.RAW.as_posix(), paths.DRAWN.as_posix()}:
        assert path.startswith(("nnlib/", "stages/", members.COMMITTEE.as_posix() + "/")), path


def test_closure_follows_imports_inside_functions(tmp_path):
    """The walk must see lazy imports (``from .files import load_npz`` inside a function of data.py)."""
    assert "nnlib/files.py" in module_closure(ROOT / "stages" / "train.py")
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from nnlib.mnist.data.stream import read_idx\n")
    assert module_closure(script) == {"nnlib/__init__.py", "nnlib/mnist/__init__.py", "nnlib/mnist/data/__init__.py",
                                      "nnlib/mnist/data/stream.py", "nnlib/backend.py", "nnlib/errors.py",
                                      "nnlib/files.py"}


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
    from nnlib.mnist import paths  # noqa: PLC0415
    named = dvc_paths()
    for constant in ("RAW", "SHARDS", "MODEL", "INIT", "DRAWN"):
        assert getattr(paths, constant).as_posix() in named, constant
    for path in named:  # every file dvc.yaml names lies where nnlib.mnist.paths says outputs go
        assert path.startswith((paths.RAW.as_posix(), paths.SHARDS.as_posix(), paths.DRAWN.as_posix(), "models/",
                                paths.METRICS.as_posix() + "/")), path
    assert paths.PREVIEW.as_posix() in named and f"{paths.METRICS.as_posix()}/train_log.tsv" in named


def test_the_model_is_a_dvc_artifact():
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    (entry,) = artifacts.values()
    assert entry["path"] == "models/model.npz" and entry["type"] == "model" and entry["desc"]


def test_evaluate_does_not_depend_on_the_optimizer_code():
    """A loss is built without the training loop (nnlib.losses.make_loss): editing an optimizer re-runs train only."""
    needed = module_closure(ROOT / "stages" / "evaluate.py")
    assert not needed & {"nnlib/optim.py", "nnlib/schedules.py", "nnlib/training.py"}, sorted(needed)
