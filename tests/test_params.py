"""params.yaml validation, and the README's reference table staying complete."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import pytest
import yaml

from nnlib import params, shards, training
from nnlib.model import Sequential
from nnlib.errors import ParamsError
from nnlib.params import Field, validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"prepare": shards.SCHEMA, "train": training.TRAIN_SCHEMA, "evaluate": training.EVALUATE_SCHEMA}


def key_paths(schema: dict, prefix: str):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from key_paths(spec, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}"


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    missing = [p for name, schema in SCHEMAS.items() for p in key_paths(schema, name) if f"| `{p}` |" not in readme]
    assert not missing, f"README.md's params table lacks {missing}"


def readme_value(value) -> str:
    """How the README's params table writes a value of params.yaml (YAML spelling of booleans and '')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)


def test_readme_table_shows_the_values_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    readme = (ROOT / "README.md").read_text()
    wrong = []
    for name, schema in SCHEMAS.items():
        for path in key_paths(schema, name):
            value = params
            for part in path.split("."):
                value = value[part]
            if isinstance(value, list) and value and isinstance(value[0], dict):
                continue  # train.model: a layer list, shown in its own table
            if f"| `{path}` | `{readme_value(value)}` |" not in readme:
                wrong.append(f"{path}={readme_value(value)}")
    assert not wrong, f"README.md's params table disagrees with params.yaml on {wrong}"


def compose(*overrides: str) -> dict:
    """What `dvc exp run -S ...` writes to params.yaml: DVC's own Hydra composition of conf/."""
    from dvc.utils.hydra import compose_and_dump  # noqa: PLC0415 - dvc is a dependency, but heavy

    out = Path(tempfile.mkdtemp()) / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", list(overrides))
    return yaml.safe_load(out.read_text())


PRESETS = sorted(p.stem for p in (ROOT / "conf" / "preset").glob("*.yaml"))


def test_params_yaml_is_the_composed_default():
    """`dvc exp run` recomposes params.yaml from conf/: the committed file must be what it would write."""
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == compose()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_valid_and_builds(preset):
    data = compose(f"preset={preset}")
    assert data["preset"] == preset
    assert set(data) == set(params.TOP_LEVEL_KEYS)
    checked = {name: validate(data[name], schema, name) for name, schema in SCHEMAS.items()}
    for name, schema in SCHEMAS.items():  # every effective value is spelled out: nothing left to defaults
        assert set(key_paths(schema, name)) == set(key_paths(data[name], name)), name
    model = Sequential.from_specs(checked["train"]["model"], (1, 28, 28), np.random.default_rng(0))
    assert model.output_shape == (10,)


def test_preset_override_of_one_value():
    data = compose("preset=nielsen", "train.epochs=5")
    assert data["train"]["epochs"] == 5 and data["train"]["batch_size"] == 10


def test_repository_params_are_valid():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(data) <= set(params.TOP_LEVEL_KEYS)
    for name, schema in SCHEMAS.items():
        validate(data.get(name), schema, name)


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
    ],
)
def test_bad_train_values_name_the_key(section, message):
    section = {"model": [{"type": "flatten"}, {"type": "dense", "out": 10}], **section}
    with pytest.raises(ParamsError) as err:
        validate(section, training.TRAIN_SCHEMA, "train")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_key():
    with pytest.raises(ParamsError, match="missing key train.model"):
        validate({}, training.TRAIN_SCHEMA, "train")


def test_defaults_are_filled_and_ints_accepted_as_floats():
    out = validate({"model": [{"type": "flatten"}], "optimizer": {"lr": 1}}, training.TRAIN_SCHEMA, "train")
    assert out["optimizer"]["lr"] == 1.0 and isinstance(out["optimizer"]["lr"], float)
    assert out["epochs"] == training.TRAIN_SCHEMA["epochs"].default


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrian: {}\n")
    with pytest.raises(ParamsError, match="unknown top-level key 'trian'"):
        params.load_section("train", training.TRAIN_SCHEMA, path)


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
        validate({"augment": {"shift": float("inf")}}, shards.SCHEMA, "prepare")


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
