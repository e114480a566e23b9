"""End-to-end speed of ``nnlib predict`` on a directory of PNG files, against decoding them alone.

    python bench/bench_predict.py                        # 10,000 PNGs, untrained small CNN, 3 interleaved repeats
    python bench/bench_predict.py --arch cnn --repeats 5 # the pipeline's default network (cnn preset)
    python bench/bench_predict.py --model models/model.npz    # a trained model file
    python bench/bench_predict.py --nnlib-root /path/to/other/checkout   # time another nnlib (A/B)

The first --images MNIST test digits are written as 28x28 PNG files, black on white, into a temporary
directory (deleted afterwards), so that every preprocessing step runs (inversion included). Rows:

  Pillow decode only  ``Image.open(f).load()`` for every file: the floor of any reader of these files
  predict_paths       ``nnlib.mnist.predict.predict_paths(model, [directory])``: listing, reading, preprocessing,
                      batching and the network, end to end, as ``nnlib predict DIR`` runs it
  network only        ``model.predict_logits(to_batch(x))`` on the same digits as one uint8 array, in
                      batches of --batch-size: the share of the time the network itself takes

The rows alternate within each repeat after one untimed warm-up, so machine noise hits them alike;
images/s is the median over repeats, with the slowest and fastest. Ratios are taken against the
decode row. CPU/wall near 1 x the threads in use means the run got its cores; images per CPU-second
(CPU time of all threads) is steadier under a busy neighbour, and with --threads 1 it estimates
what one free core gives. Speed does not depend on the weights, so without --model the network is built untrained
from its layer specs: --arch small is the small CNN of the test fixture (tests/conftest.py), --arch cnn
the network of the pipeline's default preset, cnn (conv 32/64, dense 128). MNIST comes from --raw-dir
(default data/raw) when it holds the test images, else through the fetch stage's sources
(``../shared/mnist`` first when it exists, as tests/conftest.py does).
Floor (the issue): predict_paths >= 2,000 images/s on this 2-core CPU; exit code 1 when it is broken.
"""
from __future__ import annotations

import argparse
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
from PIL import Image  # noqa: E402

from nnlib.mnist.data import fetch  # noqa: E402
from nnlib.mnist.data.stream import read_idx, to_batch  # noqa: E402
from nnlib.model import Sequential  # noqa: E402
from nnlib.modelfile import load_model  # noqa: E402
from nnlib.mnist.paths import RAW_FILES  # noqa: E402
from nnlib.mnist.predict import Failure, predict_paths  # noqa: E402

TEST_IMAGES = RAW_FILES["test_images"]
SHARED_MNIST = ROOT.parent / "shared" / "mnist"
SMALL_CNN = [  # tests/conftest.py's SMALL_CNN, the fixture model (bench/ does not import the tests)
    {"type": "conv", "out": 8, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 16, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "flatten"}, {"type": "dense", "out": 10},
]
CNN = [  # the network of the pipeline's default preset (cnn): the calibration network of the training bench
    {"type": "conv", "out": 32, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 64, "k": 5}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
    {"type": "flatten"}, {"type": "dense", "out": 128}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "dropout", "p": 0.3}, {"type": "dense", "out": 10},
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000, help="PNG files to write and predict (default 10,000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each row, interleaved (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="predict_paths batch size (default 256, the CLI's)")
    p.add_argument("--model", help="a model file to time (default: an untrained network, see --arch)")
    p.add_argument("--arch", choices=("small", "cnn"), default="small",
                   help="network built untrained when there is no --model: the test fixture's small CNN "
                        "(default) or the cnn preset's network")
    p.add_argument("--threads", type=int, default=2,
                   help="BLAS threads via threadpoolctl (default 2, the cores of the CPU machine; 0: library default)")
    p.add_argument("--floor", type=float, default=2000.0,
                   help="slowest acceptable predict_paths images/s (default 2000)")
    p.add_argument("--raw-dir", default=str(ROOT / "data" / "raw"), help="where to look for the MNIST IDX files first")
    p.add_argument("--nnlib-root", default=str(ROOT),
                   help="directory holding the nnlib package to time (default: this checkout), for A/B runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained weights")
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


def test_digits(raw_dir: Path, work: Path, count: int) -> np.ndarray:
    """The first ``count`` MNIST test images, uint8 (count, 28, 28), from raw_dir or fetched into work."""
    if not (raw_dir / TEST_IMAGES).exists():
        raw_dir = work / "raw"
        sources = [fetch.Mirror(str(SHARED_MNIST), label="shared")] if SHARED_MNIST.is_dir() else None
        fetch.fetch_mnist(raw_dir, sources=sources, expected={TEST_IMAGES: fetch.SHA256[TEST_IMAGES]},
                          log=lambda message: None)
    return np.ascontiguousarray(read_idx(raw_dir / TEST_IMAGES)[:count])


def write_pngs(images: np.ndarray, out: Path) -> list[Path]:
    """Write uint8 (N, 28, 28) white-on-black digits as black-on-white PNG files; returns them in name order."""
    out.mkdir(parents=True)
    files = [out / f"{i:05d}.png" for i in range(len(images))]
    for image, file in zip(images, files):
        Image.fromarray(255 - image).save(file)
    return files


def build_model(args):
    """(model, description): the model file of --model, else an untrained network of --arch."""
    if args.model:
        return load_model(args.model)[0], args.model
    if args.arch == "cnn":
        specs, name = CNN, "the cnn preset's network"
    else:
        specs, name = SMALL_CNN, "the test fixture's small CNN"
    model = Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(args.seed)).eval()
    return model, f"{name}, untrained ({model.num_parameters():,} parameters)"


