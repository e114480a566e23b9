"""Run a study: a base config, factors with levels, several seeds; every run a DVC experiment.

    python bench/study.py bench/studies/factors.yaml -j 1
    python bench/study.py bench/studies/presets.yaml -j 1 --timeout 3600

A study file (YAML)::

    name: factors                      # results go to bench/studies/<name>.json and <name>.md
    seeds: [0, 1, 2]
    base: {preset: cnn, train.epochs: 3, prepare.augment.copies: 2}   # -S overrides of every run
    factors:
      batchnorm:                       # a factor ...
        with: {}                       # ... and its levels, each a set of -S overrides on the base
        without: {train.model: [{type: conv, out: 32, k: 5}, ...]}

The script queues every (factor, level, seed) run not yet recorded with ``dvc exp run --queue``,
runs them with ``dvc queue start -j N``, waits, collects ``dvc exp show --json``, and records each
finished run in ``bench/studies/<name>.json`` (with the nnlib commit it ran on: the commit that was
HEAD when it was queued; the runs are found there even after HEAD has moved on). An interrupted study
continues where it stopped: recorded runs are never queued again. To measure runs again on new code,
delete their entries from the JSON and pass ``--rerun``: the experiments of the same names from
earlier commits are then removed (``dvc exp remove``) and the runs queued on HEAD; without it they
would be collected again. It then writes the Markdown table
of the mean and the range (min-max) of test accuracy per level (and of robust accuracy, when the runs
report it), and of train seconds per epoch when
every run was made with ``-j 1`` (times of parallel runs share the CPU and are left out). With
``-j N`` each run's ``train.threads: auto`` takes its share of the cores (docs/threads.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from nnlib_select import select_nnlib  # bench/ is on sys.path for `python bench/x.py`

select_nnlib()

from nnlib.mnist.paths import EVAL_METRICS, TIMING  # noqa: E402 - after select_nnlib

ROOT = Path(__file__).resolve().parents[1]


def flow(value) -> str:
    """A value in the override grammar of ``dvc exp run -S`` (YAML flow style: lists and mappings)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def run_name(study: dict, factor: str, level: str, overrides: dict | None, seed: int) -> str:
    """Experiment name of one run. A level with no overrides is the base config, shared by every factor."""
    label = "base" if not overrides else f"{factor}-{level}"
    return re.sub(r"[^A-Za-z0-9-]+", "-", f"{study['name']}-{label}-s{seed}")


def runs_of(study: dict) -> list[dict]:
    """Every distinct run of the study: name, seed and the -S overrides, in a fixed order."""
    out = {}
    for factor, levels in study["factors"].items():
        for level, overrides in levels.items():
            for seed in study["seeds"]:
                settings = {**study.get("base", {}), **(overrides or {}), "seed": seed}
                name = run_name(study, factor, level, overrides, seed)
                out[name] = {"name": name, "seed": seed, "overrides": [f"{k}={flow(v)}" for k, v in settings.items()]}
    return list(out.values())


