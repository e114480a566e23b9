"""Helpers of the hostile-input tests (tests/test_hostile_*.py, docs/hostile-inputs.md).

Every case runs the real command (``python -m nnlib ...`` or a stage script) as a subprocess and checks
the exit code, that stderr is one line naming the problem, and that nothing was lost. ``StageRepo``
is a repository root with tiny synthetic data (200 train images) that has been through prepare, train
and evaluate once, so that a test can break one output and run a stage again in a few seconds.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_shards import write_idx

ROOT = Path(__file__).resolve().parents[1]
RAW_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
TINY_PARAMS = {
    "seed": 0, "preset": "mlp",
    "prepare": {"val_size": 50, "max_train": 0, "shard_size": 100, "workers": 1, "augment": {"copies": 0}},
    "train": {"epochs": 2, "batch_size": 25, "threads": 1,
              "model": [{"type": "flatten"}, {"type": "dense", "out": 10}],
              "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": {"name": "constant"}},
    "evaluate": {"misclassified": 4},
}

# Faults injected into a child process: this folder's sitecustomize.py is imported at its start-up.
FAULT_HOOK = textwrap.dedent('''
    import errno, os
    fault = os.environ.get("NNLIB_TEST_FAULT", "")
    if fault.startswith("enospc:"):  # enospc:<fragment>: the disk fills up while an .npz whose path contains it is written
        fragment = fault.split(":", 1)[1]
        import numpy.lib.format as npformat
        import nnlib.files as files
        writing = []
        real_save, real_write = files.save_npz, npformat.write_array
        def save_npz(path, arrays):
            writing.append(str(path))
            try:
                return real_save(path, arrays)
            finally:
                writing.pop()
        def write_array(*args, **kwargs):
            if writing and fragment in writing[-1]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(*args, **kwargs)
        files.save_npz, npformat.write_array = save_npz, write_array
    if fault.startswith("checkpoint:"):  # checkpoint:<what>:<epoch>: after the checkpoint of that epoch is written...
        _, what, epoch = fault.split(":")
        import time
        import numpy as np
        import nnlib.checkpoints as checkpoints
        real_checkpoint = checkpoints.save
        def save(folder, digest, **state):
            path = real_checkpoint(folder, digest, **state)
            if len(state["history"].rows) == int(epoch):
                if what == "die":  # ... the process is killed (SIGKILL: nothing is cleaned up)
                    os._exit(137)
                if what == "diverge":  # ... every weight becomes infinite, so the next step's loss is not finite
                    for _, param, _ in state["model"].parameters():
                        param[...] = np.inf
                if what == "sleep":  # ... the run takes a while (another one may try to start meanwhile)
                    print("checkpoint written", flush=True)
                    time.sleep(60)
            return path
        checkpoints.save = save
''')


def env(**extra) -> dict:
    """The environment of a child: this worktree's nnlib first, no colour, one BLAS thread."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **extra}


def fault_env(tmp_path: Path, fault: str) -> dict:
    hook = tmp_path / "fault_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    return env(NNLIB_TEST_FAULT=fault, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT), str(ROOT / "tests")]))


def nnlib(*args, cwd=None, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """``python -m nnlib ARGS`` as a user runs it."""
    popen.setdefault("env", env())
    return subprocess.run([sys.executable, "-m", "nnlib", *map(str, args)], cwd=cwd, capture_output=True,
                          timeout=timeout, **popen)


MEASURE = textwrap.dedent('''
    import resource, subprocess, sys, time
    start = time.monotonic()
    done = subprocess.run(sys.argv[2:], capture_output=True)
    seconds = time.monotonic() - start
    sys.stdout.buffer.write(done.stdout)
    sys.stderr.buffer.write(done.stderr)
    with open(sys.argv[1], "w") as f:
        f.write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {seconds}")
    sys.exit(done.returncode)
''')


def measured(args, tmp_path: Path, cwd=None, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``python -m nnlib ARGS`` in a child of a fresh process -> (result, peak RSS in MiB, seconds)."""
    report = tmp_path / "rusage.txt"
    result = subprocess.run([sys.executable, "-c", MEASURE, str(report), sys.executable, "-m", "nnlib", *map(str, args)],
                            cwd=cwd, capture_output=True, timeout=timeout, env=env())
    kib, seconds = report.read_text().split()
    return result, int(kib) / 1024, float(seconds)


def stderr_line(result: subprocess.CompletedProcess) -> str:
    text = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    return text


def assert_one_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit ``code``, no traceback, exactly one line on stderr (``error: ...``) holding every word."""
    text = stderr_line(result)
    assert result.returncode == code, text
    assert "Traceback" not in text and "Warning" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert len(lines[0]) < 600, lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(root: Path, folders=("data", "models", "metrics")) -> dict:
    """SHA-256 of every file under ``folders`` (relative path -> digest); the training lock (it holds a pid) aside."""
    return {str(p.relative_to(root)): digest(p) for folder in folders for p in sorted((root / folder).rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def write_params(root: Path, override: dict | None = None) -> None:
    def merge(base, more):
        out = dict(base)
        for key, value in (more or {}).items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out
    (root / "params.yaml").write_text(yaml.safe_dump(merge(TINY_PARAMS, override), sort_keys=False))


def raw_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"train_images": rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, 200, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, 50, dtype=np.uint8)}


@pytest.fixture(scope="session")
def built_stage_repo(tmp_path_factory) -> "StageRepo":
    """One repository through prepare, train and evaluate, shared by the hostile tests (tests/conftest.py imports it)."""
    return StageRepo.build(tmp_path_factory.mktemp("stages"))


class StageRepo:
    """A repository root (params.yaml, dvc.yaml, data/, models/, metrics/) with stage outputs of one run."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def build(cls, root: Path) -> StageRepo:
        repo = cls(root)
        shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
        write_params(root)
        raw = root / "data" / "raw"
        raw.mkdir(parents=True)
        for key, array in raw_arrays().items():
            write_idx(raw / RAW_FILES[key], array)
        for stage in ("prepare", "train", "evaluate"):
            result = repo.stage(stage)
            assert result.returncode == 0, result.stderr
        return repo

    def copy(self, target: Path) -> StageRepo:
        shutil.copytree(self.root, target, symlinks=True)
        return StageRepo(target)

    def stage(self, name: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
        popen.setdefault("env", env())
        return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, **popen)

    def snapshot(self) -> dict:
        return snapshot(self.root)

    def temporaries(self) -> list[Path]:
        return sorted(p for p in self.root.rglob(".*.tmp"))
