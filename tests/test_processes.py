"""DataParallel's workers in processes (nnlib/processes.py): the threads' bytes, one-line failures, nothing left over.

The byte-equality with threads (and with one thread running every part) is in test_parallel.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from nnlib import processes
from nnlib.parallel import DataParallel
from nnlib.errors import WorkerFailed
from test_parallel import LOSS, batch, build


def mailboxes(pid="self") -> int:
    """How many mailbox mappings process ``pid`` holds (the memfd's name shows in /proc/PID/maps)."""
    return sum("nnlib-mailbox" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def step(runner, n, seed=0):
    x, y = batch(n, seed=seed)
    _, dlogits = LOSS.value_and_grad(runner.forward(x), y)
    runner.backward(dlogits)


def test_auto_chooses_processes_when_every_worker_has_a_thread():
    model = build()
    with DataParallel(model, 2, threads=2) as on_two, DataParallel(model, 2, threads=1) as on_one:
        assert len(on_two.processes) == 1 and on_two.pool is None
        assert on_one.processes == [] and len(on_one.replicas) == 2
    assert on_two.processes == []  # closed


def test_growing_batches_and_eval_mode_match_threads():
    """The mailbox grows with the batch (the worker re-attaches); eval-mode logits equal the threads' too."""
    results = []
    for processes in (False, True):
        model = build().train()
        with DataParallel(model, 2, threads=2, processes=processes) as runner:
            for i, n in enumerate([4, 9, 30, 31]):
                step(runner, n, seed=i)
            with runner.evaluating():
                logits = runner.forward(batch(40, seed=9)[0])
        results.append((model.flat_grads.copy(), logits))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_batch_smaller_than_the_workers_uses_the_first_parts():
    model = build().train()
    with DataParallel(model, 3, threads=3) as runner:
        step(runner, 2)
        assert len(runner.parts) == 2 and np.abs(model.flat_grads).max() > 0


def test_worker_errors_follow_the_callers_error_settings():
    model = build().train()
    x, _ = batch(8)
    with np.errstate(all="ignore"):
        x[4:] *= np.float32(3e38)  # only the worker's rows overflow
    with DataParallel(model, 2, threads=2) as runner:
        with np.errstate(over="raise", invalid="raise"), pytest.raises(FloatingPointError, match="nnlib-worker-1: overflow"):
            runner.forward(x)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("error")
            logits = runner.forward(x)  # no warning, no error: the caller ignores them
        assert logits.shape == (8, 10)
        step(runner, 8)  # and it goes on working


def test_a_killed_worker_is_one_line_and_close_still_frees_everything():
    model = build().train()
    runner = DataParallel(model, 2, threads=2)
    step(runner, 8)
    worker = runner.processes[0]
    worker.process.kill()
    worker.process.wait()
    with pytest.raises(WorkerFailed) as caught:
        step(runner, 8)
    message = str(caught.value)
    assert "\n" not in message and "nnlib-worker-1 stopped" in message and "train.workers: 1" in message
    runner.close()
    assert mailboxes() == 0


def test_close_leaves_no_process_and_no_shared_memory():
    model = build().train()
    with DataParallel(model, 3, threads=3) as runner:
        step(runner, 12)
        processes = [w.process for w in runner.processes]
        assert mailboxes() == 2 and all(mailboxes(p.pid) >= 1 for p in processes)
    assert all(p.poll() is not None for p in processes)
    assert mailboxes() == 0


def test_use_after_close_is_refused_not_half_done():
    runner = DataParallel(build().train(), 2, threads=2)
    runner.close()
    with pytest.raises(ValueError, match="after close"):
        runner.forward(batch(8)[0])


def test_a_failed_start_leaves_every_pipe_in_step(monkeypatch):
    """Worker 2's start fails once: worker 1, already started, is still waited for, so that the next
    batch's logits are that batch's (equal to the threads'), not the replies of the failed one."""
    x1, x2 = batch(12, seed=1)[0], batch(12, seed=2)[0]
    with DataParallel(build().eval(), 3, threads=1, processes=False) as threads:
        expected = threads.forward(x2)
    with DataParallel(build().eval(), 3, threads=3) as runner:
        second = runner.processes[1]
        real = second.start_forward

        def fail_once(*args, **kwargs):
            monkeypatch.setattr(second, "start_forward", real)
            raise MemoryError("simulated")

        monkeypatch.setattr(second, "start_forward", fail_once)
        with pytest.raises(MemoryError):
            runner.forward(x1)
        np.testing.assert_array_equal(runner.forward(x2), expected)


def test_an_interrupted_exchange_marks_the_worker_broken():
    """Ctrl-C while the caller waits for a reply leaves that reply in the pipe: later calls say so in one
    line instead of reading it as the answer to the next command."""
    with DataParallel(build().train(), 2, threads=2) as runner:
        worker = runner.processes[0]
        worker.pipe.recv = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            runner.forward(batch(8)[0])
        del worker.pipe.recv
        with pytest.raises(WorkerFailed, match="out of step"):
            runner.forward(batch(8)[0])


def test_refused_shared_memory_falls_back_to_threads(monkeypatch):
    """A sandbox may have os.memfd_create and refuse it: auto then uses threads, and asking for processes
    says why not."""
    def refuse(*args):
        raise OSError(38, "Function not implemented")

    processes.processes_available.cache_clear()
    monkeypatch.setattr(os, "memfd_create", refuse)
    try:
        with DataParallel(build(), 2, threads=2) as runner:
            assert not runner.use_processes and len(runner.replicas) == 2
        with pytest.raises(ValueError, match="processes need"):
            DataParallel(build(), 2, threads=2, processes=True)
    finally:
        processes.processes_available.cache_clear()


def test_the_workers_import_the_trainings_nnlib_not_one_in_the_current_folder(tmp_path):
    """A folder holding another nnlib (a second checkout) is the working directory: the workers still
    import the nnlib the training runs."""
    decoy = tmp_path / "nnlib"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy nnlib was imported')\n")
    script = tmp_path / "run" / "train.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_parallel import LOSS, batch, build
        from nnlib.parallel import DataParallel
        with DataParallel(build().train(), 2, threads=2) as runner:
            assert runner.use_processes
            x, y = batch(8)
            _, d = LOSS.value_and_grad(runner.forward(x), y)
            runner.backward(d)
        print("done")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(Path(processes.__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["done"]


def test_processes_need_a_numpy_model_with_flat_parameters():
    with pytest.raises(ValueError, match="processes need workers > 1"):
        DataParallel(build(), 1, processes=True)


def test_a_script_without_a_main_guard_is_safe(tmp_path):
    """The workers are fresh interpreters that import nnlib, not the caller's script: no re-run, no recursion."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_parallel import LOSS, batch, build
        from nnlib.parallel import DataParallel
        print("top level ran", flush=True)
        model = build().train()
        with DataParallel(model, 2, threads=2) as runner:
            x, y = batch(8)
            _, d = LOSS.value_and_grad(runner.forward(x), y)
            runner.backward(d)
            assert len(runner.processes) == 1
        print("done")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["top", "level", "ran", "done"] and "leaked" not in out.stderr


@pytest.mark.parametrize("whom", ["group", "training alone"])
def test_a_killed_training_leaves_no_worker(tmp_path, whom):
    """SIGKILL to the training's process group, as a killed dvc repro gets, or to the training alone: the
    worker ends too (it sees its socket close), and with it the last mapping of the mailbox, which has no
    name anywhere (nothing in /dev/shm to clean up)."""
    script = tmp_path / "forever.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_parallel import LOSS, batch, build
        from nnlib.parallel import DataParallel
        model = build().train()
        with DataParallel(model, 2, threads=2) as runner:
            for i in range(10 ** 9):
                x, y = batch(16)
                _, d = LOSS.value_and_grad(runner.forward(x), y)
                runner.backward(d)
                if i == 0:
                    print(runner.processes[0].process.pid, flush=True)
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker = int(process.stdout.readline())
        mapped = mailboxes(worker)
    finally:
        (os.killpg if whom == "group" else os.kill)(process.pid, signal.SIGKILL)
        process.wait()
    ended = gone(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)
    assert mapped >= 1
    assert ended, "the worker process outlived its training"


def gone(pid: int, seconds: float = 10.0) -> bool:
    """Whether process ``pid`` ends (or is a zombie waiting for init) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
