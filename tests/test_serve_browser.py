"""``nnlib serve``'s page in a real browser: draw the ten digits with the mouse, upload a picture, save a drawing.

Headless Chromium (Debian's, through Playwright: tests/browser.py) against a real ``nnlib serve``
process. Each digit is a stroke script written the way a person draws it, in a unit box, drawn with
the page's marker-like pen at a different place and size on the pad. The network is the session's
small trained CNN (tests/conftest.py); at least 9 of the 10 must be read right.

Set ``SERVE_SCREENSHOT=path.png`` to keep the screenshot (docs/figures/serve.png was made so).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")

ROOT = Path(__file__).resolve().parents[1]

# Strokes per digit in a unit box (x right, y down), pen down at the first point of each stroke.
STROKES = {
    0: [[(0.5, 0.04), (0.25, 0.15), (0.12, 0.45), (0.2, 0.8), (0.5, 0.96), (0.8, 0.8), (0.88, 0.45), (0.75, 0.15),
         (0.5, 0.04), (0.42, 0.08)]],
    1: [[(0.38, 0.22), (0.56, 0.04), (0.54, 0.5), (0.52, 0.96)]],
    2: [[(0.15, 0.28), (0.3, 0.08), (0.6, 0.04), (0.82, 0.2), (0.75, 0.45), (0.45, 0.7), (0.12, 0.94), (0.5, 0.92),
         (0.9, 0.93)]],
    3: [[(0.15, 0.15), (0.45, 0.03), (0.78, 0.12), (0.78, 0.33), (0.45, 0.48)],
        [(0.45, 0.48), (0.8, 0.6), (0.85, 0.82), (0.55, 0.97), (0.15, 0.88)]],
    4: [[(0.3, 0.03), (0.15, 0.58), (0.88, 0.58)], [(0.7, 0.2), (0.68, 0.97)]],
    5: [[(0.32, 0.06), (0.25, 0.45), (0.55, 0.38), (0.82, 0.55), (0.8, 0.82), (0.5, 0.96), (0.15, 0.86)],
        [(0.32, 0.06), (0.85, 0.05)]],
    6: [[(0.72, 0.04), (0.4, 0.28), (0.2, 0.6), (0.28, 0.9), (0.55, 0.97), (0.8, 0.8), (0.72, 0.55), (0.45, 0.5),
         (0.22, 0.68)]],
    7: [[(0.1, 0.08), (0.88, 0.07), (0.6, 0.5), (0.38, 0.97)]],
    8: [[(0.72, 0.15), (0.5, 0.03), (0.25, 0.16), (0.32, 0.38), (0.5, 0.48), (0.75, 0.64), (0.72, 0.9), (0.5, 0.98),
         (0.25, 0.88), (0.28, 0.64), (0.5, 0.48), (0.7, 0.34), (0.72, 0.15)]],
    9: [[(0.75, 0.2), (0.5, 0.05), (0.25, 0.18), (0.28, 0.42), (0.5, 0.5), (0.75, 0.35), (0.76, 0.18), (0.74, 0.6),
         (0.7, 0.97)]],
}
# Where each digit goes on the 280 px pad: (left, top, height in px); the width is 0.7 of the height.
PLACES = {0: (30, 30, 200), 1: (150, 20, 140), 2: (20, 120, 150), 3: (110, 40, 220), 4: (40, 60, 170),
          5: (140, 130, 130), 6: (60, 10, 250), 7: (10, 10, 120), 8: (90, 70, 190), 9: (120, 25, 160)}


def smooth(points, per_segment: int = 6):
    """A Catmull-Rom curve through the points: the hand moves along curves, not corners."""
    p = np.array([points[0], *points, points[-1]], dtype=float)
    out = []
    for i in range(1, len(p) - 2):
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * (2 * p[i] + (-p[i - 1] + p[i + 1]) * t + (2 * p[i - 1] - 5 * p[i] + 4 * p[i + 1] - p[i + 2]) * t2
                              + (-p[i - 1] + 3 * p[i] - 3 * p[i + 1] + p[i + 2]) * t3))
    out.append(p[-2])
    return out


def draw(page, box, digit):
    left, top, height = PLACES[digit]
    width = 0.7 * height
    scale = box["width"] / 280
    for stroke in STROKES[digit]:
        path = [(box["x"] + (left + x * width) * scale, box["y"] + (top + y * height) * scale) for x, y in smooth(stroke)]
        page.mouse.move(*path[0])
        page.mouse.down()
        for x, y in path[1:]:
            page.mouse.move(x, y, steps=2)
        page.mouse.up()


def wait_shown(page):
    page.wait_for_selector("body[data-state=shown]", timeout=20_000)
    return int(page.inner_text("#digit"))


def rendered(page) -> dict:
    """What the page shows besides the digit: the bars' drawn widths (% of their track, once their
    transition is over) and the lit pixels of the 28x28 view."""
    page.wait_for_timeout(250)
    return page.evaluate("""() => {
        const bars = [...document.querySelectorAll('#bars .bar')].map(
            (b) => 100 * b.getBoundingClientRect().width / b.parentElement.getBoundingClientRect().width);
        const c = document.getElementById('seen').getContext('2d').getImageData(0, 0, 196, 196).data;
        let lit = 0;
        for (let i = 0; i < c.length; i += 4) if (c[i] > 128) lit++;
        return {bars, lit, maps: document.querySelectorAll('#maps canvas').length};
    }""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_model_path, tmp_path_factory):
    """A real ``nnlib serve`` on loopback, saving drawings into a temporary folder."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "nnlib", "serve", "--model", str(trained_model_path), "--port", str(port),
                                "--drawn", str(folder / "drawn")], cwd=folder, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"nnlib serve did not start: {process.communicate()[1]}")
            time.sleep(0.2)
    yield url, folder / "drawn"
    process.terminate()
    process.communicate(timeout=30)


def test_draw_upload_and_save_in_a_browser(server, mnist, tmp_path):
    url, drawn_dir = server
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url)
        page.wait_for_selector("#card dd")
        assert "6,042" in page.inner_text("#card")
        box = page.locator("#pad").bounding_box()

        read = {}
        for digit in range(10):
            page.click("#clear")
            draw(page, box, digit)
            read[digit] = wait_shown(page)
            shown = rendered(page)
            assert len(shown["bars"]) == 10 and shown["bars"][read[digit]] > 10 and abs(sum(shown["bars"]) - 100) < 2
            assert shown["lit"] > 20 * 36 and shown["maps"] == 8  # the digit's pixels (6x6 each) and the feature maps
        right = [d for d in range(10) if read[d] == d]
        assert len(right) >= 9, f"read {read}"

        page.click("#clear")  # live: a slow stroke is read while the pen is still down, not only after
        before = int(page.evaluate("document.body.dataset.predictions"))
        page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.2 * box["height"])
        page.mouse.down()
        for step in range(1, 21):  # 2 s of drawing a 1, downwards
            page.mouse.move(box["x"] + 0.32 * box["width"], box["y"] + (0.2 + 0.03 * step) * box["height"], steps=2)
            page.wait_for_timeout(100)
        during = int(page.evaluate("document.body.dataset.predictions")) - before
        page.mouse.up()
        assert during >= 3, f"{during} predictions while drawing for 2 s"
        wait_shown(page)

        page.click("#clear")  # upload: a scanned MNIST test digit, black on white
        picture = tmp_path / "scan.png"
        index = int(np.flatnonzero(mnist["test_y"] == 3)[0])
        Image.fromarray(255 - mnist["test_x"][index]).resize((140, 140), Image.Resampling.BICUBIC).save(picture)
        page.set_input_files("#file", str(picture))
        assert wait_shown(page) == 3
        page.wait_for_function("document.getElementById('status').textContent.includes('scan.png')")

        page.click("#clear")
        draw(page, box, 4)
        wait_shown(page)
        page.click("#label-buttons button[data-label='4']")
        page.wait_for_selector("body[data-saved]")
        saved = page.evaluate("document.body.dataset.saved")
        rows = list(csv.DictReader((drawn_dir / "digits" / "labels.csv").open()))
        assert [(r["file"], r["label"]) for r in rows] == [(saved, "4")]
        with Image.open(drawn_dir / "digits" / saved) as image:
            assert image.format == "PNG" and image.size == (280, 280)
        assert "saved as a 4" in page.inner_text("#status")

        page.click("#clear")  # the screenshot: a digit drawn and its prediction
        draw(page, box, 2)
        wait_shown(page)
        page.wait_for_timeout(400)  # the bars' transition
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("SERVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["SERVE_SCREENSHOT"])
        assert not errors, errors
        print(json.dumps({"read": read}))
