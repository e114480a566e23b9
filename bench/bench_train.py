"""Training-speed benchmark: nnlib against PyTorch on the MNIST calibration network.

Network (input (N, 1, 28, 28), float32):
    Conv(1->32, 5x5) - BN - ReLU - MaxPool2 - Conv(32->64, 5x5) - BN - ReLU - MaxPool2 - Flatten
    - Dense(1024->128) - BN - ReLU - Dropout(0.3) - Dense(128->10); softmax-CE; AdamW.

Both frameworks train on the same random data in the same process. The timed batches are split
into ``--rounds`` chunks that alternate nnlib / torch, so machine noise hits both alike; the
per-batch time is the median over rounds. One step = forward + loss + backward + optimizer step.
Then a per-layer forward/backward breakdown for nnlib.

    python bench/bench_train.py                      # 100 batches of 128, 2 threads
    python bench/bench_train.py --batches 200 --rounds 10 --no-torch
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


from nnlib_select import select_nnlib  # noqa: E402 - bench/ is on sys.path for `python bench/x.py`

select_nnlib()

import numpy as np  # noqa: E402

EPOCH_IMAGES = 55_000

SPECS = [
    {"type": "conv", "out": 32, "k": 5},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 64, "k": 5},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "flatten"},
    {"type": "dense", "out": 128},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "dropout", "p": 0.3},
    {"type": "dense", "out": 10},
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=100, help="timed training batches per framework (default 100)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch intra-op threads (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved nnlib/torch chunks (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per framework first (default 3)")
    p.add_argument("--breakdown-batches", type=int, default=20, help="batches for the per-layer table (0: skip)")
    p.add_argument("--no-torch", action="store_true", help="time nnlib only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nnlib-root", default=str(REPO),
                   help="directory holding the nnlib package to time (default: this checkout), for A/B runs")
    return p.parse_args(argv)


def limit_threads(n: int):
    """Limit numpy's BLAS threads with threadpoolctl when installed; returns a description."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None, "threadpoolctl not installed (BLAS threads: library default)"
    limiter = threadpool_limits(limits=n, user_api="blas")
    blas = [f"{i['internal_api']} {i.get('version')} kernel={i.get('architecture')} threads={i['num_threads']}"
            for i in threadpool_info() if i["user_api"] == "blas"]
    return limiter, "; ".join(blas)


def make_data(rng, batches, batch_size):
    """A small pool of random batches, cycled: x (B, 1, 28, 28) float32, y (B,) int64."""
    pool = min(batches, 8)
    xs = rng.standard_normal((pool, batch_size, 1, 28, 28)).astype(np.float32)
    ys = rng.integers(0, 10, (pool, batch_size))
    return xs, ys


# ----------------------------------------------------------------------------- nnlib
def build_nnlib(seed):
    from nnlib.losses import SoftmaxCrossEntropy
    from nnlib.model import Sequential
    from nnlib.optim import AdamW

    model = Sequential.from_specs(SPECS, (1, 28, 28), np.random.default_rng(seed)).train()
    opt = AdamW(model.parameters(), lr=1e-3)
    loss = SoftmaxCrossEntropy()

    def step(x, y):
        logits = model.forward(x)
        _, d = loss(logits, y)
        model.backward(d)
        opt.step()

    return model, loss, opt, step


