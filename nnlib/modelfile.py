"""Model files: a :class:`~nnlib.model.Sequential` saved as arrays + JSON in one ``.npz``, never pickle.

The archive holds every parameter and buffer under its name (``"0.conv.W"``), plus a JSON description
under ``__meta__``::

    {"format_version": 1, "input_shape": [1, 28, 28], "layers": [{"type": "conv", ...}, ...],
     "metadata": {"seed": 0, "train": {...params...}, "epoch": 20, "val_accuracy": 0.995,
                  "manifest_sha256": "...", "nnlib_version": "0.1.0", "init_from": null}}

:func:`load_model` is the one function every reader goes through (evaluate, predict, info, export,
``train.init_from``), and the one place that refuses a bad file: whatever is wrong with it (missing,
truncated, bytes flipped, not a zip, a bare ``.npy``, pickled objects, malformed JSON, layer specs
that do not build, arrays that do not fit the layers, NaN or infinite weights) ends in one
:class:`~nnlib.errors.ModelFileError` naming the file and the problem. Reading uses
``allow_pickle=False`` and rebuilds the model from its specs: loading never executes code.

A :class:`~nnlib.committee.Committee` is saved by :func:`save_committee` in one archive of the same
kind: member ``i``'s arrays under ``"member<i>/"`` (``"member1/0.conv.W"``), and a description that
says it is a committee, with each member's layer specs and its own metadata::

    {"format_version": 1, "kind": "committee", "input_shape": [1, 28, 28], "weights": [1.0, 1.0],
     "members": [{"layers": [...], "metadata": {"seed": 0, "train": {...}, ...}}, {...}],
     "metadata": {"nnlib_version": "0.1.0", "sources": [{"path": ..., "sha256": ...}, ...]}}

:func:`load_model` returns a Committee for such a file (and a Sequential for any other), refusing in
the same one line a committee whose members are missing, do not build, do not fit their arrays or
do not fit together, and one of more than :data:`MAX_MEMBERS` members (before any member is built).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .checks import ArgumentError
from .committee import MIN_MEMBERS, Committee
from .errors import ModelFileError, ParamsError
from .files import npz_sizes, save_npz
from .footprint import estimate, size_text
from .model import Sequential
from .options import LOSS_NAMES, valid_label_smoothing

META_KEY = "__meta__"
MAX_META_BYTES = 16 << 20  # the JSON description of a network; real ones are a few KiB
SLACK_BYTES = 1 << 20  # headers and small extras tolerated by the size checks before reading
FORMAT_VERSION = 1
REMEDY = "re-train it (dvc repro -s train) or point to another model file"
COMMITTEE = "committee"  # the "kind" of a committee file; a file without "kind" holds one network
MAX_MEMBERS = 64  # members of a committee file; checked before any member is built
COMMITTEE_REMEDY = "rebuild it from its member files (nnlib committee OUT.npz MEMBER.npz ...) or point to another model file"


def save_model(path, model: Sequential, metadata: dict | None = None) -> None:
    """Save a model as its arrays plus a JSON description, atomically and byte-for-byte deterministically.

    ``metadata`` (JSON-serialisable) is stored as given, e.g. the params the model was trained with.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "input_shape": list(model.input_shape),
        "layers": model.specs(),
        "metadata": metadata or {},
    }
    arrays = dict(model.state())
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    save_npz(path, arrays)


def member_prefix(index: int) -> str:
    """The prefix of member ``index``'s array names in a committee file: ``"member0/"``."""
    return f"member{index}/"


def save_committee(path, committee: Committee, metadata: dict | None = None) -> None:
    """Save a committee as one archive (see the module), atomically and byte-for-byte deterministically.

    ``metadata`` (JSON-serialisable) is the committee's; its optional ``"members"`` entry, a list with
    one dict per member (its seed, training params, ...), is stored beside each member's layer specs.
    :func:`load_model` gives back the same dict. Raises ValueError for a ``"members"`` entry that is not so.
    """
    metadata = dict(metadata or {})
    member_metadata = metadata.pop("members", None)
    if member_metadata is None:
        member_metadata = [{} for _ in committee.members]
    if not (isinstance(member_metadata, list) and len(member_metadata) == len(committee.members)
            and all(isinstance(m, dict) for m in member_metadata)):
        raise ValueError(f"save_committee: metadata['members'] must be a list of {len(committee.members)} dicts, "
                         f"one per member, got {member_metadata!r:.80}")
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": COMMITTEE,
        "input_shape": list(committee.input_shape),
        "weights": committee.weights.tolist(),
        "members": [{"layers": member.specs(), "metadata": own} for member, own in zip(committee.members, member_metadata)],
        "metadata": metadata,
    }
    arrays = {member_prefix(i) + name: value for i, member in enumerate(committee.members)
              for name, value in member.state().items()}
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True, allow_nan=False))
    save_npz(path, arrays)


