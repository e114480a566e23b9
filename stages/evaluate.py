"""Stage evaluate: model + test shard (+ your drawings in data/drawn/) -> metrics/eval.json,
metrics/eval_details.json, metrics/predictions.csv, metrics/plots/*.png; also the robustness suite
(nnlib/mnist/robustness.py, docs/robustness.md).

``eval_details.json`` records the SHA-256 of the model it scored (``nnlib info`` checks it); ``eval.json``
holds scalars only, no hash, so ``dvc metrics show`` stays narrow.

Run from the repository root: ``python stages/evaluate.py`` (the same command ``dvc repro -s evaluate`` runs).
The test set is used here, once, after the model has been chosen. Every output is written to a temporary
file and all are renamed into place together at the end (``OutputSet``), so they always belong to one run.
When data/drawn/ holds labelled drawings (saved from ``nnlib serve``'s page), eval.json also gets
``drawn_accuracy`` and ``drawn_images``: the model on them through ``nnlib predict``'s preprocessing.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from nnlib import backend, evaluation, metrics, threads
from nnlib.mnist import drawn, plots, robustness
from nnlib.mnist.data.stream import load_shard, minibatches, read_manifest
from nnlib.errors import InputError, run_stage
from nnlib.files import OutputSet, check_destination, file_sha256, remove_stale_temporaries, write_json, write_text
from nnlib.modelfile import load_model, training_loss
from nnlib.mnist.config.params import load_section, load_top_level
from nnlib.mnist.config.schema import EVALUATE
from nnlib.losses import make_loss

from nnlib.mnist.paths import DRAWN, EVAL_DETAILS, EVAL_METRICS, METRICS, MODEL, PLOTS, PREDICTIONS, SHARDS, TRAIN_LOG
from nnlib.mnist.predict import Failure, predict_paths


PNGS = ["curves.png", "confusion.png", "misclassified.png", "first_layer.png", "reliability.png", "features.png"]
OUTPUTS = [METRICS / "eval.json", METRICS / "eval_details.json", METRICS / "predictions.csv", *(PLOTS / name for name in PNGS)]


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


def predictions_csv(result: evaluation.Evaluation) -> str:
    """One row per test image, for DVC's confusion template."""
    return "actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in zip(result.y, result.predictions))


def drawn_scores(model, folder: Path = DRAWN) -> dict:
    """``{"drawn_accuracy", "drawn_images"}`` of the model on the labelled drawings in ``folder`` (read and
    preprocessed as ``nnlib predict`` does); {} when there are none. A drawing that cannot be read counts as wrong."""
    files, labels = drawn.labelled_files(folder)
    if not files:
        return {}
    results = predict_paths(model, files)
    right = sum(not isinstance(r, Failure) and r.digit == label for r, label in zip(results, labels))
    return {"drawn_accuracy": right / len(files), "drawn_images": len(files)}


def figures(result: evaluation.Evaluation, model, x: np.ndarray, log: list[dict], title: str, mistakes: int):
    """Yield (file name, figure) for every PNG of the stage, one at a time (each is closed once saved)."""
    yield "curves.png", plots.curves(log, title)
    yield "confusion.png", plots.confusion(result.confusion, title)
    shown = evaluation.confident_mistakes(result, mistakes)
    labels = [f"true {result.y[i]}, pred {result.predictions[i]}\np = {result.confidence[i]:.3f}" for i in shown]
    yield "misclassified.png", plots.digit_grid_figure(
        x[shown], labels, columns=6, suptitle=f"{title}\nthe {len(shown)} most confident of {int((~result.correct).sum())} "
                                              "mistakes (p: probability of the prediction)")
    yield "first_layer.png", plots.weight_images(*evaluation.first_layer_images(model), title)
    yield "reliability.png", plots.reliability(*metrics.calibration_bins(result.confidence, result.correct),
                                               metrics.expected_calibration_error(result.confidence, result.correct), title)
    points, explained = evaluation.pca_2d(result.features)
    yield "features.png", plots.feature_map(points, result.y, ~result.correct, explained, title)


def main() -> None:
    _, seed, preset = load_top_level()
    _, cfg = load_section("evaluate", EVALUATE)
    remove_stale_temporaries([METRICS, PLOTS])
    for destination in OUTPUTS:  # a folder or a read-only file in the way is found before the test set is read
        check_destination(destination)
    backend.use(cfg["backend"])  # the model's arrays go to the device when it is cupy
    model, meta = load_model(MODEL)
    model_sha256 = file_sha256(MODEL)
    loss_cfg = training_loss(meta, MODEL)
    log = read_log(TRAIN_LOG, meta)
    manifest = read_manifest(SHARDS)
    x, y = load_shard(SHARDS / manifest["test"]["file"])

    with threads.limit(cfg["threads"], kind="evaluate") as choice:  # the figures' PCA uses BLAS too
        result = evaluation.run(model, make_loss(loss_cfg), minibatches(x, y, cfg["batch_size"]))
        if not np.isfinite(result.logits).all():
            raise InputError(f"{MODEL} gives non-finite outputs on the test set: re-train it (dvc repro -s train)")
        scores = evaluation.scalars(result, loss_cfg["name"])
        with threadpool_limits(limits=1, user_api="blas"):  # the suite's entries run side by side, one per thread
            robust = robustness.score(model, x, y, seed, cfg["robust_images"], cfg["batch_size"],
                                      threads=choice.threads if cfg["backend"] == "numpy" else 1,  # docs/robustness.md
                                      correct=result.correct)
        scores["robust_accuracy"] = robust.mean
        scores.update(drawn_scores(model))
        title = f"preset {preset} · seed {meta.get('seed')} · test accuracy {100 * result.accuracy:.2f}%"
        details = {"model_sha256": model_sha256, **evaluation.details(result), "robustness": robust.details(),
                   "blas_threads": choice.threads}
        with OutputSet() as out:  # every output renamed into place together, only when all are written
            write_json(out.path(EVAL_METRICS), scores)
            write_json(out.path(EVAL_DETAILS), details)
            write_text(out.path(PREDICTIONS), predictions_csv(result))
            for name, figure in figures(result, model, x, log, title, cfg["misclassified"]):
                plots.save_figure(figure, out.path(PLOTS / name), atomic=False)
            plots.save_figure(robustness.figure(robust, title), out.path(PLOTS / "robustness.png"), atomic=False)
    print(f"evaluate: test accuracy {scores['accuracy']:.4f} ({scores['errors']} errors), {scores['loss_fn']} loss "
          f"{scores['loss']:.4f}, nll {scores['nll']:.4f}, macro F1 {scores['macro_f1']:.4f}, ECE {scores['ece']:.4f}, "
          f"robust accuracy {robust.mean:.4f} over {len(robust.accuracy)} corruptions of {robust.images} digits"
          + (f"; your {scores['drawn_images']} drawings: accuracy {scores['drawn_accuracy']:.4f}" if "drawn_images" in scores else ""))


if __name__ == "__main__":
    run_stage(main)
