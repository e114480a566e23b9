"""The wheel works on its own: built from the sources, installed into a fresh virtual environment outside
the repository, its ``nnlib`` command reads params, describes a model and classifies an image.

The environment reuses this interpreter's packages (``--system-site-packages``: numpy, PyYAML, Pillow...,
no network), so the test proves, through ``nnlib.__file__``, that the wheel's copy is the one imported and
not this checkout (nor an editable install of it). About 20 s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nnlib.model import Sequential
from nnlib.modelfile import save_model

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "nnlib"]  # what the build reads
PACKAGE_DATA = ["nnlib/mnist/config/presets/*.yaml", "nnlib/mnist/static/*"]  # pyproject.toml's package-data

pytestmark = pytest.mark.slow


def run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(out: Path) -> Path:
    """Build nnlib's wheel from a copy of the sources (the checkout gets no build/ or egg-info); return it."""
    src = out / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", out / "dist", src], out)
    (wheel,) = (out / "dist").glob("nnlib-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> dict:
    """A fresh environment at ``venv`` with the wheel installed; the environment variables to run it with."""
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], venv.parent)
    python = venv / "bin" / "python"
    # This interpreter's pip (visible through the system site-packages) installs into the new environment.
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--force-reinstall", wheel], venv.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, venv, env, work): the wheel, installed in a venv; an empty working folder outside the repo."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert ROOT not in tmp.parents
    wheel = build_wheel(tmp)
    venv = tmp / "venv"
    env = install(wheel, venv)
    work = tmp / "work"
    work.mkdir()
    return wheel, venv, env, work


def test_the_wheel_holds_the_package_data(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for pattern in PACKAGE_DATA for path in ROOT.glob(pattern)}
    assert any(name.endswith(".yaml") for name in expected)
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(name.startswith(("tests/", "bench/", "stages/")) for name in names)


def test_the_installed_nnlib_is_the_wheels_copy(installed):
    _, venv, env, work = installed
    shown = run([venv / "bin" / "python", "-c", "import nnlib; print(nnlib.__file__)"], work, env).stdout.strip()
    assert Path(shown).is_relative_to(venv) and "site-packages" in shown, shown


def test_nnlib_params_info_and_predict_run_from_the_installed_wheel(installed):
    _, venv, env, work = installed
    (work / "params.yaml").write_text("seed: 0\npreset: mlp\n")
    model = Sequential.from_specs([{"type": "flatten"}, {"type": "dense", "out": 10}], (1, 28, 28),
                                  np.random.default_rng(0))
    save_model(work / "model.npz", model, {"seed": 0})
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    Image.fromarray(digit).save(work / "digit.png")
    nnlib = venv / "bin" / "nnlib"

    params = yaml.safe_load(run([nnlib, "params"], work, env).stdout)
    assert params["preset"] == "mlp"
    assert params["train"]["model"][1] == {"type": "dense", "out": 800}  # from the preset file in the wheel

    info = json.loads(run([nnlib, "info", "model.npz", "--json"], work, env).stdout)
    assert "dense" in json.dumps(info)

    (line,) = run([nnlib, "predict", "--model", "model.npz", "digit.png", "--json"], work, env).stdout.splitlines()
    prediction = json.loads(line)
    assert prediction["digit"] in range(10) and 0 < prediction["probability"] <= 1