def _read_arrays(path: Path) -> dict:
    """Every array of the archive, read and CRC-checked in full; any failure is a ModelFileError."""
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file: {REMEDY}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file: point to a model .npz")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise ModelFileError(f"{path} is empty (0 bytes): truncated or corrupt: {REMEDY}")
    if magic == b"\x93NUMPY":
        raise ModelFileError(f"{path} holds a bare array (.npy), not a model archive: {REMEDY}")
    if not magic.startswith(b"PK"):
        raise ModelFileError(f"{path} is not an .npz archive (it does not start like a zip file): {REMEDY}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_sizes(path, archive)
            return {name: archive[name] for name in archive.files}
    except ModelFileError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise ModelFileError(f"{path} holds pickled objects, which nnlib never loads: {REMEDY}") from None
        raise ModelFileError(f"{path} is truncated or corrupt ({err}): {REMEDY}") from None
    except Exception as err:  # noqa: BLE001 - BadZipFile, CRC errors, EOFError, OSError, zlib errors...
        reason = str(err) or type(err).__name__
        raise ModelFileError(f"{path} is truncated or corrupt ({reason}): {REMEDY}") from None


def _check_sizes(path: Path, archive) -> None:
    """Compare the sizes the archive declares with what its layer specs need, before reading any array.

    Refused: a ``__meta__`` entry larger than any description of a network, a header declaring more
    data than its member holds, an array much larger than its layer needs (or that no layer has),
    and layer specs that need far more values than the archive holds (building them would allocate
    the difference). Whatever passes is checked exactly once read (:func:`load_model`).
    """
    meta_info = next((i for i in archive.zip.infolist() if i.filename == f"{META_KEY}.npy"), None)
    if meta_info is not None and meta_info.file_size > MAX_META_BYTES:
        raise ModelFileError(f"{path}: its {META_KEY} entry is {size_text(meta_info.file_size)}, more than any "
                             f"network's description ({size_text(MAX_META_BYTES)}): {REMEDY}")
    try:
        declared = npz_sizes(archive.zip)
    except ValueError as err:
        raise ModelFileError(f"{path} is truncated or corrupt ({err}): {REMEDY}") from None
    try:
        meta = json.loads(str(archive[META_KEY]))
        networks = _network_specs(meta)
    except Exception:  # noqa: BLE001 - a description that does not parse is reported by _read_meta
        return
    if len(networks) > MAX_MEMBERS:
        raise ModelFileError(f"{path}: it lists {len(networks):,} members, more than the {MAX_MEMBERS} a committee "
                             f"may have: {COMMITTEE_REMEDY}")
    try:
        footprints = {prefix: estimate(specs, meta["input_shape"]) for prefix, specs in networks.items()}
    except Exception:  # noqa: BLE001 - as above
        return
    if any(footprint is None for footprint in footprints.values()):
        return
    held = 0
    for name, (_, _, nbytes) in declared.items():
        if name == META_KEY:
            continue
        held += nbytes
        prefix, key = _split_name(name, footprints)
        need = footprints[prefix].arrays.get(key) if prefix is not None else None
        if nbytes > 8 * math.prod(need or ()) * (need is not None) + SLACK_BYTES:
            what = f"its layer needs {math.prod(need):,} values" if need is not None else "no layer has such an array"
            raise ModelFileError(f"{path}: array {name} is {size_text(nbytes)}, but {what}: {REMEDY}")
    values = sum(footprint.values for footprint in footprints.values())
    if 4 * values > held + SLACK_BYTES:
        raise ModelFileError(f"{path}: its arrays do not fit its layers: the layer specs need {values:,} values "
                             f"({size_text(4 * values)}), the archive holds {size_text(held)}: {REMEDY}")


def _network_specs(meta: dict) -> dict[str, list]:
    """The layer specs of each network of a parsed description, by the prefix of its array names:
    ``{"": layers}`` for one network, ``{"member0/": layers, ...}`` for a committee (not yet checked)."""
    if meta.get("kind") == COMMITTEE:
        return {member_prefix(i): entry["layers"] for i, entry in enumerate(meta["members"])}
    return {"": meta["layers"]}


def _split_name(name: str, prefixes) -> tuple[str | None, str]:
    """(the prefix among ``prefixes`` that array ``name`` starts with, the rest), or (None, name)."""
    if "" in prefixes:
        return "", name
    head, slash, rest = name.partition("/")
    return (head + slash, rest) if head + slash in prefixes else (None, name)


def _read_meta(path: Path, arrays: dict) -> dict:
    """The parsed ``__meta__`` JSON, with its structure checked."""
    if META_KEY not in arrays:
        raise ModelFileError(f"{path} is not an nnlib model (it has no {META_KEY} entry): {REMEDY}")
    raw = arrays.pop(META_KEY)
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ModelFileError(f"{path}: {META_KEY} must be a JSON string, got a {raw.dtype} array: {REMEDY}")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: {META_KEY} is not valid JSON ({err}): {REMEDY}") from None
    except RecursionError:
        raise ModelFileError(f"{path}: {META_KEY} is nested too deeply to describe a network: {REMEDY}") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: {META_KEY} must be a JSON object, got {type(meta).__name__}: {REMEDY}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format {version!r}, this nnlib reads format {FORMAT_VERSION}: {REMEDY}")
    kind = meta.get("kind", None)
    if kind not in (None, COMMITTEE):
        raise ModelFileError(f"{path}: kind must be {COMMITTEE!r} or absent (one network), got {kind!r:.40}: {REMEDY}")
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ModelFileError(f"{path}: input_shape must be a list of positive integers, got {shape!r}: {REMEDY}")
    if kind == COMMITTEE:
        _check_members(path, meta.get("members"))
    else:
        _check_layers(path, meta.get("layers"))
    if not isinstance(meta.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: metadata must be a JSON object: {REMEDY}")
    return meta


def _check_layers(path: Path, specs, where: str = "") -> None:
    """``specs`` must be a non-empty list of dicts (whether they build is checked by building them)."""
    if not (isinstance(specs, list) and specs and all(isinstance(s, dict) for s in specs)):
        raise ModelFileError(f"{path}: {where}layers must be a non-empty list of layer specs, got {specs!r:.80}: {REMEDY}")


def _check_members(path: Path, members) -> None:
    """A committee's ``members``: MIN_MEMBERS to MAX_MEMBERS entries ``{"layers": [...], "metadata": {...}}``."""
    if not (isinstance(members, list) and all(isinstance(m, dict) for m in members)):
        raise ModelFileError(f"{path}: members must be a list of {{layers, metadata}} entries, got {members!r:.80}: "
                             f"{COMMITTEE_REMEDY}")
    if not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
        raise ModelFileError(f"{path}: it lists {len(members):,} members, a committee has {MIN_MEMBERS} to "
                             f"{MAX_MEMBERS}: {COMMITTEE_REMEDY}")
    for index, entry in enumerate(members):
        _check_layers(path, entry.get("layers"), f"member {index}: ")
        if not isinstance(entry.get("metadata", {}), dict):
            raise ModelFileError(f"{path}: member {index}: metadata must be a JSON object: {COMMITTEE_REMEDY}")


def load_model(path) -> tuple[Sequential | Committee, dict]:
    """Rebuild a model saved by :func:`save_model` or :func:`save_committee`.

    Returns ``(model in eval mode, metadata dict)``: a Sequential, or for a committee file a
    :class:`~nnlib.committee.Committee` and its metadata with ``"members"``, each member's own.
    Raises :class:`~nnlib.errors.ModelFileError` (one line: the file, the problem, what to do) for
    every file that is missing, unreadable or malformed, or whose weights are not all finite.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    meta = _read_meta(path, arrays)
    if meta.get("kind") == COMMITTEE:
        return _load_committee(path, meta, arrays)
    return _build_network(path, meta["layers"], meta["input_shape"], arrays).eval(), meta.get("metadata", {})


def _build_network(path: Path, specs: list, input_shape: list, arrays: dict, where: str = "", prefix: str = "") -> Sequential:
    """The network of ``specs`` holding ``arrays`` (named as :meth:`~nnlib.model.Sequential.state` names them),
    or a ModelFileError; ``where`` (``"member 1: "``) and ``prefix`` (``"member1/"``) name the member in it."""
    try:
        model = Sequential.from_specs(specs, tuple(input_shape), np.random.default_rng(0))
    except Exception as err:  # noqa: BLE001 - any spec that does not build is a malformed file
        raise ModelFileError(f"{path}: {where}its layer specs do not build a network ({err}): {REMEDY}") from None
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            raise ModelFileError(f"{path}: array {prefix}{name} has dtype {array.dtype}, expected floating point: {REMEDY}")
        if not np.isfinite(array).all():
            raise ModelFileError(f"{path}: array {prefix}{name} holds NaN or infinite values: {REMEDY}")
    try:
        model.load_state(arrays)
    except ValueError as err:
        raise ModelFileError(f"{path}: {where}its arrays do not fit its layers ({err}): {REMEDY}") from None
    return model


def _load_committee(path: Path, meta: dict, arrays: dict) -> tuple[Committee, dict]:
    """The committee of a checked description (:func:`_read_meta`) and its arrays, and its metadata."""
    entries = meta["members"]
    groups = {member_prefix(i): {} for i in range(len(entries))}
    for name, array in arrays.items():
        prefix, key = _split_name(name, groups)
        if prefix is None:
            raise ModelFileError(f"{path}: array {name} belongs to none of the committee's {len(entries)} members: "
                                 f"{COMMITTEE_REMEDY}")
        groups[prefix][key] = array
    members = [_build_network(path, entry["layers"], meta["input_shape"], groups[member_prefix(i)],
                              f"member {i}: ", member_prefix(i)) for i, entry in enumerate(entries)]
    try:
        committee = Committee(members, meta.get("weights"))
    except ArgumentError as err:
        raise ModelFileError(f"{path}: its members do not make a committee ({err}): {COMMITTEE_REMEDY}") from None
    metadata = {**meta.get("metadata", {}), "members": [entry.get("metadata", {}) for entry in entries]}
    return committee.eval(), metadata


def check_outputs(model: Sequential | Committee, path, logits=None) -> None:
    """Raise :class:`ModelFileError` when the model's outputs are not all finite.

    Finite weights can still overflow (every weight x1e30): predict, export and serve call this once
    on a small probe batch (``logits=None``: a black, a white and a random image) when they load a
    model, and predict again on the logits of the user's images, as evaluate does on the test set.
    """
    from .backend import to_numpy  # noqa: PLC0415

    if logits is None:
        probe = np.stack([np.zeros(model.input_shape), np.ones(model.input_shape),
                          np.random.default_rng(0).random(model.input_shape)]).astype(np.float32)
        with np.errstate(all="ignore"):
            logits = model.predict_logits(probe, len(probe))
    if not np.isfinite(to_numpy(logits)).all():
        raise ModelFileError(f"{path} gives non-finite outputs (its weights overflow float32): {REMEDY}")


def training_loss(metadata: dict, path) -> dict:
    """The ``train.loss`` section a model was trained with (``{"name": ..., ...}``), from its metadata."""
    train = metadata.get("train")
    loss = train.get("loss") if isinstance(train, dict) else None
    if not isinstance(loss, dict) or loss.get("name") not in LOSS_NAMES:
        raise ModelFileError(f"{path} records no training loss (metadata.train.loss): {REMEDY}")
    smoothing, half = loss.get("label_smoothing", 0.0), loss.get("half", True)
    if not valid_label_smoothing(smoothing) or not isinstance(half, bool):
        raise ModelFileError(f"{path}: metadata.train.loss is malformed ({loss!r:.80}): {REMEDY}")
    return {"name": loss["name"], "label_smoothing": float(smoothing), "half": half}


def _spec_text(spec: dict | None) -> str:
    if spec is None:
        return "nothing"
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


def load_weights(model: Sequential, path, what: str = "train.init_from") -> dict:
    """Copy the weights and buffers of model file ``path`` into ``model``; return the file's metadata.

    The file's architecture (input shape and every layer spec) must equal ``model``'s; otherwise a
    :class:`~nnlib.errors.ParamsError` names the first layer that differs (the params are what to fix).
    """
    source, metadata = load_model(path)
    if isinstance(source, Committee):
        raise ParamsError(f"{what}: {path} is a committee of {len(source)} networks: start from one network's "
                          "model file (one of its members)")
    if source.input_shape != model.input_shape:
        raise ParamsError(f"{what}: {path} takes inputs {source.input_shape}, train.model takes {model.input_shape}")
    ours, theirs = model.specs(), source.specs()
    for index in range(max(len(ours), len(theirs))):
        mine = ours[index] if index < len(ours) else None
        its = theirs[index] if index < len(theirs) else None
        if mine != its:
            raise ParamsError(f"{what}: {path} does not match train.model at layer {index}: "
                              f"params.yaml has {_spec_text(mine)}, the file has {_spec_text(its)}")
    model.load_state(source.state())
    return metadata
