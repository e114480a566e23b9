"""End to end: the real DVC pipeline on tiny params in a temporary git repository.

MNIST comes from ../shared/mnist (through MNIST_MIRROR) when that folder exists, else from the real fetch.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnlib.mnist import paths

from model_faults import FAULTS, LOADS_BUT_CANNOT_BE_EVALUATED, make_bad_copy

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = (ROOT / ".." / "shared" / "mnist").resolve()
PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "stages", "nnlib", ".dvc/config",
                  "models/init/README.md", "data/drawn/README.md", "vendor/vega"]

pytestmark = pytest.mark.slow
EVAL_KEYS = ["accuracy", "errors", "images", "nll", "loss_fn", "loss", "macro_f1", "ece", "robust_accuracy"]
PNGS = ["curves", "confusion", "misclassified", "first_layer", "reliability", "features", "augment_preview", "robustness"]

TINY = {
    # photo_p 0: the cnn preset's photometric families cost a 2-epoch MLP on 300 images a third of its accuracy
    "prepare": {"val_size": 200, "max_train": 300, "shard_size": 200, "workers": 2, "augment": {"copies": 1, "photo_p": 0.0}},
    # threads pinned: the byte comparisons between runs need one count, and auto's depends on the nnlib
    # runs going elsewhere on the machine (test_a_run_resumed_under_auto_keeps_its_thread_count covers auto)
    "train": {"epochs": 2, "batch_size": 32, "images_per_epoch": 600, "threads": 2,
              "model": [{"type": "flatten"}, {"type": "dense", "out": 32}, {"type": "relu"}, {"type": "dense", "out": 10}]},
    "evaluate": {"misclassified": 8, "robust_images": 500},
}


def strict_json(path: Path):
    """A JSON file, refusing NaN and infinities (which json.loads would accept)."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not valid JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def merge(base: dict, override: dict) -> dict:
    """Recursively override keys of a nested dict."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def repo_env(cwd: Path) -> dict:
    """The environment of a command in ``cwd``: a copied repository imports its own nnlib (its stages refuse another)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # bytecode must not dirty DVC
    if (Path(cwd) / "nnlib" / "__init__.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = repo_env(cwd)
    env["DVC_NO_ANALYTICS"] = "1"
    if SHARED_MNIST.is_dir():
        env["MNIST_MIRROR"] = str(SHARED_MNIST)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc_status(repo: Path) -> dict:
    """`dvc status --json`: the stages that are out of date (empty when everything is)."""
    return json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], repo).stdout)


def write_params(repo: Path, override: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(merge(params, TINY), override), sort_keys=False))


