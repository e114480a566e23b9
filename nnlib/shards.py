"""The prepare stage: split MNIST, write augmented training shards, validation and test sets.

Layout of ``data/shards`` (all arrays uint8, written deterministically and atomically):

* ``train-00000.npz``, ... : ``x`` (n, 28, 28) and ``y`` (n,). The *train stream* is the train split
  as it is (copy 0) followed by ``copies`` distorted copies (copy c holds every train image exactly
  once, in the same order); it is cut, in order, into shards of ``shard_size`` images (the last
  one may be shorter). Shard i's distortions draw only from ``seeding.rng(seed, AUGMENT, i)``, so a
  shard can be rebuilt alone (:func:`shard_arrays`) and nothing depends on the number of workers.
* ``val.npz``, ``test.npz``: never distorted.
* ``manifest.json``: written last (atomically). A run first deletes the manifest, then the shard,
  val, test and temporary files left by an earlier run, so after a crash or ``kill -9`` there is no
  manifest: shard files without a manifest are never taken as complete data. Every file is
  renamed into place only once fully written; worker processes exit when the stage process dies.

Plus ``metrics/plots/augment_preview.png``: a few train digits next to distorted copies.
Only the ``prepare`` section of params.yaml (and the global ``seed``) is read.
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import seeding
from .augment import AugmentConfig, distort
from .data import read_idx
from .files import save_npz, write_json
from .errors import InputError, ParamsError
from .params import PARAMS_FILE, Field, load_section, validate

RAW_DIR = Path("data/raw")
SHARDS_DIR = Path("data/shards")
PREVIEW_PATH = Path("metrics/plots/augment_preview.png")
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MANIFEST = "manifest.json"
SHARD_NAME = "train-{:05d}.npz"
NUM_CLASSES = 10


def _number(low=None, high=None, high_open=False):
    """A check for a finite number in [low, high] (or [low, high))."""

    def check(value):
        if not math.isfinite(value) or (low is not None and value < low):
            return False
        if high is None:
            return True
        return value < high if high_open else value <= high

    return check


AUGMENT_SCHEMA = {
    "copies": Field(int, 5, "an integer >= 0 (distorted copies of each train image)", lambda v: v >= 0),
    "rotate": Field(float, 10.0, "a number of degrees in [0, 180]", _number(0, 180)),
    "shift": Field(float, 2.0, "a number of pixels >= 0", _number(0)),
    "scale": Field(float, 0.1, "a number in [0, 1) (zoom uniform in [1 - scale, 1 + scale])", _number(0, 1, True)),
    "shear": Field(float, 0.0, "a number of degrees in [0, 90)", _number(0, 90, True)),
    "elastic_alpha": Field(float, 0.0, "a number >= 0 (elastic displacement scale, pixels)", _number(0)),
    "elastic_sigma": Field(float, 0.0, "a number >= 0 (elastic smoothing, pixels)", _number(0)),
    "flip": Field(bool, False, "true or false (mirror left-right with p = 0.5)"),
}

SCHEMA = {
    "val_size": Field(int, 5000, "an integer >= 1 (images held out for validation)", lambda v: v >= 1),
    "max_train": Field(int, 0, "an integer >= 0 (cap on train images; 0 = all)", lambda v: v >= 0),
    "shard_size": Field(int, 10000, "an integer >= 100 (images per shard)", lambda v: v >= 100),
    "workers": Field(int, 0, "an integer >= 0 (processes; 0 = one per CPU core)", lambda v: v >= 0),
    "augment": AUGMENT_SCHEMA,
}


def check_params(section: dict | None) -> dict:
    """Validate a ``prepare`` section (defaults filled in); raise ParamsError naming the key."""
    params = validate(section, SCHEMA, "prepare")
    aug = params["augment"]
    if aug["elastic_alpha"] > 0 and aug["elastic_sigma"] == 0:
        raise ParamsError(
            f"{PARAMS_FILE}: prepare.augment.elastic_alpha > 0 needs prepare.augment.elastic_sigma > 0, "
            f"got elastic_alpha={aug['elastic_alpha']!r}, elastic_sigma={aug['elastic_sigma']!r}"
        )
    return params


def load_params(path=PARAMS_FILE) -> tuple[int, dict]:
    """The global ``seed`` and the validated ``prepare`` section of params.yaml (nothing else)."""
    seed, params = load_section("prepare", SCHEMA, path)
    return seed, check_params(params)


def load_mnist(raw_dir=RAW_DIR) -> dict:
    """The four raw MNIST arrays (``train_images``, ``train_labels``, ``test_images``, ``test_labels``).

    Raises InputError naming the file and the fetch stage when one is missing or inconsistent.
    """
    raw_dir = Path(raw_dir)
    arrays = {key: read_idx(raw_dir / name) for key, name in RAW_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        path = raw_dir / RAW_FILES[f"{part}_images"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(
                f"{path}: images {images.shape} do not match labels {labels.shape}: re-run the fetch stage"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise InputError(f"{raw_dir / RAW_FILES[f'{part}_labels']}: labels above 9: re-run the fetch stage")
    return arrays


def split_indices(n: int, val_size: int, max_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``: (train indices, validation indices), both in shuffled order.

    ``max_train`` > 0 keeps only the first ``max_train`` shuffled train indices.
    """
    if val_size >= n:
        raise ParamsError(f"{PARAMS_FILE}: prepare.val_size must be less than the {n} training images, got {val_size}")
    order = seeding.rng(seed, seeding.SPLIT).permutation(n)
    val, train = order[:val_size], order[val_size:]
    if max_train:
        train = train[:max_train]
    return train, val


