"""Every command line of README.md's runnable blocks works on a fresh clone, so that none rots.

A ```bash block is runnable when the line before it is ``<!-- run -->``. The install commands and
`nnlib serve` (a server that never exits) are not marked. The slow test builds one tiny repository
with test_pipeline.py's fixture (a copy of the pipeline, tiny params, one `dvc repro`: the Quickstart),
then runs every marked line in README order through bash, with `dvc` and `nnlib` on PATH as this
interpreter's `python -m dvc` and `python -m nnlib`, and wants exit code 0 from each.

Files a user must supply are made here from MNIST test images: `my_digit.png` (white ink on black,
112x112) and the folder `digits/` (dark ink on white paper, as a user's scans would be).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnlib.mnist.data.stream import read_idx
from test_pipeline import SHARED_MNIST, repo, repo_env, run, write_params  # noqa: F401 - repo: the tiny repository

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = "<!-- run -->"
NOT_RUNNABLE = ("pip install", "nnlib serve")  # installs and a server: never marked


def runnable_blocks(text: str | None = None) -> list[list[str]]:
    """The command lines of each marked block, in order; fails when no block is marked (no vacuous pass)."""
    text = README.read_text() if text is None else text
    blocks = re.findall(re.escape(MARK) + r"\n```bash\n(.*?)```", text, re.S)
    assert blocks, f"README.md marks no ```bash block with {MARK}: nothing would be checked"
    assert len(blocks) == text.count(MARK), f"every {MARK} must be followed at once by a ```bash block"
    commands = [[line for line in block.splitlines() if line.strip() and not line.startswith("#")] for block in blocks]
    assert all(commands), "a marked block holds no command"
    return commands


def runnable_commands(text: str | None = None) -> list[str]:
    return [command for block in runnable_blocks(text) for command in block]


def test_runnable_blocks_are_marked_and_exclude_installs_and_the_server():
    commands = runnable_commands()
    assert not [c for c in commands if any(word in c for word in NOT_RUNNABLE)], commands
    assert any(c.startswith("dvc repro") for c in commands) and any(c.startswith("nnlib predict") for c in commands)


def test_no_mark_fails_the_extraction():
    with pytest.raises(AssertionError, match="marks no"):
        runnable_commands(README.read_text().replace(MARK, ""))


def user_files(repo: Path) -> None:
    """What the README's commands expect a user to have: my_digit.png and a folder of digit pictures."""
    images = read_idx(repo / "data/raw/t10k-images-idx3-ubyte")[:3]  # fetched by the fixture's dvc repro
    Image.fromarray(np.kron(images[0], np.ones((4, 4), np.uint8))).save(repo / "my_digit.png")  # 112x112
    (repo / "digits").mkdir(exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(255 - image).save(repo / "digits" / f"{i}.png")  # dark ink on white paper


@pytest.mark.slow
def test_every_runnable_readme_command_exits_0(repo, tmp_path):  # noqa: F811 - the imported fixture
    blocks = runnable_blocks()
    user_files(repo)
    # the tiny params' network is a ReLU MLP, on which a preset's lr may diverge (nielsen's 3.0, meant for its
    # sigmoid net): a value of yours in params.yaml wins over the preset's, so one modest lr serves every preset
    write_params(repo, {"train": {"optimizer": {"lr": 0.01}}})
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny lr"], repo)
    shims = tmp_path / "bin"
    shims.mkdir()
    for name in ("dvc", "nnlib"):
        (shims / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {name} "$@"\n')
        (shims / name).chmod(0o755)
    env = {**repo_env(repo), "DVC_NO_ANALYTICS": "1", "PATH": f"{shims}:{repo_env(repo)['PATH']}"}
    if SHARED_MNIST.is_dir():
        env["MNIST_MIRROR"] = str(SHARED_MNIST)
    failures, timings = [], []
    for block in blocks:
        # each block is a recipe for a fresh clone: params.yaml back to the committed one, as `dvc exp run -S`
        # leaves its values there (after Continue training, train.init_from would carry into the next block)
        subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
        for command in block:
            start = time.monotonic()
            result = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
            timings.append(f"{time.monotonic() - start:5.1f} s  {command}")
            if result.returncode != 0:
                failures.append(f"{command!r} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    print("\n".join(timings))
    assert not failures, "README commands that fail on a fresh clone:\n\n" + "\n\n".join(failures)


def test_a_mark_without_a_bash_block_fails_the_extraction():
    text = f"{MARK}\n```bash\ndvc repro\n```\n\n{MARK}\n```python\nprint(1)\n```\n"
    with pytest.raises(AssertionError, match="followed at once"):
        runnable_blocks(text)
    assert runnable_commands(text.split("\n\n")[0]) == ["dvc repro"]