def copy_files(repo: Path, names) -> None:
    """Copy these files and folders of the repository into ``repo`` (bytecode left out)."""
    for name in names:
        source, target = ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repository holding a copy of the pipeline, after one `dvc repro` on tiny params."""
    repo = tmp_path_factory.mktemp("pipeline")
    copy_files(repo, PIPELINE_FILES)
    write_params(repo, {})
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], repo)
    run([sys.executable, "-m", "dvc", "repro"], repo)
    return repo


def test_repro_writes_metrics(repo):
    train = json.loads((repo / paths.TRAIN_METRICS).read_text())
    assert train["epochs"] == 2 and train["best_epoch"] in (1, 2)
    assert 0.0 <= train["best_val_accuracy"] <= 1.0
    evaluation = strict_json(repo / paths.EVAL_METRICS)
    assert list(evaluation) == EVAL_KEYS, "scalars only: every key is a column of dvc exp show"
    assert evaluation["images"] == 10_000
    assert 0.5 < evaluation["accuracy"] <= 1.0, "a small MLP on 300 images beats chance (0.1) by far"
    assert evaluation["errors"] == round(10_000 * (1 - evaluation["accuracy"]))
    assert evaluation["loss_fn"] == "cross_entropy" and evaluation["loss"] == pytest.approx(evaluation["nll"], rel=1e-5)
    assert 0 < evaluation["nll"] < 2.3 and 0.5 < evaluation["macro_f1"] <= 1 and 0 <= evaluation["ece"] < 0.5
    details = strict_json(repo / paths.EVAL_DETAILS)
    assert details["model_sha256"] == hashlib.sha256((repo / "models/model.npz").read_bytes()).hexdigest()
    assert sorted(details["per_class"], key=int) == [str(d) for d in range(10)]
    assert all(0 <= c[k] <= 1 for c in details["per_class"].values() for k in ("precision", "recall", "f1"))
    confusions = [(c["true"], c["predicted"], c["count"]) for c in details["top_confusions"]]
    assert len(confusions) == 5 and all(t != p for t, p, _ in confusions)
    assert [c for _, _, c in confusions] == sorted((c for _, _, c in confusions), reverse=True)
    robust = details["robustness"]
    assert robust["images"] == 500 and robust["seed"] == 0 and len(robust["accuracy"]) == 14
    assert all(0 <= a <= 1 for a in robust["accuracy"].values()) and 0 <= robust["clean_accuracy"] <= 1
    assert evaluation["robust_accuracy"] == pytest.approx(sum(robust["accuracy"].values()) / 14)
    log = (repo / paths.TRAIN_LOG).read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert len(log) == 3
    timing = json.loads((repo / paths.TIMING).read_text())
    assert len(timing["epoch_seconds"]) == 2 and timing["train_seconds"] > 0
    predictions = (repo / paths.PREDICTIONS).read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 10_001
    for png in PNGS:
        data = (repo / f"metrics/plots/{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert not list((repo / "metrics").glob("**/.*.tmp")), "every temporary output is renamed into place"
    assert (repo / "models/model.npz").exists()


def test_plots_show_only_the_declared_plots_with_data(repo):
    """`dvc plots show` draws the top-level plots and the stages' PNGs, nothing else (no plot of a raw table)."""
    shown = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo).stdout)
    assert not shown.get("errors"), shown["errors"]
    data = shown["data"]
    assert set(data) == {"loss", "accuracy", "live", "confusion"} | {f"metrics/plots/{png}.png" for png in PNGS}
    for name, fields in [("loss", {"train_loss", "val_loss"}), ("accuracy", {"train_acc", "val_acc"}), ("live", {"train_loss", "val_loss"})]:
        (plot,) = data[name]
        values, encoding = plot["content"]["data"]["values"], plot["content"]["encoding"]
        assert plot["type"] == "vega" and encoding["x"]["field"] == "epoch" and encoding["x"]["title"] == "epoch"
        assert {v["field"] for v in values} == fields and sorted({v["epoch"] for v in values}) == ["1", "2"]
    (confusion,) = data["confusion"]
    assert len(confusion["content"]["data"]["values"]) == 10_000
    encoding = confusion["content"]["spec"]["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("predicted", "actual")  # true class vertical, as in confusion.png
    for png in PNGS:
        (image,) = data[f"metrics/plots/{png}.png"]
        assert image["type"] == "image" and Path(image["url"]).stat().st_size > 5000


def test_second_repro_runs_nothing(repo):
    status = run([sys.executable, "-m", "dvc", "status"], repo)
    assert "up to date" in status.stdout, status.stdout
    again = run([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in again.stdout, again.stdout


def test_editing_a_layer_reruns_train_and_evaluate_only(repo):
    """Stages depend on the nnlib modules they import, not the whole folder (see test_stage_deps.py)."""
    layers = repo / "nnlib/layers.py"
    kept = layers.read_text()
    layers.write_text(kept + "\n# an edit\n")
    try:
        status = dvc_status(repo)
    finally:
        layers.write_text(kept)
    assert sorted(status) == ["evaluate", "train"], status


def test_training_again_gives_the_same_bytes_except_timing(repo):
    """Same params and data -> same model bytes and metrics; only metrics/timing.json may differ."""
    outputs = [paths.MODEL, paths.TRAIN_METRICS, paths.TRAIN_LOG]
    before = {name: (repo / name).read_bytes() for name in outputs}
    run([sys.executable, "stages/train.py"], repo)
    changed = [name for name in outputs if (repo / name).read_bytes() != before[name]]
    assert not changed, f"a second training run changed {changed}"
    status = dvc_status(repo)
    assert "evaluate" not in status, status  # its inputs (model, train log) are unchanged


def test_metrics_show_reads_both_metrics_files(repo):
    """`dvc metrics show` finds train.json and eval.json, each with the numbers the stage wrote.

    (Looking for "accuracy" in its output would not do: train.json alone has best_val_accuracy.)
    """
    shown = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).stdout)
    files = shown[""]["data"]
    for path in (paths.TRAIN_METRICS, paths.EVAL_METRICS):
        assert files[path.as_posix()] == {"data": strict_json(repo / path)}, path
    assert 0.5 < files[paths.EVAL_METRICS.as_posix()]["data"]["accuracy"] <= 1.0


def test_bad_param_exits_2_with_one_line(repo, tmp_path):
    write_params(repo, {"train": {"epochs": 0}})
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        write_params(repo, {})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epochs" in lines[0] and ">= 1" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_key_names_it(repo):
    write_params(repo, {"train": {"epoch": 3}})
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        write_params(repo, {})
    assert result.returncode == 2 and "train.epoch" in result.stderr


def test_divergence_stops_without_writing_a_model(repo):
    model = repo / "models/model.npz"
    before = model.read_bytes()
    # A quadratic loss on unbounded outputs explodes geometrically at this learning rate.
    write_params(repo, {"train": {"loss": {"name": "mse"}, "optimizer": {"name": "sgd", "lr": 50.0, "momentum": 0.0}, "schedule": {"name": "constant"}}})
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        write_params(repo, {})
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Warning" not in result.stderr, result.stderr  # the message alone, no RuntimeWarning
    assert "epoch 1, step" in errors[0] and "lower train.optimizer.lr" in errors[0]
    assert model.read_bytes() == before, "a diverged run must not replace the model"


def test_missing_model_names_the_file_and_its_stage(repo):
    model = repo / "models/model.npz"
    kept = model.read_bytes()
    model.unlink()
    try:
        result = run([sys.executable, "stages/evaluate.py"], repo, check=False)
    finally:
        model.write_bytes(kept)
    assert result.returncode == 1
    assert "models/model.npz: no such model file" in result.stderr and "dvc repro -s train" in result.stderr


def last_val_loss(repo: Path) -> float:
    header, *rows = (repo / paths.TRAIN_LOG).read_text().splitlines()
    return float(rows[-1].split("\t")[header.split("\t").index("val_loss")])


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("name", sorted({**FAULTS, **LOADS_BUT_CANNOT_BE_EVALUATED}))
def test_evaluate_refuses_a_bad_model_file_in_one_line(repo, name, tmp_path):
    model = repo / "models/model.npz"
    kept, metrics = model.read_bytes(), (repo / paths.EVAL_METRICS).read_bytes()
    bad = make_bad_copy(name, model, tmp_path)
    model.unlink()
    if bad.is_dir():
        model.mkdir()
    elif bad.exists():
        shutil.copy(bad, model)
    try:
        result = run([sys.executable, "stages/evaluate.py"], repo, check=False)
    finally:
        shutil.rmtree(model) if model.is_dir() else model.unlink(missing_ok=True)
        model.write_bytes(kept)
    assert result.returncode == 1
    assert "models/model.npz" in one_error_line(result)
    assert (repo / paths.EVAL_METRICS).read_bytes() == metrics


def test_evaluate_refuses_a_train_log_of_another_run(repo):
    log = repo / paths.TRAIN_LOG
    kept = log.read_bytes()
    log.write_bytes(kept.replace(b"\n2\t", b"\n2\t0"))  # another run's numbers
    try:
        result = run([sys.executable, "stages/evaluate.py"], repo, check=False)
    finally:
        log.write_bytes(kept)
    assert result.returncode == 1
    assert "belongs to another training run" in one_error_line(result)


def test_continue_training_from_the_model(repo):
    """train.init_from: 2 more epochs from the trained model lower the validation loss."""
    before = last_val_loss(repo)
    init = repo / "models/init/start.npz"
    shutil.copy(repo / "models/model.npz", init)
    write_params(repo, {"train": {"init_from": "models/init/start.npz"}})
    try:
        assert "train" in dvc_status(repo)  # the new file in models/init makes train stale
        result = run([sys.executable, "stages/train.py"], repo)
        assert "starting from the weights of models/init/start.npz" in result.stderr
        after = last_val_loss(repo)
        info = json.loads(run([sys.executable, "-m", "nnlib", "info", "--json"], repo).stdout)
    finally:
        init.unlink()
        write_params(repo, {})
        run([sys.executable, "-m", "dvc", "repro"], repo)
    assert after < before, (before, after)
    assert info["init_from"]["path"] == "models/init/start.npz" and len(info["init_from"]["sha256"]) == 64
    assert dvc_status(repo) == {}


@pytest.mark.parametrize("override, code, fragment", [
    ({"init_from": "models/init/nowhere.npz"}, 1, "models/init/nowhere.npz (train.init_from) is missing"),
    ({"init_from": "models/model.npz"}, 2, "train.init_from must be a file under models/init/"),
    ({"init_from": "models/init/start.npz", "model": [{"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "relu"},
                                                       {"type": "dense", "out": 10}]},
     2, "does not match train.model at layer 1"),
])
def test_bad_init_from_is_one_line(repo, override, code, fragment):
    shutil.copy(repo / "models/model.npz", repo / "models/init/start.npz")
    write_params(repo, {"train": override})
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        (repo / "models/init/start.npz").unlink()
        write_params(repo, {})
    assert result.returncode == code
    assert fragment in one_error_line(result)


def snapshot(repo: Path) -> dict:
    """Bytes of every file the stages write (model, metrics, shards), to check nothing was touched."""
    files = [repo / "models/model.npz", *sorted((repo / "metrics").rglob("*")), *sorted((repo / "data/shards").glob("*"))]
    return {str(f.relative_to(repo)): f.read_bytes() for f in files if f.is_file() and "live" not in f.parts}


def layers_with(index: int, **options) -> list:
    model = [{"type": "conv", "out": 4, "k": 3}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
             {"type": "flatten"}, {"type": "dense", "out": 10}]
    model[index] = {**model[index], **options}
    return model


PARAM_FAULTS = {  # name -> (params override or raw YAML text appended, exit code, fragment of the one line)
    "lr_inf": ({"train": {"optimizer": {"lr": float("inf")}}}, 2, "train.optimizer.lr"),
    "weight_decay_inf": ({"train": {"optimizer": {"weight_decay": float("inf")}}}, 2, "train.optimizer.weight_decay"),
    "gamma_inf": ({"train": {"schedule": {"gamma": float("inf")}}}, 2, "train.schedule.gamma"),
    "cupy_missing": ({"train": {"backend": "cupy"}}, 2, "CuPy is not installed"),
    "too_many_images": ({"train": {"images_per_epoch": 10**15}}, 2, "more than 10,000,000,000"),
    "batch_size_zero": ({"train": {"batch_size": 0}}, 2, "train.batch_size"),
    "workers_zero": ({"train": {"workers": 0}}, 2, "train.workers"),
    "workers_over_the_batch": ({"train": {"workers": 33}}, 2, "train.workers (33) is more than train.batch_size (32)"),
    "duplicate_key": ("seed: 3\n", 2, "duplicate key 'seed'"),
    "conv_stride_0": ({"train": {"model": layers_with(0, stride=0)}}, 2, "layer 0 (conv): stride"),
    "conv_k_0": ({"train": {"model": layers_with(0, k=0)}}, 2, "layer 0 (conv): k"),
    "conv_out_0": ({"train": {"model": layers_with(0, out=0)}}, 2, "layer 0 (conv): out"),
    "conv_pad_negative": ({"train": {"model": layers_with(0, pad=-1)}}, 2, "layer 0 (conv): pad"),
    "dense_out_0": ({"train": {"model": layers_with(5, out=0)}}, 2, "layer 5 (dense): out"),
    "final_dense_5": ({"train": {"model": layers_with(5, out=5)}}, 2, "10 logits"),
    "maxpool_stride_0": ({"train": {"model": layers_with(3, stride=0)}}, 2, "layer 3 (maxpool): stride"),
    "maxpool_k_0": ({"train": {"model": layers_with(3, k=0)}}, 2, "layer 3 (maxpool): k"),
    "bn_momentum_negative": ({"train": {"model": layers_with(1, momentum=-1)}}, 2, "layer 1 (batchnorm): momentum"),
    "bn_momentum_5": ({"train": {"model": layers_with(1, momentum=5)}}, 2, "layer 1 (batchnorm): momentum"),
    "bn_eps_0": ({"train": {"model": layers_with(1, eps=0)}}, 2, "layer 1 (batchnorm): eps"),
    "dense_bias_string": ({"train": {"model": layers_with(5, bias="no")}}, 2, "layer 5 (dense): bias"),
    "unknown_layer": ({"train": {"model": layers_with(2, type="swish")}}, 2, "unknown layer type 'swish'"),
}


@pytest.mark.parametrize("name", sorted(PARAM_FAULTS))
def test_bad_params_and_layer_specs_are_one_line_and_touch_nothing(repo, name):
    override, code, fragment = PARAM_FAULTS[name]
    before = snapshot(repo)
    if isinstance(override, str):
        write_params(repo, {})
        with (repo / "params.yaml").open("a") as f:
            f.write(override)
    else:
        write_params(repo, override)
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        write_params(repo, {})
    assert result.returncode == code, result.stderr
    assert fragment in one_error_line(result)
    assert snapshot(repo) == before


def test_an_unwritable_output_folder_is_found_before_training(repo):
    live = repo / "metrics/live"
    shutil.rmtree(live, ignore_errors=True)
    live.write_text("a file where the live-log folder should be")
    stale = repo / "models/.model.npz.dead1234.tmp"
    stale.write_bytes(b"left by a SIGKILL")
    before = snapshot(repo)
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
    finally:
        live.unlink()
    assert result.returncode == 1
    assert "cannot write to metrics/live/" in one_error_line(result)
    assert snapshot(repo) == before and not stale.exists()


def _rewrite_shard(repo: Path, name: str, edit) -> None:
    from nnlib.files import load_npz, save_npz  # noqa: PLC0415
    arrays = load_npz(repo / "data/shards" / name)
    edit(arrays)
    save_npz(repo / "data/shards" / name, arrays)


def _edit_manifest(repo: Path, edit) -> None:
    path = repo / "data/shards/manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


SHARD_FAULTS = {  # name -> (fault(repo), fragment of the one line)
    "truncated_shard": (lambda r: (r / "data/shards/train-00001.npz").write_bytes((r / "data/shards/train-00001.npz").read_bytes()[:500]),
                        "train-00001.npz is truncated or corrupt"),
    "missing_shard": (lambda r: (r / "data/shards/train-00002.npz").unlink(), "train-00002.npz is missing"),
    "no_train_shards": (lambda r: _edit_manifest(r, lambda m: {**m, "train_shards": []}), "lists no train shards"),
    "manifest_is_a_list": (lambda r: _edit_manifest(r, lambda m: [m]), "must be a JSON object"),
    "manifest_not_json": (lambda r: (r / "data/shards/manifest.json").write_text("{"), "manifest.json is corrupt"),
    "train_split_size_0": (lambda r: _edit_manifest(r, lambda m: {**m, "train_split_size": 0}), "train_split_size 0"),
    "label_200": (lambda r: _rewrite_shard(r, "train-00000.npz", lambda a: a["y"].__setitem__(0, 200)), "holds label 200"),
    "images_20x20": (lambda r: _rewrite_shard(r, "train-00000.npz", lambda a: a.update(x=a["x"][:, :20, :20].copy())),
                     "holds images"),
    "empty_val": (lambda r: _rewrite_shard(r, "val.npz", lambda a: a.update(x=a["x"][:0], y=a["y"][:0])), "val.npz holds images"),
    "relabelled_shard": (lambda r: _rewrite_shard(r, "train-00000.npz", lambda a: a.update(y=(a["y"] + 1) % 10)),
                         "do not match the manifest's label histogram"),
}


@pytest.mark.parametrize("name", sorted(SHARD_FAULTS))
def test_corrupt_shards_are_found_before_training(repo, name, tmp_path):
    fault, fragment = SHARD_FAULTS[name]
    shards = repo / "data/shards"
    shutil.copytree(shards, tmp_path / "shards")
    fault(repo)
    before = snapshot(repo)
    try:
        result = run([sys.executable, "stages/train.py"], repo, check=False)
        after = snapshot(repo)
    finally:
        shutil.rmtree(shards)
        shutil.copytree(tmp_path / "shards", shards)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert fragment in line and "dvc repro -s prepare" in line
    assert after == before


OUTPUTS = [paths.MODEL, paths.TRAIN_METRICS, paths.TRAIN_LOG]
RESUMABLE = {"train": {"epochs": 4, "images_per_epoch": 3000,
                       "model": [{"type": "flatten"}, {"type": "dense", "out": 256}, {"type": "relu"},
                                 {"type": "dropout", "p": 0.2}, {"type": "dense", "out": 10}]}}


def kill_after_epoch(cmd: list[str], repo: Path, epoch: int = 2) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group once checkpoint ``epoch`` exists."""
    import signal
    import time
    checkpoint = repo / f"models/checkpoints/checkpoint-{epoch:04d}.npz"
    env = repo_env(repo)
    process = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert checkpoint.exists() or (repo / f"models/checkpoints/checkpoint-{epoch + 1:04d}.npz").exists()


@pytest.fixture
def uninterrupted(repo):
    """The outputs of an uninterrupted 4-epoch run; restores the repo's tiny run afterwards."""
    write_params(repo, RESUMABLE)
    run([sys.executable, "stages/train.py"], repo)
    outputs = {name: (repo / name).read_bytes() for name in OUTPUTS}
    assert not list((repo / "models/checkpoints").glob("*.npz")), "a completed run deletes its checkpoints"
    yield outputs
    write_params(repo, {})
    shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
    run([sys.executable, "-m", "dvc", "repro"], repo)


def test_a_killed_run_resumes_to_the_same_bytes_by_hand(repo, uninterrupted):
    kill_after_epoch([sys.executable, "stages/train.py"], repo)
    live = (repo / paths.LIVE_LOG).read_text().splitlines()
    assert len(live) >= 3, "the live log keeps the epochs finished before the kill"
    result = run([sys.executable, "stages/train.py"], repo)
    assert "train: resuming from models/checkpoints/checkpoint-000" in result.stderr
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == uninterrupted


def test_a_killed_dvc_repro_resumes_to_the_same_bytes(repo, uninterrupted):
    (repo / "models/model.npz").unlink()  # make train stale for dvc
    kill_after_epoch([sys.executable, "-m", "dvc", "repro", "-s", "train"], repo)
    result = run([sys.executable, "-m", "dvc", "repro", "-s", "train"], repo)
    assert "resuming from" in result.stderr + result.stdout
    assert {name: (repo / name).read_bytes() for name in OUTPUTS} == uninterrupted


def test_data_parallel_bytes_depend_on_workers_not_threads_and_survive_a_kill(repo):
    """train.workers: 2 on a network with BatchNorm and dropout: an uninterrupted run on 2 threads, one on
    1 thread, and one killed after epoch 2 and resumed end with the same bytes."""
    network = [{"type": "flatten"}, {"type": "dense", "out": 64}, {"type": "batchnorm"}, {"type": "relu"},
               {"type": "dropout", "p": 0.2}, {"type": "dense", "out": 10}]
    parallel = merge(RESUMABLE, {"train": {"workers": 2, "model": network}})
    shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
    try:
        write_params(repo, merge(parallel, {"train": {"threads": 2}}))
        result = run([sys.executable, "stages/train.py"], repo)
        assert ("train: 2 data-parallel workers, BLAS at 1 thread each, this process and 1 worker process "
                "on 2 cores (set to 2)") in result.stderr
        timing = json.loads((repo / "metrics/timing.json").read_text())
        assert (timing["workers"], timing["worker_threads"], timing["blas_threads"]) == (2, 2, 1)
        two_threads = {name: (repo / name).read_bytes() for name in OUTPUTS}
        write_params(repo, merge(parallel, {"train": {"threads": 1}}))
        run([sys.executable, "stages/train.py"], repo)  # the model file's metadata records threads: 1
        with np.load(repo / "models/model.npz") as one, np.load(io.BytesIO(two_threads[paths.MODEL])) as two:
            assert sorted(one.files) == sorted(two.files)
            assert all(np.array_equal(one[name], two[name]) for name in one.files if name != "__meta__")
        assert all((repo / name).read_bytes() == two_threads[name] for name in (paths.TRAIN_METRICS, paths.TRAIN_LOG))
        write_params(repo, merge(parallel, {"train": {"threads": 2}}))
        kill_after_epoch([sys.executable, "stages/train.py"], repo)
        result = run([sys.executable, "stages/train.py"], repo)
        assert "train: resuming from models/checkpoints/checkpoint-000" in result.stderr
        assert {name: (repo / name).read_bytes() for name in OUTPUTS} == two_threads
        write_params(repo, merge(parallel, {"train": {"workers": 1, "threads": 2}}))
        run([sys.executable, "stages/train.py"], repo)
        assert (repo / paths.TRAIN_LOG).read_bytes() != two_threads[paths.TRAIN_LOG]  # another recipe
    finally:
        write_params(repo, {})
        shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
        run([sys.executable, "-m", "dvc", "repro"], repo)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_worker_process_ends_the_training_in_one_line_and_a_rerun_resumes(repo):
    """SIGKILL to the data-parallel worker process (as the out-of-memory killer sends): exit 1, one line that
    says what to do, no model written, the checkpoints kept; the rerun resumes from them."""
    import signal
    import time

    parallel = merge(RESUMABLE, {"train": {"workers": 2, "threads": 2}})
    shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
    model_before = (repo / "models/model.npz").read_bytes()
    try:
        write_params(repo, parallel)
        process = subprocess.Popen([sys.executable, "stages/train.py"], cwd=repo, env=repo_env(repo),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        checkpoint = repo / "models/checkpoints/checkpoint-0001.npz"
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = children_of(process.pid)
        assert workers, "no worker process found"
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr[-2000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
        assert "data-parallel worker process nnlib-worker-1 stopped" in errors[0] and "train.workers: 1" in errors[0]
        assert (repo / "models/model.npz").read_bytes() == model_before, "no model is written"
        assert checkpoint.exists()
        result = run([sys.executable, "stages/train.py"], repo)
        assert "train: resuming from models/checkpoints/checkpoint-000" in result.stderr
    finally:
        write_params(repo, {})
        shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
        run([sys.executable, "-m", "dvc", "repro"], repo)


def test_ema_validates_and_saves_the_average_and_a_killed_run_resumes_to_the_same_bytes(repo):
    """train.optimizer.ema on a BatchNorm + dropout network with 2 workers: run_params records it, the saved model
    is the one validated (the average: its val accuracy is the log's), and a run killed after epoch 2 and
    resumed ends with the same bytes (the checkpoint carries the average)."""
    from nnlib.evaluation import evaluate
    from nnlib.losses import make_loss
    from nnlib.mnist.data.stream import load_shard, minibatches, read_manifest
    from nnlib.modelfile import load_model
    from nnlib.parallel import DataParallel

    network = [{"type": "flatten"}, {"type": "dense", "out": 64}, {"type": "batchnorm"}, {"type": "relu"},
               {"type": "dropout", "p": 0.2}, {"type": "dense", "out": 10}]
    averaged = merge(RESUMABLE, {"train": {"workers": 2, "model": network, "optimizer": {"ema": 0.99}}})
    shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
    try:
        write_params(repo, averaged)
        result = run([sys.executable, "stages/train.py"], repo)
        assert "moving average of the weights (ema 0.99, warm-up on)" in result.stderr
        uninterrupted = {name: (repo / name).read_bytes() for name in OUTPUTS}
        recorded = yaml.safe_load((repo / "metrics/run_params.yaml").read_text())["run"]
        assert (recorded["ema"], recorded["ema_warmup"]) == (0.99, True)
        model, meta = load_model(repo / "models/model.npz")
        assert meta["train"]["optimizer"]["ema"] == 0.99
        val = read_manifest(repo / "data/shards")["val"]["file"]
        with DataParallel(model, 2, threads=1) as runner:  # as training validated: the same bytes
            _, accuracy, _ = evaluate(runner, make_loss({"name": "cross_entropy", "label_smoothing": 0.0, "half": True}),
                                      minibatches(*load_shard(repo / "data/shards" / val), 128))
        assert accuracy == meta["val_accuracy"], "the saved weights are the validated average"
        kill_after_epoch([sys.executable, "stages/train.py"], repo)
        result = run([sys.executable, "stages/train.py"], repo)
        assert "train: resuming from models/checkpoints/checkpoint-000" in result.stderr
        assert {name: (repo / name).read_bytes() for name in OUTPUTS} == uninterrupted
    finally:
        write_params(repo, {})
        shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
        run([sys.executable, "-m", "dvc", "repro"], repo)


def test_a_run_resumed_under_auto_keeps_its_thread_count(repo, tmp_path, monkeypatch):
    """Killed while another run held the cores (auto: 1 thread), resumed alone: it keeps 1 thread, and
    ends as a run pinned to 1 thread from the start."""
    from nnlib import threads

    registry = tmp_path / "registry"
    monkeypatch.setenv(threads.REGISTRY_ENV, str(registry))  # private: other runs on the machine do not count
    monkeypatch.setenv(threads.JOBS_ENV, "")
    shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
    try:
        write_params(repo, merge(RESUMABLE, {"train": {"threads": "auto", "workers": 1}}))  # 1 worker: BLAS threads set the bytes
        with threads.Registry(registry).register(10**6):  # a run holding more than every core
            kill_after_epoch([sys.executable, "stages/train.py"], repo)
        result = run([sys.executable, "stages/train.py"], repo)  # alone now: auto alone would take every core
        assert "resuming from" in result.stderr and "auto keeps the 1 BLAS thread(s) the run started with" in result.stderr
        timing = json.loads((repo / "metrics/timing.json").read_text())
        assert (timing["blas_threads"], timing["threads_setting"]) == (1, "auto")
        resumed = {name: (repo / name).read_bytes() for name in ["metrics/train.json", "metrics/train_log.tsv"]}
        write_params(repo, merge(RESUMABLE, {"train": {"threads": 1, "workers": 1}}))
        run([sys.executable, "stages/train.py"], repo)
        assert {name: (repo / name).read_bytes() for name in resumed} == resumed
        assert not list(registry.glob("*.run")), "every run's entry is gone (the killed one's as stale)"
    finally:
        write_params(repo, {})
        shutil.rmtree(repo / "models/checkpoints", ignore_errors=True)
        run([sys.executable, "-m", "dvc", "repro"], repo)


@pytest.mark.parametrize("spoil, message", [
    (lambda repo, ckpt: write_params(repo, {**RESUMABLE, "train": {**RESUMABLE["train"], "batch_size": 16}}), "written by another run"),
    (lambda repo, ckpt: ckpt.write_bytes(ckpt.read_bytes()[:100]), "unreadable"),
    (lambda repo, ckpt: write_params(repo, {**RESUMABLE, "train": {**RESUMABLE["train"], "resume": False}}), None),
])
def test_a_checkpoint_of_another_run_is_never_resumed(repo, uninterrupted, spoil, message):
    kill_after_epoch([sys.executable, "stages/train.py"], repo)
    spoil(repo, sorted((repo / "models/checkpoints").glob("*.npz"))[-1])
    result = run([sys.executable, "stages/train.py"], repo)
    assert "resuming" not in result.stderr
    if message:
        assert "ignoring models/checkpoints/checkpoint-" in result.stderr and message in result.stderr


def test_share_a_run_through_a_dvc_remote(repo, tmp_path):
    """dvc push to a directory remote; a git clone + dvc pull has everything and runs nothing."""
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "remote", "add", "--local", "-d", "store", str(tmp_path / "store")], repo)
    try:
        run([*dvc, "push"], repo)
    finally:
        run([*dvc, "remote", "remove", "--local", "store"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a run"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run([*dvc, "remote", "add", "--local", "-d", "store", str(tmp_path / "store")], clone)
    run([*dvc, "pull"], clone)
    assert (clone / "models/model.npz").read_bytes() == (repo / "models/model.npz").read_bytes()
    assert dvc_status(clone) == {}
    again = run([*dvc, "repro"], clone)
    assert "Running stage" not in again.stdout, again.stdout


def test_study_script_runs_a_toy_study_and_continues(repo, tmp_path):
    """bench/study.py on 2 runs, -j 1: results recorded with the commit they ran on; after HEAD moves on,
    a second call finds them there and queues nothing; with --rerun a run dropped from the record runs
    again on the new HEAD."""
    write_params(repo, {})
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study base", "--allow-empty"], repo)
    base = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    study = tmp_path / "toy.yaml"
    study.write_text(yaml.safe_dump({
        "name": "toy", "seeds": [0],
        "base": {"train.epochs": 1, "train.images_per_epoch": 200},
        "factors": {"lr": {"base": {}, "high": {"train.optimizer.lr": 0.2}}},
    }))
    cmd = [sys.executable, str(ROOT / "bench" / "study.py"), str(study), "-j", "1", "--repo", str(repo), "--timeout", "600"]
    first = run(cmd, repo)
    record = json.loads((tmp_path / "toy.json").read_text())
    assert sorted(record["runs"]) == ["toy-base-s0", "toy-lr-high-s0"]
    assert all(0 <= r["accuracy"] <= 1 and r["commit"] == base for r in record["runs"].values())
    table = (tmp_path / "toy.md").read_text()
    assert "| lr | base | 1 |" in table and "| lr | high | 1 |" in table and "train s/epoch" in table
    assert f"commit {base[:12]}" in table
    (tmp_path / "toy.json").write_text(json.dumps({**record, "runs": {}}))  # as if the results were lost ...
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "moved on", "--allow-empty"], repo)
    second = run(cmd, repo)  # ... and HEAD had moved on: the runs are still found on their own commit
    assert "running" not in second.stderr and "running 2 experiments" in first.stderr
    record = json.loads((tmp_path / "toy.json").read_text())
    assert sorted(record["runs"]) == ["toy-base-s0", "toy-lr-high-s0"]
    # After a code change: drop one run from the record and --rerun it on the new HEAD.
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    del record["runs"]["toy-lr-high-s0"]
    (tmp_path / "toy.json").write_text(json.dumps(record))
    third = run([*cmd, "--rerun"], repo)
    assert "running 1 experiments" in third.stderr
    runs = json.loads((tmp_path / "toy.json").read_text())["runs"]
    assert runs["toy-lr-high-s0"]["commit"] == head and runs["toy-base-s0"]["commit"] == base


def test_exp_run_uses_a_hand_edit_and_a_preset_switch_keeps_it(repo):
    """Runs last. The edit-safety rule: a hand edit of params.yaml is what `dvc exp run` runs, with any preset."""
    tiny = ["prepare.max_train=300", "prepare.val_size=200", "prepare.shard_size=200", "prepare.augment.copies=1",
            "train.images_per_epoch=300"]
    write_params(repo, {"train": {"epochs": 1}})  # the hand edit
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "preset=mlp-momentum", *[a for o in tiny for a in ("-S", o)]], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["preset"] == "mlp-momentum" and params["train"]["epochs"] == 1
    assert json.loads((repo / paths.TRAIN_METRICS).read_text())["epochs"] == 1  # the edit was used
    info = json.loads(run([sys.executable, "-m", "nnlib", "info", "--json"], repo).stdout)
    assert info["train"]["optimizer"]["momentum"] == 0.9 and info["train"]["optimizer"]["name"] == "sgd"  # the preset's values
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo)
    assert "mlp-momentum" in shown.stdout