class StudyError(Exception):
    """A malformed study file; ``main`` prints it as one line and exits 2."""


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def load_study(path: Path) -> dict:
    """Read and check a study file: one StudyError line for whatever is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StudyError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start})") from None
    except OSError as err:
        raise StudyError(f"{path} cannot be read ({err.strerror or err})") from None
    try:
        study = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StudyError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise StudyError(f"{path} is nested too deeply") from None
    if not isinstance(study, dict):
        raise StudyError(f"{path} must be a mapping with name, seeds, base and factors, got {type(study).__name__}")
    name = study.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise StudyError(f"{path}: name must be letters, digits, '-' and '_' (it names the result files), "
                         f"got {str(name)[:60]!r}")
    seeds = study.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise StudyError(f"{path}: seeds must be a non-empty list of integers >= 0, got {str(seeds)[:60]}")
    if not isinstance(study.get("base") or {}, dict):
        raise StudyError(f"{path}: base must be a mapping of overrides (key: value), got {str(study['base'])[:60]}")
    factors = study.get("factors")
    if not (isinstance(factors, dict) and factors):
        raise StudyError(f"{path}: factors must be a non-empty mapping of factor: {{level: {{overrides}}}}, "
                         f"got {str(factors)[:60]}")
    for factor, levels in factors.items():
        if not (isinstance(levels, dict) and levels):
            raise StudyError(f"{path}: factor {str(factor)[:40]} must map levels to overrides, got {str(levels)[:60]}")
        for level, overrides in levels.items():
            if not isinstance(overrides or {}, dict):
                raise StudyError(f"{path}: level {str(factor)[:40]}.{str(level)[:40]} must be a mapping of overrides "
                                 f"(key: value) or {{}}, got {str(overrides)[:60]}")
    return study


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result


def seconds_per_epoch(repo: Path, rev: str | None) -> float | None:
    """``seconds_per_epoch`` of metrics/timing.json in an experiment's commit (timings are not DVC metrics)."""
    shown = subprocess.run(["git", "show", f"{rev}:{TIMING.as_posix()}"], cwd=repo, capture_output=True, text=True)
    try:
        return json.loads(shown.stdout)["seconds_per_epoch"] if rev and shown.returncode == 0 else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def experiments(repo: Path, baselines: list[str]) -> tuple[dict, set]:
    """(finished: name -> {"accuracy", "seconds_per_epoch", "commit"}, pending: names queued or running).

    From `dvc exp show --rev B` for every baseline commit B the study's runs were queued on (a run is
    an experiment of the commit that was HEAD when it was queued, even if HEAD has moved since).
    """
    shown = []
    for baseline in dict.fromkeys(baselines):  # unique, in order
        shown += json.loads(dvc("exp", "show", "--json", "--rev", baseline, cwd=repo).stdout or "[]")
    finished, pending = {}, set()
    for entry in shown:
        for exp in entry.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            if state in ("queued", "running"):
                pending.add(exp.get("name"))
                continue
            if state == "failed":
                continue  # its metrics columns still show the baseline's files
            for revision in exp.get("revs") or []:
                name = revision.get("name")
                files = ((revision.get("data") or {}).get("metrics") or {})
                scores = (files.get(EVAL_METRICS.as_posix()) or {}).get("data") or {}
                accuracy = scores.get("accuracy")
                if name and accuracy is not None:
                    finished[name] = {"accuracy": accuracy, "seconds_per_epoch": seconds_per_epoch(repo, revision.get("rev")),
                                      "commit": entry.get("rev")}
                    if scores.get("robust_accuracy") is not None:  # the robustness suite (docs/robustness.md)
                        finished[name]["robust_accuracy"] = scores["robust_accuracy"]
    return finished, pending


def wait_for_queue(repo: Path, timeout: float) -> bool:
    """Wait until the queue is empty; on timeout stop it and return False (finished runs are still recorded)."""
    deadline = time.monotonic() + timeout
    time.sleep(min(15.0, timeout))  # the worker takes a moment to pick up the first task
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return True
        time.sleep(5)
    dvc("queue", "kill", "--all", cwd=repo, check=False)
    dvc("queue", "remove", "--queued", cwd=repo, check=False)
    print(f"study: stopped after {timeout:.0f} s; the finished runs are recorded, run the same command again to continue",
          file=sys.stderr)
    return False


def summary_table(study: dict, record: dict) -> str:
    """Markdown: per factor and level, mean and range of test accuracy, of robust accuracy when every run
    has it, and train s/epoch when -j 1."""
    timed = record["jobs"] == 1
    robust = bool(record["runs"]) and all("robust_accuracy" in run for run in record["runs"].values())
    lines = ["| factor | level | runs | test accuracy, mean | range |" + (" robust accuracy, mean | range |" if robust else "")
             + (" train s/epoch, mean |" if timed else ""),
             "|---|---|---|---|---|" + ("---|---|" if robust else "") + ("---|" if timed else "")]
    for factor, levels in study["factors"].items():
        for level, overrides in levels.items():
            names = [run_name(study, factor, level, overrides, seed) for seed in study["seeds"]]
            runs = [record["runs"][n] for n in names if n in record["runs"]]
            if runs:
                lines.append(_row(factor, level, runs, timed, robust))
    return "\n".join(lines) + "\n"


