"""The prepare stage refuses or fails without touching the previous shard set.

For each fault (bad params, corrupt or missing raw files, a full disk, an interrupt while the shards
are being written) the run ends with one error line, the previous ``data/shards`` (and the augmentation
preview) stay byte-for-byte as they were, and no temporary directory is left beside them. Tiny
synthetic IDX files (200 train images) stand in for MNIST.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnlib.mnist.data import shards
from nnlib.errors import ParamsError
from nnlib.files import file_sha256
from test_shards import files_bytes, temp_dirs, write_idx
from nnlib.mnist.paths import RAW_FILES

TRAIN_IMAGES = RAW_FILES["train_images"]
TRAIN_LABELS = RAW_FILES["train_labels"]
TEST_IMAGES = RAW_FILES["test_images"]
TEST_LABELS = RAW_FILES["test_labels"]

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 200, 50
# 200 images, val 50 -> train split 150; copies 2 -> 450 stream images -> shards of 100: 5 shards
SECTION = {"val_size": 50, "max_train": 0, "shard_size": 100, "workers": 1,
           "augment": {"copies": 2, "rotate": 10, "shift": 2, "scale": 0.1}}


def raw_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def write_raw(raw_dir: Path, arrays: dict) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    for key, name in RAW_FILES.items():
        write_idx(raw_dir / name, arrays[key])


def write_params(repo: Path, **override) -> None:
    section = yaml.safe_load(yaml.safe_dump(SECTION))
    section["augment"].update(override.pop("augment", {}))
    section.update(override)
    (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "prepare": section}, sort_keys=False))


class Repo:
    """A repository root with raw files, params.yaml and a complete shard set from an earlier run."""

    def __init__(self, root: Path):
        self.root = root
        self.raw = root / "data" / "raw"
        self.out = root / "data" / "shards"
        self.preview = root / "metrics" / "plots" / "augment_preview.png"
        self.before = self.snapshot() if self.out.exists() else None

    @classmethod
    def build(cls, root: Path) -> Repo:
        repo = cls(root)
        write_raw(repo.raw, raw_arrays())
        write_params(root)
        repo.prepare(shards.load_params(root / "params.yaml")[1], preview=True)
        return cls(root)

    def prepare(self, params: dict, preview: bool = False) -> dict:
        """Run the stage's library function on this repository (drawing the preview only if asked: slow)."""
        return shards.prepare(0, params, raw_dir=self.raw, out_dir=self.out,
                              preview_path=self.preview if preview else None, progress=False)

    def snapshot(self) -> dict:
        """SHA-256 of every file of the shard set, and of the preview."""
        files = [*sorted(p for p in self.out.rglob("*") if p.is_file()), self.preview]
        return {str(p.relative_to(self.root)): file_sha256(p) for p in files}

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before
        assert temp_dirs(self.out) == []
        assert sorted(p.name for p in (self.root / "data").iterdir()) == ["raw", "shards"]

    def run_stage(self, **popen) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=self.root,
                              capture_output=True, text=True, timeout=300, **popen)


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory) -> Path:
    return Repo.build(tmp_path_factory.mktemp("built")).root


@pytest.fixture
def repo(built_repo, tmp_path) -> Repo:
    """A fresh copy of the built repository (drawing the preview for each test would be slow)."""
    shutil.copytree(built_repo, tmp_path / "repo")
    return Repo(tmp_path / "repo")


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, words: list[str]) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


# --- faults found by the checks, through the stage script --------------------------------------


def rewrite_raw(key: str, array: np.ndarray):
    return lambda repo: write_idx(repo.raw / RAW_FILES[key], array)


def truncate_raw(key: str, size: int = 100):
    def fault(repo):
        path = repo.raw / RAW_FILES[key]
        path.write_bytes(path.read_bytes()[:size])
    return fault


def bad_labels(repo):
    labels = raw_arrays()["train_labels"].copy()
    labels[17] = 10
    rewrite_raw("train_labels", labels)(repo)


