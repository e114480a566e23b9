"""Stage train: shards -> models/model.npz, metrics/train.json, metrics/train_log.tsv, metrics/timing.json,
metrics/run_params.yaml.

Run from the repository root: ``python stages/train.py`` (the same command ``dvc repro -s train`` runs).

Everything is checked before training starts: params, the shard manifest and every shard's header
and labels, the ``init_from`` model, and that every output folder is writable. After every epoch a
checkpoint goes to ``models/checkpoints/`` and the live log to ``metrics/live/train_log.tsv``; a
killed run started again resumes from its checkpoint (``train.resume``). The outputs are written to
temporary files and renamed into place together at the end, so they always belong to one run.

``metrics/run_params.yaml`` records the effective values of the params people compare (params.yaml
leaves most keys null, meaning "the preset's value"). dvc.yaml declares it as a params file of the
evaluate stage, so ``dvc exp show`` and ``dvc params diff`` show what ran (``run.epochs``, ``run.lr``, ...).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

import nnlib
from nnlib import backend, checkpoints, threads
from nnlib.mnist import seeding
from nnlib.mnist.data.stream import NUM_CLASSES, ShardStream, check_shards, load_shard, minibatches, read_manifest
from nnlib.errors import Diverged, InputError, ParamsError, run_stage
from nnlib.files import OutputSet, check_destination, check_writable, data_sha256, file_sha256, remove_stale_temporaries, write_json, write_text
from nnlib.footprint import check_fits
from nnlib.model import EVAL_BATCH_SIZE, Sequential
from nnlib.parallel import DataParallel
from nnlib.modelfile import load_weights, save_model
from nnlib.mnist.config.params import load_section, load_top_level
from nnlib.mnist.paths import CHECKPOINTS, INIT, LIVE_LOG, METRICS, MODEL, RUN_PARAMS, SHARDS, TIMING, TRAIN_LOG, TRAIN_METRICS
from nnlib.mnist.config.schema import TRAIN
from nnlib.losses import make_loss
from nnlib.training import History, fit, make_optimizer, make_schedule, steps_per_epoch


LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # deterministic: timings go to timing.json
OUTPUTS = [MODEL, METRICS / "train.json", METRICS / "train_log.tsv", METRICS / "timing.json"]
MAX_IMAGES = 10**10  # epochs x images_per_epoch above this is a typo, not a training run
SOURCES = [Path(__file__), *sorted(Path(nnlib.__file__).parent.rglob("*.py"))]  # the code a checkpoint belongs to, subpackages included


def build_model(specs: list, input_shape: tuple, seed: int) -> Sequential:
    """The network from ``train.model``; spec and shape problems become a params error."""
    try:
        return Sequential.from_specs(specs, input_shape, seeding.rng(seed, seeding.INIT), num_classes=NUM_CLASSES)
    except (ValueError, TypeError) as err:
        raise ParamsError(f"params.yaml: train.model: {err}") from None


def init_source(init_from: str) -> dict | None:
    """Check ``train.init_from`` (a model file under models/init/, or '' for a fresh start)."""
    if not init_from:
        return None
    path = Path(init_from)
    if INIT.resolve() not in path.resolve().parents:
        raise ParamsError(f"params.yaml: train.init_from must be a file under {INIT}/ (which dvc.yaml tracks), "
                          f"got {init_from!r}: copy it there, e.g. cp {init_from} {INIT}/{path.name}")
    if not path.is_file():
        raise InputError(f"{path} (train.init_from) is missing: copy a trained model there, or set train.init_from: ''")
    return {"path": path.as_posix(), "sha256": file_sha256(path)}


def log_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(LOG_COLUMNS)]
    lines += ["\t".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in LOG_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def run_params_yaml(preset: str, seed: int, cfg: dict, images_per_epoch: int) -> str:
    """``metrics/run_params.yaml``: the effective values of the compared params, under one key ``run``
    (so no column of `dvc exp show` clashes with params.yaml's ``seed`` or train.json's ``epochs``)."""
    optimizer, schedule = cfg["optimizer"], cfg["schedule"]
    run = {"preset": preset, "seed": seed, "epochs": cfg["epochs"], "batch": cfg["batch_size"], "lr": optimizer["lr"],
           "optimizer": optimizer["name"], "schedule": schedule["name"], "weight_decay": optimizer["weight_decay"],
           "images_per_epoch": images_per_epoch, "loss": cfg["loss"]["name"], "workers": cfg["workers"], "init_from": cfg["init_from"] or "",
           "ema": optimizer["ema"], "ema_warmup": optimizer["ema_warmup"]}
    header = ("# Written by the train stage: the values this run used (params.yaml over the preset over the defaults).\n"
              "# Not an input: edit params.yaml, or use dvc exp run -S train.epochs=5 and the like.\n")
    return header + yaml.safe_dump({"run": run}, sort_keys=False)


def check_size(cfg: dict, images_per_epoch: int) -> None:
    if cfg["workers"] > cfg["batch_size"]:
        raise ParamsError(f"params.yaml: train.workers ({cfg['workers']}) is more than train.batch_size ({cfg['batch_size']}): "
                          "each worker needs a part of the batch; lower train.workers")
    total = cfg["epochs"] * images_per_epoch
    if total > MAX_IMAGES:
        raise ParamsError(f"params.yaml: train.epochs x images_per_epoch = {cfg['epochs']} x {images_per_epoch:,} = "
                          f"{total:,} images, more than {MAX_IMAGES:,}: lower train.epochs or train.images_per_epoch")


def main() -> None:
    _, _, preset = load_top_level()
    seed, cfg = load_section("train", TRAIN)
    backend.use(cfg["backend"])
    outputs = [MODEL.parent, METRICS, LIVE_LOG.parent, CHECKPOINTS]
    remove_stale_temporaries(outputs)
    manifest = read_manifest(SHARDS)
    check_shards(SHARDS, manifest)
    images_per_epoch = cfg["images_per_epoch"] or manifest["train_split_size"]
    check_size(cfg, images_per_epoch)
    init = init_source(cfg["init_from"])
    check_fits(cfg["model"], (1, *manifest["image_shape"]), cfg["batch_size"])  # before any layer allocates
    model = build_model(cfg["model"], (1, *manifest["image_shape"]), seed)
    if init:
        load_weights(model, init["path"])
        print(f"train: starting from the weights of {init['path']} (sha256 {init['sha256'][:12]})", file=sys.stderr)
    check_writable(outputs)
    for destination in OUTPUTS:  # a folder or a read-only file in the way is found now, not after training
        check_destination(destination)

    val_x, val_y = load_shard(SHARDS / manifest["val"]["file"])
    files = [s["file"] for s in manifest["train_shards"]]
    loss_fn = make_loss(cfg["loss"])
    optimizer = make_optimizer(model, cfg["optimizer"])
    interval = cfg["schedule"]["interval"]
    total = cfg["epochs"] * (steps_per_epoch(images_per_epoch, cfg["batch_size"]) if interval == "step" else 1)
    schedule = make_schedule(cfg["schedule"], cfg["optimizer"]["lr"], total)
    stream = ShardStream(SHARDS, files, seeding.rng(seed, seeding.SHUFFLE), counts=[s["count"] for s in manifest["train_shards"]])
    manifest_sha256 = file_sha256(SHARDS / "manifest.json")
    run_params = {k: v for k, v in cfg.items() if k != "resume"}
    digest = checkpoints.run_digest(seed, run_params, manifest_sha256, init and init["sha256"], SOURCES)

    held = checkpoints.lock(CHECKPOINTS)  # noqa: F841 - a second training in this folder is refused until this one ends
    history = History()
    resumed, note = checkpoints.find(CHECKPOINTS, digest) if cfg["resume"] else (None, "")
    if resumed:
        try:
            resumed.restore(model, optimizer, history)
            stream.fast_forward(resumed.stream_position)
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{resumed.path} does not fit this run ({err}): delete it, or set train.resume: false") from None
    if note:
        print(note, file=sys.stderr)
    setting, workers = cfg["threads"], cfg["workers"]
    if setting == threads.AUTO and resumed and resumed.threads and workers == 1:
        setting = resumed.threads  # the count the run started with: the resumed run stays byte-identical
        print(f"train: threads: auto keeps the {setting} BLAS thread(s) the run started with", file=sys.stderr)
    if optimizer.ema is not None:
        print(f"train: validating and saving a moving average of the weights (ema {optimizer.ema.decay:g}, "
              f"warm-up {'on' if optimizer.ema.warmup else 'off'}); the weights themselves go on training", file=sys.stderr)
    print(f"train: {model.num_parameters():,} parameters, {cfg['epochs']} epochs of {images_per_epoch:,} images "
          f"from {len(files)} shards, batch {cfg['batch_size']}", file=sys.stderr)

    def after_epoch(history: History, step: int) -> None:
        write_text(LIVE_LOG, log_tsv(history.rows))
        checkpoints.save(CHECKPOINTS, digest, model=model, optimizer=optimizer, history=history,
                         step=step, stream_position=stream.position, threads=choice.threads)

    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                threads.limit(setting, kind="train", blas=1 if workers > 1 else None) as choice, \
                DataParallel(model, workers, choice.threads) as parallel:  # divergence is reported in one line
            if workers == 1:
                print(f"train: {choice.describe()}", file=sys.stderr)
            else:  # the threads (or processes) run the workers; neither their count nor their kind changes a byte
                where = (f"this process and {workers - 1} worker process{'es' if workers > 2 else ''} on {choice.describe('core')}"
                         if parallel.processes else f"on {choice.describe('thread')}")
                print(f"train: {workers} data-parallel workers, BLAS at 1 thread each, {where}", file=sys.stderr)
            fit(parallel, loss_fn, optimizer, schedule, stream, epochs=cfg["epochs"], images_per_epoch=images_per_epoch,
                batch_size=cfg["batch_size"], val=lambda: minibatches(val_x, val_y, EVAL_BATCH_SIZE), interval=interval, keep_best=cfg["select"] == "best_val",
                history=history, on_epoch_end=after_epoch)
    except Diverged as err:
        if history.rows and cfg["resume"]:
            kept = (f"; the checkpoint of epoch {len(history.rows)} is kept in {CHECKPOINTS}/: a rerun with the same params "
                    f"resumes from it (and will likely diverge again), a rerun with other params (a lower lr) starts "
                    f"afresh; to start afresh with these params, delete {CHECKPOINTS}/ or set train.resume: false")
        else:
            kept = "; a rerun starts afresh"
        raise Diverged(f"training diverged: {err}; no model was written{kept}") from None

    if cfg["select"] == "best_val":
        model.load_state(history.best_state)  # the averaged weights of that epoch when ema is on
    elif optimizer.ema is not None:
        model.load_state(optimizer.ema.averaged())
    kept = history.best() if cfg["select"] == "best_val" else history.rows[-1]
    best = history.best()
    log = log_tsv(history.rows)
    seconds = sum(row["seconds"] for row in history.rows)
    with OutputSet() as out:  # all five are renamed into place together, only when all are written
        save_model(out.path(MODEL), model, {
            "seed": seed, "train": run_params, "epoch": kept["epoch"], "val_accuracy": kept["val_acc"],
            "manifest_sha256": manifest_sha256, "nnlib_version": nnlib.__version__, "init_from": init,
            "train_log_sha256": data_sha256(log),
        })
        write_json(out.path(TRAIN_METRICS), {
            "best_val_accuracy": best["val_acc"], "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
            "epochs": len(history.rows), "selected_epoch": kept["epoch"], "selected_val_accuracy": kept["val_acc"],
        })
        write_text(out.path(TRAIN_LOG), log)
        write_text(out.path(RUN_PARAMS), run_params_yaml(preset, seed, cfg, images_per_epoch))
        write_json(out.path(TIMING), {
            "train_seconds": round(seconds, 2), "images_per_second": round(cfg["epochs"] * images_per_epoch / seconds, 1),
            "seconds_per_epoch": round(seconds / cfg["epochs"], 2),
            "blas_threads": 1 if workers > 1 else choice.threads, "threads_setting": cfg["threads"],
            "workers": workers, "worker_threads": parallel.threads,  # bytes: workers and, with 1 worker, blas_threads
            "epoch_seconds": [round(row["seconds"], 2) for row in history.rows]})
    checkpoints.clear(CHECKPOINTS)


if __name__ == "__main__":
    run_stage(main)
