"""Stage evaluate: model + test shard -> metrics/eval.json, metrics/predictions.csv, metrics/plots/*.png.

Run from the repository root: ``python stages/evaluate.py`` (the same command ``dvc repro -s evaluate`` runs).
The test set is used here, once, after the model has been chosen.
"""
from __future__ import annotations

import csv
from pathlib import Path

from nnlib import plots
from nnlib.data import load_shard, read_manifest
from nnlib.files import file_sha256, write_json, write_text
from nnlib.modelfile import load_model, training_loss
from nnlib.metrics import confusion_matrix, per_class_accuracy
from nnlib.errors import InputError, run_stage
from nnlib.params import load_section
from nnlib.training import EVALUATE_SCHEMA, evaluate, make_loss

SHARDS = Path("data/shards")
MODEL = Path("models/model.npz")
METRICS = Path("metrics")
PLOTS = METRICS / "plots"


def read_log(path: Path, meta: dict) -> list[dict]:
    """Rows of metrics/train_log.tsv as dicts of numbers, refusing a log of another run than the model's.

    The train stage records the log's SHA-256 in the model's metadata (models written before that
    record nothing, and their log is taken as it is).
    """
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by the train stage (dvc repro -s train)")
    expected = meta.get("train_log_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise InputError(f"{path} belongs to another training run than {MODEL}: re-run the train stage (dvc repro -s train)")
    try:
        with path.open() as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")]
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is corrupt ({err}): re-run the train stage (dvc repro -s train)") from None


def main() -> None:
    _, cfg = load_section("evaluate", EVALUATE_SCHEMA)
    model, meta = load_model(MODEL)
    model_sha256 = file_sha256(MODEL)
    loss_cfg = training_loss(meta, MODEL)
    log = read_log(METRICS / "train_log.tsv", meta)
    manifest = read_manifest(SHARDS)
    x, y = load_shard(SHARDS / manifest["test"]["file"])
    y = y.astype("int64")

    loss, accuracy, predictions = evaluate(model, make_loss(loss_cfg), x, y, cfg["batch_size"])
    matrix = confusion_matrix(y, predictions)
    per_class = per_class_accuracy(matrix)
    write_json(METRICS / "eval.json", {
        "accuracy": accuracy, "loss": loss, "errors": int((predictions != y).sum()), "images": len(y),
        "per_class": {str(k): float(v) for k, v in enumerate(per_class)}, "model_sha256": model_sha256,
    })
    write_text(METRICS / "predictions.csv", "actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in zip(y, predictions)))

    plots.training_curves(log, PLOTS / "curves.png")
    plots.confusion(matrix, PLOTS / "confusion.png")
    wrong = (predictions != y).nonzero()[0][: cfg["misclassified"]]
    plots.digit_grid(x[wrong], [f"true {y[i]} / pred {predictions[i]}" for i in wrong], PLOTS / "misclassified.png",
                     suptitle=f"first {len(wrong)} misclassified test digits")
    print(f"evaluate: test accuracy {accuracy:.4f} ({int((predictions != y).sum())} errors), loss {loss:.4f}")


if __name__ == "__main__":
    run_stage(main)
