"""Ways a model file goes bad, each a function ``fault(good: Path, bad: Path)`` writing a broken copy.

Shared by the unit tests of :mod:`nnlib.modelfile` and the tests that run the real stage scripts and
the ``nnlib`` command on them. ``FAULTS`` maps a name to (fault, a fragment of the expected message).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnlib.files import load_npz, save_npz
from nnlib.modelfile import META_KEY


def _edit_meta(good: Path, bad: Path, edit) -> None:
    arrays = load_npz(good)
    meta = json.loads(str(arrays[META_KEY]))
    arrays[META_KEY] = np.array(json.dumps(edit(meta)))
    save_npz(bad, arrays)


def _edit_arrays(good: Path, bad: Path, edit) -> None:
    arrays = load_npz(good)
    edit(arrays)
    save_npz(bad, arrays)


def cut_in_half(good, bad):
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])


def flip_bytes(good, bad):
    data = bytearray(good.read_bytes())
    middle = len(data) // 2  # inside the largest array's data: the zip CRC no longer matches
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    bad.write_bytes(bytes(data))


def empty(good, bad):
    bad.write_bytes(b"")


def bare_npy(good, bad):
    with open(bad, "wb") as f:
        np.save(f, np.zeros((3, 3), np.float32))


def meta_is_a_list(good, bad):
    _edit_meta(good, bad, lambda meta: [meta])


def option_is_a_string(good, bad):
    def edit(meta):
        dense = next(spec for spec in meta["layers"] if spec["type"] == "dense")
        dense["out"] = "ten"
        return meta
    _edit_meta(good, bad, edit)


def meta_without_train(good, bad):
    def edit(meta):
        meta["metadata"].pop("train", None)
        return meta
    _edit_meta(good, bad, edit)


def nan_weights(good, bad):
    def edit(arrays):
        name = next(k for k in arrays if k.endswith(".W"))
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.nan
    _edit_arrays(good, bad, edit)


def missing_array(good, bad):
    _edit_arrays(good, bad, lambda arrays: arrays.pop(next(k for k in arrays if k.endswith(".W"))))


def wrong_shape(good, bad):
    def edit(arrays):
        name = next(k for k in arrays if k.endswith(".b"))
        arrays[name] = np.zeros(arrays[name].size + 1, np.float32)
    _edit_arrays(good, bad, edit)


def future_format(good, bad):
    _edit_meta(good, bad, lambda meta: {**meta, "format_version": 99})


def not_a_model(good, bad):
    np.savez(bad, w=np.zeros(3))


def not_json(good, bad):
    _edit_arrays(good, bad, lambda arrays: arrays.update({META_KEY: np.array("{not json")}))


def pickled_object(good, bad):
    arrays = load_npz(good)
    arrays["extra"] = np.array([object()], dtype=object)
    with open(bad, "wb") as f:
        np.savez(f, **arrays)  # savez pickles object arrays


def text_file(good, bad):
    bad.write_text("this is not a model\n")


def directory(good, bad):
    bad.mkdir()


def missing(good, bad):
    pass


#: name -> (fault, fragment of the one-line message). meta_without_train loads (the model itself is
#: fine) and is refused only where the training loss is needed: by the evaluate stage.
FAULTS = {
    "missing": (missing, "no such model file"),
    "directory": (directory, "is not a file"),
    "empty": (empty, "is empty"),
    "cut_in_half": (cut_in_half, "truncated or corrupt"),
    "flip_bytes": (flip_bytes, "truncated or corrupt"),
    "text_file": (text_file, "not an .npz archive"),
    "bare_npy": (bare_npy, "bare array"),
    "pickled_object": (pickled_object, "pickled objects"),
    "not_a_model": (not_a_model, "not an nnlib model"),
    "not_json": (not_json, "not valid JSON"),
    "meta_is_a_list": (meta_is_a_list, "must be a JSON object"),
    "future_format": (future_format, "model format 99"),
    "option_is_a_string": (option_is_a_string, "layer specs do not build"),
    "missing_array": (missing_array, "do not fit its layers"),
    "wrong_shape": (wrong_shape, "do not fit its layers"),
    "nan_weights": (nan_weights, "NaN or infinite"),
}
LOADS_BUT_CANNOT_BE_EVALUATED = {"meta_without_train": (meta_without_train, "records no training loss")}


def make_bad_copy(name: str, good: Path, folder: Path) -> Path:
    """Write the broken copy ``folder/<name>.npz`` of model file ``good`` and return its path."""
    fault = {**FAULTS, **LOADS_BUT_CANNOT_BE_EVALUATED}[name][0]
    bad = folder / f"{name}.npz"
    fault(Path(good), bad)
    return bad