def exp_show_recipe() -> list[str]:
    """The `dvc exp show` line of docs/dvc-workflow.md, as argv."""
    import shlex
    (line,) = [x for x in (ROOT / "docs/dvc-workflow.md").read_text().splitlines() if x.startswith("dvc exp show --drop")]
    return shlex.split(line)[1:]


def test_exp_show_recipe_shows_the_effective_values_in_160_columns(repo):
    """After the experiment above: the documented table has every compared column, the values that ran, and fits."""
    run_params = yaml.safe_load((repo / "metrics/run_params.yaml").read_text())["run"]
    assert (run_params["preset"], run_params["epochs"], run_params["optimizer"]) == ("mlp-momentum", 1, "sgd")
    env_columns = {"COLUMNS": "1000"}  # so that DVC collapses nothing: the table's own width is measured
    table = subprocess.run([sys.executable, "-m", "dvc", *exp_show_recipe(), "--no-pager"], cwd=repo, capture_output=True,
                           text=True, timeout=300, env={**repo_env(repo), "DVC_NO_ANALYTICS": "1", **env_columns})
    assert table.returncode == 0, table.stderr
    lines = [line.rstrip() for line in table.stdout.splitlines() if line.strip()]
    header = lines[1].split()
    assert header[0] == "Experiment" and "…" not in table.stdout
    assert {"accuracy", "best_val_accuracy", "run.preset", "run.seed", "run.epochs", "run.lr", "run.batch"} <= set(header)
    rows = [line.split() for line in lines if "mlp-momentum" in line]
    assert rows and all(row[header.index("run.epochs") + len(row) - len(header)] == "1" for row in rows), table.stdout
    width = max(len(line) for line in lines)
    room = 0 if "robust_accuracy" in header else len("   robust_accuracy")
    assert width + room <= 160, f"{width} columns (+{room} for robust_accuracy):\n{table.stdout}"
    metrics = run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD"], repo).stdout
    assert "model_sha256" not in metrics and max(map(len, metrics.splitlines())) <= 100
    diff = run([sys.executable, "-m", "dvc", "params", "diff"], repo).stdout
    assert "run.preset" in diff and "mlp-momentum" in diff, diff


