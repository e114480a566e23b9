"""Joining trained model files into one committee file: ``nnlib committee OUT A.npz B.npz ...`` and the
committee pipeline's committee stage (``stages/committee.py``) both call :func:`join`.
"""
from __future__ import annotations

from nnlib import __version__
from nnlib.checks import ArgumentError
from nnlib.committee import MIN_MEMBERS, Committee
from nnlib.errors import ParamsError
from nnlib.files import file_sha256
from nnlib.modelfile import MAX_MEMBERS, check_outputs, load_model, save_committee


def check_count(count: int) -> None:
    """A ParamsError unless ``count`` member files can make a committee file."""
    if not MIN_MEMBERS <= count <= MAX_MEMBERS:
        raise ParamsError(f"nnlib committee: give {MIN_MEMBERS} to {MAX_MEMBERS} member model files, got {count}"
                          + (" (a single network needs no committee: use its model file)" if count < MIN_MEMBERS else ""))


def join(out, paths, weights=None, metadata: dict | None = None) -> Committee:
    """Load the single networks in ``paths`` (MIN_MEMBERS to MAX_MEMBERS model files), check that they make a
    committee, and save it to ``out`` (atomically) with each member's metadata, the files' SHA-256 and
    ``metadata``; return it. A bad set is one ParamsError line (a bad file: one ModelFileError line)."""
    check_count(len(paths))
    members, records = [], []
    for path in paths:
        model, meta = load_model(path)
        if isinstance(model, Committee):
            raise ParamsError(f"{path} is a committee itself: give the model files of single networks "
                              f"(nnlib info {path} lists its members)")
        check_outputs(model, path)
        members.append(model)
        records.append(meta)
    first, first_path = members[0], paths[0]
    for path, model in zip(paths, members):
        if (model.input_shape, model.output_shape) != (first.input_shape, first.output_shape):
            raise ParamsError(f"{path} takes inputs {model.input_shape} and gives outputs {model.output_shape}, {first_path} "
                              f"takes {first.input_shape} and gives {first.output_shape}: the members of a committee "
                              "must take the same inputs and give the same outputs")
    try:
        committee = Committee(members, weights)
    except ArgumentError as err:
        raise ParamsError(f"nnlib committee: {err.detail}") from None
    sources = [{"path": str(path), "sha256": file_sha256(path)} for path in paths]
    save_committee(out, committee, {"members": records, "nnlib_version": __version__, "sources": sources, **(metadata or {})})
    return committee
