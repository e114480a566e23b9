"""params.yaml validation, and the reference table in docs/params.md staying complete."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import yaml

from nnlib.mnist.config import params, presets, schema
from nnlib.model import Sequential
from nnlib.errors import ParamsError
from nnlib.mnist.config.params import Field, validate

ROOT = Path(__file__).resolve().parents[1]
PARAMS_DOC = ROOT / "docs" / "params.md"  # the full params table (the README links to it)
SCHEMAS = schema.SECTIONS


def key_paths(schema: dict, prefix: str):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from key_paths(spec, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}"


def test_params_doc_documents_every_key():
    doc = PARAMS_DOC.read_text()
    missing = [p for name, schema in SCHEMAS.items() for p in key_paths(schema, name) if f"| `{p}` |" not in doc]
    assert not missing, f"docs/params.md's params table lacks {missing}"


def table_value(value) -> str:
    """How the params table in docs/params.md writes a value of params.yaml (YAML spelling of booleans and '')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)


def shipped_params_file(tmp_path) -> Path:
    """params.yaml as committed (from git), so hand edits and experiments in the workspace do not matter."""
    shipped = tmp_path / "params.yaml"
    try:
        text = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist): the file as it is
        text = (ROOT / "params.yaml").read_text()
    shipped.write_text(text)
    return shipped


def test_params_doc_table_shows_the_effective_values_of_the_shipped_params(tmp_path):
    effective = schema.effective_params(shipped_params_file(tmp_path))
    doc = PARAMS_DOC.read_text()
    wrong = []
    for name, section_schema in SCHEMAS.items():
        for path in key_paths(section_schema, name):
            value = effective
            for part in path.split("."):
                value = value[part]
            if isinstance(value, list) and value and isinstance(value[0], dict):
                continue  # train.model: a layer list, shown in its own table
            if f"| `{path}` | `{table_value(value)}` |" not in doc:
                wrong.append(f"{path}={table_value(value)}")
    assert not wrong, f"docs/params.md's params table disagrees with the shipped params on {wrong}"


def test_shipped_params_yaml_sets_every_key_to_null(tmp_path):
    """Every key is present (so `dvc exp run -S key=value` works for any key) and left to the preset."""
    data = yaml.safe_load(shipped_params_file(tmp_path).read_text())
    assert data["seed"] == 0 and data["preset"] == "cnn"
    for name, section_schema in SCHEMAS.items():
        assert set(key_paths(section_schema, name)) == set(key_paths(data[name], name)), name
        assert all(value is None for value in leaves(data[name])), name


def leaves(tree):
    for value in tree.values():
        yield from leaves(value) if isinstance(value, dict) else [value]


