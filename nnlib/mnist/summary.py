"""What a model file holds: a Keras-style layer table and the metadata saved with the model (``nnlib info``);
for a committee file, its members, each with its table and metadata.

:func:`describe` returns a JSON-ready dict; :func:`format_description` renders it as text. The test
accuracy is shown only when ``metrics/eval_details.json`` (written with ``metrics/eval.json``) records the
SHA-256 of this very file, so a
number measured on another model is never attributed to this one.
"""
from __future__ import annotations

import json
from pathlib import Path


from nnlib.committee import Committee
from nnlib.errors import InputError
from nnlib.files import file_sha256
from nnlib.modelfile import load_model


def layer_table(model) -> list[dict]:
    """One row per layer: index, type, options, output shape (without the batch axis), parameter count.

    Shapes are those the model inferred layer by layer when it was built (``model.layer_shapes``).
    """
    rows = []
    for index, (layer, shape) in enumerate(zip(model.layers, model.layer_shapes)):
        options = {k: v for k, v in layer.config().items() if k != "type"}
        rows.append({"index": index, "type": layer.type_name, "options": options,
                     "output_shape": list(shape), "parameters": int(sum(p.size for p in layer.params.values()))})
    return rows


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise InputError(f"{path} is not a valid evaluation record ({reason}): re-run dvc repro -s evaluate") from None
    if not isinstance(record, dict):
        raise InputError(f"{path} is not a valid evaluation record (not a JSON object): re-run dvc repro -s evaluate")
    return record


def scored_accuracy(eval_json: Path, model_sha256: str) -> tuple[float | None, str]:
    """(accuracy, why) from ``eval_json`` when it scored the file with ``model_sha256``, else (None, why not).

    The hash of the scored model is in ``eval_details.json`` beside ``eval_json`` (the evaluate stage
    writes the two together; a hash is no metric), or in ``eval_json`` itself (records of older runs).
    """
    if not eval_json.is_file():
        return None, f"not evaluated ({eval_json} not found: run dvc repro -s evaluate)"
    record = _read_record(eval_json)
    recorded, source = record.get("model_sha256"), eval_json
    details = eval_json.with_name("eval_details.json")
    if recorded is None and details.is_file():
        recorded, source = _read_record(details).get("model_sha256"), details
    if recorded != model_sha256:
        return None, f"not evaluated ({source} records another model file)" if recorded else \
            f"not evaluated (neither {eval_json} nor {details} records which model it scored: re-run dvc repro -s evaluate)"
    accuracy = record.get("accuracy")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        raise InputError(f"{eval_json}: accuracy must be a number, got {str(accuracy)[:40]}: re-run dvc repro -s evaluate")
    return float(accuracy), f"from {eval_json}"


def _number(value):
    """A figure recorded in the metadata, or None when it is missing or malformed."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def network_record(model, meta: dict) -> dict:
    """One network's layer table, parameter count and recorded metadata (seed, epoch, training params...)."""
    layers = layer_table(model)
    init = meta.get("init_from")
    return {
        "layers": layers, "total_parameters": sum(row["parameters"] for row in layers),
        "seed": _number(meta.get("seed")), "epoch": _number(meta.get("epoch")), "val_accuracy": _number(meta.get("val_accuracy")),
        "manifest_sha256": meta.get("manifest_sha256"), "nnlib_version": meta.get("nnlib_version"),
        "init_from": init if isinstance(init, dict) and {"path", "sha256"} <= set(init) else None,
        "train": meta.get("train") if isinstance(meta.get("train"), dict) else None,
    }


NETWORK_HEAD = ("layers", "total_parameters", "seed", "epoch", "val_accuracy")  # before the test accuracy
NETWORK_TAIL = ("manifest_sha256", "nnlib_version", "init_from", "train")  # after it