def num_shards(n_train: int, copies: int, shard_size: int) -> int:
    """Number of shards of the train stream ((copies + 1) * n_train images)."""
    return -(-(copies + 1) * n_train // shard_size)


def shard_arrays(index, train_x, train_y, copies, shard_size, seed, cfg: AugmentConfig):
    """Images and labels of shard ``index``, computed from the train split alone.

    Stream position p holds copy ``p // n_train`` of train image ``p % n_train``; copy 0 is the
    original, copies >= 1 are distorted with ``seeding.rng(seed, AUGMENT, index)``.
    """
    n_train = len(train_x)
    start = index * shard_size
    stop = min(start + shard_size, (copies + 1) * n_train)
    if not 0 <= start < stop:
        raise IndexError(f"shard {index} is outside the train stream")
    positions = np.arange(start, stop)
    source, copy = positions % n_train, positions // n_train
    x, y = train_x[source], train_y[source]  # fancy indexing: fresh arrays
    distorted = copy > 0
    if distorted.any():
        x[distorted] = distort(x[distorted], seeding.rng(seed, seeding.AUGMENT, index), cfg)
    return x, y


def _entry(name: str, labels: np.ndarray) -> dict:
    hist = np.bincount(labels, minlength=NUM_CLASSES)
    return {"file": name, "count": int(len(labels)), "label_histogram": [int(v) for v in hist]}


class _ShardWriter:
    """Builds and writes one shard; handed once to each worker process (not once per task)."""

    def __init__(self, out_dir, train_x, train_y, copies, shard_size, seed, cfg):
        self.out_dir = Path(out_dir)
        self.args = (train_x, train_y, copies, shard_size, seed, cfg)

    def __call__(self, index: int) -> dict:
        x, y = shard_arrays(index, *self.args)
        name = SHARD_NAME.format(index)
        save_npz(self.out_dir / name, {"x": x, "y": y})
        return _entry(name, y)


_WORKER_JOB: _ShardWriter | None = None


def _init_worker(job: _ShardWriter, parent_pid: int) -> None:
    global _WORKER_JOB  # noqa: PLW0603 - one job per worker process
    _WORKER_JOB = job
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker soon after the stage process dies (e.g. kill -9), instead of idling forever.

    Half-written shards stay ``.tmp`` files, which the next run deletes.
    """
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    os._exit(1)


def _run_in_worker(index: int) -> dict:
    return _WORKER_JOB(index)


def _write_shards(job: _ShardWriter, count: int, workers: int, progress: bool) -> list[dict]:
    """Write shards 0..count-1 (in-process for one worker); return their manifest entries in order."""
    entries: list[dict | None] = [None] * count
    if workers <= 1:
        for index in tqdm(range(count), desc="prepare: shards", unit="shard", disable=not progress):
            entries[index] = job(index)
        return entries
    # The pool starts its workers at the first submit, before the progress bar starts its thread.
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job, os.getpid())) as pool:
        futures = {pool.submit(_run_in_worker, index): index for index in range(count)}
        try:
            with tqdm(total=count, desc="prepare: shards", unit="shard", disable=not progress) as bar:
                for future in as_completed(futures):
                    entries[futures[future]] = future.result()
                    bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return entries


def clear_outputs(out_dir) -> None:
    """Delete what an earlier (possibly killed) run left: the manifest first, then data files."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for pattern in ("train-*.npz", "val.npz", "test.npz", ".*.tmp"):
        for path in out_dir.glob(pattern):
            path.unlink(missing_ok=True)


def write_preview(path, images: np.ndarray, cfg: AugmentConfig, seed: int, rows: int = 6, copies: int = 8) -> None:
    """PNG grid: ``rows`` train digits (first column) next to ``copies`` distorted copies each.

    Digits and distortions come from the PREVIEW stream, so the preview never changes the shards.
    """
    from .plots import plt, save_figure  # noqa: PLC0415 - matplotlib only when drawing

    rng = seeding.rng(seed, seeding.PREVIEW)
    rows = min(rows, len(images))
    originals = images[rng.choice(len(images), size=rows, replace=False)]
    variants = distort(np.repeat(originals, copies, axis=0), rng, cfg).reshape(rows, copies, *images.shape[1:])
    fig, axes = plt.subplots(rows, copies + 1, figsize=(0.9 * (copies + 1), 0.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(copies + 1):
            ax = axes[r, c]
            ax.imshow(originals[r] if c == 0 else variants[r, c - 1], cmap="gray_r", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("original", fontsize=8)
    axes[0, copies // 2 + 1].set_title("distorted copies", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def prepare(
    seed: int,
    params: dict,
    raw_dir=RAW_DIR,
    out_dir=SHARDS_DIR,
    preview_path=PREVIEW_PATH,
    progress: bool = True,
) -> dict:
    """Run the whole stage with validated ``params`` (see :func:`check_params`); return the manifest."""
    out_dir = Path(out_dir)
    clear_outputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_mnist(raw_dir)
    aug = params["augment"]
    cfg = AugmentConfig.from_params(aug)
    copies, shard_size = aug["copies"], params["shard_size"]

    train_idx, val_idx = split_indices(len(raw["train_images"]), params["val_size"], params["max_train"], seed)
    train_x, train_y = raw["train_images"][train_idx], raw["train_labels"][train_idx]
    val_y = raw["train_labels"][val_idx]
    save_npz(out_dir / "val.npz", {"x": raw["train_images"][val_idx], "y": val_y})
    save_npz(out_dir / "test.npz", {"x": raw["test_images"], "y": raw["test_labels"]})

    count = num_shards(len(train_x), copies, shard_size)
    workers = min(params["workers"] or os.cpu_count() or 1, count)
    job = _ShardWriter(out_dir, train_x, train_y, copies, shard_size, seed, cfg)
    train_entries = _write_shards(job, count, workers, progress)

    if preview_path is not None:
        write_preview(preview_path, train_x, cfg, seed)
    manifest = {
        "seed": seed,
        # workers changes no output, so it is left out: the manifest is the same for any worker count
        "params": {key: value for key, value in params.items() if key != "workers"},
        "image_shape": list(train_x.shape[1:]),
        "train_split_size": int(len(train_x)),
        "copies": copies,
        "shard_size": shard_size,
        "train_shards": train_entries,
        "val": _entry("val.npz", val_y),
        "test": _entry("test.npz", raw["test_labels"]),
    }
    write_json(out_dir / MANIFEST, manifest)  # last: its presence means every file above is complete
    return manifest
