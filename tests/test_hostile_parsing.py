"""Hostile inputs, parsing: malformed metadata, params, inputs and study files are one line, never a traceback.

See docs/hostile-inputs.md for the table of cases.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hostile import ROOT, assert_one_line, env, nnlib, write_params
from nnlib.files import load_npz, save_npz
from nnlib.model import Sequential
from nnlib.modelfile import META_KEY, save_model

DEEP = 100_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    specs = [{"type": "flatten"}, {"type": "dense", "out": 10}]
    save_model(path, Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(0)),
               {"seed": 0, "epoch": 1, "val_accuracy": 0.5, "train": {"epochs": 1}})
    return path


def edit_meta(model, bad, edit) -> None:
    arrays = load_npz(model)
    arrays[META_KEY] = np.array(edit(str(arrays[META_KEY])))
    save_npz(bad, arrays)


def deep_meta(text: str) -> str:
    meta = json.loads(text)
    meta["metadata"] = {}
    return json.dumps(meta)[:-1] + ', "deep": ' + "[" * DEEP + "]" * DEEP + "}"


@pytest.fixture(scope="module")
def deep_model(model, tmp_path_factory):
    bad = tmp_path_factory.mktemp("deep") / "deep.npz"
    edit_meta(model, bad, deep_meta)
    return bad


@pytest.fixture
def digit(tmp_path):
    path = tmp_path / "digit.npy"
    np.save(path, np.full((28, 28), 128, np.uint8))
    return path


# --- model metadata -----------------------------------------------------------------------------

def test_deep_metadata_in_info_predict_and_export(deep_model, digit, tmp_path):
    assert_one_line(nnlib("info", deep_model), 1, str(deep_model), "nested too deeply")
    assert_one_line(nnlib("predict", digit, "--model", deep_model), 1, "nested too deeply")
    assert_one_line(nnlib("export", deep_model, tmp_path / "m.onnx"), 1, "nested too deeply")


def test_deep_eval_json_in_info(model, tmp_path):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text("[" * DEEP + "]" * DEEP)
    assert_one_line(nnlib("info", model, "--eval-json", eval_json), 1, str(eval_json), "nested too deeply")


@pytest.mark.parametrize("key, value", [("val_accuracy", [1]), ("train", "oops"), ("epoch", {"a": 1}),
                                        ("init_from", "x"), ("seed", None)])
def test_malformed_metadata_values_in_info(model, tmp_path, key, value):
    bad = tmp_path / "odd.npz"

    def edit(text):
        meta = json.loads(text)
        meta["metadata"][key] = value
        return json.dumps(meta)
    edit_meta(model, bad, edit)
    result = nnlib("info", bad)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert b"(not recorded)" in result.stdout


def test_deep_metadata_in_evaluate_and_init_from(built_stage_repo, tmp_path):
    repo = built_stage_repo.copy(tmp_path / "repo")
    good = repo.root / "models" / "model.npz"
    init = repo.root / "models" / "init" / "deep.npz"
    init.parent.mkdir(parents=True, exist_ok=True)
    edit_meta(good, init, deep_meta)
    shutil.copy2(init, good)
    result = repo.stage("evaluate")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: models/model.npz") and "nested too deeply" in result.stderr
    write_params(repo.root, {"train": {"init_from": "models/init/deep.npz"}})
    result = repo.stage("train")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "models/init/deep.npz" in result.stderr and "nested too deeply" in result.stderr


# --- params.yaml --------------------------------------------------------------------------------

PARAMS = {
    "5000 nested [": ("train: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
    "a \\xff byte": (b"seed: 0\ntrain: {epochs: \xff}\n", ["not UTF-8", "0xff"]),
    "keys 1 and foo": ("seed: 0\ntrain:\n  1: 2\n  foo: 3\n", ["unknown key train.1"]),
    "a null key": ("seed: 0\ntrain:\n  null: 2\n  foo: 3\n", ["unknown key train.None"]),
    "an on key": ("seed: 0\non: 1\n", ["unknown top-level key True"]),
    "a yes key": ("seed: 0\ntrain:\n  yes: 1\n  epochs: 2\n", ["unknown key train.True"]),
    "a directory": (None, ["is not a file"]),
}


@pytest.mark.parametrize("case", PARAMS)
def test_malformed_params_are_one_line_with_exit_2(tmp_path, case):
    text, words = PARAMS[case]
    params = tmp_path / "params.yaml"
    if text is None:
        params.mkdir()
    elif isinstance(text, bytes):
        params.write_bytes(text)
    else:
        params.write_text(text)
    assert_one_line(nnlib("params", cwd=tmp_path), 2, "params.yaml", *words)


def test_malformed_params_in_a_stage(built_stage_repo, tmp_path):
    repo = built_stage_repo.copy(tmp_path / "repo")
    (repo.root / "params.yaml").write_bytes(b"seed: 0\ntrain: {epochs: \xff}\n")
    before = repo.snapshot()
    result = repo.stage("train")
    assert result.returncode == 2 and result.stderr.startswith("error: params.yaml is not UTF-8"), result.stderr
    assert repo.snapshot() == before


# --- predict inputs and outputs -----------------------------------------------------------------

def test_predict_on_a_fifo_is_refused_at_once(tmp_path, model):
    fifo = tmp_path / "digits.npy"
    os.mkfifo(fifo)
    assert_one_line(nnlib("predict", fifo, "--model", model, timeout=30), 1, str(fifo), "not a regular file")


@pytest.fixture(scope="module")
def overflowing(model, tmp_path_factory):
    """Finite weights of about 1e37: the outputs overflow float32 to infinity."""
    bad = tmp_path_factory.mktemp("huge") / "huge.npz"
    arrays = load_npz(model)
    for name in arrays:
        if name.endswith(".W"):
            arrays[name] = (np.abs(arrays[name]) + 1) * np.float32(1e37)
    save_npz(bad, arrays)
    return bad


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_predict_refuses_non_finite_outputs(overflowing, digit, flags):
    result = nnlib("predict", digit, "--model", overflowing, *flags)
    assert_one_line(result, 1, str(overflowing), "non-finite outputs")
    assert b"NaN" not in result.stdout and b"nan" not in result.stdout


def test_serve_refuses_non_finite_outputs_before_it_starts(overflowing):
    pytest.importorskip("uvicorn")  # the serve extra (.ci/run installs it)
    result = nnlib("serve", "--model", overflowing, "--port", "0", timeout=60)
    assert_one_line(result, 1, str(overflowing), "non-finite outputs")


def test_export_refuses_non_finite_outputs(overflowing, tmp_path):
    assert_one_line(nnlib("export", overflowing, tmp_path / "m.onnx"), 1, str(overflowing), "non-finite outputs")
    assert not (tmp_path / "m.onnx").exists()


# --- bench/study.py -----------------------------------------------------------------------------

STUDIES = {
    "invalid YAML": ("name: [x\n", "not valid YAML"),
    "non-UTF-8": (b"name: \xff\n", "not UTF-8"),
    "empty": ("", "must be a mapping"),
    "a list": ("- name: x\n", "must be a mapping"),
    "missing name": ("seeds: [0]\nfactors: {a: {b: {}}}\n", "name must be"),
    "factors as a list": ("name: s\nseeds: [0]\nfactors: [a, b]\n", "factors must be"),
    "a bare-number level": ("name: s\nseeds: [0]\nfactors: {lr: {small: 0.1}}\n", "level lr.small must be a mapping"),
    "empty factors": ("name: s\nseeds: [0]\nfactors: {}\n", "factors must be"),
    "a name like ../../evil": ("name: ../../evil\nseeds: [0]\nfactors: {a: {b: {}}}\n", "name must be"),
}


@pytest.mark.parametrize("case", STUDIES)
def test_malformed_study_files(tmp_path, case):
    text, words = STUDIES[case]
    study = tmp_path / "in" / "study.yaml"
    study.parent.mkdir()
    study.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "deep" / "er" / "out"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "study.py"), str(study), "--out", str(out),
                             "--repo", str(tmp_path)], capture_output=True, env=env(), timeout=60)
    assert_one_line(result, 2, str(study), words)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["in", "in/study.yaml"]
