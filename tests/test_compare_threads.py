"""bench/compare.py's mechanics (not its figures): nnlib and PyTorch timed in separate processes, and the
thread rows, whose trainings run at the same time and choose their threads as asked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_runs_each_round_and_each_thread_row_in_its_own_process(tmp_path):
    out = tmp_path / "compare.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NNLIB_JOBS", None)
    run = subprocess.run([sys.executable, "bench/compare.py", "--configs", "mlp", "--steps", "4", "--rounds", "2",
                          "--warmup", "1", "--no-torch", "--no-stage", "--no-rss", "--no-loop", "--thread-rows",
                          "--thread-config", "mlp", "--thread-seconds", "0.3", "--thread-rounds", "1", "--json", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["configs"]["mlp"]["processes"] == "separate"
    assert len(results["configs"]["mlp"]["seconds_per_step"]["nnlib"]) == 2
    assert "load average" in results["machine"]["load_start"] and "load average" in results["machine"]["load_end"]
    rows = results["thread_rows"]
    cores = len(os.sched_getaffinity(0))
    used = {label: sorted(row["threads_used"][0]) for label, row in rows.items()}
    assert used["nnlib, 1 thread"] == [1] and used["nnlib, 2 threads"] == [2]
    assert used["nnlib, two at once, 2 threads each"] == [2, 2]
    assert used["nnlib, two at once, auto (a queue of two: NNLIB_JOBS=2)"] == [max(1, cores // 2)] * 2
    assert used["nnlib, two at once, auto (started by hand: the registry)"] == sorted([cores, 1])  # the second sees the first
    assert used["nnlib, auto, next to a one-core busy loop"] == [cores]  # a busy loop is no nnlib run
    for label, row in rows.items():
        windows = [c["window"] for c in row["rounds"][0]]
        if len(windows) == 2:  # the two trainings were timed at the same time
            assert max(w[0] for w in windows) < min(w[1] for w in windows), label
    assert rows["nnlib, 2 threads"]["x_alone"] == [1.0]
    sleepy = rows["nnlib, two at once, 2 threads each, OPENBLAS_THREAD_TIMEOUT=4"]["rounds"][0]
    assert [c["openblas_thread_timeout"] for c in sleepy] == ["4", "4"]
    assert [c["openblas_thread_timeout"] for c in rows["nnlib, two at once, 2 threads each"]["rounds"][0]] == [None, None]
    assert "| nnlib, two at once, 1 thread each | 1+1 |" in run.stdout


def test_scaling_times_each_checkout_at_1_and_2_threads_in_alternation(tmp_path):
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NNLIB_JOBS", None)
    run = subprocess.run([sys.executable, "bench/scaling.py", "--baseline", str(ROOT), "--config", "mlp", "--seconds", "0.3",
                          "--rounds", "2", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results["checkouts"]) == ["baseline", "this"]
    for row in results["checkouts"].values():
        assert len(row["img_s_1_thread"]) == len(row["img_s_2_threads"]) == len(row["paired_ratios"]) == 2
        assert all(v > 0 for v in row["img_s_1_thread"] + row["img_s_2_threads"])
    order = [tuple(line.split(":")[0].split(", ")[1:]) for line in run.stdout.splitlines() if line.strip().startswith("round")]
    first = [("baseline", "1 thread(s)"), ("baseline", "2 thread(s)"), ("this", "1 thread(s)"), ("this", "2 thread(s)")]
    assert order == first + first[::-1]  # the next round runs in the reverse order
