"""Training speed of every preset network: nnlib against PyTorch, plus the per-example loop and the train stage.

    python bench/compare.py                                  # every preset, 2 threads, a few minutes on 2 cores
    python bench/compare.py --configs cnn,cnn-small --rounds 7 --json /tmp/compare.json
    python bench/compare.py --no-torch --breakdown cnn       # nnlib only, with a per-layer breakdown
    python bench/compare.py --nnlib-root /path/to/other/checkout   # time another nnlib (A/B)
    python bench/compare.py --configs cnn --thread-rows      # + 1 vs 2 threads, busy neighbour, two at once

For each configuration (a preset's network, batch size, loss and optimizer; read through
bench_presets.load_preset) the same network is built in nnlib and, when PyTorch is installed, in
PyTorch (bench/torch_nets.py; eager mode, default settings, CPU) with nnlib's initial weights. Both
train on the same batches of real MNIST (data/raw, else ../shared/mnist; random images when neither
exists), converted to float32 once before timing. One step = forward, loss, backward, optimizer step.
The ``--steps`` timed steps are split into ``--rounds`` rounds that alternate nnlib / PyTorch (the
order flips every round), so noise from other processes hits both; img/s comes from the median round,
the ratio is the median of the per-round ratios. Each round runs in a child process of its own (after
``--warmup`` untimed steps): in one process each library's idle threads slow the other down
(OpenBLAS's spin, PyTorch's OpenMP pool). ``--in-process`` times both in this process, as before.

Columns: GFLOP/s counts the GEMM work of the conv and dense layers (2 FLOPs per multiply-add: forward,
weight gradient and, except for the first layer, input gradient) per image times img/s, counting every
convolution as the direct im2col + GEMM product (a Winograd convolution does fewer multiplications, so
for networks with one this is an effective rate, comparable between frameworks), and is shown as
a share of the sgemm peak measured at the start of the run (a 2048^3 float32 matmul in NumPy with the
same threads, best of 5). Peak RSS is VmHWM of a separate nnlib-only child process per configuration
that trains 20 steps and then validates 1,000 images at the stage's eval batch (nnlib.model.EVAL_BATCH_SIZE).

Extra rows:
  per-example loop   the nielsen network trained one example at a time by Nielsen's network.py code
                     (update_mini_batch + backprop on (784, 1) columns, float64 weights, as written
                     there; a few lines in this file) against nnlib's batched nielsen step, interleaved.
                     Floor >= 10x.
  train stage        nnlib.training.fit as stages/train.py runs it (ShardStream over real shards, the
                     one-cycle schedule, metrics, validation after every epoch, the progress bar) against
                     the same steps on float32 batches already in memory, for the default ``cnn`` preset,
                     in a child process without torch. The shards come from nnlib.mnist.data.shards.prepare in a
                     temporary directory (the preset's augmentation, 5,500 originals + 1 distorted copy,
                     shards of 2,000 images, val 1,000 images). A first epoch of 11,000 images validating
                     all 1,000 val images (at the eval batch, as in the stage) warms up and gives the peak
                     RSS (VmHWM; floor <= 1 GiB); then --stage-rounds pairs of short epochs of
                     --stage-images images (default 2,816), each validating 1/11 as many images (the
                     stage's 5,000 per 55,000), alternate with pure compute. Floor <= 1.10x.

Thread rows (``--thread-rows``, for ``--thread-config``, default cnn): each measurement is a child
process that sets up, warms up, waits for the others, then trains for ``--thread-seconds`` seconds
(median over ``--thread-rounds`` repetitions, the order alternating): every framework at 1 and at 2
threads alone; at 2 threads (and nnlib at ``auto``) next to a one-core busy loop; two identical
trainings at once, each at a fixed 2 threads, each at 1, and nnlib's under ``auto``, both as two runs
started by hand (the registry of nnlib/threads.py) and as a queue of two (``NNLIB_JOBS=2``); and nnlib
at 2 threads with ``OPENBLAS_THREAD_TIMEOUT=4`` (idle BLAS threads sleep at once instead of spinning)
alone, next to the busy loop and two at once. Each row
gives the img/s of each training and, against the same framework alone at 2 threads, "x alone" (per
training) and "together" (their sum). The children register in a private registry
(``$NNLIB_REGISTRY`` in a temp folder) so that other nnlib runs on the machine do not change ``auto``.

Threads: numpy's BLAS is pinned with threadpoolctl (the ``bench`` extra), PyTorch with
torch.set_num_threads. Times on a shared machine are noisy: compare ratios from one run, and note the
load (``uptime``, printed at the start and the end).
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnlib_select import select_nnlib  # noqa: E402 - bench/ is on sys.path for `python bench/x.py`

select_nnlib()

import numpy as np  # noqa: E402

from bench_presets import PRESETS, load_prepare, load_preset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"nielsen": 1.2, "mlp-l2": 1.2, "mlp-momentum": 1.2, "mlp-xavier": 1.2, "mlp": 1.2,
          "cnn-small": 1.0, "cnn": 1.0}
# Timed steps per framework when --steps is not given: about the same images for each configuration.
DEFAULT_STEPS = {"nielsen": 4000, "mlp-l2": 2500, "mlp-momentum": 2000, "mlp-xavier": 1500, "mlp": 1000,
                 "cnn-small": 300, "cnn": 150}
LOOP_FLOOR, STAGE_FLOOR, RSS_FLOOR_MIB = 10.0, 1.10, 1024
INSTALL_TORCH = "PyTorch is not installed: nnlib side only. For the comparison: pip install -e '.[oracle]'"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(PRESETS), help=f"comma-separated presets (default: all: {','.join(PRESETS)})")
    p.add_argument("--steps", type=int, default=0,
                   help="timed steps per framework and configuration (default 0: per configuration, "
                        f"{', '.join(f'{k} {v}' for k, v in DEFAULT_STEPS.items())})")
    p.add_argument("--rounds", type=int, default=5, help="interleaved nnlib/torch rounds the steps are split into (default 5)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per framework first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch intra-op threads (default 2)")
    p.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--no-torch", action="store_true", help="time nnlib only")
    p.add_argument("--no-loop", action="store_true", help="skip the per-example loop row")
    p.add_argument("--no-stage", action="store_true", help="skip the train-stage row (it builds shards: ~1 min)")
    p.add_argument("--no-rss", action="store_true", help="skip the per-configuration peak-RSS child processes")
    p.add_argument("--stage-images", type=int, default=2816,
                   help="images per timed epoch of the train-stage row (default 2816 = 22 batches of 128)")
    p.add_argument("--stage-rounds", type=int, default=9, help="stage/pure-compute epoch pairs (default 9)")
    p.add_argument("--breakdown", default="", help="comma-separated configs for a per-layer nnlib time breakdown")
    p.add_argument("--breakdown-steps", type=int, default=20, help="steps for the breakdown (median, default 20)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="nnlib's array backend; with cupy, PyTorch runs on CUDA and the CPU-only rows "
                        "(per-example loop, train stage, peak RSS) are skipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nnlib-root", default=str(ROOT),
                   help="directory holding the nnlib package to time (default: this checkout), for A/B runs")
    p.add_argument("--in-process", action="store_true",
                   help="time nnlib and PyTorch in this one process, rounds interleaved (the old method)")
    p.add_argument("--thread-rows", action="store_true",
                   help="add the thread rows: 1 vs 2 threads, next to a busy loop, two trainings at once")
    p.add_argument("--thread-config", default="cnn", help="preset of the thread rows (default cnn)")
    p.add_argument("--thread-seconds", type=float, default=12.0, help="timed seconds per thread-row training (default 12)")
    p.add_argument("--thread-rounds", type=int, default=3, help="repetitions of each thread row (default 3, median)")
    p.add_argument("--child", choices=["rss", "stage", "steps"], help=argparse.SUPPRESS)  # internal: the child processes
    p.add_argument("--child-arg", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- machine
def pin_threads(n: int) -> str:
    """Limit numpy's BLAS to ``n`` threads (threadpoolctl); returns a description of the BLAS."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits  # noqa: PLC0415
    except ImportError:
        return "threadpoolctl not installed, BLAS threads not pinned: pip install -e '.[bench]'"
    threadpool_limits(limits=n, user_api="blas")
    return "; ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} threads={i['num_threads']}"
                     for i in threadpool_info() if i["user_api"] == "blas")


