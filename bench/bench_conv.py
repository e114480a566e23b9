"""Convolution algorithms side by side: im2col + GEMM against Winograd, forward + backward, per shape.

    python bench/bench_conv.py                 # the shapes below, 2 BLAS threads
    python bench/bench_conv.py --rounds 9 --threads 1

For each (batch, C, H, out, k, pad) it builds two ``Conv2D`` layers with the same weights, one with
``algorithm: gemm`` and one with ``algorithm: winograd``, and times a train-mode forward plus a backward
(input and weight gradients) on random channels-last float32 data, alternating the two in ``--rounds``
rounds of ``--steps`` calls; the table gives the median ms per call, GEMM / Winograd, and what
``algorithm: auto`` picks for the shape (see ``Conv2D.choose_method``). The first rows are the presets'
layers; the rest are there to show where the rule's edges lie.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from nnlib.layers import Conv2D

SHAPES = [  # (label, batch, C, H, out, k, pad)
    ("cnn conv 1", 128, 1, 28, 32, 5, 0),
    ("cnn conv 2", 128, 32, 12, 64, 5, 0),
    ("cnn-small conv 1", 64, 1, 28, 16, 5, 0),
    ("cnn-small conv 2", 64, 16, 12, 32, 5, 0),
    ("5x5, 4 channels", 128, 4, 24, 16, 5, 0),
    ("5x5, 8 channels", 128, 8, 24, 16, 5, 2),
    ("4x4, 16 channels", 128, 16, 12, 32, 4, 0),
    ("3x3, 32 channels", 128, 32, 14, 32, 3, 1),
    ("3x3, 64 channels", 128, 64, 7, 64, 3, 1),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per shape (default 5)")
    p.add_argument("--steps", type=int, default=10, help="forward + backward calls per round (default 10)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    return p.parse_args(argv)


def layer_pair(batch, c, h, out, k, pad, rng):
    """The same convolution twice (gemm, winograd), its input and an output gradient, channels-last."""
    pair = []
    for algorithm in ("gemm", "winograd"):
        layer = Conv2D(out, k, pad=pad, algorithm=algorithm)
        layer.build((c, h, h), np.random.default_rng(0))
        pair.append(layer)
    x = rng.standard_normal((batch, h, h, c), dtype=np.float32).transpose(0, 3, 1, 2)
    ho = h + 2 * pad - k + 1
    dy = rng.standard_normal((batch, ho, ho, out), dtype=np.float32).transpose(0, 3, 1, 2)
    return pair, x, dy


def time_calls(layer, x, dy, steps: int) -> float:
    """Mean ms of ``steps`` train-mode forward + backward calls."""
    start = time.perf_counter()
    for _ in range(steps):
        layer.forward(x, train=True)
        layer.backward(dy)
    return 1e3 * (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"forward + backward per call, float32, BLAS threads {args.threads}; median of {args.rounds} rounds "
          f"of {args.steps} calls, GEMM and Winograd alternating\n")
    print("| layer | batch, C, H -> out, k x k, pad | GEMM ms | Winograd ms | GEMM / Winograd | auto picks |")
    print("|---|---|---:|---:|---:|---|")
    with threadpool_limits(args.threads, user_api="blas"):
        for label, batch, c, h, out, k, pad in SHAPES:
            (gemm, winograd), x, dy = layer_pair(batch, c, h, out, k, pad, rng)
            times = {"gemm": [], "winograd": []}
            for layer in (gemm, winograd):
                time_calls(layer, x, dy, 1)  # warm-up
            for r in range(args.rounds):
                for name, layer in ((("gemm", gemm), ("winograd", winograd)) if r % 2 == 0 else
                                    (("winograd", winograd), ("gemm", gemm))):
                    times[name].append(time_calls(layer, x, dy, args.steps))
            auto = Conv2D(out, k, pad=pad)
            auto.build((c, h, h), np.random.default_rng(0))
            g, w = statistics.median(times["gemm"]), statistics.median(times["winograd"])
            print(f"| {label} | {batch}, {c}, {h} -> {out}, {k}x{k}, {pad} | {g:.2f} | {w:.2f} | {g / w:.2f}x | "
                  f"{auto.method} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