def write(tmp_path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("preset", presets.names())
def test_every_preset_is_valid_and_builds(preset, tmp_path):
    effective = schema.effective_params(write(tmp_path, {"preset": preset}))
    assert effective["preset"] == preset
    model = Sequential.from_specs(effective["train"]["model"], (1, 28, 28), np.random.default_rng(0), num_classes=10)
    assert model.output_shape == (10,)
    assert set(presets.load(preset)) <= {"prepare", "train", "evaluate"}


def test_params_yaml_wins_over_the_preset_and_the_preset_over_the_defaults(tmp_path):
    path = write(tmp_path, {"preset": "nielsen", "train": {"epochs": 5, "batch_size": None, "optimizer": {"momentum": None}}})
    _, train = params.load_section("train", schema.TRAIN, path)
    assert train["epochs"] == 5  # params.yaml
    assert train["batch_size"] == 10 and train["optimizer"]["lr"] == 3.0  # the preset (null = not set)
    assert train["optimizer"]["momentum"] == schema.TRAIN["optimizer"]["momentum"].default  # the default


def test_switching_the_preset_keeps_every_value_the_user_set(tmp_path):
    """The edit-safety rule: what the user wrote in params.yaml is used whatever the preset."""
    for preset in presets.names():
        path = write(tmp_path, {"preset": preset, "train": {"epochs": 3}, "prepare": {"max_train": 5000}})
        assert params.load_section("train", schema.TRAIN, path)[1]["epochs"] == 3
        assert params.load_section("prepare", schema.PREPARE, path)[1]["max_train"] == 5000


def test_an_unknown_preset_lists_the_available_ones(tmp_path):
    with pytest.raises(ParamsError, match=r"preset must be one of \['cnn', 'cnn-small'"):
        params.load_section("train", schema.TRAIN, write(tmp_path, {"preset": "resnet"}))


def test_nnlib_params_prints_the_effective_values(tmp_path):
    path = write(tmp_path, {"preset": "mlp", "train": {"epochs": 2}})
    out = subprocess.run([sys.executable, "-m", "nnlib", "params", "--file", str(path)], capture_output=True, text=True, check=True).stdout
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 2 and shown["train"]["batch_size"] == 64 and shown["prepare"]["augment"]["copies"] == 10


@pytest.mark.parametrize(
    "section, message",
    [
        ({"epochs": 0}, "train.epochs must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "train.epochs must be an integer >= 1, got 2.5"),
        ({"epochs": True}, "train.epochs"),
        ({"epoch": 3}, "unknown key train.epoch"),
        ({"optimizer": {"lr": 0}}, "train.optimizer.lr must be a number > 0"),
        ({"optimizer": {"lr": "fast"}}, "train.optimizer.lr"),
        ({"optimizer": {"name": "rmsprop"}}, "train.optimizer.name must be one of ['adam', 'adamw', 'sgd']"),
        ({"select": "best"}, "train.select must be 'last' or 'best_val'"),
        ({"optimizer": {"lr": float("inf")}}, "train.optimizer.lr must be a number > 0, got inf"),
        ({"optimizer": {"lr": float("nan")}}, "train.optimizer.lr must be a number > 0, got nan"),
        ({"optimizer": {"weight_decay": float("inf")}}, "train.optimizer.weight_decay must be a number >= 0, got inf"),
        ({"schedule": {"gamma": float("inf")}}, "train.schedule.gamma must be a number > 0, got inf"),
        ({"schedule": {"min_lr": float("-inf")}}, "train.schedule.min_lr must be a number >= 0, got -inf"),
        *[({"optimizer": {"ema": bad}}, f"train.optimizer.ema must be a number in [0, 1) (0 = off), got {shown}")
          for bad, shown in [(-0.1, "-0.1"), (1.0, "1.0"), ("x", "'x'"), (True, "True")]],
        ({"optimizer": {"ema_warmup": "yes"}}, "train.optimizer.ema_warmup must be true or false, got 'yes'"),
    ],
)
def test_bad_train_values_name_the_key(section, message):
    section = {"model": [{"type": "flatten"}, {"type": "dense", "out": 10}], **section}
    with pytest.raises(ParamsError) as err:
        validate(section, schema.TRAIN, "train")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["-0.1", "1.0", "x", "true"])
def test_a_bad_ema_stops_the_train_stage_with_one_line_and_exit_code_2(tmp_path, text):
    (tmp_path / "params.yaml").write_text(f"seed: 0\npreset: mlp\ntrain:\n  optimizer:\n    ema: {text}\n")
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "train.optimizer.ema must be a number in [0, 1) (0 = off), got" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_ema_is_off_unless_set_and_a_preset_sets_none():
    assert schema.TRAIN["optimizer"]["ema"].default == 0.0
    assert all(presets.load(name).get("train", {}).get("optimizer", {}).get("ema") is None for name in presets.names())


def test_missing_required_key():
    with pytest.raises(ParamsError, match="missing key train.model"):
        validate({}, schema.TRAIN, "train")


def test_defaults_are_filled_and_ints_accepted_as_floats():
    out = validate({"model": [{"type": "flatten"}], "optimizer": {"lr": 1}}, schema.TRAIN, "train")
    assert out["optimizer"]["lr"] == 1.0 and isinstance(out["optimizer"]["lr"], float)
    assert out["epochs"] == schema.TRAIN["epochs"].default


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrian: {}\n")
    with pytest.raises(ParamsError, match="unknown top-level key 'trian'"):
        params.load_section("train", schema.TRAIN, path)


def test_field_check_that_raises_counts_as_invalid():
    field = Field(list, [], "a list of two numbers", lambda v: len(v) == 2 and v[0] < v[1])
    with pytest.raises(ParamsError):
        field.validate("x.y", ["a", 1])


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN"])
def test_float_fields_refuse_non_finite_yaml_values(text):
    value = yaml.safe_load(f"x: {text}")["x"]
    for field in (Field(float, 0.0, "a number"), Field((int, float), 0, "a number")):
        with pytest.raises(ParamsError, match=r"x\.y must be a number, got -?(inf|nan)$"):
            field.validate("x.y", value)


def test_augmentation_floats_refuse_infinity():
    with pytest.raises(ParamsError, match="prepare.augment.shift"):
        validate({"augment": {"shift": float("inf")}}, schema.PREPARE, "prepare")


@pytest.mark.parametrize("text, key, line, first", [
    ("seed: 0\ntrain:\n  optimizer:\n    lr: 0.1\n    name: sgd\n    lr: 0.2\n", "lr", 6, 4),
    ("seed: 0\nseed: 1\n", "seed", 2, 1),
    ("train: {epochs: 1, epochs: 2}\n", "epochs", 1, 1),
    ("train:\n  model:\n  - {type: dense, out: 10, out: 5}\n", "out", 3, 3),
])
def test_duplicate_keys_are_refused(tmp_path, text, key, line, first):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        params.load(path)
    assert str(err.value) == f"{path}: duplicate key {key!r} (line {line}, first on line {first}): keep one"


def test_same_key_in_different_mappings_and_merge_overrides_are_fine(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: &b {lr: 0.1, name: sgd}\ntrain:\n  optimizer:\n    <<: *b\n    lr: 0.2\nevaluate: {lr: 1}\n")
    assert params.load(path)["train"]["optimizer"] == {"lr": 0.2, "name": "sgd"}


def test_schema_names_the_optimizers_and_schedules_the_factories_make():
    from nnlib import optim, schedules  # noqa: PLC0415
    assert set(schema.OPTIMIZERS) == set(optim.OPTIMIZERS)
    assert set(schema.SCHEDULES) == set(schedules.SCHEDULES)


def test_evaluate_batch_default_is_the_batch_validation_and_prediction_use():
    from nnlib import model  # noqa: PLC0415
    assert schema.EVALUATE["batch_size"].default == model.EVAL_BATCH_SIZE


def test_params_doc_table_takes_meaning_and_allowed_values_from_the_schema():
    """Columns 3 and 4 of the params table in docs/params.md are the schema's ``doc`` and ``expect``, word for word."""
    import re  # noqa: PLC0415
    doc = PARAMS_DOC.read_text()
    wrong = []
    for name, section_schema in SCHEMAS.items():
        for path in key_paths(section_schema, name):
            field = section_schema
            for part in path.split(".")[1:]:
                field = field[part]
            row = re.search(rf"^\| `{re.escape(path)}` \| [^|]* \| (.*?) \| (.*?) \|$", doc, re.M)
            if row is None or (row.group(1), row.group(2)) != (field.doc, field.expect):
                wrong.append(path)
    assert not wrong, f"docs/params.md's params table disagrees with nnlib/mnist/config/schema.py on {wrong}"
