"""How much could two threads add? A bound for data parallelism over the two cores.

    python bench/bench_threads.py                  # the default cnn, 12 rounds
    python bench/bench_threads.py --preset cnn-small --rounds 20

nnlib trains one batch at a time in one Python thread: the GEMMs use both cores (BLAS threads), the
elementwise passes (batch norm, pooling, im2col, col2im) one. This script times, interleaved in the same
process, on random data at the preset's batch size:

- ``one step``: forward + loss + backward of the whole batch, BLAS on ``--threads`` threads (what
  training does today);
- ``two halves``: two copies of the model, each running forward + loss + backward on half the batch
  in its own Python thread, BLAS on one thread each. BatchNorm is *not* synchronised between the halves
  and the gradients are not summed, so this is a lower bound on the time of real data parallelism,
  not an implementation of it.

Each variant runs in its own child process (after one step with two BLAS threads, OpenBLAS's worker
keeps spinning for a while and would take a core from the two Python threads), ``--rounds`` times,
alternating, with glibc's default malloc (one arena per thread, whose trimming hands freed pages back
to the kernel, so big arrays page-fault again) and with ``MALLOC_ARENA_MAX=1``. Columns: the median
over the children of their median ms per step, and of their minor page faults per step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cnn", help="preset whose network and batch size are timed (default cnn)")
    p.add_argument("--rounds", type=int, default=3, help="child processes per variant and malloc setting (default 3)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per child, after 10 untimed (default 40)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads of the one-step variant (default 2)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


VARIANTS = ("one step", "two halves")


def measure(variant: str, preset: str, steps: int, threads: int) -> dict:
    """In this process: median ms and page faults per step of one variant."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    sys.path.insert(0, str(HERE))
    from bench_presets import load_preset  # noqa: PLC0415
    from nnlib.model import Sequential  # noqa: PLC0415
    from nnlib.losses import make_loss  # noqa: PLC0415

    cfg = load_preset(preset)
    batch = cfg["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    copies = 1 if variant == "one step" else 2
    models = [Sequential.from_specs(cfg["model"], (1, 28, 28), np.random.default_rng(0)).train() for _ in range(copies)]
    loss = make_loss(cfg["loss"])
    pool = ThreadPoolExecutor(2)

    def step(model, xb, yb):
        _, grad = loss.value_and_grad(model.forward(xb), yb)
        model.backward(grad)

    def two_halves():
        half = batch // 2
        parts = [pool.submit(step, models[0], x[:half], y[:half]), pool.submit(step, models[1], x[half:], y[half:])]
        for part in parts:
            part.result()

    run = (lambda: step(models[0], x, y)) if variant == "one step" else two_halves
    times, faults = [], []
    with threadpool_limits(threads if variant == "one step" else 1, user_api="blas"):
        for i in range(10 + steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            run()
            if i >= 10:
                times.append(time.perf_counter() - start)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"ms": 1e3 * statistics.median(times), "faults": statistics.median(faults)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.preset, args.steps, args.threads)))
        return 0
    rows = {}
    for label, extra_env in (("glibc default", {}), ("MALLOC_ARENA_MAX=1", {"MALLOC_ARENA_MAX": "1"})):
        runs = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", variant, "--preset", args.preset,
                                      "--steps", str(args.steps), "--threads", str(args.threads)],
                                     env={**os.environ, **extra_env}, capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows[label] = {variant: {key: statistics.median(r[key] for r in results) for key in ("ms", "faults")}
                       for variant, results in runs.items()}
    print(f"{args.preset} at the preset's batch size, random data; {args.rounds} children per cell, "
          f"{args.steps} steps each")
    print(f"\n| malloc | one step, BLAS x{args.threads} (ms) | faults | two halves in two threads, BLAS x1 (ms) | faults "
          "| one / two |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        one, two = row["one step"], row["two halves"]
        print(f"| {label} | {one['ms']:.1f} | {one['faults']:.0f} | {two['ms']:.1f} | {two['faults']:.0f} | "
              f"{one['ms'] / two['ms']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
