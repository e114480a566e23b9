"""Scratch against PyTorch, same recipe: train each preset in nnlib and in PyTorch, compare test accuracy and time.

    python bench/torch_twin.py                                    # nielsen, mlp, cnn-small, cnn: about 25 min on 2 cores
    python bench/torch_twin.py --presets nielsen,mlp,cnn-small --json bench/torch_twin.json
    python bench/torch_twin.py --presets cnn --epochs 1 --images-per-epoch 5000   # a quick check, not the recipe
    python bench/torch_twin.py --presets mlp --shards data/shards                 # reuse shards already built

For every preset, the effective ``prepare`` and ``train`` sections are those of a params file holding
only ``seed`` and ``preset: NAME`` (every other key null): the preset over the schema's defaults, as
``dvc exp run -S preset=NAME`` uses them. The preset's shards are built with ``nnlib.mnist.data.shards.prepare``
into a temporary directory (MNIST from ../shared/mnist when it exists, else the fetch stage's sources),
unless ``--shards DIR`` names shards already built. Then, in this one process:

- nnlib: ``nnlib.training.fit`` exactly as stages/train.py calls it (``ShardStream`` seeded with
  ``seeding.rng(seed, SHUFFLE)``, the optimizer, loss and schedule of the section, validation after
  every epoch), from the weights of ``Sequential.from_specs(..., seeding.rng(seed, INIT))``;
- PyTorch: the twin network of ``bench/torch_nets.py`` (same layer specs) starting from a copy of
  those same initial weights, ``torch_optimizer`` / ``torch_loss`` of the same sections, the lr of every
  param group set from nnlib's own schedule object at every step (or epoch) as fit does, and the
  batches of a second ``ShardStream`` with the same seed: the very same images in the very same order.
  Dropout masks come from torch's RNG (``torch.manual_seed(seed)``), so they differ from nnlib's.

Both train with validation after every epoch; "train s" is the sum of the epochs' wall times
(training and validation, as metrics/timing.json counts them). Test accuracy is on the 10,000 test
images, for the final-epoch weights. NumPy's BLAS is pinned to ``--threads`` with threadpoolctl, PyTorch
with ``torch.set_num_threads``, and ``OMP_WAIT_POLICY`` defaults to PASSIVE (set it to override): with
torch's OpenMP threads spinning, a shared, busy CPU made PyTorch's small-network steps 10-80x slower and
erratic. nnlib trains first, then PyTorch, so on a shared machine the two times are measured at
different moments. ``--epochs`` and ``--images-per-epoch`` override the recipe for quick
checks, and the table title says so. ``--json PATH`` writes the table, the per-epoch logs and the
machine note. Needs PyTorch: ``pip install -e '.[oracle]'`` (without it the script says so and exits 2).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from nnlib_select import select_nnlib  # bench/ is on sys.path for `python bench/x.py`

select_nnlib()
# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a shared,
# oversubscribed CPU the spinning made each step of the small networks 10-80x slower and erratic.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from nnlib import backend  # noqa: E402
from nnlib.mnist.data import fetch  # noqa: E402
from nnlib.mnist.config import presets  # noqa: E402
from nnlib.mnist import seeding  # noqa: E402
from nnlib.mnist.data.stream import ShardStream, load_shard, minibatches, read_manifest, to_batch  # noqa: E402
from nnlib.evaluation import evaluate  # noqa: E402
from nnlib.model import EVAL_BATCH_SIZE, Sequential  # noqa: E402
from nnlib.mnist.config.params import load_section  # noqa: E402
from nnlib.mnist.config.schema import PREPARE, TRAIN  # noqa: E402
from nnlib.mnist.data.shards import prepare  # noqa: E402
from nnlib.losses import make_loss  # noqa: E402
from nnlib.training import fit, make_optimizer, make_schedule, steps_per_epoch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = (ROOT / ".." / "shared" / "mnist").resolve()
DEFAULT_PRESETS = ["nielsen", "mlp", "cnn-small", "cnn"]
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
INSTALL_TORCH = "torch_twin: PyTorch is not installed; for the comparison: pip install -e '.[oracle]'"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated presets (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="BLAS threads for nnlib and torch threads (default: 2)")
    p.add_argument("--epochs", type=int, default=0, help="override every preset's epochs (a quick check, not the recipe)")
    p.add_argument("--images-per-epoch", type=int, default=0,
                   help="override the images per epoch (default: the preset's, i.e. the train split)")
    p.add_argument("--seed", type=int, default=0, help="the global seed (default: 0, as params.yaml)")
    p.add_argument("--shards", type=Path, default=None, help="use these shards instead of building the preset's")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--nnlib-root", default=None, help="import nnlib from this checkout (read by nnlib_select)")
    args = p.parse_args(argv)
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.presets if name not in presets.names()]
    if unknown or not args.presets:
        p.error(f"--presets: unknown preset {unknown[0] if unknown else ''!r}: choose from {presets.names()}")
    if args.threads < 1 or args.epochs < 0 or args.images_per_epoch < 0:
        p.error("--threads must be >= 1, --epochs and --images-per-epoch >= 0")
    return args


def import_torch_twins():
    """(torch, torch_nets) or, without PyTorch, a one-line message and exit code 2."""
    try:
        import torch  # noqa: PLC0415
        import torch_nets  # noqa: PLC0415
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        print(INSTALL_TORCH, file=sys.stderr)
        raise SystemExit(2) from None
    return torch, torch_nets


# ----------------------------------------------------------------------------- recipe and data

def effective_sections(name: str, seed: int, workdir: Path) -> tuple[dict, dict]:
    """The validated (prepare, train) sections of a params file with only ``seed`` and ``preset: NAME``."""
    path = workdir / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump({"seed": seed, "preset": name}))
    return load_section("prepare", PREPARE, path)[1], load_section("train", TRAIN, path)[1]


def raw_mnist(workdir: Path) -> Path:
    """A folder with the four verified MNIST files, fetched as tests/conftest.py does."""
    out = workdir / "raw"
    if not out.is_dir():
        sources = [fetch.Mirror(str(SHARED_MNIST), label="shared")] if SHARED_MNIST.is_dir() else None
        fetch.fetch_mnist(out, sources=sources, log=lambda message: None)
    return out


def build_shards(name: str, seed: int, prepare_params: dict, workdir: Path) -> Path:
    """The preset's shards in ``workdir/shards-NAME`` (nnlib.mnist.data.shards.prepare, no preview)."""
    out = workdir / f"shards-{name}"
    start = time.perf_counter()
    prepare(seed, prepare_params, raw_dir=raw_mnist(workdir), out_dir=out, preview_path=None, progress=False)
    log(f"{name}: shards built in {time.perf_counter() - start:.1f} s")
    return out