FAULTS = {
    "val_size too large": (lambda repo: write_params(repo.root, val_size=N_TRAIN), 2, ["prepare.val_size", "200"]),
    "max_train too large": (lambda repo: write_params(repo.root, max_train=N_TRAIN - 50 + 1), 2,
                            ["prepare.max_train (151)", "prepare.val_size (50)", "200 training images"]),
    "truncated label file": (truncate_raw("train_labels"), 1, [TRAIN_LABELS, "truncated"]),
    "truncated image file": (truncate_raw("test_images", 5000), 1, [TEST_IMAGES, "truncated"]),
    "labels out of range": (bad_labels, 1, [TRAIN_LABELS, "label 10", "0..9"]),
    "mismatched counts": (rewrite_raw("test_labels", np.zeros(N_TEST - 1, np.uint8)), 1,
                          [f"{TEST_IMAGES} holds 50 images", f"{TEST_LABELS} holds 49 labels"]),
    "images not 28x28": (rewrite_raw("train_images", np.zeros((N_TRAIN, 28, 27), np.uint8)), 1,
                         [TRAIN_IMAGES, "(200, 28, 27)", "(n, 28, 28)"]),
    "missing raw file": (lambda repo: (repo.raw / RAW_FILES["test_labels"]).unlink(), 1,
                         [f"{TEST_LABELS} is missing", "the fetch stage"]),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_refused_run_exits_with_one_line_and_touches_nothing(repo, fault):
    make_fault, code, words = FAULTS[fault]
    make_fault(repo)
    assert_one_error_line(repo.run_stage(), code, words)
    repo.assert_untouched()


# --- faults met by the library: a full disk, an interrupt --------------------------------------


def test_a_disk_too_small_for_the_new_set_is_refused(repo, monkeypatch):
    params = shards.load_params(repo.root / "params.yaml")[1]
    need = shards.plan_shards(params, N_TRAIN, N_TEST).bytes_needed
    # the estimate covers what a run writes (the old set, of the same params, has that size)
    assert sum(p.stat().st_size for p in repo.out.iterdir()) <= need
    asked = []

    def full_disk(path):
        asked.append(Path(path))
        return need - 1

    monkeypatch.setattr(shards, "disk_free", full_disk)
    with pytest.raises(ParamsError) as err:
        repo.prepare(params)
    message = str(err.value)
    assert "\n" not in message and "prepare.augment.copies" in message
    assert shards._size(need) in message and shards._size(need - 1) in message
    assert asked == [repo.root / "data"]  # the filesystem the new set would be written to
    repo.assert_untouched()

    monkeypatch.setattr(shards, "disk_free", lambda path: need)  # just enough
    repo.prepare(params)
    assert repo.snapshot() == repo.before  # same params: the same bytes again


def test_a_keyboard_interrupt_while_writing_shards_leaves_the_old_set(repo, monkeypatch):
    write = shards._ShardWriter.__call__
    written = []

    def interrupted_at_shard_3(job, index):
        if index == 3:
            assert len(temp_dirs(repo.out)) == 1  # shards 0..2 went to the new set's directory
            raise KeyboardInterrupt
        written.append(index)
        return write(job, index)

    monkeypatch.setattr(shards._ShardWriter, "__call__", interrupted_at_shard_3)
    with pytest.raises(KeyboardInterrupt):
        repo.prepare(shards.check_params(dict(SECTION, augment=dict(SECTION["augment"], copies=5))), preview=True)
    assert written == [0, 1, 2]
    repo.assert_untouched()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_mid_run_exits_143_and_leaves_the_old_set(repo, workers):
    write_params(repo.root, workers=workers, augment={"copies": 400})  # 602 shards: seconds of work
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=repo.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not any((d / "train-00003.npz").exists() for d in temp_dirs(repo.out))
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("terminated")
    repo.assert_untouched()


# --- stale temporary directories ---------------------------------------------------------------


def test_the_next_successful_run_removes_stale_temp_dirs(repo):
    data = repo.root / "data"
    stale = [data / ".shards.0badc0de.tmp", data / ".shards.0badc0de.old.tmp"]  # left by kill -9
    for directory in stale:
        directory.mkdir()
        (directory / "train-00000.npz").write_bytes(b"half a shard")
    unrelated = [data / ".raw.1234.tmp", data / "shards.tmp", data / ".shards-notes.tmp"]
    for path in unrelated:
        path.mkdir()
    repo.prepare(shards.load_params(repo.root / "params.yaml")[1])
    assert not any(path.exists() for path in stale)
    assert all(path.is_dir() for path in unrelated)
    assert repo.snapshot() == repo.before


def test_a_successful_run_replaces_the_whole_directory(repo):
    (repo.out / "left-over.txt").write_text("from an older layout")
    manifest = repo.prepare(shards.check_params(dict(SECTION, shard_size=200)))
    assert sorted(p.name for p in repo.out.iterdir()) == sorted(
        ["manifest.json", "val.npz", "test.npz"] + [e["file"] for e in manifest["train_shards"]]
    )
    assert temp_dirs(repo.out) == []


# --- bounded memory: shards in flight ----------------------------------------------------------


class CountingPool:
    """Stands in for ProcessPoolExecutor: runs each task at submit, and records the most futures
    submitted but not yet collected (``result()`` not yet called) at any time."""

    peak = 0

    def __init__(self, workers, initializer=None, initargs=()):
        shards._WORKER_JOB = initargs[0]  # what _init_worker does in a real worker
        self.submitted = self.collected = 0

    def submit(self, fn, *args):
        self.submitted += 1
        CountingPool.peak = max(CountingPool.peak, self.submitted - self.collected)
        future = CountedFuture(self)
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


class CountedFuture(Future):
    def __init__(self, pool: CountingPool):
        super().__init__()
        self.pool = pool

    def result(self, timeout=None):
        self.pool.collected += 1
        return super().result(timeout)


def test_shard_writing_keeps_at_most_two_futures_per_worker_in_flight(repo, monkeypatch):
    monkeypatch.setattr(shards, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(shards, "_WORKER_JOB", None)
    monkeypatch.setattr(CountingPool, "peak", 0)
    params = shards.check_params(dict(SECTION, workers=3, augment=dict(SECTION["augment"], copies=20)))  # 32 shards
    manifest = repo.prepare(params)
    assert len(manifest["train_shards"]) == 32
    assert CountingPool.peak == 2 * 3  # submitting every shard up front would make this 32
    pooled = files_bytes(repo.out)
    assert repo.prepare(dict(params, workers=1)) == manifest and files_bytes(repo.out) == pooled


def test_bounded_window_with_real_threads():
    in_flight, peak = [0], [0]

    def task(index):
        time.sleep(0.002 * (index % 3))
        return index * index

    with ThreadPoolExecutor(4) as pool:
        def submit(fn, index):
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            return pool.submit(fn, index)

        results = {}
        for index, value in shards.BoundedWindow(submit, task, 40, size=5):
            in_flight[0] -= 1
            results[index] = value
    assert results == {i: i * i for i in range(40)}
    assert peak[0] == 5


def test_bounded_window_submits_its_first_window_at_once():
    # so the pool forks its workers before the progress bar starts a thread
    submitted = []

    def submit(fn, index):
        submitted.append(index)
        future = Future()
        future.set_result(fn(index))
        return future

    window = shards.BoundedWindow(submit, lambda i: -i, 10, size=4)
    assert submitted == [0, 1, 2, 3]
    assert sorted(window) == [(i, -i) for i in range(10)]
    assert submitted == list(range(10))
