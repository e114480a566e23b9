"""``threads: auto``: the choice rule, the registry of running nnlib runs, DVC queue workers, the params key."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnlib import threads
from nnlib.errors import ParamsError
from nnlib.mnist.config import schema
from nnlib.mnist.config.params import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_jobs_from_outside(monkeypatch):
    """A test run inside a study or a queue would otherwise see its NNLIB_JOBS."""
    monkeypatch.delenv(threads.JOBS_ENV, raising=False)


@pytest.mark.parametrize("cores, claims, peers, expected", [
    (2, [], 0, 2),  # alone: every core
    (2, [2], 0, 1),  # a run holds both: take one, never zero
    (2, [1], 0, 1),  # one core left: it
    (2, [1, 1], 0, 1),  # oversubscribed already: still one
    (2, [], 1, 1),  # a queue of 2 started together: half each
    (4, [], 0, 4),
    (4, [2], 0, 2),  # fair share 2, 2 free
    (4, [4], 0, 1),  # nothing free: one
    (4, [1], 0, 2),  # fair share (2) below what is free (3)
    (4, [], 3, 1),  # dvc queue start -j 4 on 4 cores
    (16, [1], 0, 8),
    (1, [], 0, 1),
    (1, [], 5, 1),
    (8, [2], 3, 2),  # peers and claims: the larger count of other runs divides the cores
])
def test_choose_is_a_fair_share_of_the_free_cores(cores, claims, peers, expected):
    assert threads.choose(cores, claims, peers) == expected


def test_resolve_explicit_numbers_win(tmp_path, monkeypatch):
    registry = threads.Registry(tmp_path)
    with registry.register(2):  # a run going would halve auto, never an explicit count
        assert threads.resolve(3, registry, cores=2).threads == 3
        assert threads.resolve(0, registry, cores=2).threads == 2  # 0 = every core this process may use
        monkeypatch.setattr(threads, "queue_workers", lambda: (0, False))
        assert threads.resolve("auto", registry, cores=2).threads == 1
    assert threads.resolve("auto", registry, cores=2).threads == 2


def test_available_cores_is_the_affinity_mask():
    assert threads.available_cores() == len(os.sched_getaffinity(0))


def test_jobs_env_and_queue_workers_are_peers(tmp_path, monkeypatch):
    registry = threads.Registry(tmp_path)
    monkeypatch.setattr(threads, "queue_workers", lambda: (0, False))
    monkeypatch.setenv(threads.JOBS_ENV, "2")
    assert threads.resolve("auto", registry, cores=2).threads == 1
    monkeypatch.delenv(threads.JOBS_ENV)
    monkeypatch.setattr(threads, "queue_workers", lambda: (2, True))  # this run is one of two workers
    choice = threads.resolve("auto", registry, cores=4)
    assert (choice.threads, choice.peers) == (2, 1)
    monkeypatch.setattr(threads, "queue_workers", lambda: (2, False))  # a run by hand next to two workers
    assert threads.resolve("auto", registry, cores=6).threads == 2


# --- the registry ---------------------------------------------------------------------------------

def test_register_and_unregister(tmp_path):
    registry = threads.Registry(tmp_path)
    assert registry.usable and registry.running() == []
    entry = registry.register(2, kind="train")
    [seen] = registry.running()  # a lock held through another open file counts as live, even in this process
    assert seen["pid"] == os.getpid() and seen["threads"] == 2 and seen["kind"] == "train"
    assert registry.running(exclude=entry) == []
    entry.close()
    assert registry.running() == [] and not list(tmp_path.glob("*.run"))


def test_an_entry_left_without_a_lock_is_stale_and_removed(tmp_path):
    registry = threads.Registry(tmp_path)
    stale = tmp_path / f"{os.getpid()}-dead.run"  # as a run killed with SIGKILL leaves it: the file, no lock
    stale.write_text(json.dumps({"pid": 999999, "threads": 2}))
    assert registry.running() == []
    assert not stale.exists()


def test_registering_sweeps_stale_entries(tmp_path):
    registry = threads.Registry(tmp_path)
    stale = tmp_path / "1-dead.run"
    stale.write_text(json.dumps({"pid": 1, "threads": 2}))
    with registry.register(1) as entry:
        assert not stale.exists() and entry.path.exists()
    assert not entry.path.exists()


CHILD = """
import sys, time
from nnlib import threads
entry = threads.Registry(sys.argv[1]).register(int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
"""

LIST = """
import json, sys
from nnlib import threads
print(json.dumps([r["pid"] for r in threads.Registry(sys.argv[1]).running()]))
"""


def python(code: str, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)


def test_two_processes_see_each_other_and_a_killed_one_is_ignored(tmp_path):
    child = python(CHILD, tmp_path, 2)
    try:
        assert child.stdout.readline().strip() == "ready"
        registry = threads.Registry(tmp_path)
        assert [r["pid"] for r in registry.running()] == [child.pid]
        with registry.register(1):
            lister = python(LIST, tmp_path)
            seen, _ = lister.communicate(timeout=60)
            assert sorted(json.loads(seen)) == sorted([child.pid, os.getpid()])
            child.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
            child.wait(timeout=30)
            assert [r["pid"] for r in registry.running()] == [os.getpid()]
        assert registry.running() == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not list(tmp_path.glob("*.run"))


def test_an_unusable_folder_disables_the_registry(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    registry = threads.Registry(blocker / "runs")
    assert not registry.usable and registry.running() == [] and registry.register(1) is None


def test_limit_pins_blas_and_registers_for_the_block(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(threads, "queue_workers", lambda: (0, False))
    registry = threads.Registry(tmp_path)
    with registry.register(5):  # another run holds more than every core: auto takes one
        with threads.limit("auto", kind="evaluate", registry=registry) as choice:
            assert choice.threads == 1 and choice.running == 1
            assert "auto" in choice.describe()
            assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
            assert sorted(r["kind"] for r in registry.running()) == ["evaluate", "train"]
        assert len(registry.running()) == 1
    with threads.limit(2, register=False, registry=registry) as choice:
        assert choice.threads == 2 and registry.running() == []


# --- DVC queue workers ----------------------------------------------------------------------------

def test_queue_worker_command_lines():
    assert threads._is_queue_worker(["/usr/bin/python", "/usr/bin/dvc", "exp", "queue-worker", "dvc-exp-1a2b3c-1@localhost"])
    assert not threads._is_queue_worker(["dvc", "queue", "start", "-j", "2"])
    assert not threads._is_queue_worker(["python", "stages/train.py"])


WORKER = """
import subprocess, sys
print(subprocess.run([sys.executable, "-c", "from nnlib import threads; print(threads.queue_workers())"],
                     capture_output=True, text=True).stdout.strip(), flush=True)
"""


def test_a_run_under_a_queue_worker_knows_it():
    """A process whose argv looks like a DVC queue worker, and a child of it asking."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", WORKER, "exp", "queue-worker", "dvc-exp-test00-1@localhost"],
                         env=env, capture_output=True, text=True, timeout=60).stdout
    workers, inside = eval(out)  # noqa: S307 - our own repr of a tuple
    assert workers >= 1 and inside is True
    workers, inside = threads.queue_workers()
    assert inside is False