def check_given_shards(name: str, seed: int, prepare_params: dict, shard_dir: Path, manifest: dict) -> bool:
    """True when ``--shards`` holds what the preset's prepare section builds; a warning otherwise."""
    wanted = {k: v for k, v in prepare_params.items() if k != "workers"}
    same = manifest.get("seed") == seed and manifest.get("params") == wanted
    if not same:
        log(f"{name}: warning: {shard_dir} was not built with this preset's prepare section and seed {seed}; using it anyway")
    return same


def train_stream(shard_dir: Path, manifest: dict, seed: int) -> ShardStream:
    """nnlib's stream of training batches, as stages/train.py builds it (a fresh one gives the same order)."""
    files = [s["file"] for s in manifest["train_shards"]]
    counts = [s["count"] for s in manifest["train_shards"]]
    return ShardStream(shard_dir, files, seeding.rng(seed, seeding.SHUFFLE), counts=counts)


# ----------------------------------------------------------------------------- the two trainers

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_nnlib(model, cfg: dict, stream, val: tuple, test: tuple, images_per_epoch: int) -> dict:
    """``fit`` as the train stage runs it; test accuracy of the final-epoch weights."""
    loss_fn = make_loss(cfg["loss"])
    optimizer = make_optimizer(model, cfg["optimizer"])
    schedule = run_schedule(cfg, images_per_epoch)
    with contextlib.redirect_stdout(sys.stderr), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = fit(model, loss_fn, optimizer, schedule, stream, epochs=cfg["epochs"], images_per_epoch=images_per_epoch,
                      batch_size=cfg["batch_size"], val=lambda: minibatches(*val, EVAL_BATCH_SIZE), interval=cfg["schedule"]["interval"],
                      progress=False)
    _, test_acc, _ = evaluate(model, loss_fn, minibatches(*test, EVAL_BATCH_SIZE))
    return {"test_acc": test_acc, "train_s": sum(row["seconds"] for row in history.rows), "epochs": history.rows}


def run_schedule(cfg: dict, images_per_epoch: int):
    """nnlib's schedule object over the run, as stages/train.py makes it."""
    interval = cfg["schedule"]["interval"]
    total = cfg["epochs"] * (steps_per_epoch(images_per_epoch, cfg["batch_size"]) if interval == "step" else 1)
    return make_schedule(cfg["schedule"], cfg["optimizer"]["lr"], total)