def decode_only(files: list[Path]) -> None:
    for file in files:
        with Image.open(file) as image:
            image.load()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    limiter, blas = limit_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        digits = test_digits(Path(args.raw_dir), work, args.images)
        files = write_pngs(digits, work / "pngs")
        model, described = build_model(args)
        predicted: list = []
        rows = {
            "Pillow decode only": lambda: decode_only(files),
            "predict_paths": lambda: predicted.__setitem__(
                slice(None), predict_paths(model, [work / "pngs"], batch_size=args.batch_size)),
            "network only": lambda: model.predict_logits(to_batch(digits), args.batch_size),
        }
        warm = files[: min(len(files), 500)]
        decode_only(warm)
        predict_paths(model, warm, batch_size=args.batch_size)
        model.predict_logits(to_batch(digits[:500]), args.batch_size)
        walls = {name: [] for name in rows}
        cpus = {name: [] for name in rows}
        for rep in range(args.repeats):
            for name, fn in rows.items():
                wall, cpu = timed(fn)
                walls[name].append(wall)
                cpus[name].append(cpu)
                print(f"  repeat {rep + 1}/{args.repeats} {name}: {len(files) / wall:,.0f} images/s "
                      f"(CPU/wall {cpu / wall:.2f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if limiter is not None:
            limiter.restore_original_limits()

    failures = [r for r in predicted if isinstance(r, Failure)]
    expected = model.predict(to_batch(digits), args.batch_size)
    agree = np.mean([r.digit == e for r, e in zip(predicted, expected) if not isinstance(r, Failure)])
    rate = {name: [len(files) / w for w in ws] for name, ws in walls.items()}
    decode = statistics.median(rate["Pillow decode only"])
    print(f"\nnnlib: {Path(sys.modules['nnlib'].__file__).parent}")
    print(f"{len(files):,} PNG files of 28x28 (black on white); model: {described}; batch {args.batch_size}; "
          f"{args.repeats} interleaved repeats; CPUs: {os.cpu_count()}; BLAS: {blas}")
    print("| what | images/s (median) | slowest..fastest | CPU/wall (median) | images per CPU-second | time x decode |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in rows:
        usage = statistics.median(c / w for c, w in zip(cpus[name], walls[name]))
        median = statistics.median(rate[name])
        per_cpu = len(files) / statistics.median(cpus[name])
        print(f"| {name} | {median:,.0f} | {min(rate[name]):,.0f}..{max(rate[name]):,.0f} | {usage:.2f} | "
              f"{per_cpu:,.0f} | {decode / median:.1f}x |")
    speed = statistics.median(rate["predict_paths"])
    ok = speed >= args.floor and not failures
    print(f"\npredict_paths agrees with the network on the arrays for {100 * agree:.2f}% of the digits "
          f"(an untrained network flips on smaller changes than a trained one); {len(failures)} failures")
    print(f"floor: predict_paths >= {args.floor:,.0f} images/s end to end: {speed:,.0f} -> {'pass' if ok else 'FAIL'}"
          f" (a busy neighbour lowers CPU/wall below ~1 and slows every row: compare the x decode column)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
