"""nnlib.mnist.data.shards and stages/prepare.py on small synthetic MNIST-shaped IDX files (no network)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnlib.mnist import seeding
from nnlib.mnist.data import shards
from nnlib.mnist.data.augment import AugmentConfig, distort
from nnlib.files import load_npz, temporaries
from nnlib.errors import InputError, ParamsError
from nnlib.mnist.paths import RAW_FILES

TRAIN_IMAGES = RAW_FILES["train_images"]
TEST_LABELS = RAW_FILES["test_labels"]

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 1000, 150

# 1000 images, val 200 -> train split 800; copies 2 -> 2400 stream images -> shards of 300: 8 shards
SMALL = {"val_size": 200, "shard_size": 300, "workers": 1,
         "augment": {"copies": 2, "rotate": 10, "shift": 2, "scale": 0.1, "elastic_alpha": 8, "elastic_sigma": 3}}


def temp_dirs(out: Path) -> list[Path]:
    """The temporary directories of runs building ``out`` (``.<name>.*.tmp`` beside it)."""
    return temporaries([out.parent], [out.name])


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_raw(raw_dir: Path, seed: int = 0) -> dict:
    """Random uint8 'digits' (every image different) and labels 0..9, as the four MNIST IDX files."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    raw_dir.mkdir(parents=True, exist_ok=True)
    for key, name in RAW_FILES.items():
        write_idx(raw_dir / name, arrays[key])
    return arrays


def params(**override) -> dict:
    section = json.loads(json.dumps(SMALL))
    aug = override.pop("augment", {})
    section.update(override)
    section["augment"].update(aug)
    return shards.check_params(section)


def run_prepare(tmp_path: Path, seed: int = 0, name: str = "shards", **override) -> tuple[dict, Path]:
    out = tmp_path / name
    manifest = shards.prepare(seed, params(**override), raw_dir=tmp_path / "raw", out_dir=out,
                              preview_path=tmp_path / f"{name}.png", progress=False)
    return manifest, out


def files_bytes(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def stream(out: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    parts = [load_npz(out / entry["file"]) for entry in manifest["train_shards"]]
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts])


@pytest.fixture
def raw(tmp_path) -> dict:
    return make_raw(tmp_path / "raw")


# --- layout and bookkeeping --------------------------------------------------------------------


def test_layout_counts_and_histograms_match_the_files(tmp_path, raw):
    manifest, out = run_prepare(tmp_path)
    n_train = N_TRAIN - 200
    assert manifest["train_split_size"] == n_train and manifest["copies"] == 2
    assert manifest["image_shape"] == [28, 28] and manifest["shard_size"] == 300
    assert [e["file"] for e in manifest["train_shards"]] == [f"train-{i:05d}.npz" for i in range(8)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "val.npz", "test.npz"] + [e["file"] for e in manifest["train_shards"]]
    )
    for entry in [*manifest["train_shards"], manifest["val"], manifest["test"]]:
        arrays = load_npz(out / entry["file"])
        assert set(arrays) == {"x", "y"}
        x, y = arrays["x"], arrays["y"]
        assert x.dtype == np.uint8 and y.dtype == np.uint8 and x.shape == (entry["count"], 28, 28)
        assert entry["label_histogram"] == np.bincount(y, minlength=10).tolist()
    assert sum(e["count"] for e in manifest["train_shards"]) == 3 * n_train
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (tmp_path / "shards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_val_and_test_are_the_raw_images_undistorted(tmp_path, raw):
    manifest, out = run_prepare(tmp_path, max_train=500)
    train_idx, val_idx = shards.split_indices(N_TRAIN, 200, 500, seed=0)
    assert len(train_idx) == 500 and len(val_idx) == 200
    assert not set(train_idx) & set(val_idx)
    val, test = load_npz(out / "val.npz"), load_npz(out / "test.npz")
    assert np.array_equal(val["x"], raw["train_images"][val_idx]) and np.array_equal(val["y"], raw["train_labels"][val_idx])
    assert np.array_equal(test["x"], raw["test_images"]) and np.array_equal(test["y"], raw["test_labels"])
    assert manifest["train_split_size"] == 500
    x, y = stream(out, manifest)
    assert np.array_equal(x[:500], raw["train_images"][train_idx])  # copy 0: the originals, in order


def test_every_original_appears_once_per_copy_with_its_label(tmp_path, raw):
    # With no distortion switched on, copy c is exactly the train split again.
    manifest, out = run_prepare(tmp_path, augment={"copies": 3, "rotate": 0, "shift": 0, "scale": 0, "elastic_alpha": 0})
    train_idx, _ = shards.split_indices(N_TRAIN, 200, 0, seed=0)
    x, y = stream(out, manifest)
    assert np.array_equal(x, np.tile(raw["train_images"][train_idx], (4, 1, 1)))
    assert np.array_equal(y, np.tile(raw["train_labels"][train_idx], 4))


def test_distorted_copies_keep_labels_and_differ_from_originals(tmp_path, raw):
    manifest, out = run_prepare(tmp_path)
    train_idx, _ = shards.split_indices(N_TRAIN, 200, 0, seed=0)
    n = len(train_idx)
    x, y = stream(out, manifest)
    assert np.array_equal(y, np.tile(raw["train_labels"][train_idx], 3))
    originals = raw["train_images"][train_idx]
    for copy in (1, 2):
        part = x[copy * n : (copy + 1) * n]
        assert all(not np.array_equal(a, b) for a, b in zip(part, originals))
    assert not np.array_equal(x[n : 2 * n], x[2 * n :])  # the two copies are distorted differently


def test_a_shard_can_be_rebuilt_alone_from_its_own_stream(tmp_path, raw):
    manifest, out = run_prepare(tmp_path)
    train_idx, _ = shards.split_indices(N_TRAIN, 200, 0, seed=0)
    train_x, train_y = raw["train_images"][train_idx], raw["train_labels"][train_idx]
    cfg = AugmentConfig.from_params(manifest["params"]["augment"])
    for index in (0, 2, 7):
        x, y = shards.shard_arrays(index, train_x, train_y, 2, 300, 0, cfg)
        saved = load_npz(out / f"train-{index:05d}.npz")
        assert np.array_equal(x, saved["x"]) and np.array_equal(y, saved["y"])
    # shard 2 holds stream positions 600..899: originals 600..799, then copy 1 of images 0..99,
    # distorted with the shard's own stream
    x2 = load_npz(out / "train-00002.npz")["x"]
    assert np.array_equal(x2[:200], train_x[600:])
    assert np.array_equal(x2[200:], distort(train_x[:100], seeding.rng(0, seeding.AUGMENT, 2), cfg))


def test_last_shard_is_shorter(tmp_path, raw):
    manifest, _ = run_prepare(tmp_path, shard_size=1000)  # 2400 images -> 1000, 1000, 400
    assert [e["count"] for e in manifest["train_shards"]] == [1000, 1000, 400]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path, raw):
    _, one = run_prepare(tmp_path, name="one", workers=1)
    _, two = run_prepare(tmp_path, name="two", workers=2)
    assert files_bytes(one) == files_bytes(two)
    _, again = run_prepare(tmp_path, name="again", workers=2)
    assert files_bytes(one) == files_bytes(again)