def describe(path, eval_json="metrics/eval.json") -> dict:
    """Everything ``nnlib info`` shows about the model file at ``path``, as a JSON-ready dict.

    A committee file gives ``"kind": "committee"``, its weights, and one record per member
    (:func:`network_record`, with its ``index``) under ``"members"``.
    """
    path = Path(path)
    model, meta = load_model(path)
    sha256 = file_sha256(path)
    accuracy, accuracy_source = scored_accuracy(Path(eval_json), sha256)
    head = {"file": str(path), "sha256": sha256, "bytes": path.stat().st_size}
    scored = {"test_accuracy": accuracy, "test_accuracy_source": accuracy_source}
    if isinstance(model, Committee):
        members = [{"index": i, **network_record(member, own)} for i, (member, own) in enumerate(zip(model.members, meta["members"]))]
        sources = meta.get("sources")
        return {**head, "kind": "committee", "input_shape": list(model.input_shape), "members": members,
                "weights": model.weights.tolist(), "total_parameters": sum(m["total_parameters"] for m in members),
                **scored, "nnlib_version": meta.get("nnlib_version"), "sources": sources if isinstance(sources, list) else None}
    record = network_record(model, meta)
    return {**head, "input_shape": list(model.input_shape), **{key: record[key] for key in NETWORK_HEAD},
            **scored, **{key: record[key] for key in NETWORK_TAIL}}


def _flat(params: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested params as (dotted key, value) pairs; the layer list is shown in the table instead."""
    out = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flat(value, f"{name}.")
        elif key != "model":
            out.append((name, value))
    return out


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _table_lines(layers: list[dict]) -> list[str]:
    """The ruled layer table: #, layer (options), output shape, params."""
    header = ("#", "layer (options)", "output shape", "params")
    cells = [(str(r["index"]), f"{r['type']} ({_options(r['options'])})" if r["options"] else r["type"],
              "(N, " + ", ".join(map(str, r["output_shape"])) + ")", f"{r['parameters']:,}") for r in layers]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)

    def fmt_row(row):
        return "  ".join(cell.rjust(w) if i in (0, 3) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return [line, fmt_row(header), line, *map(fmt_row, cells), line]


def _known(value, fmt="{}"):
    return "(not recorded)" if value is None else fmt.format(value)


def _record_lines(d: dict) -> list[str]:
    """A network's recorded metadata (:func:`network_record`), with the test accuracy when ``d`` has one."""
    init = d["init_from"]
    lines = [
        f"seed:              {_known(d['seed'])}",
        f"epoch kept:        {_known(d['epoch'])}",
        f"val accuracy:      {_known(d['val_accuracy'], '{:.4f}')}",
    ]
    if "test_accuracy_source" in d:
        lines.append(_test_accuracy_line(d))
    lines += [
        f"shard manifest:    sha256 {_known(d['manifest_sha256'])}",
        f"started from:      {init['path']} (sha256 {init['sha256']})" if init else "started from:      a fresh initialisation",
        f"nnlib version:     {_known(d['nnlib_version'])}",
    ]
    if d["train"]:
        lines += ["training params:"] + [f"  train.{key}: {json.dumps(value)}" for key, value in _flat(d["train"])]
    else:
        lines.append("training params:   (not recorded)")
    return lines


def _test_accuracy_line(d: dict) -> str:
    return (f"test accuracy:     {_known(d['test_accuracy'], '{:.4f}')}  ({d['test_accuracy_source']})"
            if d["test_accuracy"] is not None else f"test accuracy:     {d['test_accuracy_source']}")


def format_description(d: dict) -> str:
    """The text ``nnlib info`` prints: the layer table, then the metadata; for a committee, its
    summary, then each member's table and metadata."""
    if d.get("kind") == "committee":
        return _format_committee(d)
    lines = [f"model: {d['file']} ({d['bytes']:,} bytes, sha256 {d['sha256']})",
             f"input: (N, {', '.join(map(str, d['input_shape']))})", *_table_lines(d["layers"]),
             f"total parameters: {d['total_parameters']:,}", "", *_record_lines(d)]
    return "\n".join(lines)


def _format_committee(d: dict) -> str:
    weights = ", ".join(f"{w:g}" for w in d["weights"])
    lines = [f"committee: {d['file']} ({d['bytes']:,} bytes, sha256 {d['sha256']})",
             f"input: (N, {', '.join(map(str, d['input_shape']))})",
             f"members: {len(d['members'])}, their softmax probabilities averaged (weights {weights})",
             f"total parameters: {d['total_parameters']:,}", _test_accuracy_line(d),
             f"nnlib version:     {_known(d['nnlib_version'])}"]
    for source in d["sources"] or []:
        if isinstance(source, dict):
            lines.append(f"built from:        {source.get('path')} (sha256 {source.get('sha256')})")
    for member in d["members"]:
        lines += ["", f"member {member['index']}: {member['total_parameters']:,} parameters, seed {_known(member['seed'])}",
                  *_table_lines(member["layers"]), *_record_lines(member)]
    return "\n".join(lines)
