"""The prepare stage: split MNIST, write augmented training shards, validation and test sets.

Layout of ``data/shards`` (all arrays uint8, written deterministically):

* ``train-00000.npz``, ... : ``x`` (n, 28, 28) and ``y`` (n,). The *train stream* is the train split
  as it is (copy 0) followed by ``copies`` distorted copies (copy c holds every train image exactly
  once, in the same order); it is cut, in order, into shards of ``shard_size`` images (the last
  one may be shorter). Shard i's distortions draw only from ``seeding.rng(seed, AUGMENT, i)``, so a
  shard can be rebuilt alone (:func:`shard_arrays`) and nothing depends on the number of workers.
* ``val.npz``, ``test.npz``: never distorted.
* ``manifest.json``: written last; its presence means every file beside it is complete.

How a run replaces the shard set (:func:`prepare`):

1. Check the inputs and params, touching nothing: the raw files (shapes, counts, labels 0..9) and
   the params against the data (``val_size`` and ``max_train`` against the train images).
2. Remove stale ``data/.shards.*.tmp`` directories: what runs killed with ``kill -9`` left behind
   (never data, so their space counts as free in the next check).
3. Check the free disk space against the estimated size of the new set: the old set stays until the
   swap, so the new one needs its full size free. A run refused in 1 or 3 leaves ``data/shards`` as it was.
4. Build the whole new set, manifest last, in a fresh sibling directory ``data/.shards.<random>.tmp``
   (each file renamed into place there once fully written), with at most ``2 x workers`` shards in
   flight, so memory stays bounded however many copies are asked for.
5. Swap: rename ``data/shards`` aside (``data/.shards.<random>.old.tmp``), rename the new directory to
   ``data/shards``, delete the old one. SIGINT and SIGTERM are held during the two renames.

A run that fails or is interrupted before the swap deletes its temporary directory and leaves the
previous ``data/shards`` byte-for-byte as it was; worker processes exit when the stage process dies.

Plus ``metrics/plots/augment_preview.png`` (a few train digits next to distorted copies), written
only once the new shards are in place. Only the ``prepare`` section of params.yaml (and the global
``seed``) is read.
"""
from __future__ import annotations

import os
import shutil
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from nnlib.mnist import paths, seeding
from nnlib.mnist.data import fetch
from nnlib.mnist.data.augment import AugmentConfig, distort
from nnlib.mnist.data.stream import NUM_CLASSES, read_idx
from nnlib.files import atomic_dir, check_destination, file_sha256, remove_stale_temporaries, save_npz, write_json
from nnlib.errors import InputError, ParamsError, exit_with_parent
from nnlib.mnist.config.params import PARAMS_FILE, load_section, validate
from nnlib.mnist.config.schema import PREPARE

RAW_DIR, SHARDS_DIR, PREVIEW_PATH = paths.RAW, paths.SHARDS, paths.PREVIEW
MANIFEST = "manifest.json"
SHARD_NAME = "train-{:05d}.npz"
IMAGE_SHAPE = (28, 28)
REFETCH = "re-run the fetch stage (dvc repro -s fetch)"
# Disk estimate: every image is 28 * 28 pixel bytes + 1 label byte; each file adds its .npy/.zip
# headers (about 500 bytes), its manifest entry and rounding up to a filesystem block: 8 KiB covers them.
BYTES_PER_IMAGE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] + 1
BYTES_PER_FILE = 8192
WINDOW_PER_WORKER = 2  # shards in flight per worker process: one running, one queued


def check_params(section: dict | None) -> dict:
    """Validate a ``prepare`` section (defaults filled in); raise ParamsError naming the key."""
    params = validate(section, PREPARE, "prepare")
    AugmentConfig.from_params(params["augment"])  # the checks across keys (elastic_alpha needs elastic_sigma)
    return params


def load_params(path=PARAMS_FILE) -> tuple[int, dict]:
    """The global ``seed`` and the validated ``prepare`` section of params.yaml (nothing else)."""
    seed, params = load_section("prepare", PREPARE, path)
    return seed, check_params(params)


