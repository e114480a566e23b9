"""Hostile inputs, outputs: a stage's outputs are all new or all old; the CLI never writes over its
inputs, onto devices or into folders it would have to invent; OS errors and stdout failures are one line.

See docs/hostile-inputs.md for the table of cases.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hostile import ROOT, StageRepo, assert_one_line, digest, env, fault_env, nnlib


@pytest.fixture(scope="module")
def built(built_stage_repo) -> StageRepo:
    return built_stage_repo


@pytest.fixture
def repo(built, tmp_path) -> StageRepo:
    return built.copy(tmp_path / "repo")


def assert_stage_error(result, code: int, *words: str) -> str:
    """A stage's stderr may hold progress lines; it ends in exactly one ``error:`` line, no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def directory(path):
    path.unlink()
    path.mkdir()
    (path / "keep.txt").write_text("the user's file")


def read_only(path):
    path.chmod(0o444)


def parent_is_a_file(path):
    parent = path.parent
    for child in parent.iterdir():
        child.unlink()
    parent.rmdir()
    parent.write_text("a file where a folder should be")


DESTINATION_FAULTS = {"directory": (directory, "is a directory"), "read_only": (read_only, "read-only"),
                      "parent_is_a_file": (parent_is_a_file, "is not a folder")}
STAGE_OUTPUTS = {
    "train": ["metrics/train_log.tsv", "metrics/timing.json"],
    "evaluate": ["metrics/predictions.csv", "metrics/plots/curves.png"],
    "prepare": ["metrics/plots/augment_preview.png"],
}
CASES = [(stage, output, fault) for stage, outputs in STAGE_OUTPUTS.items() for output in outputs
         for fault in DESTINATION_FAULTS if not (fault == "parent_is_a_file" and output.count("/") < 2)]


@pytest.mark.parametrize("stage, output, fault", CASES)
def test_a_bad_destination_leaves_every_output_of_the_stage_as_it_was(repo, stage, output, fault):
    if stage != "prepare":  # a changed param, so the stage would write different outputs
        from hostile import write_params
        write_params(repo.root, {"train": {"optimizer": {"lr": 0.02}}})
    make, words = DESTINATION_FAULTS[fault]
    make(repo.root / output)
    before = repo.snapshot()
    assert_stage_error(repo.stage(stage), 1, output if fault != "parent_is_a_file" else "metrics/plots", words)
    assert repo.snapshot() == before
    assert repo.temporaries() == []


def test_a_full_disk_at_checkpoint_time_is_one_line_and_keeps_the_outputs(repo, tmp_path):
    from hostile import write_params
    write_params(repo.root, {"train": {"optimizer": {"lr": 0.02}}})
    before = repo.snapshot()
    result = repo.stage("train", env=fault_env(tmp_path, "enospc:checkpoint-"))
    assert_stage_error(result, 1, "models/checkpoints/checkpoint-0001.npz", "disk full")
    live = "metrics/live/train_log.tsv"  # the live log is rewritten after every epoch, by design
    assert {k: v for k, v in repo.snapshot().items() if k != live} == {k: v for k, v in before.items() if k != live}
    assert repo.temporaries() == []


def test_a_full_disk_while_prepare_writes_shards_is_one_line_and_keeps_the_old_set(repo, tmp_path):
    from hostile import write_params
    write_params(repo.root, {"prepare": {"val_size": 60}})
    before = repo.snapshot()
    result = repo.stage("prepare", env=fault_env(tmp_path, "enospc:train-"))
    assert_stage_error(result, 1, "train-00000.npz", "disk full")
    assert repo.snapshot() == before
    assert repo.temporaries() == [] and sorted(p.name for p in (repo.root / "data").iterdir()) == ["raw", "shards"]


# --- the nnlib command's outputs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def model(built) -> str:
    return str(built.root / "models" / "model.npz")


@pytest.fixture
def digit(tmp_path):
    path = tmp_path / "mine.png"
    image = np.full((40, 40), 255, np.uint8)
    image[8:32, 18:22] = 0
    Image.fromarray(image).save(path)
    return path


def test_export_onto_its_own_model_is_refused(tmp_path, model):
    copy = tmp_path / "model.npz"
    copy.write_bytes(open(model, "rb").read())
    before = digest(copy)
    assert_one_line(nnlib("export", copy, copy), 2, str(copy), "is the input")
    assert_one_line(nnlib("export", copy, tmp_path / "." / "model.npz"), 2, "is the input")
    assert digest(copy) == before


def test_predict_show_onto_its_own_image_is_refused(digit, model):
    before = digest(digit)
    assert_one_line(nnlib("predict", digit, "--model", model, "--show", digit), 2, str(digit), "is the input")
    assert_one_line(nnlib("predict", digit, "--model", model, "--show", model), 2, "is the input")
    assert digest(digit) == before


def test_a_fifo_or_device_as_output_is_refused(tmp_path, digit, model):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert_one_line(nnlib("predict", digit, "--model", model, "--show", fifo, timeout=20), 2, str(fifo), "not a regular file")
    assert_one_line(nnlib("export", model, "/dev/null", timeout=20), 2, "/dev/null", "not a regular file")


def test_no_parent_folder_is_created_outside_the_working_tree(tmp_path, digit, model):
    target = tmp_path / "absent" / "x.png"
    assert_one_line(nnlib("predict", digit, "--model", model, "--show", target), 1, str(target), "no such folder")
    assert_one_line(nnlib("export", model, target.with_suffix(".onnx")), 1, "no such folder")
    assert not target.parent.exists()


@pytest.mark.parametrize("where, words", [("directory", ["is a directory"]), ("/proc", ["/proc/"])])
def test_writing_to_a_directory_or_proc_is_one_line(tmp_path, digit, model, where, words):
    target = tmp_path if where == "directory" else "/proc/nnlib-test.png"
    assert_one_line(nnlib("predict", digit, "--model", model, "--show", target), 1, *words)
    assert_one_line(nnlib("export", model, target), 1, *words)


def test_export_to_dash_writes_onnx_to_stdout(model, tmp_path):
    result = nnlib("export", model, "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout[:2] == b"\x08\x08" or len(result.stdout) > 1000  # ONNX protobuf: ir_version field first
    assert not (tmp_path / "-").exists() and not (ROOT / "-").exists()
    import onnx
    onnx.checker.check_model(onnx.load_from_string(result.stdout))


# --- stdout -------------------------------------------------------------------------------------

@pytest.fixture
def many(tmp_path):
    path = tmp_path / "many.npy"
    np.save(path, np.zeros((2000, 28, 28), np.uint8))
    return path


def test_a_closed_pipe_is_quiet(many, model):
    shell = f"{sys.executable} -m nnlib predict {many} --model {model} --json | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env(), timeout=60)
    assert result.stdout.count("\n") == 1
    assert result.stderr == "", result.stderr
    assert result.returncode in (0, 141)  # 141: SIGPIPE, as Unix tools end


def test_a_full_stdout_is_one_line(many, model):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "nnlib", "predict", str(many), "--model", model],
                                stdout=full, stderr=subprocess.PIPE, env=env(), timeout=60)
    assert_one_line(result, 1, "stdout", "disk full")


def test_a_closed_stdout_fails(many, model):
    shell = f"{sys.executable} -m nnlib predict {many} --model {model} >&-"
    result = subprocess.run(["bash", "-c", shell], capture_output=False, stderr=subprocess.PIPE, env=env(), timeout=60)
    assert_one_line(result, 1, "stdout")