# ----------------------------------------------------------------------------- torch
def build_torch(seed, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10),
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def time_steps(step, xs, ys, start, count):
    """(wall seconds, process CPU seconds over all threads) for ``count`` training steps."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(start, start + count):
        step(xs[i % len(xs)], ys[i % len(ys)])
    return time.perf_counter() - t0, time.process_time() - c0


def breakdown(model, loss, opt, xs, ys, batches):
    """Median seconds per batch for each layer's forward and backward, the loss and the optimizer."""
    layers = model.layers
    fwd = [[] for _ in layers]
    bwd = [[] for _ in layers]
    extra = {"loss": [], "optimizer": []}
    for b in range(batches):
        x, y = xs[b % len(xs)], ys[b % len(ys)]
        for i, layer in enumerate(layers):
            t = time.perf_counter()
            x = layer.forward(x, train=True)
            fwd[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, d = loss(x, y)
        extra["loss"].append(time.perf_counter() - t)
        for i in reversed(range(len(layers))):
            t = time.perf_counter()
            d = layers[i].backward(d)
            bwd[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        opt.step()
        extra["optimizer"].append(time.perf_counter() - t)
    med = statistics.median
    rows = [(f"{i:2d} {layers[i].type_name}", med(fwd[i]), med(bwd[i])) for i in range(len(layers))]
    rows += [(f"   {k}", med(v), 0.0) for k, v in extra.items()]
    return rows


def check_dtypes(model, loss, xs, ys):
    """Every activation, gradient and parameter gradient must stay float32."""
    x = xs[0]
    bad = []
    for i, layer in enumerate(model.layers):
        x = layer.forward(x, train=True)
        if x.dtype != np.float32:
            bad.append(f"{i} {layer.type_name} forward -> {x.dtype}")
    _, d = loss(x, ys[0])
    for i in reversed(range(len(model.layers))):
        d = model.layers[i].backward(d)
        if d is not None and d.dtype != np.float32:
            bad.append(f"{i} {model.layers[i].type_name} backward -> {d.dtype}")
        for k, g in model.layers[i].grads.items():
            if g.dtype != np.float32:
                bad.append(f"{i} grad {k} -> {g.dtype}")
    return bad


def main(argv=None):
    args = parse_args(argv)
    limiter, blas_desc = limit_threads(args.threads)
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS") if k in os.environ}
    import nnlib

    print(f"nnlib from {Path(nnlib.__file__).parent}")
    print(f"numpy {np.__version__}; BLAS: {blas_desc}; env: {env or 'no OPENBLAS_* set'}")

    rng = np.random.default_rng(args.seed)
    xs, ys = make_data(rng, args.batches, args.batch_size)
    model, loss, opt, nn_step = build_nnlib(args.seed)
    bad = check_dtypes(model, loss, xs, ys)
    print("dtype check:", "all float32" if not bad else "; ".join(bad))

    steps = {"nnlib": nn_step}
    data = {"nnlib": (xs, ys)}
    if not args.no_torch:
        import torch

        steps["torch"] = build_torch(args.seed, args.threads)
        data["torch"] = (torch.from_numpy(xs), torch.from_numpy(ys))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    for name, step in steps.items():
        time_steps(step, *data[name], 0, args.warmup)

    per_round = max(1, args.batches // args.rounds)
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():  # interleaved: nnlib chunk, torch chunk, nnlib chunk, ...
            wall, cpu_s = time_steps(step, *data[name], r * per_round, per_round)
            times[name].append(wall / per_round)
            cpu[name].append(cpu_s / per_round)

    per_batch = {name: statistics.median(t) for name, t in times.items()}
    cpu_batch = {name: statistics.median(t) for name, t in cpu.items()}
    spread = {name: (min(t), max(t)) for name, t in times.items()}
    epoch_batches = EPOCH_IMAGES / args.batch_size
    print(f"\n{args.rounds} rounds x {per_round} batches of {args.batch_size}, median per round "
          f"(epoch = {EPOCH_IMAGES} images = {epoch_batches:.1f} batches)")
    print(f"{'framework':<10} {'ms/batch':>9} {'[min..max]':>16} {'s/epoch':>8} {'images/s':>9} {'vs torch':>9}"
          f" {'cpu ms/batch':>13}")
    for name, t in per_batch.items():
        ratio = f"{t / per_batch['torch']:.2f}x" if "torch" in per_batch else "-"
        lo, hi = spread[name]
        print(f"{name:<10} {t * 1e3:9.1f} {f'[{lo * 1e3:.0f}..{hi * 1e3:.0f}]':>16} {t * epoch_batches:8.1f} "
              f"{args.batch_size / t:9.0f} {ratio:>9} {cpu_batch[name] * 1e3:13.1f}")
    print("(cpu ms/batch: process CPU time over all threads, including BLAS threads that spin while waiting;\n"
          " with --threads 1 it is the compute time itself and barely moves when other processes compete)")

    if args.breakdown_batches:
        rows = breakdown(model, loss, opt, xs, ys, args.breakdown_batches)
        total = sum(f + b for _, f, b in rows)
        print(f"\nnnlib per-layer breakdown (median of {args.breakdown_batches} batches, ms)")
        print(f"{'layer':<16} {'forward':>8} {'backward':>9} {'share':>6}")
        for name, f, b in rows:
            print(f"{name:<16} {f * 1e3:8.2f} {b * 1e3:9.2f} {(f + b) / total:6.1%}")
        print(f"{'total':<16} {sum(r[1] for r in rows) * 1e3:8.2f} {sum(r[2] for r in rows) * 1e3:9.2f}")
    if limiter is not None:
        limiter.restore_original_limits()


if __name__ == "__main__":
    main()
