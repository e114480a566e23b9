"""The committee pipeline (committee/dvc.yaml, docs/committee.md) end to end: a committee of two tiny members
under `dvc repro committee/dvc.yaml` in a temporary git repository, and its params file's checks.

Member ``same`` has the main pipeline's seed and prepare params, so it shares data/shards; member ``other``
(seed 1) builds its own. Each trains one epoch of the tiny MLP of tests/test_pipeline.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnlib.committee import MIN_MEMBERS, Committee
from nnlib.errors import ParamsError
from nnlib.files import file_sha256
from nnlib.mnist import members
from nnlib.mnist.config.schema import effective_params
from nnlib.model import Sequential
from nnlib.modelfile import MAX_MEMBERS, load_model

from test_pipeline import EVAL_KEYS, PIPELINE_FILES, ROOT, TINY, copy_files, run, strict_json, write_params

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]
PNGS = ["curves", "confusion", "misclassified", "first_layer", "reliability", "features", "robustness"]
MEMBER_TRAIN = {**TINY["train"], "epochs": 1}
COMMITTEE = {"seed": 0, "evaluate": TINY["evaluate"], "members": {
    "same": {"seed": 0, "preset": "cnn", "prepare": TINY["prepare"], "train": MEMBER_TRAIN},  # the main pipeline's shards
    "other": {"seed": 1, "preset": "cnn", "prepare": TINY["prepare"], "train": MEMBER_TRAIN},
}}


def write_committee(repo: Path, document: dict) -> None:
    (repo / members.PARAMS).write_text(yaml.safe_dump(document, sort_keys=False))


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    """The committee stages a `dvc repro` ran (``train@other``, ``evaluate``)."""
    prefix = "Running stage 'committee/dvc.yaml:"
    return {line[len(prefix):].rstrip("':") for line in result.stdout.splitlines() if line.startswith(prefix)}


def lock_md5(repo: Path, path: str) -> str:
    """The md5 that dvc.lock or committee/dvc.lock records for the output ``path``."""
    for lock in ("dvc.lock", "committee/dvc.lock"):
        for stage in yaml.safe_load((repo / lock).read_text())["stages"].values():
            for out in stage.get("outs", []):
                if out["path"] == path:
                    return out["md5"]
    raise AssertionError(f"no lock records {path}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A git + DVC repository holding the pipelines, after one `dvc repro committee/dvc.yaml`; and that run."""
    repo = tmp_path_factory.mktemp("committee")
    copy_files(repo, [*PIPELINE_FILES, "committee/dvc.yaml", "committee/.gitignore"])
    write_params(repo, {})
    write_committee(repo, COMMITTEE)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipelines"], repo)
    return repo, run([*DVC, "repro", "committee/dvc.yaml"], repo)


def test_repro_trains_each_member_where_its_shards_are(repo):
    repo, first = repo
    assert stages_run(first) == {f"{stage}@{name}" for stage in ("settings", "prepare", "train") for name in ("same", "other")} \
        | {"committee", "evaluate"}, first.stdout
    assert "prepare@same: shares the main pipeline's data/shards" in first.stdout
    assert "prepare@other: own shards (seed 1 differs from the main pipeline's data/shards (seed 0))" in first.stdout
    same, other = members.member_dir("same"), members.member_dir("other")
    shards = {path: lock_md5(repo, path) for path in ("data/shards", f"{same}/data/shards", f"{other}/data/shards")}
    assert shards["data/shards"] == shards[f"{same}/data/shards"] != shards[f"{other}/data/shards"], shards  # one cache entry
    assert (repo / same / "data/shards/val.npz").read_bytes() == (repo / "data/shards/val.npz").read_bytes()
    for folder in (same, other):
        assert strict_json(repo / folder / "metrics/train.json")["epochs"] == 1
        assert yaml.safe_load((repo / folder / "params.yaml").read_text())["train"]["epochs"] == 1
    assert load_model(repo / same / "models/model.npz")[1]["seed"] == 0
    assert load_model(repo / other / "models/model.npz")[1]["seed"] == 1


