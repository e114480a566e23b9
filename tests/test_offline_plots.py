"""`dvc plots show` and `dvc plots diff` render offline: the HTML template of .dvc/config loads the
vendored Vega scripts (vendor/vega/), every Vega plot draws marks in headless Chromium, and no request
leaves the machine. A small git + DVC repository holds this repository's plot definitions and a few
rows of data, so no pipeline runs."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import chromium

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "vendor" / "vega"
IMAGES = ["metrics/plots/curves.png", "metrics/plots/reliability.png"]


def test_vendored_scripts_match_their_recorded_hashes_and_the_template():
    table = dict(re.findall(r"^\| `([^`]+\.min\.js)` \|.*\| `([0-9a-f]{64})` \|$", (VENDOR / "README.md").read_text(), re.M))
    assert len(table) == 3
    template = (VENDOR / "dvc-plots.html").read_text()
    for name, digest in table.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
        assert f'<script src="../vendor/vega/{name}"></script>' in template
    assert "{plot_divs}" in template and "{scripts}" not in template, "no placeholder for DVC's CDN script tags"
    assert not re.search(r"https?://", template.split("-->")[-1])
    for package in ("vega", "vega-lite", "vega-embed"):
        assert "BSD" in (VENDOR / f"LICENSE.{package}").read_text() or "Redistribution" in (VENDOR / f"LICENSE.{package}").read_text()


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


def write_data(repo: Path, shift: float) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [f"{e}\t{2 / e + shift:.4f}\t{0.9 - 0.1 / e:.4f}\t{2.2 / e + shift:.4f}\t{0.88 - 0.1 / e:.4f}\t0.001" for e in (1, 2, 3)]
    log = "epoch\ttrain_loss\ttrain_acc\tval_loss\tval_acc\tlr\n" + "\n".join(rows) + "\n"
    for path in ("metrics/train_log.tsv", "metrics/live/train_log.tsv"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(log)
    (repo / "metrics/predictions.csv").write_text("actual,predicted\n" + "".join(f"{i % 10},{(i + (i % 7 == 0)) % 10}\n" for i in range(200)))
    for name in IMAGES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        figure, axes = plt.subplots(figsize=(9, 6), dpi=100)  # 900 px wide: two copies do not fit side by side unshrunk
        axes.plot([0, 1], [shift, 1])
        figure.savefig(repo / name)
        plt.close(figure)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repository with this repository's plots, template and vendored scripts; one commit, then new data."""
    repo = tmp_path_factory.mktemp("plots")
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(VENDOR, repo / "vendor" / "vega")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots + IMAGES}, sort_keys=False))
    (repo / ".gitignore").write_text("dvc_plots/\n")
    write_data(repo, 0.0)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "plots")
    write_data(repo, 0.5)
    return repo


def render(page_path: Path, wait: bool = True) -> dict:
    """Open the page in headless Chromium; what drew, what did not, and every request that left the machine."""
    outside = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def guard(route):
            if route.request.url.startswith(("file://", "data:")):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", guard)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(page_path.resolve().as_uri())
        ids = re.findall(r"vegaEmbed\('#([^']+)'", page_path.read_text())  # vegaEmbed replaces the div's script
        page.wait_for_function("""(ids) => ids.every(id => {
                const svg = document.getElementById(id).querySelector('svg.marks');
                return svg && svg.querySelectorAll('g[class*="mark-"] path, g[class*="mark-"] line').length > 0;
            })""", arg=ids if wait else [], timeout=30_000)
        marks = page.evaluate("""(ids) => Object.fromEntries(ids.map(id => [id,
            document.getElementById(id).querySelectorAll('svg.marks g[class*="mark-"] path').length]))""", ids)
        images = page.evaluate("""() => [...document.images].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth,
            right: i.getBoundingClientRect().right}))""")
        missing = page.locator(".missing").count()
    return {"ids": ids, "marks": marks, "images": images, "outside": outside, "errors": errors, "missing": missing}


def test_plots_show_renders_every_vega_plot_offline(repo):
    dvc(repo, "plots", "show")
    drawn = render(repo / "dvc_plots" / "index.html")
    assert len(drawn["ids"]) == 4, drawn["ids"]  # loss, accuracy, live, confusion
    assert all(count > 0 for count in drawn["marks"].values()), drawn["marks"]
    assert drawn["outside"] == [] and drawn["errors"] == [] and drawn["missing"] == 0, drawn
    assert len(drawn["images"]) == len(IMAGES) and all(i["width"] > 0 for i in drawn["images"]), drawn["images"]


def test_plots_diff_renders_both_revisions_side_by_side_offline(repo):
    dvc(repo, "plots", "diff", "HEAD")
    drawn = render(repo / "dvc_plots" / "index.html")
    assert len(drawn["ids"]) == 4 and all(count > 0 for count in drawn["marks"].values()), drawn
    assert drawn["outside"] == [] and drawn["errors"] == [] and drawn["missing"] == 0, drawn
    assert len(drawn["images"]) == 2 * len(IMAGES) and all(i["width"] > 0 for i in drawn["images"]), drawn["images"]
    assert all(i["right"] <= 1280 for i in drawn["images"]), "every revision's copy is on screen, none scrolled away"


def test_a_moved_page_says_why_it_draws_nothing(repo, tmp_path):
    dvc(repo, "plots", "show", "-o", str(tmp_path / "elsewhere" / "plots"))
    drawn = render(tmp_path / "elsewhere" / "plots" / "index.html", wait=False)
    assert drawn["outside"] == [] and drawn["missing"] == 4, drawn
