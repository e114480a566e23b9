"""Peak memory of training over the shard stream: does it stay flat however many copies exist?

    python bench/bench_memory.py                          # copies 30 (1.7M images) against copies 1
    python bench/bench_memory.py --copies 30 --epochs 4 --baseline-copies 1 --keep-dir
    python bench/bench_memory.py --nnlib-root /path/to/other/checkout   # measure another nnlib (A/B)

For each copies value (the baseline first): build the shards with ``nnlib.mnist.data.shards.prepare`` from
data/raw into a temporary directory (deleted afterwards unless --keep-dir), then train in a
*child process* exactly as stages/train.py does (read_manifest, val from val.npz, ``ShardStream``
over every train shard, ``nnlib.training.fit``) a small model (flatten - dense 64 - relu - dense 10,
SGD momentum 0.9, constant lr) for ``--epochs`` epochs of ceil(passes * train images / epochs) images,
so the stream reads every shard at least once (``--passes`` times). The child counts the shard files it
opens through an audit hook, so any shard-reading code is counted.

The peak resident set is VmHWM from /proc/self/status inside the child: the high-water mark of the
child's own address space. ru_maxrss is not used: Linux carries the pre-exec high-water mark across
exec, so a child started from this (larger) parent process reports the parent's RSS, and
RUSAGE_CHILDREN would also count prepare's worker processes. Both ru_maxrss values (getrusage in the
child, wait4 in the parent) are printed on stderr for comparison.

The floor: peak RSS of the training process <= --floor-mib (2048 MiB). Exit code 1 if any row breaks
it or if a run did not visit every shard. Rows are independent of machine noise (memory, not time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


from nnlib_select import select_nnlib  # noqa: E402 - bench/ is on sys.path for `python bench/x.py`

select_nnlib()

FLOOR_MIB = 2048
SPECS = [{"type": "flatten"}, {"type": "dense", "out": 64}, {"type": "relu"}, {"type": "dense", "out": 10}]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=30, help="augment.copies of the measured shard set (default 30)")
    p.add_argument("--baseline-copies", type=int, default=1,
                   help="augment.copies of the comparison row, run first (default 1; -1: no baseline)")
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs; each draws ceil(passes * train images / epochs) images (default 2)")
    p.add_argument("--passes", type=float, default=1.0,
                   help="passes over the whole train stream, split over the epochs (default 1: every shard once)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--floor-mib", type=float, default=FLOOR_MIB, help=f"peak-RSS ceiling in MiB (default {FLOOR_MIB})")
    p.add_argument("--raw-dir", default=str(ROOT / "data" / "raw"), help="the MNIST IDX files (default data/raw)")
    p.add_argument("--workers", type=int, default=0, help="prepare worker processes (default 0: one per core)")
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary shard directories (paths are printed)")
    p.add_argument("--nnlib-root", default=str(ROOT),
                   help="directory holding the nnlib package to measure (default: this checkout), for A/B runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", metavar="SHARD_DIR", help=argparse.SUPPRESS)  # internal: the training process
    p.add_argument("--result", metavar="JSON", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def proc_status_kib(key: str = "VmHWM") -> int:
    """A memory line of /proc/self/status in KiB (VmHWM: peak resident set); 0 where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_main(args) -> None:
    """The training process: stages/train.py's loop over the shard stream, then report memory."""
    import nnlib  # noqa: PLC0415 - imported in the child only
    from nnlib.mnist import seeding  # noqa: PLC0415
    from nnlib.mnist.data import stream  # noqa: PLC0415
    from nnlib.model import EVAL_BATCH_SIZE, Sequential  # noqa: PLC0415
    from nnlib.losses import make_loss  # noqa: PLC0415
    from nnlib.training import fit, make_optimizer, make_schedule  # noqa: PLC0415

    shard_dir = Path(args.child)
    opened: list[str] = []

    def count_opens(event, event_args):  # every file open, whichever function reads the shards
        if event == "open" and isinstance(event_args[0], (str, bytes, os.PathLike)):
            name = os.path.basename(os.fsdecode(event_args[0]))
            if name.startswith("train-") and name.endswith(".npz"):
                opened.append(name)

    sys.addaudithook(count_opens)

    manifest = stream.read_manifest(shard_dir)
    files = [s["file"] for s in manifest["train_shards"]]
    total = sum(s["count"] for s in manifest["train_shards"])
    val_x, val_y = stream.load_shard(shard_dir / manifest["val"]["file"])
    images_per_epoch = math.ceil(args.passes * total / args.epochs)
    model = Sequential.from_specs(SPECS, (1, *manifest["image_shape"]), seeding.rng(args.seed, seeding.INIT))
    loss_fn = make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "half": True})
    optimizer = make_optimizer(model, {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                                       "weight_decay": 0.0, "decay_bias_and_norm": True, "betas": [0.9, 0.999],
                                       "eps": 1e-8})
    steps = args.epochs * -(-images_per_epoch // args.batch_size)
    schedule = make_schedule({"name": "constant", "warmup": 0}, 0.05, steps)
    shards = stream.ShardStream(shard_dir, files, seeding.rng(args.seed, seeding.SHUFFLE))
    before_fit_kib = proc_status_kib("VmHWM")  # imports, val set, model: what the stream adds comes on top
    start = time.perf_counter()
    history = fit(model, loss_fn, optimizer, schedule, shards, epochs=args.epochs, images_per_epoch=images_per_epoch,
                  batch_size=args.batch_size, val=lambda: stream.minibatches(val_x, val_y, EVAL_BATCH_SIZE), progress=False)
    result = {
        "nnlib": str(Path(nnlib.__file__).parent),
        "vm_hwm_kib": proc_status_kib("VmHWM"),
        "before_fit_kib": before_fit_kib,
        # KiB on Linux, bytes on macOS
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1),
        "images": args.epochs * images_per_epoch,
        "train_images": total,
        "shards": len(files),
        "shards_visited": len(set(opened) & set(files)),
        "shard_loads": len(opened),
        "seconds": time.perf_counter() - start,
        "val_acc": history.rows[-1]["val_acc"],
    }
    Path(args.result).write_text(json.dumps(result))