def test_the_committee_file_holds_both_members_and_is_evaluated_like_a_model(repo):
    repo, _ = repo
    model, meta = load_model(repo / members.MODEL)
    assert isinstance(model, Committee) and len(model) == 2 and meta["names"] == ["same", "other"]
    assert [m["seed"] for m in meta["members"]] == [0, 1]
    for index, name in enumerate(("same", "other")):  # member i is that member's model, weights and all
        own, _ = load_model(repo / members.member_dir(name) / "models/model.npz")
        theirs = model.members[index].state()
        assert own.state().keys() == theirs.keys() and all(np.array_equal(v, theirs[k]) for k, v in own.state().items())
    scores = strict_json(repo / "committee/metrics/eval.json")
    assert set(EVAL_KEYS) <= set(scores) and scores["loss_fn"] == "cross_entropy"
    assert scores["loss"] == pytest.approx(scores["nll"], rel=1e-6)  # a committee is scored by its nll
    assert 0.3 < scores["accuracy"] <= 1 and 0 < scores["robust_accuracy"] <= 1, scores
    assert scores["errors"] == round((1 - scores["accuracy"]) * scores["images"])
    details = strict_json(repo / "committee/metrics/eval_details.json")
    assert details["model_sha256"] == file_sha256(repo / members.MODEL) and details["robustness"]["images"] == 500
    rows = (repo / "committee/metrics/predictions.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 10_001
    for name in PNGS:
        assert (repo / "committee/metrics/plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (repo / "committee/metrics/train_log.tsv").read_bytes() == (repo / "committee/members/same/metrics/train_log.tsv").read_bytes()
    shown = run([*DVC, "metrics", "show"], repo).stdout  # the committee's metrics beside the main pipeline's
    assert "committee/metrics/eval.json" in shown and "committee/members/other/metrics/train.json" in shown, shown
    drawn = json.loads(run([*DVC, "plots", "show", "--json"], repo).stdout)["data"]
    assert len(drawn["committee-confusion"][0]["content"]["data"]["values"]) == 10_000
    assert {f"committee/metrics/plots/{name}.png" for name in PNGS} <= set(drawn)


def test_nnlib_info_and_predict_take_the_committee_file(repo):
    repo, _ = repo
    described = json.loads(run([sys.executable, "-m", "nnlib", "info", str(members.MODEL), "--json",
                                "--eval-json", "committee/metrics/eval.json"], repo).stdout)
    assert len(described["members"]) == 2, described
    text = run([sys.executable, "-m", "nnlib", "info", str(members.MODEL), "--eval-json", "committee/metrics/eval.json"], repo).stdout
    assert "members: 2" in text and "test accuracy" in text, text
    with np.load(repo / "data/shards/test.npz") as test:
        np.save(repo / "digits.npy", test["x"][:3])
    answers = [json.loads(line) for line in run([sys.executable, "-m", "nnlib", "predict", "digits.npy", "--model",
                                                 str(members.MODEL), "--json"], repo).stdout.splitlines()]
    model, _ = load_model(repo / members.MODEL)
    with np.load(repo / "data/shards/test.npz") as test:
        expected = model.probabilities(test["x"][:3, None].astype(np.float32) / 255)
    assert [a["digit"] for a in answers] == list(expected.argmax(axis=1))
    assert np.allclose([a["probabilities"] for a in answers], expected, atol=1e-6)


def test_a_second_repro_does_nothing(repo):
    repo, _ = repo
    again = run([*DVC, "repro", "committee/dvc.yaml"], repo)
    assert stages_run(again) == set() and "Data and pipelines are up to date" in again.stdout, again.stdout
    assert "Data and pipelines are up to date" in run([*DVC, "repro"], repo / "committee").stdout  # from inside committee/
    assert json.loads(run([*DVC, "status", "committee/dvc.yaml", "--json"], repo).stdout) == {}


def test_a_members_train_change_retrains_that_member_alone(repo):
    repo, _ = repo
    same_model = (repo / "committee/members/same/models/model.npz").read_bytes()
    other_model = (repo / "committee/members/other/models/model.npz").read_bytes()
    changed = json.loads(json.dumps(COMMITTEE))
    changed["members"]["other"]["train"]["optimizer"] = {"lr": 0.01}
    write_committee(repo, changed)
    result = run([*DVC, "repro", "committee/dvc.yaml"], repo)
    assert stages_run(result) == {"settings@other", "train@other", "committee", "evaluate"}, result.stdout  # not its shards
    assert (repo / "committee/members/same/models/model.npz").read_bytes() == same_model
    assert (repo / "committee/members/other/models/model.npz").read_bytes() != other_model


BAD = [
    ({"prepare": {"augment": {"photo_p": 5}}}, "committee/params.yaml: members.other: prepare.augment.photo_p must be a number in [0, 1], got 5"),
    ({"train": {"epochs": 0}}, "committee/params.yaml: members.other: train.epochs must be an integer >= 1, got 0"),
    ({"preset": "cnn_small"}, "committee/params.yaml: members.other: preset must be one of"),
    ({"trian": {}}, "committee/params.yaml: unknown key members.other.trian: a member has"),
    ({"prepare": {"augment": {"elastic_alpha": 8.0, "elastic_sigma": 0.0}}}, "members.other: prepare.augment.elastic_alpha > 0 needs"),
]


@pytest.mark.parametrize("change, message", BAD, ids=["range", "epochs", "preset", "unknown", "across-keys"])
def test_a_bad_member_param_is_one_line_and_touches_nothing(repo, change, message):
    repo, _ = repo
    written = (repo / "committee/members/other/params.yaml").read_bytes()
    bad = json.loads(json.dumps(COMMITTEE))
    bad["members"]["other"].update(change)
    write_committee(repo, bad)
    try:
        result = run([sys.executable, "stages/member_settings.py", "other"], repo, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert message in lines[0], lines[0]
        assert (repo / "committee/members/other/params.yaml").read_bytes() == written
        assert not list((repo / "committee/members/other").glob(".*.tmp"))
    finally:
        write_committee(repo, COMMITTEE)


def test_a_bad_member_param_stops_dvc_repro_before_any_training(repo):
    repo, _ = repo
    bad = json.loads(json.dumps(COMMITTEE))
    bad["members"]["other"]["seed"] = -1
    write_committee(repo, bad)
    try:
        result = run([*DVC, "repro", "committee/dvc.yaml"], repo, check=False)
        assert result.returncode != 0 and "train@other" not in stages_run(result), result.stdout
        line = next(line for line in (result.stderr + result.stdout).splitlines() if line.startswith("error: "))
        assert line.startswith("error: committee/params.yaml: members.other: seed must be an integer >= 0, got -1"), line
        assert line.endswith("git checkout HEAD -- committee/dvc.lock committee/members committee/metrics && "
                             "dvc checkout committee/dvc.yaml]"), line  # the committee's outputs, not the main pipeline's
    finally:
        write_committee(repo, COMMITTEE)
        run([*DVC, "repro", "committee/dvc.yaml"], repo)  # back as it was; the member's settings are written again


@pytest.mark.parametrize("argv, code, words", [
    ([], 2, "give one member's name"),
    (["nobody"], 2, "has no member 'nobody'"),
])
def test_a_member_stage_names_its_member(repo, argv, code, words):
    repo, _ = repo
    for script in ("member_settings", "member_prepare", "member_train"):
        result = run([sys.executable, f"stages/{script}.py", *argv], repo, check=False)
        assert result.returncode == code and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- committee/params.yaml and the choice of shards, without DVC ---------------------------------------------


def test_the_member_counts_are_those_a_committee_file_holds():
    assert (members.MIN_MEMBERS, members.MAX_MEMBERS) == (MIN_MEMBERS, MAX_MEMBERS)


def test_the_shipped_committee_params_are_valid(tmp_path):
    committee = members.load_committee(ROOT / members.PARAMS)
    assert len(committee.members) == 6 and len({m["seed"] for m in committee.members.values()}) == 6
    assert committee.seed == 0 and committee.evaluate["robust_images"] == 0
    photo, shapes, elastic, shear = set(), set(), set(), set()
    for name, settings in committee.members.items():  # each member as its settings stage checks it, network built
        path = tmp_path / f"{name}.yaml"
        path.write_text(members.member_document(name, settings))
        effective = effective_params(path)
        network = Sequential.from_specs(effective["train"]["model"], (1, 28, 28), np.random.default_rng(0), num_classes=10)
        photo.add(effective["prepare"]["augment"]["photo_p"])
        elastic.add(effective["prepare"]["augment"]["elastic_alpha"])
        shear.add(effective["prepare"]["augment"]["shear"])
        shapes.add(tuple(f"{spec['type']}{spec.get('k', '')}" for spec in network.specs()))
    # every member keeps the robust augmentation; they differ in seed, distortion and architecture
    assert photo == {0.2} and elastic == {8.0, 34.0} and shear == {0.0, 15.0} and len(shapes) == 2


@pytest.mark.parametrize("document, words", [
    ({"members": {"a": {"seed": 1}}}, "members must be a mapping of 2 to 64 members"),
    ({"members": {"a": {"seed": 1}, "B c": {"seed": 2}}}, "member name 'B c' must be 1 to 32 lowercase"),
    ({"members": {"a": {"seed": 1}, "b": {"preset": "cnn"}}}, "members.b.seed is missing"),
    ({"members": {"a": {"seed": 1}, "b": [1]}}, "members.b must be a mapping"),
    ({"member": {}}, "unknown top-level key 'member'"),
    ({"evaluate": {"robust_images": -1}, "members": {}}, "committee/params.yaml: evaluate.robust_images must be"),
    ({"seed": "x", "members": {}}, "committee/params.yaml: seed must be an integer"),
])
def test_committee_params_are_checked_in_one_line(tmp_path, monkeypatch, document, words):
    path = tmp_path / "committee" / "params.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(document))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as caught:
        members.load_committee()
    assert words in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_own_shards_reason_names_the_first_difference(tmp_path):
    params = {"val_size": 200, "max_train": 300, "shard_size": 200, "workers": 2, "augment": {"copies": 1, "photo_p": 0.0}}
    assert members.own_shards_reason(0, params, tmp_path) == f"{tmp_path} has no readable manifest.json"
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 0, "params": members.without_workers(params)}))
    assert members.own_shards_reason(0, {**params, "workers": 7}, tmp_path) is None  # workers changes no byte
    assert members.own_shards_reason(3, params, tmp_path).startswith("seed 3 differs")
    photo = {**params, "augment": {"copies": 1, "photo_p": 0.2}}
    assert members.own_shards_reason(0, photo, tmp_path) == f"prepare.augment.photo_p differs from the main pipeline's {tmp_path}"
    more = {**photo, "val_size": 100}
    assert members.own_shards_reason(0, more, tmp_path).startswith("prepare.augment.photo_p and 1 more keys differ")
