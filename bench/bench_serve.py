"""Load on ``nnlib serve``: 2,000 ``POST /api/predict`` at concurrency 16, on loopback only.

    python bench/bench_serve.py --model models/model.npz            # starts nnlib serve itself, then loads it
    python bench/bench_serve.py --cnn-preset --out bench/serve.json  # the cnn preset's network, untrained
    python bench/bench_serve.py --url http://127.0.0.1:8000 --pid PID  # a server already running

Each request is a 280x280 PNG like the page's canvas: an MNIST test digit, black on white, at one of
several sizes and places. The client is 16 threads, each with one keep-alive connection. Recorded:
errors (any status but 200, any connection error), requests per second, p50/p99 latency, and the
server's resident memory (VmRSS, its preprocessing processes included) before and after the run (after
100 warm-up requests), the CPU time the server (with those processes) and the client spent per request, and the load average of the machine, which the
client shares with the server (on a busy machine the CPU time per request is the figure to trust). ``--out FILE.json`` keeps them.
Floors on a 2-core CPU (issue 18): 0 errors, >= 300 predictions/s, p99 <= 100 ms, RSS growth <= 50 MiB.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST_TEST = ROOT / ".." / "shared" / "mnist" / "t10k-images-idx3-ubyte.gz"


def payloads(count: int = 64) -> list[bytes]:
    """``count`` canvas-like PNGs of MNIST test digits (black on white, 280x280, various sizes and places)."""
    from nnlib.mnist.data.stream import parse_idx  # noqa: PLC0415

    source = MNIST_TEST if MNIST_TEST.is_file() else ROOT / "data" / "raw" / "t10k-images-idx3-ubyte"
    raw = source.read_bytes()
    images = parse_idx(gzip.decompress(raw) if source.suffix == ".gz" else raw, str(source))
    rng = np.random.default_rng(0)
    out = []
    for i in rng.choice(len(images), count, replace=False):
        size = int(rng.integers(120, 260))
        digit = Image.fromarray(255 - images[i]).resize((size, size), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (280, 280), 255)
        canvas.paste(digit, (int(rng.integers(0, 281 - size)), int(rng.integers(0, 281 - size))))
        buffer = io.BytesIO()
        canvas.convert("RGBA").save(buffer, "PNG")  # the canvas's toBlob gives RGBA
        out.append(buffer.getvalue())
    return out


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's preprocessing processes), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            with contextlib.suppress(OSError):
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of the server and its child processes together, MiB."""
    total = 0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the server and its child processes have used (all their threads)."""
    total = 0
    for member in family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run(url: str, bodies: list[bytes], total: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """Send ``total`` requests from ``concurrency`` threads -> (latencies in s, errors, wall seconds)."""
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine, bad = [], []
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            body = bodies[n % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body=body, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                data = response.read()
                if response.status != 200 or b'"digit"' not in data:
                    bad.append(f"status {response.status}: {data[:80]!r}")
            except (OSError, http.client.HTTPException) as err:
                bad.append(f"{type(err).__name__}: {err}")
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def cnn_preset_model(folder: Path) -> str:
    """A model file of the cnn preset's network with fresh weights: serving costs the same as trained."""
    from nnlib.mnist.config import presets  # noqa: PLC0415
    from nnlib.model import Sequential  # noqa: PLC0415
    from nnlib.modelfile import save_model  # noqa: PLC0415

    specs = presets.load("cnn")["train"]["model"]
    model = Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(0), num_classes=10).eval()
    path = folder / "cnn-preset-untrained.npz"
    save_model(path, model, {"seed": 0, "train": {"model": specs}})
    return str(path)


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "nnlib", "serve", "--model", model, "--port", str(port)],
                               env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    sys.exit("nnlib serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/model.npz", help="start nnlib serve on this model (default)")
    parser.add_argument("--cnn-preset", action="store_true",
                        help="serve the cnn preset's network with untrained weights (no trained model needed)")
    parser.add_argument("--url", help="a running server instead (loopback only); give its --pid for the memory")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args()

    process = None
    if args.url:
        host = urllib.parse.urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("bench_serve loads loopback servers only")
        url, pid = args.url, args.pid
    elif args.cnn_preset:
        import tempfile  # noqa: PLC0415

        process, url = start_server(cnn_preset_model(Path(tempfile.mkdtemp(prefix="bench_serve_"))))
        pid = process.pid
    else:
        process, url = start_server(args.model)
        pid = process.pid
    try:
        bodies = payloads()
        run(url, bodies, 100, args.concurrency)  # warm-up: allocator, thread pools, caches
        rss_before = rss_mib(pid) if pid else None
        cpu_before = cpu_seconds(pid) if pid else None
        client_before = time.process_time()
        load_before = os.getloadavg()
        latencies, errors, wall = run(url, bodies, args.requests, args.concurrency)
        load_after = os.getloadavg()
        client_cpu = time.process_time() - client_before
        server_cpu = cpu_seconds(pid) - cpu_before if pid else None
        rss_after = rss_mib(pid) if pid else None
        with urllib.request.urlopen(url + "/api/model", timeout=10) as r:
            card = json.load(r)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    ms = np.array(latencies) * 1000
    result = {
        "command": "python bench/bench_serve.py " + " ".join(sys.argv[1:]),
        "model": {k: card[k] for k in ("file", "preset", "parameters", "layers")},
        "requests": args.requests, "concurrency": args.concurrency, "errors": len(errors),
        "requests_per_second": round(args.requests / wall, 1),
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
                       "max": round(float(ms.max()), 2)},
        # CPU time per request does not depend on how busy the machine is: 2 cores / (server + client)
        # CPU per request is what this machine would do with nothing else running.
        "cpu_ms_per_request": {"server": None if server_cpu is None else round(1000 * server_cpu / args.requests, 2),
                               "client": round(1000 * client_cpu / args.requests, 2)},
        "server_rss_mib": None if rss_before is None else
        {"before": round(rss_before, 1), "after": round(rss_after, 1), "growth": round(rss_after - rss_before, 1)},
        "machine": {"cpus": os.cpu_count(), "load_average_1m_before": round(load_before[0], 2),
                    "load_average_1m_after": round(load_after[0], 2), "python": platform.python_version()},
        "first_errors": errors[:5],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
