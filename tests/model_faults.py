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


# --- committee files (nnlib.modelfile.save_committee): ``good`` is a committee of two members -------

def _edit_members(good: Path, bad: Path, edit) -> None:
    def edit_meta(meta):
        edit(meta["members"])
        return meta
    _edit_meta(good, bad, edit_meta)


def member_arrays_missing(good, bad):
    """The description lists two members; the second one's arrays are gone."""
    _edit_arrays(good, bad, lambda arrays: [arrays.pop(k) for k in [k for k in arrays if k.startswith("member1/")]])


def member_entry_missing(good, bad):
    """The second member's arrays are there; the description lists only the first."""
    _edit_members(good, bad, lambda members: members.pop())


def stray_member_arrays(good, bad):
    """Arrays of a third member that the description does not list."""
    def edit(arrays):
        arrays.update({"member2/" + k.split("/", 1)[1]: v for k, v in list(arrays.items()) if k.startswith("member1/")})
    _edit_arrays(good, bad, edit)


def too_many_members(good, bad):
    """30,000 more members (a 9 MiB description; built, they would take 1 GiB): refused by count, before one is built."""
    more = [{"layers": [{"type": "flatten"}, {"type": "dense", "out": 10}]}] * 30_000
    _edit_members(good, bad, lambda members: members.extend(more))


def member_specs_do_not_fit(good, bad):
    """The second member's specs ask for a dense layer wider than its arrays."""
    def edit(members):
        dense = [spec for spec in members[1]["layers"] if spec["type"] == "dense"][-1]
        dense["out"] += 2
    _edit_members(good, bad, edit)


def member_spec_does_not_build(good, bad):
    def edit(members):
        next(spec for spec in members[1]["layers"] if spec["type"] == "dense")["out"] = "ten"
    _edit_members(good, bad, edit)


def members_of_other_shapes(good, bad):
    """A consistent second member whose outputs (5,) differ from the first's (10,)."""
    arrays = load_npz(good)
    meta = json.loads(str(arrays[META_KEY]))
    dense = [spec for spec in meta["members"][1]["layers"] if spec["type"] == "dense"][-1]
    dense["out"] = 5
    name = next(k for k in sorted(arrays, reverse=True) if k.startswith("member1/") and k.endswith("dense.W"))
    arrays[name] = arrays[name][:, :5].copy()
    bias = name[: -len("W")] + "b"
    arrays[bias] = arrays[bias][:5].copy()
    arrays[META_KEY] = np.array(json.dumps(meta))
    save_npz(bad, arrays)


def members_not_a_list(good, bad):
    _edit_meta(good, bad, lambda meta: {**meta, "members": {"0": meta["members"][0]}})


def member_without_layers(good, bad):
    _edit_members(good, bad, lambda members: members[0].pop("layers"))


def member_nan_weights(good, bad):
    def edit(arrays):
        name = next(k for k in arrays if k.startswith("member1/") and k.endswith(".W"))
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.nan
    _edit_arrays(good, bad, edit)


def negative_weight(good, bad):
    _edit_meta(good, bad, lambda meta: {**meta, "weights": [1.0, -1.0]})


def unknown_kind(good, bad):
    _edit_meta(good, bad, lambda meta: {**meta, "kind": "ensemble"})


#: name -> (fault, fragment of the one-line message), for a committee file of two members.
COMMITTEE_FAULTS = {
    "member_arrays_missing": (member_arrays_missing, "member 1: its arrays do not fit its layers"),
    "member_entry_missing": (member_entry_missing, "it lists 1 members, a committee has 2 to 64"),
    "stray_member_arrays": (stray_member_arrays, "array member2/1.dense.W belongs to none of the committee's 2 members"),
    "too_many_members": (too_many_members, "it lists 30,002 members, more than the 64 a committee may have"),
    "member_specs_do_not_fit": (member_specs_do_not_fit, "member 1: its arrays do not fit its layers"),
    "member_spec_does_not_build": (member_spec_does_not_build, "member 1: its layer specs do not build"),
    "members_of_other_shapes": (members_of_other_shapes, "its members do not make a committee"),
    "members_not_a_list": (members_not_a_list, "members must be a list"),
    "member_without_layers": (member_without_layers, "member 0: layers must be a non-empty list"),
    "member_nan_weights": (member_nan_weights, "NaN or infinite"),
    "negative_weight": (negative_weight, "weights must be"),
    "unknown_kind": (unknown_kind, "kind must be 'committee'"),
}


def make_bad_committee(name: str, good: Path, folder: Path) -> Path:
    """Write the broken copy ``folder/<name>.npz`` of committee file ``good`` and return its path."""
    bad = folder / f"{name}.npz"
    COMMITTEE_FAULTS[name][0](Path(good), bad)
    return bad