def test_different_seed_gives_different_shards(tmp_path, raw):
    _, a = run_prepare(tmp_path, seed=0, name="a")
    _, b = run_prepare(tmp_path, seed=1, name="b")
    a_files, b_files = files_bytes(a), files_bytes(b)
    assert a_files.keys() == b_files.keys()
    for name in a_files:
        if name.startswith("train-") or name == "val.npz":
            assert a_files[name] != b_files[name], name
    assert a_files["test.npz"] == b_files["test.npz"]


# --- crashes and stale files -------------------------------------------------------------------


def test_a_crash_leaves_the_old_set_untouched_and_the_next_run_replaces_it(tmp_path, raw, monkeypatch):
    out = tmp_path / "shards"
    out.mkdir()
    for name in ["manifest.json", "train-00042.npz", ".train-00000.npz.abc123.tmp", "val.npz"]:
        (out / name).write_text("stale")
    before = files_bytes(out)
    calls = []

    def failing_distort(images, rng, cfg):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return distort(images, rng, cfg)

    monkeypatch.setattr(shards, "distort", failing_distort)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prepare(tmp_path)
    assert files_bytes(out) == before  # the new set was being built elsewhere
    assert temp_dirs(out) == []
    assert not (tmp_path / "shards.png").exists()  # the preview comes only after the shards

    monkeypatch.setattr(shards, "distort", distort)
    manifest, out = run_prepare(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(  # nothing of the old directory is left
        ["manifest.json", "val.npz", "test.npz"] + [e["file"] for e in manifest["train_shards"]]
    )
    assert temp_dirs(out) == []


# --- params and input errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, keys",
    [
        ({"augment": {"copies": -1}}, ["prepare.augment.copies"]),
        ({"augment": {"elastic_alpha": 8.0}}, ["prepare.augment.elastic_alpha", "prepare.augment.elastic_sigma"]),
        ({"augment": {"rotate": 181}}, ["prepare.augment.rotate", "180"]),
        ({"workers": -1}, ["prepare.workers", ">= 0"]),
        ({"val_size": 0}, ["prepare.val_size"]),
        ({"max_train": -5}, ["prepare.max_train"]),
        ({"shard_size": 99}, ["prepare.shard_size", "100"]),
        ({"augment": {"scale": 1.0}}, ["prepare.augment.scale"]),
        ({"augment": {"shear": 90}}, ["prepare.augment.shear"]),
        ({"augment": {"shift": -1}}, ["prepare.augment.shift"]),
        ({"augment": {"elastic_sigma": -1}}, ["prepare.augment.elastic_sigma"]),
        ({"augment": {"flip": "yes"}}, ["prepare.augment.flip"]),
        ({"augment": {"copies": 2.5}}, ["prepare.augment.copies"]),
        ({"augment": {"rotate": True}}, ["prepare.augment.rotate"]),
        ({"augment": {"rotation": 5}}, ["prepare.augment.rotation"]),
        ({"workerz": 2}, ["prepare.workerz"]),
    ],
)
def test_bad_params_raise_params_error_naming_the_key(section, keys):
    with pytest.raises(ParamsError) as err:
        shards.check_params(section)
    message = str(err.value)
    assert "\n" not in message
    for key in keys:
        assert key in message


