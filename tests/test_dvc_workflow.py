"""The DVC workflow around the pipeline, without running it: typo hints, the restore hint of a failed
stage under DVC, the wrong working directory, a stage that imported another clone's nnlib, and the
effective params the train stage records for `dvc exp show` (docs/dvc-workflow.md)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnlib.errors import ParamsError, check_own_nnlib, did_you_mean, dvc_restore_hint
from nnlib.layers import from_spec
from nnlib.mnist.config import presets
from nnlib.mnist.config.params import load_top_level, validate
from nnlib.mnist.config.schema import TRAIN

ROOT = Path(__file__).resolve().parents[1]


def env_with_repo_first(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize("call, fragment", [
    (lambda: validate({"epoch": 3}, TRAIN, "train"), "did you mean `epochs`?"),
    (lambda: validate({"lrr": 1e-3}, TRAIN["optimizer"], "train.optimizer"), "did you mean `lr`?"),
    (lambda: presets.load("cnn_small"), "did you mean `cnn-small`?"),
    (lambda: from_spec({"type": "dense", "outs": 10}), "did you mean `out`?"),
    (lambda: from_spec({"type": "conv2d", "out": 8}), "did you mean `conv`?"),
])
def test_typos_get_a_suggestion(call, fragment):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value).endswith(fragment), str(caught.value)


def test_a_preset_typo_in_params_yaml_and_the_run_columns(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("preset: mlp_l2\n")
    with pytest.raises(ParamsError, match="did you mean `mlp-l2`"):
        load_top_level(params)
    params.write_text("run: {epochs: 3}\n")  # `dvc exp run -S run.epochs=3`: a column of dvc exp show, not a setting
    with pytest.raises(ParamsError, match="metrics/run_params.yaml: set train.epochs"):
        load_top_level(params)


def test_no_suggestion_for_a_word_unlike_any_choice():
    assert did_you_mean("xyzzy", ["epochs", "batch_size"]) == "" and did_you_mean(3, ["epochs"]) == ""


def test_the_restore_hint_names_the_lock_and_the_folders_of_uncached_outputs(tmp_path):
    assert dvc_restore_hint({}) == ""  # by hand, nothing was deleted
    hint = dvc_restore_hint({"DVC_STAGE": "train", "DVC_ROOT": str(ROOT)})
    assert hint.endswith("back to the last commit's outputs: git checkout HEAD -- dvc.lock metrics && dvc checkout]"), hint
    (tmp_path / "dvc.yaml").write_text("stages: {a: {outs: [x/y.npz, {r/m.json: {cache: false}}], plots: [{p/q.png: {cache: false}}]}}\n")
    assert dvc_restore_hint({"DVC_STAGE": "a", "DVC_ROOT": str(tmp_path)}).endswith("-- dvc.lock p r && dvc checkout]")
    (tmp_path / "dvc.yaml").write_text("stages: [")
    assert dvc_restore_hint({"DVC_STAGE": "a", "DVC_ROOT": str(tmp_path)}).endswith("-- dvc.lock && dvc checkout]")


def test_a_stage_refuses_another_clones_nnlib(tmp_path):
    other = tmp_path / "clone"
    (other / "stages").mkdir(parents=True)
    (other / "nnlib").mkdir()
    (other / "nnlib" / "__init__.py").write_text("")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, other / name)
    shutil.copy2(ROOT / "stages" / "train.py", other / "stages" / "train.py")
    result = subprocess.run([sys.executable, "stages/train.py"], cwd=other, env=env_with_repo_first(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"imported nnlib from {ROOT / 'nnlib'}" in result.stderr and f"PYTHONPATH={other.resolve()}" in result.stderr


def test_the_own_nnlib_is_accepted():
    check_own_nnlib(ROOT / "stages" / "train.py")  # PYTHONPATH=<the repository> is this case
    check_own_nnlib(ROOT / "nnlib" / "mnist" / "cli.py")  # not a stage script: never refused
    with pytest.raises(ParamsError, match="a different copy"):
        check_own_nnlib(ROOT / "stages" / "train.py", package=ROOT / "tests")


def test_an_identical_copy_of_nnlib_is_accepted(tmp_path):
    """`dvc exp run --temp` runs a copy of the workspace whose stages import the environment's nnlib."""
    shutil.copytree(ROOT / "nnlib", tmp_path / "nnlib", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stages").mkdir()
    check_own_nnlib(tmp_path / "stages" / "train.py", package=ROOT / "nnlib")
    with (tmp_path / "nnlib" / "layers.py").open("a") as f:
        f.write("# an edit\n")
    with pytest.raises(ParamsError, match="a different copy"):
        check_own_nnlib(tmp_path / "stages" / "train.py", package=ROOT / "nnlib")


@pytest.mark.parametrize("argv", [["predict", "x.png"], ["info"]])
def test_the_nnlib_command_in_a_subfolder_names_the_repository_root(argv):
    result = subprocess.run([sys.executable, "-m", "nnlib", *argv], cwd=ROOT / "stages", env=env_with_repo_first(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "is not the repository root" in result.stderr and "cd .." in result.stderr and "re-train" not in result.stderr


def test_run_params_are_the_effective_values_under_one_key():
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        import train  # noqa: PLC0415
    finally:
        sys.path.remove(str(ROOT / "stages"))
    cfg = validate(presets.load("mlp").get("train"), TRAIN, "train")
    text = train.run_params_yaml("mlp", 3, cfg, 5000)
    run = yaml.safe_load(text)["run"]
    assert list(yaml.safe_load(text)) == ["run"]
    assert run["preset"] == "mlp" and run["seed"] == 3 and run["images_per_epoch"] == 5000
    assert (run["epochs"], run["batch"], run["lr"]) == (cfg["epochs"], cfg["batch_size"], cfg["optimizer"]["lr"])
    assert (run["ema"], run["ema_warmup"]) == (0.0, True)  # the weight average: off unless set
    assert all(not isinstance(v, (dict, list)) for v in run.values()), "each value is one column of dvc exp show"


def test_the_augmentation_preview_caption_gives_the_params():
    from nnlib.mnist.data.augment import AugmentConfig  # noqa: PLC0415
    from nnlib.mnist.data.shards import preview_caption  # noqa: PLC0415

    caption = preview_caption(AugmentConfig(rotate=10, shift=2, scale=0.1, elastic_alpha=8, elastic_sigma=3), 4, copies=20)
    for fragment in ("20 distorted copies", "rotate ±10°", "shift ±2 px", "scale 1±0.1", "shear ±0°",
                     "elastic alpha 8 sigma 3", "flip off", "seed 4"):
        assert fragment in caption, (fragment, caption)


def test_the_reliability_diagram_labels_every_bin_with_its_count():
    import numpy as np  # noqa: PLC0415

    from nnlib.mnist import plots  # noqa: PLC0415

    count = np.array([0, 0, 3, 40, 957])
    accuracy = np.array([0, 0, 0.3, 0.7, 0.99])
    figure = plots.reliability(count, np.array([0, 0, 0.5, 0.7, 0.95]), accuracy, 0.02, "t")
    labels = {t.get_text() for t in figure.axes[1].texts}
    plots.plt.close(figure)
    assert {"3", "40", "957"} <= labels and "0" not in labels