def _row(factor: str, level: str, runs: list, timed: bool, robust: bool = False) -> str:
    row = f"| {factor} | {level} | {len(runs)} |"
    for key in ("accuracy", "robust_accuracy") if robust else ("accuracy",):
        acc = [r[key] * 100 for r in runs]
        row += f" {sum(acc) / len(acc):.2f}% | {min(acc):.2f}–{max(acc):.2f}% |"
    if timed:
        secs = [r["seconds_per_epoch"] for r in runs if r.get("seconds_per_epoch") is not None]
        row += f" {sum(secs) / len(secs):.1f} |" if secs else " — |"
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python bench/study.py bench/studies/factors.yaml -j 1")
    parser.add_argument("study", type=Path, help="study file (YAML)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once (times are kept only with 1)")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the queue (default 6 h)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to run in (default: this one)")
    parser.add_argument("--out", type=Path, help="results folder (default: the study file's folder)")
    parser.add_argument("--rerun", action="store_true",
                        help="run again on HEAD every run missing from the JSON, removing finished experiments of "
                             "the same names from earlier commits (instead of collecting them)")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.study)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out or args.study.parent
    results = out_dir / f"{study['name']}.json"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.repo, capture_output=True, text=True).stdout.strip()
    record = json.loads(results.read_text()) if results.exists() else {"study": study["name"], "runs": {}}
    record["jobs"] = min(record.get("jobs", args.jobs), args.jobs) if record["runs"] else args.jobs
    baselines = record.setdefault("baselines", [])  # the commits runs were queued on
    todo = [run for run in runs_of(study) if run["name"] not in record["runs"]]
    done, pending = experiments(args.repo, [commit, *baselines])
    stale = [run["name"] for run in todo if run["name"] in done] if args.rerun else []
    if stale:  # finished on older code: measure them again
        dvc("exp", "remove", *stale, cwd=args.repo)
        done = {name: result for name, result in done.items() if name not in stale}
    queued = [run for run in todo if run["name"] not in done and run["name"] not in pending]
    if queued and commit not in baselines:
        baselines.append(commit)
    for run in queued:
        dvc("exp", "run", "--queue", "-n", run["name"], *[a for o in run["overrides"] for a in ("-S", o)], cwd=args.repo)
    if queued or pending:
        print(f"study {study['name']}: running {len(queued) + len(pending)} experiments, {args.jobs} at a time", file=sys.stderr)
        # Each run's threads: auto then takes its share of the cores (nnlib/threads.py: NNLIB_JOBS, and the
        # queue's workers it counts); a study that sets train.threads keeps its own count.
        os.environ["NNLIB_JOBS"] = str(args.jobs)
        dvc("queue", "start", "-j", str(args.jobs), cwd=args.repo)
        wait_for_queue(args.repo, args.timeout)
        done, _ = experiments(args.repo, [commit, *baselines])
    for run in runs_of(study):  # (re)fill every finished run, e.g. a timing read late
        if run["name"] in done:
            record["runs"][run["name"]] = {"seed": run["seed"], "overrides": run["overrides"]} | done[run["name"]]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=2) + "\n")
    table = summary_table(study, record)
    commits = ", ".join(sorted({run.get("commit", "?")[:12] for run in record["runs"].values()}))
    (out_dir / f"{study['name']}.md").write_text(f"Study `{study['name']}` on nnlib commit {commits} "
                                                 f"(`python bench/study.py {args.study}`):\n\n{table}")
    print(table)
    missing = len(runs_of(study)) - len(record["runs"])
    if missing:
        print(f"study {study['name']}: {missing} runs failed or are missing; see `dvc queue logs`", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    sys.exit(main())