def run_child(shard_dir: Path, args) -> dict:
    """Train in a fresh process; return its report plus ru_maxrss from wait4 on exactly that process."""
    result_path = shard_dir.parent / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(shard_dir), "--result", str(result_path),
           "--epochs", str(args.epochs), "--passes", str(args.passes), "--batch-size", str(args.batch_size),
           "--seed", str(args.seed), "--nnlib-root", args.nnlib_root]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench_memory: the training child failed with exit code {proc.returncode}")
    report = json.loads(result_path.read_text())
    report["wait4_maxrss_kib"] = usage.ru_maxrss  # KiB on Linux
    return report


def measure(copies: int, args) -> dict:
    """Build shards with ``copies`` in a temporary directory, train over them in a child, measure."""
    from nnlib.mnist.data import shards  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix=f"bench_memory_c{copies}_"))
    try:
        params = shards.check_params({"workers": args.workers, "augment": {"copies": copies}})
        shard_dir = work / "shards"
        start = time.perf_counter()
        shards.prepare(args.seed, params, args.raw_dir, shard_dir, work / "augment_preview.png",
                       progress=sys.stderr.isatty())
        prepare_s = time.perf_counter() - start
        shard_bytes = sum(p.stat().st_size for p in shard_dir.glob("train-*.npz"))
        report = run_child(shard_dir, args)
    finally:
        if args.keep_dir:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    peak_kib = report["vm_hwm_kib"] or report["ru_maxrss_kib"]  # ru_maxrss only where /proc is missing
    report.update(copies=copies, shard_bytes=shard_bytes, prepare_s=prepare_s, peak_mib=peak_kib / 1024)
    report["ok"] = report["peak_mib"] <= args.floor_mib and report["shards_visited"] == report["shards"]
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    if args.epochs < 1 or args.batch_size < 1 or args.copies < 0 or args.passes < 1:
        raise SystemExit("bench_memory: --epochs, --batch-size and --passes must be >= 1, --copies >= 0")
    runs = ([args.baseline_copies] if args.baseline_copies >= 0 else []) + [args.copies]
    rows = []
    for copies in runs:
        print(f"copies {copies}: building shards and training ...", file=sys.stderr, flush=True)
        rows.append(measure(copies, args))
        r = rows[-1]
        print(f"  prepare {r['prepare_s']:.1f}s, train {r['seconds']:.1f}s ({r['images'] / r['seconds']:,.0f} img/s), "
              f"{r['shard_loads']} shard opens, val acc {r['val_acc']:.4f}; VmHWM {r['vm_hwm_kib'] / 1024:.0f} MiB, "
              f"ru_maxrss {r['ru_maxrss_kib'] / 1024:.0f} MiB (child), {r['wait4_maxrss_kib'] / 1024:.0f} MiB (wait4)",
              file=sys.stderr, flush=True)

    print(f"\nnnlib: {rows[-1]['nnlib']}")
    print(f"Training over ShardStream (window 3), model 784-64-10, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.passes:g} pass(es) over every shard; peak RSS of the training process")
    print("| copies | train images | shards (visited) | shard bytes on disk | images trained | RSS before fit (MiB) "
          "| peak RSS of train (MiB) | floor (MiB) | result |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['copies']} | {r['train_images']:,} | {r['shards']} ({r['shards_visited']}) | "
              f"{r['shard_bytes'] / 2**20:,.0f} MiB | {r['images']:,} | {r['before_fit_kib'] / 1024:.0f} | "
              f"{r['peak_mib']:.0f} | {args.floor_mib:.0f} | {'pass' if r['ok'] else 'FAIL'} |")
    if len(rows) == 2:
        base, big = rows
        print(f"\nshard data x{big['shard_bytes'] / base['shard_bytes']:.1f}, "
              f"peak RSS x{big['peak_mib'] / base['peak_mib']:.2f} ({big['peak_mib'] - base['peak_mib']:+.0f} MiB)")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
