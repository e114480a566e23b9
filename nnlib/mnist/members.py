"""The committee pipeline (``committee/dvc.yaml``, docs/committee.md): where its files live, its params
file, and where each member's shards come from.

``committee/params.yaml``::

    seed: 0               # the robustness suite's corruptions draw from it (as params.yaml's seed)
    evaluate: {...}       # params.yaml's evaluate section, for the committee's evaluation
    members:              # in order; each member is a params.yaml of its own: seed, preset, prepare, train
      a: {seed: 10, preset: cnn}
      b: {seed: 11, preset: cnn, prepare: {augment: {photo_p: 0.0}}}

Member ``NAME`` works in ``committee/members/NAME/``, laid out as the repository root is for the main
pipeline: ``params.yaml`` (members.NAME as written, put there by the member's settings stage),
``data/shards/``, ``models/model.npz`` and ``metrics/``; the main train stage runs there unchanged. Its
settings are validated by params.yaml's own schema and presets (:mod:`nnlib.mnist.config`), and a bad
value is one line naming ``committee/params.yaml``, the member and the key (exit code 2).

A member whose seed and prepare params are those of the main pipeline's ``data/shards`` (its manifest
records them) shares them: its shard folder holds hard links to the same files (no copy, no second
build; the same bytes, so the same DVC cache entries). Any other member builds its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from nnlib.errors import ERRORS, InputError, ParamsError, check_own_nnlib, did_you_mean, run_stage
from nnlib.files import atomic_dir
from nnlib.mnist.config.params import PARAMS_FILE, SEED, load, short_repr, validate
from nnlib.mnist.config.schema import EVALUATE
from nnlib.mnist.data.stream import read_manifest
from nnlib.mnist.paths import SHARDS

COMMITTEE = Path("committee")  # the pipeline's folder: dvc.yaml, params.yaml, dvc.lock
PARAMS = COMMITTEE / "params.yaml"
MEMBERS = COMMITTEE / "members"  # one folder a member
MODEL = COMMITTEE / "models" / "committee.npz"  # the committee stage: every member in one model file
TOP_LEVEL_KEYS = ("seed", "evaluate", "members")
MEMBER_KEYS = ("seed", "preset", "prepare", "train")
MIN_MEMBERS, MAX_MEMBERS = 2, 64  # what a committee file holds (nnlib.committee, nnlib.modelfile; a test checks)
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")  # a member's name is its folder's


# What restores a committee stage's outputs after a failed run under DVC (committee/params.yaml, which holds the
# change to fix, is left as it is): nnlib.errors' own hint names the main pipeline's files.
RESTORE_HINT = (" [dvc deleted this stage's outputs before it ran; back to the last commit's outputs: git checkout HEAD -- "
                f"{COMMITTEE}/dvc.lock {MEMBERS} {COMMITTEE}/metrics && dvc checkout {COMMITTEE}/dvc.yaml]")


def run_committee_stage(main) -> None:
    """:func:`nnlib.errors.run_stage` for a committee stage script: under DVC, its one error line ends with
    :data:`RESTORE_HINT`."""
    under_dvc = os.environ.pop("DVC_STAGE", None)  # run_stage's hint would name dvc.lock and metrics/

    def stage():
        check_own_nnlib(main.__code__.co_filename)  # as run_stage does for the script itself
        try:
            return main()
        except ERRORS as err:
            if under_dvc:
                raise type(err)(f"{err}{RESTORE_HINT}") from None
            raise

    run_stage(stage)


def member_dir(name: str) -> Path:
    """``committee/members/NAME``: the member's params.yaml, data/shards, models/ and metrics/."""
    return MEMBERS / name


def name_argument(argv=None) -> str:
    """The one argument of a member's stage script: the member's name (ParamsError otherwise)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        raise ParamsError(f"give one member's name (a key of members in {PARAMS}), e.g. python stages/member_train.py a; "
                          f"got {len(args)} arguments")
    return args[0]


@contextlib.contextmanager
def relabelled(prefix: str, files=(PARAMS_FILE,)):
    """Inside: a ParamsError whose message starts with one of ``files`` (``params.yaml: ...``) is raised again
    starting with ``prefix`` instead (``committee/params.yaml: members.b: ...``), the rest as it was."""
    try:
        yield
    except ParamsError as err:
        text = str(err)
        for name in map(str, files):
            if text.startswith(f"{name}: "):
                raise ParamsError(f"{prefix}: {text[len(name) + 2:]}") from None
        raise


@dataclass(frozen=True)
class CommitteeParams:
    """``committee/params.yaml``, checked: the evaluation's seed and section, and each member's settings as written."""

    seed: int
    evaluate: dict
    members: dict  # name -> {"seed": ..., "preset": ..., "prepare": {...}, "train": {...}} (only what is set)

    def member(self, name: str) -> dict:
        """Member ``name``'s settings; a ParamsError naming the members there are when there is none."""
        if name not in self.members:
            raise ParamsError(f"{PARAMS} has no member {name!r}: its members are {list(self.members)}"
                              f"{did_you_mean(name, self.members)}")
        return self.members[name]


