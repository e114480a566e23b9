"""Stage train: shards -> models/model.npz, metrics/train.json, metrics/train_log.tsv, metrics/timing.json.

Run from the repository root: ``python stages/train.py`` (the same command ``dvc repro -s train`` runs).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import nnlib
from nnlib import backend, seeding
from nnlib.data import ShardStream, load_shard, read_manifest
from nnlib.errors import InputError
from nnlib.files import file_sha256, write_json, write_text
from nnlib.modelfile import load_weights, save_model
from nnlib.model import Sequential
from nnlib.errors import Diverged, ParamsError, run_stage
from nnlib.params import load_section
from nnlib.training import TRAIN_SCHEMA, fit, make_loss, make_optimizer, make_schedule

SHARDS = Path("data/shards")
MODEL = Path("models/model.npz")
INIT_DIR = Path("models/init")  # dvc.yaml declares this folder a dependency, so a new init file re-runs train
METRICS = Path("metrics")
LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # deterministic: timings go to timing.json


def build_model(specs: list, input_shape: tuple, seed: int) -> Sequential:
    """The network from ``train.model``; spec and shape problems become a params error."""
    try:
        return Sequential.from_specs(specs, input_shape, seeding.rng(seed, seeding.INIT))
    except (ValueError, TypeError) as err:
        raise ParamsError(f"params.yaml: train.model: {err}") from None


def init_source(init_from: str) -> dict | None:
    """Check ``train.init_from`` (a model file under models/init/, or '' for a fresh start)."""
    if not init_from:
        return None
    path = Path(init_from)
    if INIT_DIR.resolve() not in path.resolve().parents:
        raise ParamsError(f"params.yaml: train.init_from must be a file under {INIT_DIR}/ (which dvc.yaml tracks), "
                          f"got {init_from!r}: copy it there, e.g. cp {init_from} {INIT_DIR}/{path.name}")
    if not path.is_file():
        raise InputError(f"{path} (train.init_from) is missing: copy a trained model there, or set train.init_from: ''")
    return {"path": path.as_posix(), "sha256": file_sha256(path)}


def log_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(LOG_COLUMNS)]
    lines += ["\t".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in LOG_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    seed, cfg = load_section("train", TRAIN_SCHEMA)
    backend.use(cfg["backend"])
    manifest = read_manifest(SHARDS)
    files = [s["file"] for s in manifest["train_shards"]]
    val = load_shard(SHARDS / manifest["val"]["file"])
    images_per_epoch = cfg["images_per_epoch"] or manifest["train_split_size"]

    init = init_source(cfg["init_from"])
    model = build_model(cfg["model"], (1, *manifest["image_shape"]), seed)
    if init:
        load_weights(model, init["path"])
        print(f"train: starting from the weights of {init['path']} (sha256 {init['sha256'][:12]})", file=sys.stderr)
    loss_fn = make_loss(cfg["loss"])
    optimizer = make_optimizer(model, cfg["optimizer"])
    steps_per_epoch = -(-images_per_epoch // cfg["batch_size"])
    interval = cfg["schedule"]["interval"]
    total = cfg["epochs"] * (steps_per_epoch if interval == "step" else 1)
    schedule = make_schedule(cfg["schedule"], cfg["optimizer"]["lr"], total)
    stream = ShardStream(SHARDS, files, seeding.rng(seed, seeding.SHUFFLE))
    print(f"train: {model.num_parameters():,} parameters, {cfg['epochs']} epochs of {images_per_epoch:,} images "
          f"from {len(files)} shards, batch {cfg['batch_size']}", file=sys.stderr)

    start = time.perf_counter()
    try:
        history = fit(model, loss_fn, optimizer, schedule, stream, epochs=cfg["epochs"],
                      images_per_epoch=images_per_epoch, batch_size=cfg["batch_size"], val=val,
                      interval=interval, keep_best=cfg["select"] == "best_val")
    except Diverged as err:
        raise Diverged(f"training diverged: {err}; no model was written") from None
    seconds = time.perf_counter() - start

    if cfg["select"] == "best_val":
        model.load_state(history.best_state)
    kept = history.best() if cfg["select"] == "best_val" else history.rows[-1]
    save_model(MODEL, model, {
        "seed": seed, "train": cfg, "epoch": kept["epoch"], "val_accuracy": kept["val_acc"],
        "manifest_sha256": file_sha256(SHARDS / "manifest.json"), "nnlib_version": nnlib.__version__, "init_from": init,
    })
    best = history.best()
    write_json(METRICS / "train.json", {
        "best_val_accuracy": best["val_acc"], "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
        "epochs": len(history.rows), "selected_epoch": kept["epoch"], "selected_val_accuracy": kept["val_acc"],
    })
    write_text(METRICS / "train_log.tsv", log_tsv(history.rows))
    images = cfg["epochs"] * images_per_epoch
    write_json(METRICS / "timing.json", {"train_seconds": round(seconds, 2), "images_per_second": round(images / seconds, 1),
                                         "seconds_per_epoch": round(seconds / cfg["epochs"], 2),
                                         "epoch_seconds": [round(row["seconds"], 2) for row in history.rows]})


if __name__ == "__main__":
    run_stage(main)
