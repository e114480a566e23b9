"""The README stays short, its library example runs, and no relative link in it or in docs/ is broken."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIMIT = 15_000  # characters: a README read in minutes; reference material lives in docs/
EXAMPLE_MARK = "<!-- example: library -->"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (not "_"), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())  # an underscore stays, as GitHub keeps it
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def library_example() -> str:
    text = README.read_text()
    assert text.count(EXAMPLE_MARK) == 1, f"README.md needs exactly one {EXAMPLE_MARK} before the library example"
    match = re.search(re.escape(EXAMPLE_MARK) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"{EXAMPLE_MARK} must be followed by a ```python block"
    return match.group(1)


def test_readme_is_short():
    size = len(README.read_bytes())  # bytes: a "x" or a dash counts as the 2-3 bytes UTF-8 spends on it
    assert size <= LIMIT, f"README.md has {size} bytes, more than {LIMIT}: move reference material to docs/"


def test_the_library_example_trains(tmp_path):
    """The example is run as a user would paste it: a fresh interpreter, outside the repository."""
    code = library_example()
    assert "nnlib.mnist" not in code and "stages" not in code, "the library example must use nnlib alone"
    assert "assert " in code, "the example must check its own result (e.g. that the loss falls)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "accuracy" in run.stdout


def test_a_failing_example_would_fail_the_test(tmp_path):
    """The example's own assert is what the test relies on: breaking the training must break the run."""
    broken = library_example().replace("optimizer.step()", "pass")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", broken], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "AssertionError" in run.stderr


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)} links to {broken}"