def torch_accuracy(torch, net, x_uint8, y) -> float:
    """Eval-mode accuracy of the torch net over uint8 images, in batches of nnlib's EVAL_BATCH_SIZE (both sides validate alike)."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x_uint8), EVAL_BATCH_SIZE):
            logits = net(torch.from_numpy(to_batch(x_uint8[start : start + EVAL_BATCH_SIZE])))
            correct += int((logits.argmax(dim=1).numpy() == y[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / len(x_uint8)


def train_torch(torch, torch_nets, net, cfg: dict, stream, val: tuple, test: tuple, images_per_epoch: int) -> dict:
    """The same loop as ``fit`` in PyTorch: lr from nnlib's schedule per step (or epoch), validation every epoch."""
    loss_fn = torch_nets.torch_loss(cfg["loss"])
    optimizer = torch_nets.torch_optimizer(net, cfg["optimizer"])
    schedule, interval = run_schedule(cfg, images_per_epoch), cfg["schedule"]["interval"]
    rows, step = [], 0
    for epoch in range(1, cfg["epochs"] + 1):
        net.train()
        start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for xb, yb in stream.epoch(images_per_epoch, cfg["batch_size"]):
            lr = schedule(step if interval == "step" else epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            labels = torch.from_numpy(yb)
            outputs = net(torch.from_numpy(xb))
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(yb)
            loss_sum += loss.item() * len(yb)
            correct += int((outputs.argmax(dim=1) == labels).sum())
        val_acc = torch_accuracy(torch, net, *val)
        rows.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_acc": val_acc,
                     "lr": lr, "seconds": time.perf_counter() - start})
        log(f"torch epoch {epoch}/{cfg['epochs']}: train loss {rows[-1]['train_loss']:.4f} acc {rows[-1]['train_acc']:.4f} | "
            f"val acc {val_acc:.4f} | lr {lr:.3g} | {rows[-1]['seconds']:.1f}s")
    return {"test_acc": torch_accuracy(torch, net, *test), "train_s": sum(r["seconds"] for r in rows), "epochs": rows}


# ----------------------------------------------------------------------------- one preset, the table

def run_preset(name: str, args, torch, torch_nets, workdir: Path) -> dict:
    """Build (or take) the shards, train nnlib then PyTorch from the same initial weights; one result row."""
    prepare_params, cfg = effective_sections(name, args.seed, workdir)
    cfg["epochs"] = args.epochs or cfg["epochs"]
    shard_dir = args.shards or build_shards(name, args.seed, prepare_params, workdir)
    manifest = read_manifest(shard_dir)
    own_shards = args.shards is None or check_given_shards(name, args.seed, prepare_params, shard_dir, manifest)
    images_per_epoch = args.images_per_epoch or cfg["images_per_epoch"] or manifest["train_split_size"]
    val = load_shard(Path(shard_dir) / manifest["val"]["file"])
    test = load_shard(Path(shard_dir) / manifest["test"]["file"])

    model = Sequential.from_specs(cfg["model"], INPUT_SHAPE, seeding.rng(args.seed, seeding.INIT), num_classes=NUM_CLASSES)
    net = torch_nets.torch_network(cfg["model"], INPUT_SHAPE)
    torch_nets.copy_weights(model, net)  # before nnlib trains: both start from nnlib's initial weights
    torch.manual_seed(args.seed)
    log(f"{name}: {cfg['epochs']} epochs of {images_per_epoch:,} images, batch {cfg['batch_size']}, "
        f"{model.num_parameters():,} parameters")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        ours = train_nnlib(model, cfg, train_stream(shard_dir, manifest, args.seed), val, test, images_per_epoch)
    theirs = train_torch(torch, torch_nets, net, cfg, train_stream(shard_dir, manifest, args.seed), val, test, images_per_epoch)
    if args.shards is None:
        shutil.rmtree(shard_dir, ignore_errors=True)  # the mlp/cnn shards are hundreds of MiB: free them before the next preset
    return {"preset": name, "epochs": cfg["epochs"], "images_per_epoch": images_per_epoch, "batch_size": cfg["batch_size"],
            "shards": str(args.shards) if args.shards else "built by nnlib.mnist.data.shards.prepare", "preset_shards": own_shards,
            "nnlib": ours, "torch": theirs}


def machine_note(torch, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores; {threads} threads (NumPy BLAS via threadpoolctl, torch.set_num_threads; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); numpy {np.__version__}, torch {torch.__version__}; nnlib first, then PyTorch, one after another")


def title(args) -> str:
    changes = [f"--epochs {args.epochs}"] * bool(args.epochs) + [f"--images-per-epoch {args.images_per_epoch}"] * bool(args.images_per_epoch)
    recipe = f"quick check ({', '.join(changes)}), NOT the full recipe" if changes else "full recipe"
    return f"nnlib against PyTorch, same recipe, seed {args.seed}: {recipe}"


def table(rows: list[dict]) -> str:
    lines = ["| preset | epochs | nnlib test acc | PyTorch test acc | nnlib train s | PyTorch train s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['epochs']} | {r['nnlib']['test_acc']:.2%} | {r['torch']['test_acc']:.2%} | "
                     f"{r['nnlib']['train_s']:.1f} | {r['torch']['train_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch, torch_nets = import_torch_twins()
    backend.use("numpy")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="torch_twin-") as tmp:
        for name in args.presets:
            rows.append(run_preset(name, args, torch, torch_nets, Path(tmp)))
    note = machine_note(torch, args.threads)
    print(f"{title(args)}\n\n{table(rows)}\n\nmachine: {note}")
    if args.json:
        command = "python bench/torch_twin.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps({"title": title(args), "command": command.strip(), "machine": note,
                                         "threads": args.threads, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
