"""Hostile inputs, data integrity: changed raw bytes, edited checkpoints, a diverged run, two trainings at once.

See docs/hostile-inputs.md for the table of cases.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from hostile import ROOT, StageRepo, fault_env, write_params
from nnlib.files import load_npz, save_npz
from nnlib.mnist.data import fetch
from test_shards import write_idx

OTHER_RUN = {"train": {"optimizer": {"lr": 0.02}}}  # so that train has something new to do


@pytest.fixture
def repo(built_stage_repo, tmp_path) -> StageRepo:
    return built_stage_repo.copy(tmp_path / "repo")


def last_error(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_prepare_refuses_an_mnist_sized_raw_file_whose_bytes_changed(repo):
    name = "train-images-idx3-ubyte"
    n = (fetch.SIZES[name] - 16) // 784  # MNIST's 60000 images, but not MNIST's bytes (a flipped byte, say)
    write_idx(repo.root / "data" / "raw" / name, np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8))
    assert (repo.root / "data" / "raw" / name).stat().st_size == fetch.SIZES[name]
    before = repo.snapshot()
    result = repo.stage("prepare")
    assert result.returncode == 1
    line = last_error(result)
    assert f"data/raw/{name}" in line and "SHA-256" in line and "dvc repro -s fetch" in line
    assert repo.snapshot() == before


def kill_after_epoch_1(repo, tmp_path) -> None:
    write_params(repo.root, {**OTHER_RUN, "train": {**OTHER_RUN["train"], "epochs": 3}})
    result = repo.stage("train", env=fault_env(tmp_path, "checkpoint:die:1"))
    assert result.returncode == 137, result.stderr
    assert [p.name for p in (repo.root / "models" / "checkpoints").glob("*.npz")] == ["checkpoint-0001.npz"]


def test_an_intact_checkpoint_resumes(repo, tmp_path):
    kill_after_epoch_1(repo, tmp_path)
    result = repo.stage("train")
    assert result.returncode == 0, result.stderr
    assert "train: resuming from models/checkpoints/checkpoint-0001.npz" in result.stderr


@pytest.mark.parametrize("edit", ["step", "weight"])
def test_an_edited_checkpoint_is_never_resumed(repo, tmp_path, edit):
    kill_after_epoch_1(repo, tmp_path)
    path = repo.root / "models" / "checkpoints" / "checkpoint-0001.npz"
    arrays = load_npz(path)
    if edit == "step":
        meta = json.loads(str(arrays["__meta__"]))
        meta["step"] = 0  # the digest still matches: same params, data and code
        arrays["__meta__"] = np.array(json.dumps(meta))
    else:
        name = next(k for k in arrays if k.startswith("model/"))
        arrays[name] = arrays[name] + np.float32(0.5)
    save_npz(path, arrays)
    result = repo.stage("train")
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stderr
    assert "train: ignoring models/checkpoints/checkpoint-0001.npz: its contents do not match the hash" in result.stderr


def test_divergence_says_whether_a_rerun_resumes(repo, tmp_path):
    write_params(repo.root, OTHER_RUN)
    before = repo.snapshot()
    result = repo.stage("train", env=fault_env(tmp_path, "checkpoint:diverge:1"))
    assert result.returncode == 3
    line = last_error(result)
    for words in ("training diverged", "the checkpoint of epoch 1 is kept in models/checkpoints/",
                  "a rerun with the same params resumes from it", "a rerun with other params (a lower lr) starts afresh",
                  "delete models/checkpoints/ or set train.resume: false"):
        assert words in line, line
    assert {k: v for k, v in repo.snapshot().items() if not k.startswith(("models/checkpoints", "metrics/live"))} == \
        {k: v for k, v in before.items() if not k.startswith(("models/checkpoints", "metrics/live"))}


def test_divergence_without_resume_says_a_rerun_starts_afresh(repo, tmp_path):
    write_params(repo.root, {"train": {"optimizer": {"lr": 0.02}, "resume": False}})
    result = repo.stage("train", env=fault_env(tmp_path, "checkpoint:diverge:1"))
    assert result.returncode == 3
    line = last_error(result)
    assert "training diverged" in line and line.endswith("no model was written; a rerun starts afresh"), line


def test_a_second_training_in_the_same_folder_is_refused(repo, tmp_path):
    write_params(repo.root, OTHER_RUN)
    first = subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py")], cwd=repo.root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=fault_env(tmp_path, "checkpoint:sleep:1"))
    try:
        assert first.stdout.readline().strip() == "checkpoint written"  # the first run holds the lock now
        before = repo.snapshot()
        start = time.monotonic()
        second = repo.stage("train", timeout=120)
        assert second.returncode == 1
        line = last_error(second)
        assert "another training is running" in line and "models/checkpoints/" in line and str(first.pid) in line
        assert time.monotonic() - start < 60
        assert repo.snapshot() == before
    finally:
        first.kill()
        first.wait()
