"""What does streaming the shards cost the training loop, against the same loop over arrays in memory?

    python bench/bench_stream.py                      # copies 5, 2 epochs of 55,000, 3 interleaved pairs
    python bench/bench_stream.py --repeats 5 --threads 2
    python bench/bench_stream.py --nnlib-root /path/to/other/checkout   # time another nnlib (A/B)

Shards are built with ``nnlib.shards.prepare`` (augment.copies = --copies, default 5) from data/raw in a
temporary directory (deleted afterwards). Both loops run ``nnlib.training.fit`` with the default model
of params.yaml (flatten - dense 800 - relu - dense 10, batch 64, SGD Nesterov momentum 0.9, one-cycle lr
0.05, validation on val.npz after every epoch), the same initial weights, and --epochs epochs of
--images images:

  shard stream  ``nnlib.data.ShardStream`` over the train shards, as stages/train.py uses it
  in memory     ``InMemoryStream`` below: every train shard loaded once up front into one uint8 array;
                each pass is a ``Generator.permutation``, batches are ``to_batch(x[idx])``, as
                ``nnlib.data.minibatches`` does; epochs continue where the last one stopped

Runs alternate (stream, memory, stream, memory, ...) after one untimed warm-up of each, so machine
noise hits both alike; seconds per epoch are medians, and the overhead is the median of the paired
ratios stream/memory - 1 (wall time). On a shared 2-core machine a busy neighbour can slow one run by
2x or more, and shows as a low CPU/wall ratio (about 2 when the process gets both cores for its 2 BLAS
threads, about 1 when it gets one): the verdict uses only the pairs where both runs reached >= 85% of
min(BLAS threads, CPUs), when there are at least 2 such pairs (otherwise all pairs, with a warning).
Floor: overhead <= --floor-pct (5%); exit code 1 when it is broken. Also printed: the median over all
pairs, the same from the process's CPU time, and the ratio of the fastest runs. Use --repeats 5.

A fresh ShardStream starts with an empty window, so a short run reads a little more than its share of
shards (2 x 55,000 images = 11 shards read as 4 windows of 3 = 12 shards): a slight overestimate.

Then a data-only breakdown (no model; medians of at least 5 interleaved passes, cheap and much steadier
than the training runs): the same images drawn from each stream, the time split into np.load of shards
(``nnlib.data.load_shard``), window build (``next`` on ShardStream._chunks minus load_shard: copying the
shards into the window buffer, the permutation, and any shard reading done another way), ``to_batch``,
and the rest (the per-batch gather in _take, label casts, generator overhead). The extra data time of the stream, as a share
of a baseline training run, estimates the overhead without the noise of training.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


from nnlib_select import select_nnlib  # noqa: E402 - bench/ is on sys.path for `python bench/x.py`

select_nnlib()

import numpy as np  # noqa: E402

from nnlib import data, seeding, shards  # noqa: E402
from nnlib.backend import to_device  # noqa: E402
from nnlib.model import Sequential  # noqa: E402
from nnlib.training import fit, make_loss, make_optimizer, make_schedule  # noqa: E402

SPECS = [{"type": "flatten"}, {"type": "dense", "out": 800}, {"type": "relu"}, {"type": "dense", "out": 10}]
OPTIMIZER = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0,
             "decay_bias_and_norm": True, "betas": [0.9, 0.999], "eps": 1e-8}
SCHEDULE = {"name": "onecycle", "warmup": 0, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
LOSS = {"name": "cross_entropy", "label_smoothing": 0.0, "half": True}


class InMemoryStream:
    """The baseline: ``ShardStream``'s ``epoch(images, batch_size)`` interface over uint8 arrays in memory.

    x: (N, 28, 28) uint8, y: (N,). Each pass over the data is one ``rng.permutation``; epochs continue
    where the last one stopped and wrap around, like the shard stream.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        self.x, self.y, self.rng = x, y, rng
        self._order, self._pos = rng.permutation(len(x)), 0

    def _indices(self, count: int) -> np.ndarray:
        parts = []
        while count:
            if self._pos == len(self._order):
                self._order, self._pos = self.rng.permutation(len(self.x)), 0
            part = self._order[self._pos : self._pos + count]
            self._pos += len(part)
            count -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def epoch(self, images: int, batch_size: int):
        for start in range(0, images, batch_size):
            idx = self._indices(min(batch_size, images - start))
            yield data.to_batch(self.x[idx]), to_device(self.y[idx].astype(np.int64))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=5, help="augment.copies of the shard set (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run (default 2)")
    p.add_argument("--images", type=int, default=55_000, help="images per epoch (default 55,000: the train split)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each loop, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS threads via threadpoolctl (default 0: the library default, as dvc repro runs)")
    p.add_argument("--floor-pct", type=float, default=5.0, help="largest acceptable overhead, percent (default 5)")
    p.add_argument("--raw-dir", default=str(ROOT / "data" / "raw"), help="the MNIST IDX files (default data/raw)")
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary shard directory (path is printed)")
    p.add_argument("--nnlib-root", default=str(ROOT),
                   help="directory holding the nnlib package to time (default: this checkout), for A/B runs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def limit_threads(n: int):
    """Limit BLAS threads with threadpoolctl when asked and installed; returns (limiter, description)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits  # noqa: PLC0415
    except ImportError:
        return None, "threadpoolctl not installed (BLAS threads: library default)"
    limiter = threadpool_limits(limits=n, user_api="blas") if n > 0 else None
    blas = [f"{i['internal_api']} {i.get('version')} threads={i['num_threads']}"
            for i in threadpool_info() if i["user_api"] == "blas"]
    return limiter, "; ".join(blas) or "no BLAS found by threadpoolctl"


def blas_threads() -> int:
    """Threads numpy's BLAS uses now (threadpoolctl), else the number of CPUs."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
        counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    except ImportError:
        counts = []
    return max(counts) if counts else (os.cpu_count() or 1)


def make_stream(kind: str, shard_dir: Path, files: list[str], arrays, seed: int):
    rng = seeding.rng(seed, seeding.SHUFFLE)
    if kind == "stream":
        return data.ShardStream(shard_dir, files, rng)
    return InMemoryStream(*arrays, rng)


def timed_fit(kind: str, args, shard_dir, files, arrays, val) -> tuple[float, float, list[float], float]:
    """One training run; returns (wall seconds, CPU seconds of this process, wall seconds of each epoch,
    final val accuracy). CPU time is steadier than wall time when other processes compete for the cores."""
    model = Sequential.from_specs(SPECS, (1, 28, 28), seeding.rng(args.seed, seeding.INIT))
    optimizer = make_optimizer(model, OPTIMIZER)
    steps = args.epochs * -(-args.images // args.batch_size)
    schedule = make_schedule(SCHEDULE, OPTIMIZER["lr"], steps)
    stream = make_stream(kind, shard_dir, files, arrays, args.seed)
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # fit's per-epoch lines
        history = fit(model, make_loss(LOSS), optimizer, schedule, stream, epochs=args.epochs,
                      images_per_epoch=args.images, batch_size=args.batch_size, val=val, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, [row["seconds"] for row in history.rows], history.rows[-1]["val_acc"]


class Timer:
    """Accumulates seconds spent in wrapped callables and iterators."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, key, dt):
        self.seconds[key] = self.seconds.get(key, 0.0) + dt

    def wrap(self, key, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(key, time.perf_counter() - t)
        return timed

    def wrap_iter(self, key, it):
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.add(key, time.perf_counter() - t)
            yield item


def data_only(kind: str, args, shard_dir, files, arrays) -> dict:
    """Draw epochs * images from a stream without a model; split the time by where it goes."""
    timer = Timer()
    real_load, real_to_batch = data.load_shard, data.to_batch
    data.load_shard = timer.wrap("load_shard", real_load)  # ShardStream and InMemoryStream look these up
    data.to_batch = timer.wrap("to_batch", real_to_batch)  # in nnlib.data at call time
    try:
        stream = make_stream(kind, shard_dir, files, arrays, args.seed)
        if kind == "stream" and hasattr(stream, "_chunks"):  # window build = next(_chunks), incl. load_shard
            stream._chunks = timer.wrap_iter("window", stream._chunks)
        start = time.perf_counter()
        batches = 0
        for _ in range(args.epochs):
            for _xb, _yb in stream.epoch(args.images, args.batch_size):
                batches += 1
        total = time.perf_counter() - start
    finally:
        data.load_shard, data.to_batch = real_load, real_to_batch
    s = timer.seconds
    load = s.get("load_shard", 0.0)
    window = s.get("window", 0.0) - load if kind == "stream" else 0.0
    to_batch = s.get("to_batch", 0.0)
    return {"total": total, "load_shard": load, "window": window, "to_batch": to_batch,
            "rest": total - load - window - to_batch, "batches": batches}


def main(argv=None) -> int:
    args = parse_args(argv)
    limiter, blas = limit_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        shard_dir = work / "shards"
        print(f"building shards (copies {args.copies}) in {work} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        params = shards.check_params({"augment": {"copies": args.copies}})
        manifest = shards.prepare(args.seed, params, args.raw_dir, shard_dir, work / "augment_preview.png",
                                  progress=sys.stderr.isatty())
        print(f"  {len(manifest['train_shards'])} shards in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        files = [s["file"] for s in manifest["train_shards"]]
        loaded = [data.load_shard(shard_dir / f) for f in files]
        arrays = (np.concatenate([s[0] for s in loaded]), np.concatenate([s[1] for s in loaded]))
        del loaded
        val = data.load_shard(shard_dir / manifest["val"]["file"])

        kinds = ("stream", "memory")
        for kind in kinds:  # warm-up: page cache, BLAS threads, allocator
            w = argparse.Namespace(**{**vars(args), "epochs": 1, "images": min(args.images, 10 * args.batch_size)})
            timed_fit(kind, w, shard_dir, files, arrays, val)
        walls = {k: [] for k in kinds}
        cpus = {k: [] for k in kinds}
        epochs = {k: [] for k in kinds}
        accs = {}
        for rep in range(args.repeats):
            for kind in kinds:
                wall, cpu, per_epoch, accs[kind] = timed_fit(kind, args, shard_dir, files, arrays, val)
                walls[kind].append(wall)
                cpus[kind].append(cpu)
                epochs[kind].extend(per_epoch)
                print(f"  run {rep + 1}/{args.repeats} {kind:6s}: {wall:.2f}s wall, {cpu:.2f}s CPU "
                      f"({', '.join(f'{s:.2f}' for s in per_epoch)} s/epoch)", file=sys.stderr, flush=True)
        samples = {k: [] for k in kinds}
        for _ in range(max(args.repeats, 5)):  # cheap: medians of interleaved data-only passes
            for kind in kinds:
                samples[kind].append(data_only(kind, args, shard_dir, files, arrays))
        breakdown = {k: {key: statistics.median(s[key] for s in v) for key in v[0]} for k, v in samples.items()}
    finally:
        if args.keep_dir:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if limiter is not None:
            limiter.restore_original_limits()

    ratios = [a / b for a, b in zip(walls["stream"], walls["memory"])]
    cpu_ratios = [a / b for a, b in zip(cpus["stream"], cpus["memory"])]
    cpu_overhead = 100 * (statistics.median(cpu_ratios) - 1)
    # A run that got its cores has CPU/wall near the BLAS thread count (about 2 with 2 threads on 2 cores);
    # a busy neighbour lowers it. The verdict uses the pairs where both runs got their cores, when 2+ did.
    usage = {k: [c / w for c, w in zip(cpus[k], walls[k])] for k in kinds}
    expected = max(1, min(blas_threads(), os.cpu_count() or 1))
    quiet = [i for i in range(args.repeats) if min(usage["stream"][i], usage["memory"][i]) >= 0.85 * expected]
    verdict_ratios = [ratios[i] for i in quiet] if len(quiet) >= 2 else ratios
    overhead = 100 * (statistics.median(verdict_ratios) - 1)
    ok = overhead <= args.floor_pct
    n = args.epochs * args.images
    print(f"\nnnlib: {Path(data.__file__).parent}")
    print(f"fit(), MLP 784-800-10, batch {args.batch_size}, SGD Nesterov, one-cycle; {args.epochs} epochs x "
          f"{args.images:,} images per run (+ val 5,000 per epoch), {args.repeats} interleaved runs each; "
          f"shards: copies {args.copies}, {len(files)} files; BLAS: {blas}")
    print("| loop | s/epoch, wall (median) | wall s/epoch (min..max) | CPU s/epoch, all threads (median) | images/s (median run) "
          "| final val acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, label in (("memory", "in memory (baseline)"), ("stream", "ShardStream")):
        e = epochs[kind]
        print(f"| {label} | {statistics.median(e):.3f} | {min(e):.3f}..{max(e):.3f} | "
              f"{statistics.median(cpus[kind]) / args.epochs:.3f} | {n / statistics.median(walls[kind]):,.0f} | "
              f"{accs[kind]:.4f} |")
    print(f"\nCPU/wall per run (cores it got): stream {', '.join(f'{u:.2f}' for u in usage['stream'])}; "
          f"memory {', '.join(f'{u:.2f}' for u in usage['memory'])}; undisturbed pairs (both >= 85% of "
          f"{expected}): {len(quiet)} of {args.repeats}")
    if len(quiet) < 2:
        print("WARNING: fewer than 2 undisturbed pairs: the machine was busy, the verdict below uses all pairs "
              "and is not conclusive; run again when it is quiet")
    print(f"overhead of the shard stream, wall: {overhead:+.1f}% (median of paired run ratios "
          f"{', '.join(f'{ratios[i]:.3f}' for i in (quiet if len(quiet) >= 2 else range(args.repeats)))}"
          f"{' (undisturbed pairs)' if len(quiet) >= 2 else ''}); floor <= {args.floor_pct:g}%: {'pass' if ok else 'FAIL'}")
    print(f"overhead of the shard stream, wall, all pairs: {100 * (statistics.median(ratios) - 1):+.1f}% "
          f"(ratios {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"overhead of the shard stream, CPU:  {cpu_overhead:+.1f}% (paired ratios "
          f"{', '.join(f'{r:.3f}' for r in cpu_ratios)})")
    print(f"overhead of the shard stream, fastest runs: {100 * (min(walls['stream']) / min(walls['memory']) - 1):+.1f}% "
          f"(other processes only ever slow a run down, so the minimum is the least disturbed)")

    print(f"\ndata only (no model), {n:,} images in batches of {args.batch_size}, seconds (median of "
          f"{len(samples['stream'])} interleaved passes):")
    print("| loop | total | np.load shards | window build | to_batch | rest | us/batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, label in (("memory", "in memory"), ("stream", "ShardStream")):
        b = breakdown[kind]
        print(f"| {label} | {b['total']:.3f} | {b['load_shard']:.3f} | {b['window']:.3f} | {b['to_batch']:.3f} | "
              f"{b['rest']:.3f} | {1e6 * b['total'] / b['batches']:.0f} |")
    extra = breakdown["stream"]["total"] - breakdown["memory"]["total"]
    print(f"stream - memory, data only: {extra:+.3f}s = {100 * extra / min(walls['memory']):+.1f}% "
          f"of the fastest baseline training run ({min(walls['memory']):.2f}s): the overhead estimated without "
          f"training noise")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