def sgemm_peak(xp=np, n: int = 2048, repeat: int = 5, sync=lambda: None) -> float:
    """GFLOP/s of the best of ``repeat`` (n, n) @ (n, n) float32 matmuls on ``xp`` (NumPy or CuPy)."""
    rng = np.random.default_rng(0)
    a, b = (xp.asarray(m) for m in rng.standard_normal((2, n, n), dtype=np.float32))
    out = xp.empty((n, n), np.float32)
    xp.matmul(a, b, out=out)
    sync()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        xp.matmul(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def device_sync(xp):
    """A function that waits for the device's queued work (CuPy's current stream); a no-op on NumPy."""
    cuda = getattr(xp, "cuda", None)
    return cuda.get_current_stream().synchronize if cuda is not None else (lambda: None)


def vm_hwm_mib() -> float:
    """Peak resident set of this process (VmHWM of /proc/self/status) in MiB; ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # noqa: PLC0415

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# ----------------------------------------------------------------------------- data
def mnist_train(tmp: Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """MNIST train images (60000, 28, 28) uint8 and labels, from data/raw or ../shared/mnist; None if absent."""
    from nnlib.mnist.data.stream import read_idx  # noqa: PLC0415
    from nnlib.mnist.paths import RAW_FILES  # noqa: PLC0415

    names = [RAW_FILES["train_images"], RAW_FILES["train_labels"]]
    local = ROOT / "data" / "raw"
    if all((local / name).exists() for name in names):
        return tuple(read_idx(local / name) for name in names)
    shared = Path(os.environ.get("MNIST_MIRROR", ROOT.parent / "shared" / "mnist"))
    if all((shared / f"{name}.gz").exists() for name in names):
        arrays = []
        for name in names:
            raw = gzip.decompress((shared / f"{name}.gz").read_bytes())
            dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
            arrays.append(np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims))
        return tuple(arrays)
    return None


def raw_dir(tmp: Path) -> Path | None:
    """A folder with the four IDX files for nnlib.mnist.data.shards.prepare: data/raw, else ../shared/mnist unzipped into tmp."""
    from nnlib.mnist.paths import RAW_FILES  # noqa: PLC0415

    local = ROOT / "data" / "raw"
    if all((local / name).exists() for name in RAW_FILES.values()):
        return local
    shared = Path(os.environ.get("MNIST_MIRROR", ROOT.parent / "shared" / "mnist"))
    if not all((shared / f"{name}.gz").exists() for name in RAW_FILES.values()):
        return None
    for name in RAW_FILES.values():
        (tmp / name).write_bytes(gzip.decompress((shared / f"{name}.gz").read_bytes()))
    return tmp


def batch_pool(images, labels, batch_size: int, rng, pool: int = 16):
    """The first ``pool`` batches of a shuffled pass, as the train loop gets them (``nnlib.mnist.data.stream.minibatches``):
    float32 (B, 1, 28, 28) and int64 (B,), on the active backend."""
    from nnlib.mnist.data.stream import minibatches  # noqa: PLC0415

    batches = list(itertools.islice(minibatches(images, labels, batch_size, rng), pool))
    return [x for x, _ in batches], [y for _, y in batches]


# ----------------------------------------------------------------------------- models
def gemm_flops_per_image(specs, input_shape) -> float:
    """FLOPs of the conv and dense GEMMs per image for one training step (forward + backward)."""
    from nnlib.layers import from_spec  # noqa: PLC0415

    rng, shape, total = np.random.default_rng(0), tuple(input_shape), 0.0
    for index, spec in enumerate(specs):
        layer = from_spec(spec)
        out = layer.build(shape, rng)
        if layer.type_name == "dense":
            forward = 2 * shape[0] * out[0]
        elif layer.type_name == "conv":
            forward = 2 * out[1] * out[2] * layer.k * layer.k * shape[0] * out[0]
        else:
            forward = 0
        total += forward * (2 if index == 0 else 3)  # forward, dW, and dx except for the first layer
        shape = out
    return total


def nnlib_setup(cfg: dict, seed: int, threads: int = 1):
    """The nnlib model, loss and optimizer of a train section; returns (model, loss_fn, optimizer, step).

    With ``train.workers`` > 1 (the cnn preset's 2) the model is a DataParallel of that many workers on
    ``threads`` threads, as the train stage runs it: pin BLAS to 1 thread meanwhile (:func:`blas_for`).
    """
    from nnlib.mnist import seeding  # noqa: PLC0415
    from nnlib.model import Sequential  # noqa: PLC0415
    from nnlib.losses import make_loss  # noqa: PLC0415
    from nnlib.training import make_optimizer  # noqa: PLC0415

    model = Sequential.from_specs(cfg["model"], (1, 28, 28), seeding.rng(seed, seeding.INIT)).train()
    loss_fn = make_loss(cfg["loss"])
    optimizer = make_optimizer(model, cfg["optimizer"])
    if cfg.get("workers", 1) > 1:
        from nnlib.parallel import DataParallel  # noqa: PLC0415

        model = DataParallel(model, cfg["workers"], threads)

    def step(x, y):
        logits = model.forward(x)
        _, dlogits = loss_fn.value_and_grad(logits, y)  # the loss stays on the device, as in fit
        model.backward(dlogits)
        optimizer.step()

    return model, loss_fn, optimizer, step


def blas_for(cfg: dict, framework: str = "nnlib") -> dict:
    """The ``blas=`` argument of nnlib.threads.limit for a preset: 1 thread per data-parallel worker."""
    return {"blas": 1} if framework == "nnlib" and cfg.get("workers", 1) > 1 else {}


def torch_setup(cfg: dict, model, device: str = "cpu"):
    """The PyTorch twin of an nnlib model (same weights) on ``device``, its loss and optimizer; returns step."""
    import torch_nets  # noqa: PLC0415

    net = torch_nets.torch_network(cfg["model"], (1, 28, 28))
    torch_nets.copy_weights(model, net)
    net.to(device)
    loss_fn = torch_nets.torch_loss(cfg["loss"])
    optimizer = torch_nets.torch_optimizer(net, cfg["optimizer"])

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    return step


def run_steps(step, xs, ys, start: int, count: int, sync=lambda: None) -> float:
    """Wall seconds of ``count`` steps over the batch pool, starting at pool index ``start``.

    ``sync`` waits for queued device work before the clock is read at either end (GPU runs).
    """
    sync()
    t0 = time.perf_counter()
    for i in range(start, start + count):
        step(xs[i % len(xs)], ys[i % len(ys)])
    sync()
    return time.perf_counter() - t0


def interleaved(runners: dict, steps: int | dict[str, int], rounds: int, warmup: int) -> dict:
    """Time each runner (name -> (step, xs, ys, sync)) in alternating rounds; seconds per step, per round.

    ``steps``: timed steps per runner, one number for all or a dict by runner name (so that a fast
    and a slow runner can both get rounds long enough to time a steady state).
    """
    for step, xs, ys, sync in runners.values():
        run_steps(step, xs, ys, 0, warmup, sync)
    per_round = {name: max(1, (steps[name] if isinstance(steps, dict) else steps) // rounds) for name in runners}
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step, xs, ys, sync = runners[name]
            count = per_round[name]
            times[name].append(run_steps(step, xs, ys, r * count, count, sync) / count)
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow[r] / fast[r]."""
    return statistics.median(s / f for s, f in zip(slow, fast))


# ----------------------------------------------------------------------------- per-example loop
def nielsen_loop(model, eta: float):
    """Nielsen's network.py, ``update_mini_batch`` + ``backprop`` as written there (quadratic cost, sigmoid
    layers, float64 weights as np.random.randn makes them, one (784, 1) example at a time, the nablas
    summed into new lists), starting from the nnlib model's weights. Returns step(mini_batch)."""
    dense = [layer for layer in model.layers if layer.type_name == "dense"]
    weights = [layer.params["W"].T.astype(np.float64) for layer in dense]  # (out, in), as network.py keeps them
    biases = [layer.params["b"][:, None].astype(np.float64) for layer in dense]  # (out, 1)
    num_layers = len(weights) + 1

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def sigmoid_prime(z):
        return sigmoid(z) * (1 - sigmoid(z))

    def backprop(x, y):
        nabla_b = [np.zeros(b.shape) for b in biases]
        nabla_w = [np.zeros(w.shape) for w in weights]
        activation, activations, zs = x, [x], []
        for b, w in zip(biases, weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for layer in range(2, num_layers):
            sp = sigmoid_prime(zs[-layer])
            delta = np.dot(weights[-layer + 1].transpose(), delta) * sp
            nabla_b[-layer] = delta
            nabla_w[-layer] = np.dot(delta, activations[-layer - 1].transpose())
        return nabla_b, nabla_w

    def step(mini_batch):  # list of (x (784, 1), y (10, 1)) pairs
        nabla_b = [np.zeros(b.shape) for b in biases]
        nabla_w = [np.zeros(w.shape) for w in weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        weights[:] = [w - (eta / len(mini_batch)) * nw for w, nw in zip(weights, nabla_w)]
        biases[:] = [b - (eta / len(mini_batch)) * nb for b, nb in zip(biases, nabla_b)]

    return step


# ----------------------------------------------------------------------------- child processes
def child(args) -> None:
    """Internal: run one measurement without torch in this process, print its JSON on stdout."""
    if args.child == "rss":
        print(json.dumps(child_rss(args.child_arg, args.seed)))
    elif args.child == "steps":
        print(json.dumps(child_steps(json.loads(args.child_arg), args)), flush=True)
    else:
        print(json.dumps(child_stage(json.loads(args.child_arg), args)))


def child_rss(name: str, seed: int) -> dict:
    """Peak RSS of nnlib training ``name`` for 20 steps and validating 1,000 images (at the stage's eval batch)."""
    from nnlib.evaluation import evaluate  # noqa: PLC0415
    from nnlib.mnist.data.stream import minibatches  # noqa: PLC0415
    from nnlib.model import EVAL_BATCH_SIZE  # noqa: PLC0415

    cfg = load_preset(name)
    data = mnist_train()
    images, labels = data if data is not None else (np.random.default_rng(0).integers(0, 256, (2000, 28, 28), np.uint8),
                                                     np.random.default_rng(1).integers(0, 10, 2000).astype(np.uint8))
    model, loss_fn, _, step = nnlib_setup(cfg, seed)
    xs, ys = batch_pool(images, labels, cfg["batch_size"], np.random.default_rng(seed), pool=4)
    run_steps(step, xs, ys, 0, 20)
    train_mib = vm_hwm_mib()
    evaluate(model, loss_fn, minibatches(images[:1000], labels[:1000], EVAL_BATCH_SIZE))
    return {"config": name, "peak_rss_mib": vm_hwm_mib(), "peak_rss_train_steps_mib": train_mib}


def child_steps(spec: dict, args) -> dict:
    """One framework training one preset in this process: ``steps`` timed steps, or as many as fit in ``seconds``.

    spec: framework ('nnlib' or 'torch'), config, threads (a count or 'auto'), warmup, steps or seconds,
    and wait: print "ready" once warm and wait for a line on stdin before timing (children timed together).
    The process registers in nnlib's registry of runs for its whole life, as a training stage does.
    """
    from nnlib import backend  # noqa: PLC0415

    try:
        from nnlib.threads import limit  # noqa: PLC0415
    except ImportError:  # an nnlib from before threads: auto (--nnlib-root A/B runs): pin, register nothing
        limit = legacy_limit
    xp = backend.use(args.backend)
    sync = device_sync(xp)
    cfg = load_preset(spec["config"])
    data = mnist_train()
    images, labels = data if data is not None else (np.random.default_rng(0).integers(0, 256, (10000, 28, 28), np.uint8),
                                                     np.random.default_rng(1).integers(0, 10, 10000).astype(np.uint8))
    with limit(spec["threads"], kind="bench", **blas_for(cfg, spec["framework"])) as choice:
        model, _, _, step = nnlib_setup(cfg, args.seed, choice.threads)
        xs, ys = batch_pool(images, labels, cfg["batch_size"], np.random.default_rng(args.seed))
        if spec["framework"] == "torch":
            import torch  # noqa: PLC0415

            torch.set_num_threads(choice.threads)
            device = "cuda" if args.backend == "cupy" else "cpu"
            step = torch_setup(cfg, model, device)
            xs = [torch.from_numpy(backend.to_numpy(x)).to(device) for x in xs]
            ys = [torch.from_numpy(backend.to_numpy(y)).to(device) for y in ys]
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        run_steps(step, xs, ys, 0, spec["warmup"], sync)
        if spec.get("wait"):
            print("ready", flush=True)
            sys.stdin.readline()
        cpu_start, wall_start = time.process_time(), time.time()
        if spec.get("seconds"):
            count, elapsed = 0, 0.0
            while elapsed < spec["seconds"]:
                elapsed += run_steps(step, xs, ys, count, 1, sync)
                count += 1
        else:
            count = spec["steps"]
            elapsed = run_steps(step, xs, ys, 0, count, sync)
        cpu = time.process_time() - cpu_start
    return {"framework": spec["framework"], "threads": choice.threads, "setting": spec["threads"], "steps": count,
            "seconds": elapsed, "seconds_per_step": elapsed / count, "img_s": count * cfg["batch_size"] / elapsed,
            "cpu_per_wall": cpu / elapsed, "window": [wall_start, time.time()],
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT") or None}


@contextlib.contextmanager
def legacy_limit(setting, kind=None, blas=None):
    """nnlib.threads.limit for an nnlib without it: 'auto' and 0 mean every core (no workers there: blas unused)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    count = setting if isinstance(setting, int) and setting > 0 else len(os.sched_getaffinity(0))
    with threadpool_limits(limits=count, user_api="blas"):
        yield argparse.Namespace(threads=count)


def child_stage(spec: dict, args) -> dict:
    """The train stage's loop (fit over ShardStream) against pure compute, interleaved, for one preset.

    A first stage epoch of ``first_images`` images validates all of val (1,000 images at the stage's
    eval batch, as the stage does): it warms up and gives the stage's peak RSS. Then ``rounds`` pairs of
    short epochs (``images`` images, validating ``images / 11`` of val, the real stage's ratio) alternate
    with pure compute, so that the pairs stay close in time on a busy machine.
    """
    from nnlib.mnist import seeding  # noqa: PLC0415
    from nnlib.mnist.data.stream import ShardStream, load_shard, minibatches, read_manifest, to_batch  # noqa: PLC0415
    from nnlib.model import EVAL_BATCH_SIZE  # noqa: PLC0415
    from nnlib.training import fit, make_schedule, steps_per_epoch  # noqa: PLC0415

    shard_dir, name, images, rounds = Path(spec["shard_dir"]), spec["config"], spec["images"], spec["rounds"]
    cfg = load_preset(name)
    batch = cfg["batch_size"]
    manifest = read_manifest(shard_dir)
    val = load_shard(shard_dir / manifest["val"]["file"])
    val_share = max(1, round(images * 5000 / 55000))  # 5,000 val images per 55,000 train images
    val_short = (val[0][:val_share], val[1][:val_share])
    files = [s["file"] for s in manifest["train_shards"]]
    if blas_for(cfg):
        pin_threads(1)
    model, loss_fn, optimizer, step = nnlib_setup(cfg, args.seed, args.threads)
    per_epoch = steps_per_epoch(images, batch)
    schedule = make_schedule(cfg["schedule"], cfg["optimizer"]["lr"],
                             steps_per_epoch(spec["first_images"], batch) + 2 * rounds * per_epoch)
    stream = ShardStream(shard_dir, files, seeding.rng(args.seed, seeding.SHUFFLE),
                         counts=[s["count"] for s in manifest["train_shards"]])
    # Pure compute: the same number of steps and images on float32 batches already in memory.
    x_mem, y_mem = load_shard(shard_dir / files[0])
    sizes = [min(batch, images - s) for s in range(0, images, batch)]  # the stage's batches, the last maybe short
    full = [(to_batch(x_mem[i * batch : (i + 1) * batch]), y_mem[i * batch : (i + 1) * batch].astype(np.int64))
            for i in range(8)]
    last = (to_batch(x_mem[: sizes[-1]]), y_mem[: sizes[-1]].astype(np.int64))

    cpu = {"stage": [], "pure": []}  # process CPU seconds (all threads) of each timed epoch

    def stage_epoch(n_images, val_set):
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # the bar is drawn, then dropped
            start, cpu_start = time.perf_counter(), time.process_time()
            history = fit(model, loss_fn, optimizer, schedule, stream, epochs=1, images_per_epoch=n_images,
                          batch_size=batch, val=lambda: minibatches(*val_set, EVAL_BATCH_SIZE), interval=cfg["schedule"]["interval"], progress=True)
            cpu["stage"].append(time.process_time() - cpu_start)
            return time.perf_counter() - start, history.rows[-1]["val_acc"]

    def pure_epoch():
        model.train()
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(len(sizes) - 1):
            step(*full[i % len(full)])
        step(*last)  # the last (maybe short) batch, as in the stage
        cpu["pure"].append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    stage_first, first_acc = stage_epoch(spec["first_images"], val)
    stage_peak = vm_hwm_mib()
    pure_epoch()
    cpu["stage"].clear(), cpu["pure"].clear()
    stage, pure = [], []
    for r in range(rounds):
        if r % 2 == 0:
            stage.append(stage_epoch(images, val_short)[0])
            pure.append(pure_epoch())
        else:
            pure.append(pure_epoch())
            stage.append(stage_epoch(images, val_short)[0])
    return {"config": name, "images_per_epoch": images, "val_images": val_share, "steps_per_epoch": per_epoch,
            "first_epoch_images": spec["first_images"], "first_epoch_val_images": int(len(val[1])),
            "shards": len(files), "shard_size": int(manifest["train_shards"][0]["count"]),
            "stage_seconds": stage, "pure_seconds": pure, "first_stage_epoch_seconds": stage_first,
            "ratio": paired_ratio(stage, pure), "cpu_ratio": paired_ratio(cpu["stage"], cpu["pure"]),
            "stage_cpu_seconds": cpu["stage"], "pure_cpu_seconds": cpu["pure"], "stage_peak_rss_mib": stage_peak, "final_peak_rss_mib": vm_hwm_mib(),
            "first_epoch_val_acc": first_acc}


def child_cmd(kind: str, arg: str, args) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-arg", arg, "--threads", str(args.threads),
            "--seed", str(args.seed), "--nnlib-root", args.nnlib_root, "--backend", args.backend]


def run_child(kind: str, arg: str, args) -> dict:
    out = subprocess.run(child_cmd(kind, arg, args), cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"compare.py: the {kind} child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def separate_rounds(name: str, frameworks: list[str], steps: int, args) -> dict:
    """Seconds per step of each framework, per round; every round a fresh child process, the order alternating."""
    per_round = max(1, steps // args.rounds)
    times = {fw: [] for fw in frameworks}
    for r in range(args.rounds):
        for fw in frameworks if r % 2 == 0 else frameworks[::-1]:
            spec = {"framework": fw, "config": name, "threads": args.threads, "steps": per_round, "warmup": args.warmup}
            times[fw].append(run_child("steps", json.dumps(spec), args)["seconds_per_step"])
    return times


# ----------------------------------------------------------------------------- thread rows
def together(specs: list[dict], args, busy: bool = False, env: dict | None = None) -> list[dict]:
    """Run one child per spec at the same time (each warms up, then all start at once); their results.

    ``busy``: a one-core busy loop (a Python ``while True``) runs beside them while they are timed.
    """
    env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen(child_cmd("steps", json.dumps({**spec, "wait": True}), args), cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for spec in specs]
    loop = None
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"compare.py: a thread-row child failed:\n{line}\n{proc.stderr.read()[-3000:]}")
        if busy:
            loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, outs):
        if proc.returncode != 0:
            raise SystemExit(f"compare.py: a thread-row child failed ({proc.returncode}):\n{err[-3000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def thread_row_plan(frameworks: list[str]) -> list[dict]:
    """The thread rows: label, framework, the thread setting of each training, busy loop, extra env."""
    plan = []
    for fw in frameworks:
        plan += [{"row": f"{fw}, 1 thread", "fw": fw, "runs": [1]},
                 {"row": f"{fw}, 2 threads", "fw": fw, "runs": [2]},
                 {"row": f"{fw}, 2 threads, next to a one-core busy loop", "fw": fw, "runs": [2], "busy": True}]
        if fw == "nnlib":
            plan += [{"row": "nnlib, auto, next to a one-core busy loop", "fw": fw, "runs": ["auto"], "busy": True}]
        plan += [{"row": f"{fw}, two at once, 2 threads each", "fw": fw, "runs": [2, 2]},
                 {"row": f"{fw}, two at once, 1 thread each", "fw": fw, "runs": [1, 1]}]
        if fw == "nnlib":
            plan += [{"row": "nnlib, two at once, auto (started by hand: the registry)", "fw": fw, "runs": ["auto", "auto"]},
                     {"row": "nnlib, two at once, auto (a queue of two: NNLIB_JOBS=2)", "fw": fw, "runs": ["auto", "auto"],
                      "env": {"NNLIB_JOBS": "2"}}]
            # OpenBLAS's idle threads spin for ~2^28 cycles after each call; at 2^4 they sleep at once: the cost
            # alone (a wake-up per call) against the gain next to a neighbour. Not a default: unmeasured.
            sleep = {"OPENBLAS_THREAD_TIMEOUT": "4"}
            plan += [{"row": "nnlib, 2 threads, OPENBLAS_THREAD_TIMEOUT=4", "fw": fw, "runs": [2], "env": sleep},
                     {"row": "nnlib, 2 threads, next to a one-core busy loop, OPENBLAS_THREAD_TIMEOUT=4", "fw": fw,
                      "runs": [2], "busy": True, "env": sleep},
                     {"row": "nnlib, two at once, 2 threads each, OPENBLAS_THREAD_TIMEOUT=4", "fw": fw, "runs": [2, 2],
                      "env": sleep}]
    return plan


def thread_rows(frameworks: list[str], args) -> dict:
    """Every row of :func:`thread_row_plan`, ``--thread-rounds`` times, the rows' order alternating per round."""
    plan = thread_row_plan(frameworks)
    results = {row["row"]: [] for row in plan}
    with tempfile.TemporaryDirectory(prefix="compare_registry_") as registry:
        for r in range(args.thread_rounds):
            for row in plan if r % 2 == 0 else plan[::-1]:
                specs = [{"framework": row["fw"], "config": args.thread_config, "threads": t, "seconds": args.thread_seconds,
                          "warmup": args.warmup} for t in row["runs"]]
                env = {"NNLIB_REGISTRY": registry, "NNLIB_JOBS": "", "OPENBLAS_THREAD_TIMEOUT": "", **row.get("env", {})}
                results[row["row"]].append(together(specs, args, busy=row.get("busy", False), env=env))
                print(f"  {row['row']}: " + ", ".join(f"{c['img_s']:,.0f} img/s ({c['threads']} threads)"
                                                      for c in results[row["row"]][-1]), flush=True)
    out = {}
    for row in plan:
        rounds = results[row["row"]]
        per_run = [statistics.median(rnd[i]["img_s"] for rnd in rounds) for i in range(len(row["runs"]))]
        out[row["row"]] = {"framework": row["fw"], "settings": row["runs"], "busy": row.get("busy", False),
                           "threads_used": [[c["threads"] for c in rnd] for rnd in rounds], "img_s": per_run,
                           "total_img_s": statistics.median(sum(c["img_s"] for c in rnd) for rnd in rounds),
                           "cpu_per_wall": [[round(c["cpu_per_wall"], 2) for c in rnd] for rnd in rounds], "rounds": rounds}
    for row in out.values():  # against the same framework alone at 2 threads
        alone = out[f"{row['framework']}, 2 threads"]["total_img_s"]
        row["x_alone"] = [v / alone for v in row["img_s"]]
        row["together_x_alone"] = row["total_img_s"] / alone
    return out


def load_note() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def stage_row(args) -> dict | None:
    """Build a small shard set for the cnn preset in a temp dir, then run the stage child over it."""
    from nnlib.mnist.data import shards  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="compare_stage_") as tmp:
        tmp = Path(tmp)
        raw = raw_dir(tmp)
        if raw is None:
            print("train-stage row skipped: no MNIST in data/raw or ../shared/mnist")
            return None
        params = load_prepare("cnn")
        params["augment"]["copies"] = 1
        params = shards.check_params({**params, "val_size": 1000, "max_train": 5500, "shard_size": 2000})
        start = time.perf_counter()
        shards.prepare(args.seed, params, raw_dir=raw, out_dir=tmp / "shards", preview_path=None, progress=False)
        print(f"(train-stage shards built in {time.perf_counter() - start:.1f}s)", flush=True)
        spec = {"shard_dir": str(tmp / "shards"), "config": "cnn", "images": args.stage_images,
                "first_images": 11000, "rounds": args.stage_rounds}
        return run_child("stage", json.dumps(spec), args)


# ----------------------------------------------------------------------------- breakdown
def breakdown(model, loss_fn, optimizer, xs, ys, steps: int, sync=lambda: None) -> list[tuple[str, float, float]]:
    """Median seconds per step of each layer's forward and backward, the loss and the optimizer.

    ``sync`` runs before every clock reading, so that on a GPU each part is charged its own kernels.
    """
    layers = getattr(model, "layers_in_run_order", model.layers)  # the units forward runs (ReLU after a max-pool, ...)
    index = ["+".join(str(model.layers.index(part)) for part in getattr(unit, "parts", (unit,))) for unit in layers]
    fwd, bwd = [[] for _ in layers], [[] for _ in layers]
    extra = {"loss": [], "optimizer": []}
    for s in range(steps):
        x, y = xs[s % len(xs)], ys[s % len(ys)]
        for i, layer in enumerate(layers):
            t = time.perf_counter()
            x = layer.forward(x, train=True)
            fwd[i].append(_elapsed(t, sync))
        t = time.perf_counter()
        _, d = loss_fn(x, y)
        extra["loss"].append(_elapsed(t, sync))
        for i in reversed(range(len(layers))):
            t = time.perf_counter()
            d = None if d is None else layers[i].backward(d)  # None below the first layer with params
            bwd[i].append(_elapsed(t, sync))
        t = time.perf_counter()
        optimizer.step()
        extra["optimizer"].append(_elapsed(t, sync))
    med = statistics.median
    def label(layer) -> str:  # a conv also says how it is computed (gemm or winograd)
        return f"{layer.type_name} ({layer.method})" if hasattr(layer, "method") else layer.type_name

    rows = [(f"{index[i]:>2} {label(layers[i])}", med(fwd[i]), med(bwd[i])) for i in range(len(layers))]
    return rows + [(f"   {k}", med(v), 0.0) for k, v in extra.items()]


def _elapsed(start: float, sync) -> float:
    sync()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    blas = pin_threads(args.threads)
    if args.child:
        child(args)
        return 0
    import nnlib  # noqa: PLC0415
    from nnlib import backend  # noqa: PLC0415
    from nnlib.errors import MissingExtra  # noqa: PLC0415

    try:
        xp = backend.use(args.backend)
    except MissingExtra as err:
        print(f"compare.py: {err}", file=sys.stderr)
        return 2
    sync = device_sync(xp)
    on_gpu = args.backend == "cupy"
    if on_gpu:  # the per-example loop, the train stage and the RSS children measure the CPU path
        args.no_loop = args.no_stage = args.no_rss = True
    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            print(INSTALL_TORCH)
        else:
            torch.set_num_threads(args.threads)
            if on_gpu and not torch.cuda.is_available():
                print(f"PyTorch {torch.__version__} sees no CUDA device: nnlib side only")
                torch = None
    torch_device = "cuda" if on_gpu else "cpu"
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in PRESETS]
    if unknown:
        print(f"compare.py: unknown config {unknown[0]!r}: expected some of {PRESETS}", file=sys.stderr)
        return 2

    print(f"nnlib from {Path(nnlib.__file__).parent}; numpy {np.__version__}; BLAS: {blas}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else "torch: not used")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores; threads {args.threads}; "
          f"{load_note()} at the start", flush=True)
    print("nnlib and PyTorch in one process, rounds interleaved" if args.in_process else
          "nnlib and PyTorch each in child processes of their own, one per round, alternating")
    if on_gpu:
        gpu = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"]
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
        print(f"GPU: {gpu}; cupy {xp.__version__}")
        peak = sgemm_peak(xp, n=8192, sync=sync)
        print(f"sgemm peak (8192^3 float32 matmul, cupy, best of 5): {peak:.1f} GFLOP/s", flush=True)
    else:
        gpu = None
        peak = sgemm_peak()
        print(f"sgemm peak (2048^3 float32 matmul, numpy, {args.threads} threads, best of 5): {peak:.1f} GFLOP/s", flush=True)

    data = mnist_train()
    if data is None:
        print("no MNIST in data/raw or ../shared/mnist: random images instead")
        rng = np.random.default_rng(0)
        data = rng.integers(0, 256, (10000, 28, 28), np.uint8), rng.integers(0, 10, 10000).astype(np.uint8)
    images, labels = data

    results = {"machine": {"cores": os.cpu_count(), "threads": args.threads, "blas": blas, "load_start": load_note(),
                           "numpy": np.__version__, "torch": torch.__version__ if torch else None,
                           "sgemm_peak_gflops": peak, "nnlib": str(Path(nnlib.__file__).parent),
                           "backend": args.backend, "gpu": gpu},
               "args": {k: v for k, v in vars(args).items() if not k.startswith("child")}, "configs": {}}
    breakdown_configs = {c.strip() for c in args.breakdown.split(",") if c.strip()}
    breakdowns = {}
    for name in configs:
        cfg = load_preset(name)
        steps = args.steps or DEFAULT_STEPS[name]
        batch = cfg["batch_size"]
        model, loss_fn, optimizer, step = nnlib_setup(cfg, args.seed)
        xs, ys = batch_pool(images, labels, batch, np.random.default_rng(args.seed))
        if args.in_process:
            runners = {"nnlib": (step, xs, ys, sync)}
            if torch is not None:
                runners["torch"] = (torch_setup(cfg, model, torch_device),
                                    [torch.from_numpy(backend.to_numpy(x)).to(torch_device) for x in xs],
                                    [torch.from_numpy(backend.to_numpy(y)).to(torch_device) for y in ys],
                                    torch.cuda.synchronize if on_gpu else (lambda: None))
            times = interleaved(runners, steps, args.rounds, args.warmup)
        else:
            times = separate_rounds(name, ["nnlib", "torch"] if torch is not None else ["nnlib"], steps, args)
        flops = gemm_flops_per_image(cfg["model"], (1, 28, 28))
        row = {"batch_size": batch, "steps": steps, "rounds": args.rounds, "gemm_mflop_per_image": flops / 1e6,
               "seconds_per_step": times, "processes": "one" if args.in_process else "separate"}
        for fw, t in times.items():
            row[f"{fw}_img_s"] = batch / statistics.median(t)
            row[f"{fw}_gflops"] = flops * row[f"{fw}_img_s"] / 1e9
            row[f"{fw}_peak_share"] = row[f"{fw}_gflops"] / peak
        if "torch" in times:
            row["ratio"] = paired_ratio(times["torch"], times["nnlib"])  # torch time / nnlib time = speed ratio
            row["floor"] = FLOORS[name]
        if name in breakdown_configs:
            breakdowns[name] = breakdown(model, loss_fn, optimizer, xs, ys, args.breakdown_steps, sync)
        if name == "nielsen" and not args.no_loop:
            examples = [[(x.reshape(-1, 1), np.eye(10, dtype=np.float32)[int(t)][:, None]) for x, t in zip(xb, yb)]
                        for xb, yb in zip(xs, ys)]
            loop = nielsen_loop(model, cfg["optimizer"]["lr"])
            # The loop is about 10x slower per step: it gets a tenth of the steps, so both sides' rounds last
            # tens of milliseconds (80 batched steps, 4 ms, right after a loop round timed a cold start).
            loop_times = interleaved({"nnlib": (step, xs, ys, sync), "loop": (lambda e, _: loop(e), examples, examples, sync)},
                                     {"nnlib": steps, "loop": max(args.rounds, steps // 10)}, args.rounds, args.warmup)
            row["loop"] = {"nnlib_img_s": batch / statistics.median(loop_times["nnlib"]),
                           "loop_img_s": batch / statistics.median(loop_times["loop"]),
                           "ratio": paired_ratio(loop_times["loop"], loop_times["nnlib"]), "floor": LOOP_FLOOR}
        results["configs"][name] = row
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        print(f"{name}: nnlib {row['nnlib_img_s']:,.0f} img/s, torch "
              f"{row.get('torch_img_s', float('nan')):,.0f} img/s, ratio {ratio}", flush=True)

    if not args.no_rss:
        for name in configs:
            results["configs"][name].update(run_child("rss", name, args))
    if not args.no_stage:
        stage = stage_row(args)
        if stage is not None:
            stage.update(floor=STAGE_FLOOR, rss_floor_mib=RSS_FLOOR_MIB)
            results["stage"] = stage
    if args.thread_rows:
        print(f"thread rows, {args.thread_config}: {args.thread_seconds:g} s per training, {args.thread_rounds} rounds", flush=True)
        results["thread_rows"] = thread_rows(["nnlib", "torch"] if torch is not None else ["nnlib"], args)
    results["machine"]["load_end"] = load_note()
    print(f"{load_note()} at the end")
    print_table(results, breakdowns)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nfigures written to {args.json}")
    return 0


def print_table(results: dict, breakdowns: dict) -> None:
    peak = results["machine"]["sgemm_peak_gflops"]
    print("\n| config | batch | nnlib img/s | PyTorch img/s | nnlib / PyTorch | floor | nnlib GFLOP/s (% peak) | "
          "PyTorch GFLOP/s (% peak) | nnlib peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in results["configs"].items():
        torch_cells = (f"{row['torch_img_s']:,.0f} | {row['ratio']:.2f}x | >= {row['floor']:.1f}x"
                       if "torch_img_s" in row else "- | - | -")
        torch_flops = f"{row['torch_gflops']:.1f} ({100 * row['torch_peak_share']:.0f}%)" if "torch_gflops" in row else "-"
        rss = f"{row['peak_rss_mib']:.0f}" if "peak_rss_mib" in row else "-"
        print(f"| {name} | {row['batch_size']} | {row['nnlib_img_s']:,.0f} | {torch_cells} | "
              f"{row['nnlib_gflops']:.1f} ({100 * row['nnlib_peak_share']:.0f}%) | {torch_flops} | {rss} |")
    print(f"(sgemm peak {peak:.1f} GFLOP/s; GEMM FLOPs per image of each network, convolutions counted as direct "
          f"im2col + GEMM, in the JSON; ratio = median of "
          f"per-round PyTorch time / nnlib time)")
    loop = results["configs"].get("nielsen", {}).get("loop")
    stage = results.get("stage")
    if loop or stage:
        print("\n| extra row | measured | compared with | ratio | floor |")
        print("|---|---:|---:|---:|---:|")
    if loop:
        print(f"| nielsen: batched nnlib / per-example loop | {loop['nnlib_img_s']:,.0f} img/s | "
              f"{loop['loop_img_s']:,.0f} img/s | {loop['ratio']:.1f}x | >= {loop['floor']:.0f}x |")
    if stage:
        print(f"| train stage (fit over ShardStream) / pure compute, cnn | {statistics.median(stage['stage_seconds']):.2f} s "
              f"per epoch | {statistics.median(stage['pure_seconds']):.2f} s | {stage['ratio']:.3f}x | <= {stage['floor']:.2f}x |")
        print(f"| same, process CPU time (less sensitive to other processes) | {statistics.median(stage['stage_cpu_seconds']):.2f} s "
              f"| {statistics.median(stage['pure_cpu_seconds']):.2f} s | {stage['cpu_ratio']:.3f}x | <= {stage['floor']:.2f}x |")
        print(f"| train stage peak RSS, cnn | {stage['stage_peak_rss_mib']:.0f} MiB | | | <= {stage['rss_floor_mib']} MiB |")
        print(f"(timed stage epoch: {stage['images_per_epoch']:,} images in {stage['steps_per_epoch']} steps + validation of "
              f"{stage['val_images']:,} images; peak RSS after a first epoch of {stage['first_epoch_images']:,} images + "
              f"validation of {stage['first_epoch_val_images']:,}; {stage['shards']} shards of {stage['shard_size']:,}; "
              f"pairs {', '.join(f'{s:.2f}/{p:.2f}' for s, p in zip(stage['stage_seconds'], stage['pure_seconds']))} s)")
    rows = results.get("thread_rows")
    if rows:
        print(f"\n| thread row ({results['args']['thread_config']}) | threads used | img/s of each | x alone (2 threads) each "
              "| together x alone |")
        print("|---|---|---:|---:|---:|")
        for label, row in rows.items():
            used = "; ".join("+".join(map(str, r)) for r in row["threads_used"])
            print(f"| {label} | {used} | {' + '.join(f'{v:,.0f}' for v in row['img_s'])} | "
                  f"{' / '.join(f'{v:.2f}x' for v in row['x_alone'])} | {row['together_x_alone']:.2f}x |")
        print(f"(median of {results['args']['thread_rounds']} rounds of {results['args']['thread_seconds']:g} s per training, "
              f"each training a process of its own; {results['machine']['load_start']} at the start, "
              f"{results['machine']['load_end']} at the end)")
    for name, rows in breakdowns.items():
        total = sum(f + b for _, f, b in rows)
        print(f"\nnnlib per-layer breakdown, {name} (median of the steps, ms)")
        print("| layer | forward | backward | share |")
        print("|---|---:|---:|---:|")
        for layer, f, b in rows:
            print(f"| {layer.strip()} | {f * 1e3:.2f} | {b * 1e3:.2f} | {(f + b) / total:.1%} |")
        print(f"| total | {sum(r[1] for r in rows) * 1e3:.2f} | {sum(r[2] for r in rows) * 1e3:.2f} | |")


if __name__ == "__main__":
    sys.exit(main())