def load_mnist(raw_dir=RAW_DIR) -> dict:
    """The four raw MNIST arrays (``train_images``, ``train_labels``, ``test_images``, ``test_labels``).

    Raises InputError naming the file and the fetch stage when one is missing or inconsistent
    (see :func:`check_raw_pair`).
    """
    raw_dir = Path(raw_dir)
    for name in paths.RAW_FILES.values():
        check_pinned(raw_dir / name)
    arrays = {key: read_idx(raw_dir / name) for key, name in paths.RAW_FILES.items()}
    for part in ("train", "test"):
        check_raw_pair(raw_dir / paths.RAW_FILES[f"{part}_images"], arrays[f"{part}_images"],
                       raw_dir / paths.RAW_FILES[f"{part}_labels"], arrays[f"{part}_labels"])
    return arrays


def check_pinned(path: Path) -> None:
    """Raise InputError when a raw file of MNIST's exact size is not MNIST's bytes (the fetch stage's SHA-256 pin).

    Fetch verified the file; this finds a byte changed since (a disk error, an edit). Files of another
    size (the small synthetic sets of the tests) are checked by their header and labels only.
    """
    if path.is_file() and path.stat().st_size == fetch.SIZES.get(path.name) and file_sha256(path) != fetch.SHA256[path.name]:
        raise InputError(f"{path} has MNIST's size but not its SHA-256 (its bytes changed after the fetch stage "
                         f"verified them): {REFETCH} (delete data/raw first)")


def check_raw_pair(images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray) -> None:
    """Raise InputError unless ``images`` is (n, 28, 28) with n >= 1 and ``labels`` is n digits 0..9.

    The exact MNIST sizes (60000 and 10000 images) are not required here: the fetch stage already
    checks every raw file's SHA-256, and the tests run the stage on small synthetic sets.
    """
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(f"{images_path}: images of shape {images.shape}, expected (n, 28, 28): {REFETCH}")
    if labels.ndim != 1:
        raise InputError(f"{labels_path}: labels of shape {labels.shape}, expected (n,): {REFETCH}")
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} holds {len(images)} images but {labels_path.name} holds {len(labels)} labels: {REFETCH}"
        )
    if len(images) == 0:
        raise InputError(f"{images_path} holds no images: {REFETCH}")
    if labels.max() >= NUM_CLASSES:
        raise InputError(f"{labels_path}: label {labels.max()} is not a digit 0..9: {REFETCH}")


def check_split(n: int, val_size: int, max_train: int) -> None:
    """Raise ParamsError unless ``val_size`` (and ``max_train``, when set) fit in ``n`` training images."""
    if val_size >= n:
        raise ParamsError(f"{PARAMS_FILE}: prepare.val_size must be less than the {n} training images, got {val_size}")
    if max_train > n - val_size:
        raise ParamsError(
            f"{PARAMS_FILE}: prepare.max_train ({max_train}) + prepare.val_size ({val_size}) exceed the {n} "
            f"training images: lower prepare.max_train (0 = all {n - val_size} images left after validation)"
        )