def load_committee(path=PARAMS) -> CommitteeParams:
    """Read and check committee/params.yaml: its keys, ``seed``, ``evaluate`` and the members' names and keys.

    Each member's values are checked where they are used, by params.yaml's schema (:func:`member_document`
    is the file they are read from). Every problem is a ParamsError of one line naming the key.
    """
    data = load(path)  # missing, not YAML, a duplicate key: one line naming the file
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key {unknown[0]!r}: allowed keys are {list(TOP_LEVEL_KEYS)}"
                          f"{did_you_mean(unknown[0], TOP_LEVEL_KEYS)}")
    with relabelled(str(path)):
        seed = SEED.validate("seed", SEED.default if data.get("seed") is None else data["seed"])
        evaluate = validate(data.get("evaluate"), EVALUATE, "evaluate")
    members = data.get("members")
    if not isinstance(members, dict) or not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
        raise ParamsError(f"{path}: members must be a mapping of {MIN_MEMBERS} to {MAX_MEMBERS} members "
                          f"(name: {{seed: 10, preset: cnn, ...}}), got {short_repr(members)}")
    for name, settings in members.items():
        check_member(path, name, settings)
    return CommitteeParams(seed, evaluate, members)


def check_member(path, name, settings) -> None:
    """The shape of one member's entry (its values are checked by params.yaml's schema, :func:`member_document`)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ParamsError(f"{path}: member name {short_repr(name)} must be 1 to 32 lowercase letters, digits, '-' or '_', "
                          "starting with a letter or digit (it names the member's folder)")
    if not isinstance(settings, dict):
        raise ParamsError(f"{path}: members.{name} must be a mapping like {{seed: 10, preset: cnn}}, got {short_repr(settings)}")
    unknown = sorted(set(settings) - set(MEMBER_KEYS), key=str)
    if unknown:
        raise ParamsError(f"{path}: unknown key members.{name}.{unknown[0]}: a member has {list(MEMBER_KEYS)}"
                          f"{did_you_mean(unknown[0], MEMBER_KEYS)} (the committee's evaluate section is top-level)")
    if settings.get("seed") is None:
        raise ParamsError(f"{path}: members.{name}.seed is missing: give every member a seed of its own (an integer >= 0)")


def member_document(name: str, settings: dict) -> str:
    """The text of ``committee/members/NAME/params.yaml``: the member's settings as written, every section
    present (null: the preset's value, as in params.yaml), which the main pipeline's loaders read."""
    document = {key: settings.get(key) for key in MEMBER_KEYS}
    return (f"# Written by the committee's settings stage from members.{name} of {PARAMS}: edit that file, not this one.\n"
            + yaml.safe_dump(document, sort_keys=False))


def check_document(name: str, settings: dict) -> None:
    """An InputError unless the member's params.yaml holds members.NAME as committee/params.yaml has it now."""
    path = member_dir(name) / PARAMS_FILE
    problem = ("is missing" if not path.is_file() else
               None if path.read_text(encoding="utf-8") == member_document(name, settings) else
               f"is not members.{name} of {PARAMS} as it is now")
    if problem:
        raise InputError(f"{path} {problem}: run the member's settings stage first "
                         f"(dvc repro committee/dvc.yaml:settings@{name}, or python stages/member_settings.py {name})")


@contextlib.contextmanager
def working_in(name: str):
    """Run the block in the member's folder, as the main stages run in the repository root; a ParamsError of
    its params.yaml is told as one of committee/params.yaml's members.NAME, any other error names the member."""
    home, folder = Path.cwd(), member_dir(name)
    os.chdir(folder)
    try:
        with relabelled(f"{PARAMS}: members.{name}"):
            yield
    except ERRORS as err:
        if isinstance(err, ParamsError) and str(err).startswith(f"{PARAMS}: "):
            raise
        raise type(err)(f"member {name} (in {folder}/): {err}") from None
    finally:
        os.chdir(home)


def without_workers(prepare: dict) -> dict:
    """A prepare section as a shard manifest records it: JSON values, ``workers`` left out (it changes no byte)."""
    return json.loads(json.dumps({key: value for key, value in prepare.items() if key != "workers"}))


def differences(mine, theirs, path: str) -> list[str]:
    """The dotted keys whose values differ between two nested mappings (``prepare.augment.photo_p``)."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return [found for key in sorted({*mine, *theirs}, key=str)
                for found in differences(mine.get(key), theirs.get(key), f"{path}.{key}")]
    return [] if mine == theirs else [path]


def own_shards_reason(seed: int, prepare: dict, shards=SHARDS) -> str | None:
    """None when the main pipeline's ``shards`` were built from this seed and these prepare params (their
    manifest says so): the member can share them; else why it builds its own, in a few words."""
    try:
        manifest = read_manifest(shards)
    except InputError:  # missing, or not JSON
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("params"), dict):
        return f"{shards} has no readable manifest.json"
    if manifest.get("seed") != seed:
        return f"seed {seed} differs from the main pipeline's {shards} (seed {manifest.get('seed')})"
    changed = differences(without_workers(prepare), manifest["params"], "prepare")
    if changed:
        more = f" and {len(changed) - 1} more keys" if len(changed) > 1 else ""
        return f"{changed[0]}{more} differ{'' if more else 's'} from the main pipeline's {shards}"
    return None


def link_shards(source: Path, target: Path) -> None:
    """Make ``target`` a shard folder holding the files of ``source`` (hard links; copies across file systems),
    manifest last, swapped in whole (:func:`nnlib.files.atomic_dir`)."""
    manifest = read_manifest(source)
    names = [entry["file"] for entry in [*manifest["train_shards"], manifest["val"], manifest["test"]]]
    with atomic_dir(target) as new:
        for name in [*names, "manifest.json"]:
            try:
                os.link(source / name, new / name)
            except OSError:
                shutil.copy2(source / name, new / name)
