"""Throughput of the distortions (elastic + affine) and of shard building, in images per second.

    python bench/bench_augment.py [--images 20000] [--copies 3] [--max-train 0] [--repeat 3]

Rows:
  naive baseline   gaussian_filter on float64 fields + map_coordinates on the (N, 28, 28) batch
                   (3-D coordinates, identity on axis 0), per batch of 1000: the straightforward way
  distort, 1 core  nnlib.mnist.data.augment.distort in this process, with the config above and with affine only
  shards, workers  nnlib.mnist.data.shards.prepare (split, distort, write .npz) with 1 and the default worker
                   count (one per CPU core); images/s counts the distorted copies only (copy 0 is
                   written as it is)

MNIST comes from data/raw (the fetch stage) or else the gzip files in ../shared/mnist.
Each row is the best of --repeat runs; the machine is shared, so compare rows of the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]

from nnlib.mnist.data import shards
from nnlib.mnist.data.augment import AugmentConfig, distort
from nnlib.mnist.data.stream import read_idx
from nnlib.mnist.paths import RAW_FILES

CFG = AugmentConfig(rotate=10, shift=2, scale=0.1, elastic_alpha=8, elastic_sigma=3)
AFFINE_ONLY = dataclasses.replace(CFG, elastic_alpha=0.0, elastic_sigma=0.0)  # what the elastic field costs


def naive_distort(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, batch: int = 1000) -> np.ndarray:
    """The baseline: float64 everywhere, full 2-D gaussian_filter, map_coordinates on a 3-D batch."""
    out = np.empty_like(images)
    rows, cols = np.indices(images.shape[1:], dtype=np.float64)
    centre = (np.array(images.shape[1:]) - 1) / 2
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        n = len(x)
        angle = np.deg2rad(rng.uniform(-cfg.rotate, cfg.rotate, n))[:, None, None]
        zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale, n)[:, None, None]
        shift = rng.uniform(-cfg.shift, cfg.shift, (n, 2))
        fields = rng.uniform(-1, 1, (2, n, *x.shape[1:]))
        fields = ndimage.gaussian_filter(fields, (0, 0, cfg.elastic_sigma, cfg.elastic_sigma), mode="constant")
        fields *= cfg.elastic_alpha
        r = rows - centre[0] - shift[:, 0, None, None]
        c = cols - centre[1] - shift[:, 1, None, None]
        cos, sin = np.cos(angle), np.sin(angle)
        src_r = (cos * r + sin * c) / zoom + centre[0] + fields[0]
        src_c = (-sin * r + cos * c) / zoom + centre[1] + fields[1]
        index = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], src_r.shape)
        warped = ndimage.map_coordinates(x, [index, src_r, src_c], order=1, mode="grid-constant", output=np.float64)
        out[start : start + n] = np.clip(np.rint(warped), 0, 255)
    return out


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def raw_dir(tmp: Path) -> Path:
    """data/raw when the fetch stage ran, else the shared gzip files decompressed into ``tmp``."""
    local = ROOT / "data" / "raw"
    if all((local / name).exists() for name in RAW_FILES.values()):
        return local
    shared = Path(os.environ.get("MNIST_MIRROR", ROOT.parent / "shared" / "mnist"))
    for name in RAW_FILES.values():
        (tmp / name).write_bytes(gzip.decompress((shared / f"{name}.gz").read_bytes()))
    return tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="images for the distort rows")
    parser.add_argument("--copies", type=int, default=3, help="distorted copies for the shard rows")
    parser.add_argument("--max-train", type=int, default=0, help="train split cap for the shard rows (0 = all 55000)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = raw_dir(tmp)
        images = np.ascontiguousarray(read_idx(raw / RAW_FILES["train_images"])[: args.images])
        print(f"config: {CFG}")
        print(f"cpu cores: {os.cpu_count()}; {len(images)} images for the distort rows\n")
        rows = []

        naive = len(images) / best_time(lambda: naive_distort(images, np.random.default_rng(0), CFG), args.repeat)
        rows.append(("naive baseline (gaussian_filter + map_coordinates)", 1, naive))
        ours = len(images) / best_time(lambda: distort(images, np.random.default_rng(0), CFG), args.repeat)
        rows.append(("nnlib.mnist.data.augment.distort", 1, ours))
        affine = len(images) / best_time(lambda: distort(images, np.random.default_rng(0), AFFINE_ONLY), args.repeat)
        rows.append(("nnlib.mnist.data.augment.distort, affine only (alpha = 0)", 1, affine))

        section = {
            "val_size": 5000, "max_train": args.max_train, "shard_size": 10000,
            "augment": {"copies": args.copies, "rotate": CFG.rotate, "shift": CFG.shift, "scale": CFG.scale,
                        "elastic_alpha": CFG.elastic_alpha, "elastic_sigma": CFG.elastic_sigma},
        }
        for workers in (1, 0):
            params = shards.check_params(dict(section, workers=workers))

            manifests = []

            def build(params=params, manifests=manifests):
                out = tmp / "shards"
                manifests.append(shards.prepare(0, params, raw_dir=raw, out_dir=out, preview_path=None, progress=False))

            seconds = best_time(build, args.repeat)
            distorted = manifests[-1]["train_split_size"] * args.copies
            label = f"shard building, workers={workers or os.cpu_count()}" + (" (default)" if workers == 0 else "")
            rows.append((label, workers or os.cpu_count(), distorted / seconds))

    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'procs':>5}  {'images/s':>9}  {'x baseline':>10}")
    for label, procs, rate in rows:
        print(f"{label:<{width}}  {procs:>5}  {rate:>9,.0f}  {rate / naive:>9.1f}x")


if __name__ == "__main__":
    main()
