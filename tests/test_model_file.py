"""Loading refuses every malformed model file with one ModelFileError; the nnlib command shows it in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model_faults import FAULTS, LOADS_BUT_CANNOT_BE_EVALUATED, make_bad_copy
from nnlib.errors import ModelFileError
from nnlib.modelfile import load_model, training_loss
from nnlib.mnist.summary import describe


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_load_model_refuses_each_fault_with_one_error(name, trained_model_path, tmp_path):
    bad = make_bad_copy(name, trained_model_path, tmp_path)
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    message = str(err.value)
    assert FAULTS[name][1] in message and str(bad) in message
    assert "\n" not in message


def test_the_good_file_loads(trained_model_path):
    model, meta = load_model(trained_model_path)
    assert training_loss(meta, trained_model_path)["name"] == "cross_entropy"


def test_meta_without_train_loads_but_names_the_missing_loss(trained_model_path, tmp_path):
    name = "meta_without_train"
    bad = make_bad_copy(name, trained_model_path, tmp_path)
    _, meta = load_model(bad)
    with pytest.raises(ModelFileError, match=LOADS_BUT_CANNOT_BE_EVALUATED[name][1]):
        training_loss(meta, bad)


@pytest.mark.parametrize("name", ["missing", "cut_in_half", "flip_bytes", "bare_npy", "meta_is_a_list", "nan_weights"])
def test_nnlib_info_exits_1_with_one_line(name, trained_model_path, tmp_path):
    bad = make_bad_copy(name, trained_model_path, tmp_path)
    result = subprocess.run([sys.executable, "-m", "nnlib", "info", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and str(bad) in result.stderr
    assert result.stdout == ""


def test_info_shows_layers_and_metadata(trained_model_path, tmp_path):
    described = describe(trained_model_path, eval_json=tmp_path / "eval.json")
    assert [row["type"] for row in described["layers"]][:3] == ["conv", "batchnorm", "relu"]
    assert described["layers"][0]["output_shape"] == [8, 24, 24]
    assert described["layers"][0]["parameters"] == 8 * 25 + 8
    assert described["layers"][-1]["output_shape"] == [10]
    assert described["total_parameters"] == sum(row["parameters"] for row in described["layers"])
    assert described["seed"] == 0 and described["train"]["loss"]["name"] == "cross_entropy"
    assert described["test_accuracy"] is None and "not found" in described["test_accuracy_source"]


def test_info_shows_test_accuracy_only_for_the_file_eval_json_scored(trained_model_path, tmp_path):
    eval_json, details = tmp_path / "eval.json", tmp_path / "eval_details.json"
    sha256 = describe(trained_model_path, tmp_path / "x")["sha256"]
    eval_json.write_text(json.dumps({"accuracy": 0.987}))  # the hash is no metric: it lies in eval_details.json
    details.write_text(json.dumps({"model_sha256": sha256, "per_class": {}}))
    assert describe(trained_model_path, eval_json)["test_accuracy"] == 0.987
    details.write_text(json.dumps({"model_sha256": "0" * 64}))
    described = describe(trained_model_path, eval_json)
    assert described["test_accuracy"] is None and "another model file" in described["test_accuracy_source"]
    details.unlink()
    assert "records which model" in describe(trained_model_path, eval_json)["test_accuracy_source"]
    eval_json.write_text(json.dumps({"accuracy": 0.987, "model_sha256": sha256}))  # a record of an older run
    assert describe(trained_model_path, eval_json)["test_accuracy"] == 0.987


def test_info_cli_text_and_json(trained_model_path, tmp_path):
    text = subprocess.run([sys.executable, "-m", "nnlib", "info", str(trained_model_path), "--eval-json", str(tmp_path / "e.json")],
                          capture_output=True, text=True, check=True).stdout
    assert "total parameters:" in text and "conv (out=8" in text and "train.loss.name" in text
    as_json = json.loads(subprocess.run([sys.executable, "-m", "nnlib", "info", str(trained_model_path), "--json"],
                                        capture_output=True, text=True, check=True).stdout)
    assert as_json["file"] == str(trained_model_path) and len(as_json["sha256"]) == 64