# --- params.yaml ----------------------------------------------------------------------------------

MODEL = [{"type": "flatten"}, {"type": "dense", "out": 10}]


@pytest.mark.parametrize("value", ["auto", 0, 1, 2, 64])
def test_threads_accepts_auto_and_counts(value):
    assert validate({"model": MODEL, "threads": value}, schema.TRAIN, "train")["threads"] == value
    assert validate({"threads": value}, schema.EVALUATE, "evaluate")["threads"] == value


def test_threads_defaults_to_auto():
    assert validate({"model": MODEL}, schema.TRAIN, "train")["threads"] == "auto"
    assert validate({}, schema.EVALUATE, "evaluate")["threads"] == "auto"


@pytest.mark.parametrize("value", ["two", "Auto", -1, 1.5, True, [2]])
def test_bad_threads_is_one_line_naming_the_key(value):
    for section, sch, name in (({"model": MODEL}, schema.TRAIN, "train"), ({}, schema.EVALUATE, "evaluate")):
        with pytest.raises(ParamsError) as err:
            validate({**section, "threads": value}, sch, name)
        message = str(err.value)
        assert f"{name}.threads must be 'auto' or an integer >= 0 (0 = every core), got {value!r}" in message
        assert "\n" not in message


# --- nnlib predict --threads ----------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [(None, "auto"), ("auto", "auto"), ("0", 0), ("1", 1), ("3", 3)])
def test_predict_threads_flag(text, value):
    from nnlib.mnist.cli import build_parser

    argv = ["predict", "digit.png"] + (["--threads", text] if text else [])
    assert build_parser().parse_args(argv).threads == value


@pytest.mark.parametrize("text", ["two", "-1", "1.5", ""])
def test_predict_bad_threads_flag_is_one_line(text):
    from nnlib.mnist.cli import build_parser

    with pytest.raises(ParamsError) as err:
        build_parser().parse_args(["predict", "digit.png", "--threads", text])
    assert "--threads" in str(err.value) and "\n" not in str(err.value)


def test_a_registry_that_fails_never_stops_the_run(tmp_path, monkeypatch, capsys):
    registry = threads.Registry(tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "register", refuse)
    monkeypatch.setattr(threads, "queue_workers", lambda: (0, False))
    with threads.limit(1, registry=registry) as choice:
        assert choice.threads == 1
    assert "could not register this run" in capsys.readouterr().err


def test_old_temporaries_of_dead_runs_are_swept(tmp_path):
    registry = threads.Registry(tmp_path)
    old, fresh = tmp_path / "1-old.tmp", tmp_path / "2-fresh.tmp"
    old.write_text("")
    fresh.write_text("")  # may be a run between creating and locking it: left alone
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    registry.running()
    assert not old.exists() and fresh.exists()


def test_choosing_waits_for_the_registry_lock_but_not_forever(tmp_path, monkeypatch):
    import fcntl

    registry = threads.Registry(tmp_path)
    holder = os.open(tmp_path / "registry.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # through another open file: a lock this process's next flock conflicts with
    clock = iter([0.0, 0.0, 10.0, 10.0, 10.0])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    try:
        with registry.exclusive():
            pass  # got here after the (faked) 5 s, unlocked
    finally:
        os.close(holder)
