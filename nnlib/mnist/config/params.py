"""Loading and validating ``params.yaml``.

A schema is a nested dict whose leaves are :class:`Field` objects. :func:`validate` checks a
section against it, fills in defaults, and raises :class:`ParamsError` with a one-line message that
names the key path and the expected value (see :mod:`nnlib.errors` for how it reaches the user).
Every float must be finite, and a key written twice in one mapping is refused (as ``dvc repro`` does).
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from nnlib.mnist.config import presets
from nnlib.errors import ParamsError, did_you_mean

PARAMS_FILE = "params.yaml"


@dataclass
class Field:
    """One leaf of a schema.

    ``kind`` is a type or tuple of types (bool is never accepted where a number is expected, nor
    NaN or an infinity where a float is); ``check`` an optional predicate; ``expect`` the human
    description used in errors and the README.
    """

    kind: Any
    default: Any
    expect: str
    check: Callable[[Any], bool] | None = None
    doc: str = ""
    required: bool = field(default=False)

    def validate(self, path: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        else:
            ok = isinstance(value, kinds)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False  # .inf / .nan: YAML floats, but never a usable setting
        if ok and self.check is not None:
            try:
                ok = bool(self.check(value))
            except Exception:  # noqa: BLE001 - a failing check means a bad value
                ok = False
        if not ok:
            raise ParamsError(f"{PARAMS_FILE}: {path} must be {self.expect}, got {short_repr(value)}")
        return value


def validate(section: dict | None, schema: dict, path: str) -> dict:
    """Check ``section`` against ``schema``; return a new dict with defaults filled in."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ParamsError(f"{PARAMS_FILE}: {path} must be a mapping of keys, got {short_repr(section)}")
    unknown = sorted(set(section) - set(schema), key=str)  # keys may be of any type: 1, null, yes
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown key {path}.{unknown[0]}: allowed keys are {sorted(schema)}"
                          f"{did_you_mean(unknown[0], schema)}")
    out = {}
    for key, spec in schema.items():
        sub = f"{path}.{key}"
        if isinstance(spec, dict):
            out[key] = validate(section.get(key), spec, sub)
        elif section.get(key) is not None:  # null means "not set": the default applies
            out[key] = spec.validate(sub, section[key])
        elif spec.required:
            raise ParamsError(f"{PARAMS_FILE}: missing key {sub}: expected {spec.expect}")
        else:
            out[key] = spec.default
    return out


MAX_EXPANDED_NODES = 100_000  # values a params file may hold once its aliases are expanded
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 6, 6


def short_repr(value) -> str:
    """A bounded repr for messages: however large or nested ``value`` is, at most about 200 characters."""
    text = _SHORT.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _TooLarge(Exception):
    """Raised by :class:`_UniqueKeyLoader` for a document whose aliases expand beyond MAX_EXPANDED_NODES."""


class _DuplicateKey(Exception):
    """Raised by :class:`_UniqueKeyLoader`; :func:`load` turns it into a ParamsError naming the file."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} (line {line}, first on line {first_line}): keep one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping instead of keeping the last.

    Keys brought in by a merge (``<<: *defaults``) may still be overridden, as YAML intends.
    """

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            self._check_expansion(node)
        return node

    @staticmethod
    def _check_expansion(root) -> None:
        """Refuse a document whose aliases expand to more than MAX_EXPANDED_NODES values ("billion laughs").

        The expanded size of every node is counted once (memoised), so the check itself stays linear.
        """
        size: dict[int, int] = {}
        stack = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in size:
                continue
            children = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            if children_done or not children:
                size[id(node)] = 1 + sum(size.get(id(child), 1) for child in children)
                if size[id(node)] > MAX_EXPANDED_NODES:
                    raise _TooLarge(f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values")
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in size)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml as a dict, with clear errors for a missing or unparsable file or a duplicate key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root, where params.yaml lives")
    if not path.is_file():
        raise ParamsError(f"{path} is not a file (a directory?): params must be a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}): "
                          "save it as UTF-8") from None
    except OSError as err:
        raise ParamsError(f"{path} cannot be read ({err.strerror or err})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (_DuplicateKey, _TooLarge) as err:
        raise ParamsError(f"{path}: {err}") from None
    except RecursionError:
        raise ParamsError(f"{path} is nested too deeply to be params: flatten it") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must be a mapping of sections (seed, prepare, train, ...)")
    return data


SEED = Field(int, 0, "an integer >= 0", lambda v: v >= 0, "global seed for every random stream")
PRESET = Field(str, "cnn", f"one of {presets.names()}", lambda v: v in presets.names(),
               "the recipe (nnlib/mnist/config/presets/NAME.yaml) behind every key that params.yaml leaves unset (null)")
TOP_LEVEL_KEYS = ("seed", "preset", "prepare", "train", "evaluate")


def load_top_level(path: str | Path = PARAMS_FILE) -> tuple[dict, int, str]:
    """params.yaml as a dict, its validated ``seed`` and ``preset``.

    Unknown top-level keys are refused here, so a typo such as ``trian:`` never passes silently.
    """
    data = load(path)
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        hint = did_you_mean(unknown[0], TOP_LEVEL_KEYS)
        if unknown[0] == "run":  # a column of `dvc exp show`, from metrics/run_params.yaml: a record, not a setting
            hint = "; run.* is what the train stage records in metrics/run_params.yaml: set train.epochs, train.optimizer.lr, ..."
        raise ParamsError(f"{path}: unknown top-level key {unknown[0]!r}: allowed keys are {list(TOP_LEVEL_KEYS)}{hint}")
    seed = SEED.validate("seed", data.get("seed", SEED.default) if data.get("seed") is not None else SEED.default)
    preset = data.get("preset") if data.get("preset") is not None else PRESET.default
    try:
        preset = PRESET.validate("preset", preset)
    except ParamsError as err:
        raise ParamsError(f"{err}{did_you_mean(preset, presets.names())}") from None
    return data, seed, preset


def load_section(name: str, schema: dict, path: str | Path = PARAMS_FILE) -> tuple[int, dict]:
    """The global ``seed`` and the effective, validated section ``name``: params.yaml over the preset
    over the schema's defaults (see :mod:`nnlib.mnist.config.presets`)."""
    data, seed, preset = load_top_level(path)
    section = presets.overlay(presets.load(preset).get(name), data.get(name))
    return seed, validate(section, schema, name)