@pytest.mark.parametrize("bad, lost", [("+train.epoch=5", "models/model.npz"), ("preset=cnn_small", "data/shards")])
def test_a_failed_exp_run_prints_the_command_that_restores_its_outputs(repo, bad, lost):
    """DVC deletes a stage's outputs before it runs; the error line ends with the one command that restores them."""
    params = (repo / "params.yaml").read_text()
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", "the experiment"], repo)
    before = {p: (repo / p).read_bytes() for p in ["models/model.npz", "metrics/train.json", "metrics/run_params.yaml"]}
    failed = run([sys.executable, "-m", "dvc", "exp", "run", "-S", bad], repo, check=False)
    assert failed.returncode != 0
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("error: ")]
    assert "did you mean" in line and not (repo / lost).exists()
    command = line.split("back to the last commit's outputs: ")[1].rstrip("]")
    assert command == "git checkout HEAD -- dvc.lock metrics && dvc checkout"
    run(["bash", "-c", command.replace("dvc checkout", f"{sys.executable} -m dvc checkout")], repo)
    (repo / "params.yaml").write_text(params)
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert dvc_status(repo) == {}


def test_drawings_rerun_evaluate_and_add_drawn_accuracy(repo):
    """Digits saved by nnlib serve in data/drawn/ (a dependency of evaluate) are scored in eval.json."""
    import io  # noqa: PLC0415

    from PIL import Image, ImageDraw  # noqa: PLC0415

    from nnlib.mnist import drawn  # noqa: PLC0415

    assert "drawn_accuracy" not in strict_json(repo / "metrics/eval.json")  # no drawings: no keys
    for label in (1, 7):
        image = Image.new("RGB", (280, 280), "white")
        ImageDraw.Draw(image).line([(140, 40), (150, 240)], fill="black", width=18)
        png = io.BytesIO()
        image.save(png, "PNG")
        drawn.save(repo / "data/drawn", png.getvalue(), label)
    assert "evaluate" in dvc_status(repo)
    run([sys.executable, "stages/evaluate.py"], repo)
    evaluation = strict_json(repo / "metrics/eval.json")
    assert evaluation["drawn_images"] == 2 and evaluation["drawn_accuracy"] in (0.0, 0.5, 1.0)