def test_defaults():
    p = shards.check_params(None)
    assert p == {"val_size": 5000, "max_train": 0, "shard_size": 10000, "workers": 0,
                 "augment": {"copies": 0, "rotate": 0.0, "shift": 0.0, "scale": 0.0, "shear": 0.0,
                             "elastic_alpha": 0.0, "elastic_sigma": 0.0, "flip": False, "resolution": 0, "blur": 0.0,
                             "occlude": 0.0, "contrast": 0.0, "noise": 0.0, "photo_p": 0.0}}  # presets switch augmentation on


def test_val_size_must_leave_training_images(tmp_path, raw):
    with pytest.raises(ParamsError, match="prepare.val_size"):
        run_prepare(tmp_path, val_size=N_TRAIN)


def test_missing_raw_file_names_the_file_and_the_fetch_stage(tmp_path, raw):
    (tmp_path / "raw" / TEST_LABELS).unlink()
    with pytest.raises(InputError, match=f"{TEST_LABELS}.*the fetch stage"):
        run_prepare(tmp_path)


# --- the stage script --------------------------------------------------------------------------


def stage_repo(tmp_path: Path, train_section: dict, prepare_section: dict | None = None) -> Path:
    repo = tmp_path
    (repo / "data").mkdir(exist_ok=True)
    if not (repo / "data" / "raw").exists():
        make_raw(repo / "data" / "raw")
    doc = {"seed": 3, "prepare": prepare_section or dict(SMALL, workers=2), "train": train_section}
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return repo


def run_stage_script(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=repo,
                          capture_output=True, text=True, timeout=300)


def test_stage_reads_only_its_own_section(tmp_path):
    outputs = []
    for train in ({"epochs": 1, "batch_size": 32}, {"epochs": 7, "optimizer": {"name": "adam"}, "junk": [1, 2]}):
        repo = stage_repo(tmp_path, train)
        result = run_stage_script(repo)
        assert result.returncode == 0, result.stderr
        outputs.append(files_bytes(repo / "data" / "shards"))
        assert (repo / "metrics" / "plots" / "augment_preview.png").exists()
    assert outputs[0] == outputs[1]
    assert "manifest.json" in outputs[0]


def test_stage_bad_params_exit_2_with_one_line(tmp_path):
    repo = stage_repo(tmp_path, {}, {"augment": {"elastic_alpha": 4.0, "elastic_sigma": 0.0}})
    result = run_stage_script(repo)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "prepare.augment.elastic_sigma" in lines[0]
    assert not (repo / "data" / "shards" / "manifest.json").exists()


def test_stage_missing_raw_exits_1(tmp_path):
    repo = tmp_path
    (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "prepare": SMALL}))
    result = run_stage_script(repo)
    assert result.returncode == 1
    assert TRAIN_IMAGES in result.stderr and "the fetch stage" in result.stderr


def test_kill_9_mid_run_leaves_the_old_set_and_the_next_run_clears_the_temp_dir(tmp_path):
    repo = stage_repo(tmp_path, {})  # a first, complete run: the set a killed run must leave alone
    assert run_stage_script(repo).returncode == 0
    out = repo / "data" / "shards"
    before = files_bytes(out)
    section = {"val_size": 100, "shard_size": 100, "workers": 2,
               "augment": {"copies": 60, "elastic_alpha": 8, "elastic_sigma": 3}}  # 549 shards
    (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "prepare": section}))
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not any((d / "train-00010.npz").exists() for d in temp_dirs(out))
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.01)
    workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.kill()
    proc.wait()
    time.sleep(1.0)  # workers notice the dead parent within 0.2 s and exit
    for pid in workers:  # each worker is gone, or a zombie waiting to be reaped: not running
        try:
            assert "zombie" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            pass
    if len(list(out.glob("train-*.npz"))) != 549:  # unless the run won the race, the old set is intact
        assert files_bytes(out) == before
        assert temp_dirs(out)  # and the killed run's half-built set is still beside it
    # a later run removes the temporary directory the killed one left, and completes
    result = run_stage_script(repo)
    assert result.returncode == 0, result.stderr
    assert temp_dirs(out) == []
    assert not list(out.glob(".*.tmp"))
    assert len(list(out.glob("train-*.npz"))) == 549