def split_indices(n: int, val_size: int, max_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``: (train indices, validation indices), both in shuffled order.

    ``max_train`` > 0 keeps only the first ``max_train`` shuffled train indices (see :func:`check_split`).
    """
    check_split(n, val_size, max_train)
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
    # Ctrl-C reaches the whole process group: the stage process handles it (it cancels the queued
    # shards and waits for the running ones), so a worker ignores it rather than dying mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the stage's handler, inherited through fork
    # A worker ends once the stage process dies (e.g. kill -9), instead of idling forever; what it wrote
    # lies in the run's temporary directory, which the next run deletes.
    exit_with_parent(parent_pid)


def _run_in_worker(index: int) -> dict:
    return _WORKER_JOB(index)


class BoundedWindow:
    """Run ``fn(0), ..., fn(count - 1)`` through ``submit`` with at most ``size`` futures in flight.

    The first ``size`` calls are submitted at construction; iterating yields ``(index, result)`` in
    completion order and submits the next call as each one is collected. Memory therefore holds at
    most ``size`` pending tasks and results, however large ``count`` is.
    """

    def __init__(self, submit: Callable[..., Future], fn: Callable[[int], object], count: int, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self._submit, self._fn, self._count, self._size = submit, fn, count, size
        self._pending: dict[Future, int] = {}
        self._next = 0
        self._top_up()

    def _top_up(self) -> None:
        while self._next < self._count and len(self._pending) < self._size:
            self._pending[self._submit(self._fn, self._next)] = self._next
            self._next += 1

    def __iter__(self) -> Iterator[tuple[int, object]]:
        while self._pending:
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = self._pending.pop(future)
                yield index, future.result()
            self._top_up()


def _collect(results, count: int, progress: bool) -> list[dict]:
    """Manifest entries, in shard order, from ``(index, entry)`` pairs arriving in any order."""
    entries: list[dict | None] = [None] * count
    with tqdm(total=count, desc="prepare: shards", unit="shard", disable=not progress) as bar:
        for index, entry in results:
            entries[index] = entry
            bar.update()
    return entries


def _write_shards(job: _ShardWriter, count: int, workers: int, progress: bool) -> list[dict]:
    """Write shards 0..count-1 (in-process for one worker); return their manifest entries in order."""
    if workers <= 1:
        return _collect(((index, job(index)) for index in range(count)), count, progress)
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(job, os.getpid())) as pool:
        try:
            # The first window forks the workers here, before the progress bar starts its thread.
            window = BoundedWindow(pool.submit, _run_in_worker, count, WINDOW_PER_WORKER * workers)
            return _collect(window, count, progress)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# --- checks before anything is touched ---------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """What a run will write, worked out from the params and the raw data before anything changes."""

    n_train: int  # images in the train split
    count: int  # train shards
    bytes_needed: int  # estimated size of the whole new shard set


def plan_shards(params: dict, n_train_images: int, n_test_images: int) -> ShardPlan:
    """Check the split params against the data (ParamsError) and size the new shard set."""
    val_size, max_train = params["val_size"], params["max_train"]
    check_split(n_train_images, val_size, max_train)
    n_train = max_train or n_train_images - val_size
    copies = params["augment"]["copies"]
    count = num_shards(n_train, copies, params["shard_size"])
    images = (copies + 1) * n_train + val_size + n_test_images
    files = count + 3  # the train shards, val.npz, test.npz, manifest.json
    return ShardPlan(n_train, count, images * BYTES_PER_IMAGE + files * BYTES_PER_FILE)


def disk_free(path) -> int:
    """Free bytes on the filesystem holding ``path`` (a test replaces this to simulate a full disk)."""
    return shutil.disk_usage(path).free


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _size(nbytes: float) -> str:
    """A byte count for people: ``512 bytes``, ``820.0 MiB``, ``3.4 GiB``."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    step = 0
    while nbytes >= 1024 and step < len(units) - 1:
        nbytes /= 1024
        step += 1
    return f"{nbytes:.0f} bytes" if step == 0 else f"{nbytes:.1f} {units[step]}"


def check_disk_space(out_dir: Path, plan: ShardPlan) -> None:
    """Refuse when the new shard set would not fit beside the old one (which stays until the swap).

    A ParamsError (exit code 2), not an InputError: the input files are fine (exit code 1 would send
    the user to re-fetch them for nothing); it is the size the params ask for (``augment.copies``,
    ``max_train``) that this disk cannot hold, and, as for any bad params, nothing has been touched.
    """
    where = _existing_ancestor(Path(out_dir).parent)
    free = disk_free(where)
    if plan.bytes_needed > free:
        raise ParamsError(
            f"{PARAMS_FILE}: the new shard set ({plan.count} train shards, val and test) needs about "
            f"{_size(plan.bytes_needed)} of disk in {where}, but only {_size(free)} is free (the old set "
            "is kept until the new one is complete): lower prepare.augment.copies or prepare.max_train, "
            "or free some space"
        )


def preview_caption(cfg: AugmentConfig, seed: int, copies: int | None = None) -> str:
    """The augmentation preview's caption: the params that drew it (prepare.augment, seed)."""
    ranges = (f"rotate ±{cfg.rotate:g}°, shift ±{cfg.shift:g} px, scale 1±{cfg.scale:g}, shear ±{cfg.shear:g}°, "
              f"elastic alpha {cfg.elastic_alpha:g} sigma {cfg.elastic_sigma:g}, flip {'on' if cfg.flip else 'off'}")
    if cfg.photometric:
        ranges += "; photometric p " + f"{cfg.photo_p:g}: " + ", ".join(
            f"{name} {value:g}" for name, value in cfg.severities.items() if value)
    per_image = f"{copies} distorted copies of each training image; " if copies is not None else ""
    return f"prepare.augment: {per_image}{ranges} (seed {seed})"


def write_preview(path, images: np.ndarray, cfg: AugmentConfig, seed: int, rows: int = 6, copies: int = 8,
                  copies_per_image: int | None = None) -> None:
    """PNG grid: ``rows`` train digits (first column) next to ``copies`` distorted copies each, captioned
    with the params (``copies_per_image``: prepare.augment.copies, when known).

    Digits and distortions come from the PREVIEW stream, so the preview never changes the shards.
    """
    from nnlib.mnist.plots import plt, save_figure  # noqa: PLC0415 - matplotlib only when drawing

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
    fig.text(0.5, 0.01, preview_caption(cfg, seed, copies_per_image), ha="center", va="bottom", fontsize=6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)


def prepare(
    seed: int,
    params: dict,
    raw_dir=RAW_DIR,
    out_dir=SHARDS_DIR,
    preview_path=PREVIEW_PATH,
    progress: bool = True,
) -> dict:
    """Run the whole stage with validated ``params`` (see :func:`check_params`); return the manifest.

    Everything is checked before anything changes, the new set is built beside the old one and
    swapped in at the end (module docstring): a refused, failed or interrupted run leaves ``out_dir``
    as it was and no temporary directory. The preview is drawn once the new shards are in place.
    """
    out_dir = Path(out_dir)
    if preview_path is not None:
        check_destination(preview_path)  # a folder or read-only file there is refused before the shards change
    raw = load_mnist(raw_dir)
    plan = plan_shards(params, len(raw["train_images"]), len(raw["test_images"]))
    remove_stale_temporaries([out_dir.parent], [out_dir.name])  # garbage of killed runs: their space counts as free
    check_disk_space(out_dir, plan)

    train_idx, val_idx = split_indices(len(raw["train_images"]), params["val_size"], params["max_train"], seed)
    with atomic_dir(out_dir) as new_dir:
        manifest = _build(new_dir, seed, params, raw, train_idx, val_idx, plan.count, progress)
    if preview_path is not None:
        train_x = raw["train_images"][train_idx]
        write_preview(preview_path, train_x, AugmentConfig.from_params(params["augment"]), seed,
                      copies_per_image=params["augment"]["copies"])
    return manifest


def _build(out_dir: Path, seed: int, params: dict, raw: dict, train_idx, val_idx, count: int, progress: bool) -> dict:
    """Write the val, test and ``count`` train shard files into ``out_dir``, then the manifest; return it."""
    aug = params["augment"]
    copies, shard_size = aug["copies"], params["shard_size"]
    train_x, train_y = raw["train_images"][train_idx], raw["train_labels"][train_idx]
    val_y = raw["train_labels"][val_idx]
    save_npz(out_dir / "val.npz", {"x": raw["train_images"][val_idx], "y": val_y})
    save_npz(out_dir / "test.npz", {"x": raw["test_images"], "y": raw["test_labels"]})

    workers = min(params["workers"] or os.cpu_count() or 1, count)
    job = _ShardWriter(out_dir, train_x, train_y, copies, shard_size, seed, AugmentConfig.from_params(aug))
    train_entries = _write_shards(job, count, workers, progress)

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
