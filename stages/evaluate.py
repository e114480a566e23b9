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

The committee pipeline (committee/dvc.yaml) scores its committee file with :func:`run` too, from
``stages/committee_evaluate.py``: the same report under ``committee/metrics/``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from nnlib import backend, evaluation, metrics, threads
from nnlib.committee import Committee
from nnlib.mnist import drawn, plots, robustness
from nnlib.mnist.data.stream import load_shard, minibatches, read_manifest
from nnlib.errors import InputError, run_stage
from nnlib.files import OutputSet, check_destination, file_sha256, remove_stale_temporaries, write_json, write_text
from nnlib.modelfile import load_model, training_loss
from nnlib.mnist.config.params import load_section, load_top_level
from nnlib.mnist.config.schema import EVALUATE
from nnlib.losses import make_loss
from nnlib.options import CROSS_ENTROPY

from nnlib.mnist.paths import DRAWN, EVAL_DETAILS, EVAL_METRICS, METRICS, MODEL, PLOTS, PREDICTIONS, SHARDS, TRAIN_LOG
from nnlib.mnist.predict import Failure, predict_paths


PNGS = ["curves.png", "confusion.png", "misclassified.png", "first_layer.png", "reliability.png", "features.png"]
OUTPUTS = [METRICS / "eval.json", METRICS / "eval_details.json", METRICS / "predictions.csv", *(PLOTS / name for name in PNGS)]
# A committee was never trained as one: it is scored by the cross-entropy of its mean probabilities (= its nll).
COMMITTEE_LOSS = {"name": CROSS_ENTROPY, "label_smoothing": 0.0, "half": True}


def read_log(path: Path, meta: dict, model_path: Path = MODEL) -> list[dict]:
    """Rows of metrics/train_log.tsv as dicts of numbers, refusing a log of another run than the model's.

    The train stage records the log's SHA-256 in the model's metadata (models written before that
    record nothing, and their log is taken as it is).
    """
    if not path.exists():
        raise InputError(f"{path} is missing: it is made by the train stage (dvc repro -s train)")
    expected = meta.get("train_log_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise InputError(f"{path} belongs to another training run than {model_path}: re-run the train stage (dvc repro -s train)")
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


def describe(model, meta: dict, preset: str, model_path: Path = MODEL) -> tuple[dict, dict, str]:
    """(the loss the test set is scored with, the metadata that records the train log, the figures' label)
    of a model, or of a committee: the cross-entropy of its mean probabilities, its first member's log
    (curves.png draws it, as first_layer.png and features.png show that member), its members' seeds."""
    if isinstance(model, Committee):
        seeds = ", ".join(str(member.get("seed")) for member in meta["members"])
        return COMMITTEE_LOSS, meta["members"][0], f"committee of {len(model)} · seeds {seeds}"
    return training_loss(meta, model_path), meta, f"preset {preset} · seed {meta.get('seed')}"


def run(seed: int, preset: str, cfg: dict, root: Path = Path("."), model_path: Path = MODEL, shards: Path = SHARDS,
        drawn_dir: Path = DRAWN) -> None:
    """The stage: score ``model_path`` (a model or a committee file) on the test shard of ``shards``, with
    ``root / metrics/train_log.tsv`` for its curves, and write the outputs under ``root / metrics``."""
    metrics_dir, plots_dir = root / METRICS, root / PLOTS
    remove_stale_temporaries([metrics_dir, plots_dir])
    for destination in OUTPUTS:  # a folder or a read-only file in the way is found before the test set is read
        check_destination(root / destination)
    backend.use(cfg["backend"])  # the model's arrays go to the device when it is cupy
    model, meta = load_model(model_path)
    model_sha256 = file_sha256(model_path)
    loss_cfg, log_meta, label = describe(model, meta, preset, model_path)
    log = read_log(root / TRAIN_LOG, log_meta, model_path)
    manifest = read_manifest(shards)
    x, y = load_shard(shards / manifest["test"]["file"])

    with threads.limit(cfg["threads"], kind="evaluate") as choice:  # the figures' PCA uses BLAS too
        result = evaluation.run(model, make_loss(loss_cfg), minibatches(x, y, cfg["batch_size"]))
        if not np.isfinite(result.logits).all():
            raise InputError(f"{model_path} gives non-finite outputs on the test set: re-train it (dvc repro -s train)")
        scores = evaluation.scalars(result, loss_cfg["name"])
        # The suite's entries run side by side, one per thread, each on a replica of the model (of every
        # member, for a committee), BLAS at one thread each.
        side_by_side = choice.threads if cfg["backend"] == "numpy" else 1
        with threadpool_limits(limits=1, user_api="blas"):
            robust = robustness.score(model, x, y, seed, cfg["robust_images"], cfg["batch_size"],
                                      threads=side_by_side, correct=result.correct)  # docs/robustness.md
        scores["robust_accuracy"] = robust.mean
        scores.update(drawn_scores(model, drawn_dir))
        title = f"{label} · test accuracy {100 * result.accuracy:.2f}%"
        details = {"model_sha256": model_sha256, **evaluation.details(result), "robustness": robust.details(),
                   "blas_threads": choice.threads}
        with OutputSet() as out:  # every output renamed into place together, only when all are written
            write_json(out.path(root / EVAL_METRICS), scores)
            write_json(out.path(root / EVAL_DETAILS), details)
            write_text(out.path(root / PREDICTIONS), predictions_csv(result))
            for name, figure in figures(result, model, x, log, title, cfg["misclassified"]):
                plots.save_figure(figure, out.path(plots_dir / name), atomic=False)
            plots.save_figure(robustness.figure(robust, title), out.path(plots_dir / "robustness.png"), atomic=False)
    print(f"evaluate: test accuracy {scores['accuracy']:.4f} ({scores['errors']} errors), {scores['loss_fn']} loss "
          f"{scores['loss']:.4f}, nll {scores['nll']:.4f}, macro F1 {scores['macro_f1']:.4f}, ECE {scores['ece']:.4f}, "
          f"robust accuracy {robust.mean:.4f} over {len(robust.accuracy)} corruptions of {robust.images} digits"
          + (f"; your {scores['drawn_images']} drawings: accuracy {scores['drawn_accuracy']:.4f}" if "drawn_images" in scores else ""))


def main() -> None:
    _, seed, preset = load_top_level()
    _, cfg = load_section("evaluate", EVALUATE)
    run(seed, preset, cfg)


if __name__ == "__main__":
    run_stage(main)
