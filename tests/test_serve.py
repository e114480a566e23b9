"""``nnlib serve``: the API through Starlette's TestClient, every bad input, and the command itself.

The predictions must be exactly ``nnlib predict``'s on the same files; every bad request gets its
status and a one-line JSON error, and the server keeps serving after each.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (the dev extra)")
from starlette.requests import Request  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from nnlib.mnist import drawn  # noqa: E402
from nnlib.mnist import serve as serve_module  # noqa: E402
from nnlib.mnist.serve import MAX_BODY, build_app  # noqa: E402
from nnlib.modelfile import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def png_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def drawn_seven(size: int = 280) -> bytes:
    """A seven drawn in black on white, like the page's canvas."""
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    s = size / 280
    pen.line([(80 * s, 70 * s), (200 * s, 70 * s), (130 * s, 220 * s)], fill="black", width=int(18 * s), joint="curve")
    return png_bytes(image)


@pytest.fixture(scope="module")
def app_parts(trained_model_path, tmp_path_factory):
    model, meta = load_model(trained_model_path)
    return model, meta, trained_model_path, tmp_path_factory.mktemp("drawn")


@pytest.fixture(scope="module")
def client(app_parts):
    model, meta, path, drawn_dir = app_parts
    with TestClient(build_app(model, meta, path, drawn_dir=drawn_dir), raise_server_exceptions=False) as c:
        yield c


def keeps_serving(client):
    """The server still answers a good request after a bad one."""
    assert client.get("/healthz").json() == {"ok": True}
    answer = client.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png"})
    assert answer.status_code == 200 and answer.json()["digit"] in range(10)


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in response.text
    assert not any(k.lower().startswith("access-control-") for k in response.headers)
    return body["error"]


# --- the same answers as nnlib predict -----------------------------------------------------------------

def test_predict_matches_nnlib_predict_on_200_test_digits(client, mnist, trained_model_path, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(1)
    chosen = rng.choice(len(mnist["test_x"]), 200, replace=False)
    for n, i in enumerate(chosen):  # black on white, enlarged to various sizes, as a scan or a canvas would be
        size = int(rng.integers(28, 200))
        Image.fromarray(255 - mnist["test_x"][i]).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{n:03d}.png")
    result = subprocess.run([sys.executable, "-m", "nnlib", "predict", str(folder), "--json", "--model", str(trained_model_path)],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(expected) == 200
    right = 0
    for n, record in enumerate(expected):
        data = (folder / f"{n:03d}.png").read_bytes()
        answer = client.post("/api/predict", content=data, headers={"content-type": "image/png"}).json()
        assert answer["digit"] == record["digit"], record["file"]
        # float32 at one image per request (one BLAS thread) against predict's batches: the same to a few
        # units in the 6th digit (on an AVX2 machine up to 6e-6 relative: BLAS kernels round by batch size)
        np.testing.assert_allclose(answer["probabilities"], record["probabilities"], rtol=2e-5, atol=1e-6)
        right += answer["digit"] == mnist["test_y"][chosen[n]]
    assert right >= 190


def test_predict_answers_the_input_and_the_first_layer_maps(client):
    answer = client.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png"}).json()
    assert answer["digit"] == 7
    assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-9
    seen = np.array(answer["input"])
    assert seen.shape == (28, 28) and seen.min() == 0 and seen.max() == 255
    rows, cols = np.nonzero(seen)
    assert max(np.ptp(rows) + 1, np.ptp(cols) + 1) in (20, 21)  # scaled to the 20x20 box (Lanczos may spill a pixel)
    maps = answer["maps"]
    assert maps["kind"] == "conv" and maps["count"] == 8 and (maps["height"], maps["width"]) == (24, 24)
    assert len(base64.b64decode(maps["data"])) == 8 * 24 * 24


def test_an_off_centre_drawing_is_moved_to_the_centre(client):
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line([(30, 20), (40, 90)], fill=0, width=14)  # a small one in the top-left corner
    answer = client.post("/api/predict", content=png_bytes(image), headers={"content-type": "image/png"}).json()
    seen = np.array(answer["input"], dtype=float)
    rows, cols = np.indices(seen.shape)
    assert abs((seen * rows).sum() / seen.sum() - 14) < 1 and abs((seen * cols).sum() / seen.sum() - 14) < 1


def test_multipart_upload_and_jpeg(client):
    seven = drawn_seven()
    as_body = client.post("/api/predict", content=seven, headers={"content-type": "image/png"}).json()
    uploaded = client.post("/api/predict", files={"file": ("../../etc/passwd.png", seven, "image/png")}).json()
    assert uploaded == as_body
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(seven)).save(jpeg, "JPEG", quality=90)
    answer = client.post("/api/predict", content=jpeg.getvalue(), headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200 and answer.json()["digit"] == 7


def test_model_card_and_health(client, app_parts, tmp_path):
    card = client.get("/api/model").json()
    assert card["seed"] == 0 and card["parameters"] == 6042 and card["layers"][0] == "conv"
    assert card["test_accuracy"] is None and card["file"] == "model.npz" and len(card["sha256"]) == 64
    model, meta, path, drawn_dir = app_parts
    scored = tmp_path / "eval.json"  # the test accuracy shows only when eval.json scored this very file
    scored.write_text(json.dumps({"accuracy": 0.985, "model_sha256": card["sha256"]}))
    with TestClient(build_app(model, meta, path, eval_json=scored, drawn_dir=drawn_dir)) as c:
        assert c.get("/api/model").json()["test_accuracy"] == 0.985
        scored.write_text(json.dumps({"accuracy": 0.5, "model_sha256": "0" * 64}))
        assert c.get("/api/model").json()["test_accuracy"] is None
    assert client.get("/healthz").json() == {"ok": True}


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text and "/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").headers["content-type"].startswith("text/css")
    for path in ("/static/index.html", "/../pyproject.toml", "/index.html", "/app.js/../../serve.py"):
        one_line_error(client.get(path), 404)


def test_the_page_needs_nothing_from_the_network():
    for name in ("index.html", "app.js", "style.css"):
        text = (serve_module.STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_the_static_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["nnlib.mnist"]
    for path in serve_module.STATIC.iterdir():
        assert any(path.match(f"*/{pattern}") for pattern in patterns), path.name
    assert "serve" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


# --- bad input: each case its status and one JSON line, and the server keeps serving ---------------------

def crafted_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its data would never decode)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def animated(kind: str) -> bytes:
    frames = [Image.new("L", (40, 40), v) for v in (0, 255)]
    ImageDraw.Draw(frames[1]).line([(20, 5), (20, 35)], fill=0, width=4)
    out = io.BytesIO()
    frames[0].save(out, kind, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


BAD_PREDICTS = {
    "empty": (b"", "image/png", 400, "empty"),
    "not an image": (b"this is not a picture", "image/png", 400, "not an image"),
    "corrupt": (drawn_seven()[:300], "image/png", 400, "cannot read"),
    "animated gif": (animated("GIF"), "image/gif", 400, "animated"),
    "animated png": (animated("PNG"), "image/png", 400, "animated"),
    "decompression bomb": (crafted_png(30000, 30000), "image/png", 400, "pixels"),
    "bomb just over the limit": (crafted_png(4097, 4096), "image/png", 400, "pixels"),
    "a strip of 4096x4096 pixels": (crafted_png(16_777_216, 1), "image/png", 400, "at most 4096x4096"),
    "blank": (png_bytes(Image.new("L", (100, 100), 255)), "image/png", 400, "blank"),
    "text content type": (drawn_seven(), "text/plain", 400, "content type"),
    "json content type": (b'{"x": 1}', "application/json", 400, "content type"),
    "no content type": (drawn_seven(), "", 400, "content type"),
    "too large": (b"\0" * (MAX_BODY + 1), "image/png", 413, "at most"),
    "tiff": (b"II*\0" + b"\0" * 100, "image/png", 400, "not an image"),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTS))
def test_bad_predict_requests(client, case):
    body, kind, status, words = BAD_PREDICTS[case]
    headers = {"content-type": kind} if kind else {}
    assert words in one_line_error(client.post("/api/predict", content=body, headers=headers), status)
    keeps_serving(client)


def test_a_body_that_stalls_is_cut_off(monkeypatch):
    """A client that sends part of its body and then nothing: 408 after BODY_S, its chunks let go."""
    monkeypatch.setattr(serve_module, "BODY_S", 0.3)
    sent = []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}
        await asyncio.sleep(3600)

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": [(b"content-length", b"1000")]}
    start = time.monotonic()
    with pytest.raises(serve_module.BadRequest, match="did not arrive") as caught:
        asyncio.run(serve_module.read_body(Request(scope, receive)))
    assert caught.value.status == 408 and time.monotonic() - start < 5


def test_a_blank_picture_holds_no_memory_after_its_answer():
    """The ValueError of a blank picture carries no traceback: one would hold preprocess_many's frame,
    and with it every image of the call, in a reference cycle until a full garbage collection
    (130 MB a blank 4096x4096 picture, in the hostile probe)."""
    (err,) = serve_module.preprocess_many([np.ones((64, 64), np.float32)])
    assert isinstance(err, ValueError) and err.__traceback__ is None


def test_a_large_body_without_content_length_is_cut_off(client):
    def chunks():
        for _ in range(3):
            yield b"\0" * (1 << 20)
    one_line_error(client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"}), 413)
    keeps_serving(client)


@pytest.mark.parametrize("files", [{}, "two"], ids=["no file", "two files"])
def test_bad_multipart_forms(client, files):
    if files == "two":
        files = [("a", ("a.png", drawn_seven(), "image/png")), ("b", ("b.png", drawn_seven(), "image/png"))]
        response = client.post("/api/predict", files=files)
    else:
        body = b'--x\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--x--\r\n'
        response = client.post("/api/predict", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    one_line_error(response, 400)
    keeps_serving(client)


def test_unknown_routes_and_methods_are_json_errors(client):
    one_line_error(client.get("/api/nothing"), 404)
    one_line_error(client.get("/api/predict"), 405)
    one_line_error(client.options("/api/predict", headers={"origin": "http://evil.example",
                                                           "access-control-request-method": "POST"}), 405)
    answer = client.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png", "origin": "http://x"})
    assert not any(k.lower().startswith("access-control-") for k in answer.headers)
    keeps_serving(client)


def test_an_internal_error_shows_no_details(client, monkeypatch):
    def broken(images):
        raise RuntimeError("secret detail in /home/user/model.npz")
    monkeypatch.setattr(serve_module.Network, "read", lambda self, images: broken(images))
    response = client.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png"})
    error = one_line_error(response, 500)
    assert "secret" not in response.text and "home" not in error
    monkeypatch.undo()
    keeps_serving(client)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_dead_preprocessing_process_is_replaced(client, capsys):
    """Killed workers (out of memory, say): the pictures they held or had queued are tried once more on new ones."""
    workers = client.app.state.decoders.pids()
    assert len(workers) == serve_module.DECODERS
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    keeps_serving(client)
    assert set(client.app.state.decoders.pids()).isdisjoint(workers)
    assert "preprocessing process stopped" in capsys.readouterr().err


def _die(data: bytes):
    """A job that kills the worker process running it, as a picture that exhausts its memory would."""
    os._exit(9)


def test_a_picture_that_kills_workers_twice_is_a_500_and_the_server_goes_on(capsys):
    decoders = serve_module.Decoders(job=_die)
    try:
        with pytest.raises(serve_module.BadRequest, match="stopped twice") as caught:
            asyncio.run(decoders.preprocess(drawn_seven()))
        assert caught.value.status == 500
        decoders.job = serve_module._preprocess_in_worker
        assert asyncio.run(decoders.preprocess(drawn_seven())).shape == (28, 28)
    finally:
        decoders.close()
    assert capsys.readouterr().err.count("preprocessing process stopped") == 2


def test_a_stuck_worker_does_not_keep_the_server_from_exiting(monkeypatch):
    monkeypatch.setattr(serve_module, "CLOSE_S", 0.5)
    decoders = serve_module.Decoders()
    asyncio.run(decoders.preprocess(drawn_seven()))  # the workers are up
    stuck = decoders.pids()
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    decoders.close()
    assert time.monotonic() - start < 5 and not [pid for pid in stuck if alive(pid)]


# --- saving drawings --------------------------------------------------------------------------------------

def save(client, label, image=None, **kwargs):
    image = base64.b64encode(drawn_seven()).decode() if image is None else image
    return client.post("/api/drawn", json={"label": label, "image": image}, **kwargs)


def test_a_drawing_is_saved_with_its_label(app_parts, tmp_path):
    model, meta, path, _ = app_parts
    with TestClient(build_app(model, meta, path, drawn_dir=tmp_path)) as c:
        seven = drawn_seven()
        first = c.post("/api/drawn", json={"label": 7, "image": "data:image/png;base64," + base64.b64encode(seven).decode()})
        second = save(c, 1)
    assert first.status_code == 201 and second.status_code == 201
    rows = list(csv.DictReader((tmp_path / "digits" / "labels.csv").open()))
    assert [(r["file"], r["label"]) for r in rows] == [(first.json()["file"], "7"), (second.json()["file"], "1")]
    assert (tmp_path / "digits" / first.json()["file"]).read_bytes() == seven  # the raw canvas, as sent
    assert rows[0]["time"].endswith("Z")
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == sorted([r["file"] for r in rows] + ["labels.csv"])
    files, labels = drawn.labelled_files(tmp_path)
    assert labels == [7, 1] and all(f.is_file() for f in files)


BAD_DRAWN = {
    "label 10": ({"label": 10}, 400, "label"),
    "label -1": ({"label": -1}, 400, "label"),
    "label as text": ({"label": "3"}, 400, "label"),
    "label true": ({"label": True}, 400, "label"),
    "label 3.0": ({"label": 3.0}, 400, "label"),
    "label a path": ({"label": "../../etc/passwd"}, 400, "label"),
    "no label": ({}, 400, "label"),
    "image not base64": ({"label": 3, "image": "!!not base64!!"}, 400, "base64"),
    "image not a png": ({"label": 3, "image": base64.b64encode(b"GIF89a" + b"\0" * 50).decode()}, 400, "not an image"),
    "image a jpeg data url": ({"label": 3, "image": "data:image/jpeg;base64,AAAA"}, 400, "data:image/png"),
    "image missing": ({"label": 3, "image": None}, 400, "image"),
    "image animated": ({"label": 3, "image": base64.b64encode(animated("PNG")).decode()}, 400, "animated"),
    "image huge": ({"label": 3, "image": base64.b64encode(crafted_png(3000, 100)).decode()}, 400, "at most"),
    "image corrupt": ({"label": 3, "image": base64.b64encode(drawn_seven()[:200]).decode()}, 400, "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_DRAWN))
def test_bad_drawings_are_refused_and_nothing_is_written(client, app_parts, case):
    fields, status, words = BAD_DRAWN[case]
    record = {"image": base64.b64encode(drawn_seven()).decode(), **fields}
    if record.get("image") is None:
        record.pop("image")
    before = sorted(p for p in app_parts[3].rglob("*"))
    assert words in one_line_error(client.post("/api/drawn", json=record), status)
    assert sorted(p for p in app_parts[3].rglob("*")) == before
    keeps_serving(client)


@pytest.mark.parametrize("body, kind, words", [
    (b'{"label": 3, "image": ', "application/json", "malformed JSON"),
    (b"\xff\xfe not utf-8", "application/json", "malformed JSON"),
    (b"[3]", "application/json", "JSON object"),
    (b"[" * 200_000 + b"]" * 200_000, "application/json", "malformed JSON"),
    (b'{"label": 3}', "text/plain", "content type"),
    (b"x" * (MAX_BODY + 1), "application/json", "at most"),
    (b'{"label": ' + b"1" * 5001 + b"}", "application/json", "malformed JSON"),
], ids=["truncated", "not utf-8", "an array", "nested too deep", "text/plain", "too large", "a 5,001-digit label"])
def test_bad_drawn_bodies(client, body, kind, words):
    status = 413 if len(body) > MAX_BODY else 400
    assert words in one_line_error(client.post("/api/drawn", content=body, headers={"content-type": kind}), status)
    keeps_serving(client)


def test_the_drawings_folder_has_a_cap(app_parts, tmp_path):
    model, meta, path, _ = app_parts
    with TestClient(build_app(model, meta, path, drawn_dir=tmp_path, drawn_cap=2)) as c:
        assert save(c, 1).status_code == save(c, 2).status_code == 201
        assert "holds 2 drawings" in one_line_error(save(c, 3), 507)
        keeps_serving(c)
    assert len(drawn.read_labels(tmp_path)) == 2 and len(list((tmp_path / "digits").glob("*.png"))) == 2


def test_the_cap_counts_pictures_without_a_row_too(tmp_path):
    (tmp_path / "digits").mkdir()
    for i in range(2):  # left by hand, or by a save that died between its two files
        (tmp_path / "digits" / f"stray-{i}.png").write_bytes(drawn_seven())
    with pytest.raises(drawn.FolderFull, match="holds 2 drawings"):
        drawn.save(tmp_path, drawn_seven(), 3, cap=2)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_save_leaves_the_folder_as_it_was(app_parts, tmp_path, monkeypatch, failing):
    """A write that fails (disk full, here os.fsync or os.replace raising) at any point: 500, one line,
    and no new file, no temporary file, labels.csv unchanged; the next save works."""
    model, meta, path, _ = app_parts
    with TestClient(build_app(model, meta, path, drawn_dir=tmp_path), raise_server_exceptions=False) as c:
        assert save(c, 1).status_code == 201
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        calls = []
        real = getattr(os, failing)

        def fail_second(*args, **kwargs):  # fsync: the PNG's write; replace: the labels' rename, after the PNG's
            calls.append(args)
            if len(calls) == 2 or failing == "fsync":
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)
        monkeypatch.setattr(os, failing, fail_second)
        one_line_error(save(c, 2), 500)
        monkeypatch.undo()
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        assert save(c, 3).status_code == 201
    assert [row["label"] for row in drawn.read_labels(tmp_path)] == [1, 3]


def test_a_corrupt_labels_file_is_refused_by_the_reader(tmp_path):
    (tmp_path / "digits").mkdir()
    for text, words in [("file,label,time\n../x.png,3,t\n", "plain file name"), ("file,label,time\na.png,12,t\n", "0-9"),
                        ("a,b\n", "columns")]:
        (tmp_path / "digits" / "labels.csv").write_text(text)
        with pytest.raises(Exception, match=words):
            drawn.read_labels(tmp_path)


# --- the command -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, tmp_path, *extra):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nnlib", "serve", "--model", str(model), "--port", str(port), *extra],
                               cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # a process group of its own, as in a terminal
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert json.load(r) == {"ok": True}
                return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"nnlib serve did not start: {process.communicate()}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_the_command_serves_until_a_signal(trained_model_path, tmp_path, sig, code):
    process, port = start(trained_model_path, tmp_path)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=drawn_seven(),
                                     headers={"content-type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert json.load(r)["digit"] == 7
    workers = children(process.pid)
    assert len(workers) >= 2  # the preprocessing processes
    if sig == signal.SIGINT:  # Ctrl-C in a terminal signals the whole process group, the workers too
        os.killpg(process.pid, sig)
    else:
        process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert f"http://127.0.0.1:{port}/" in err and "Traceback" not in err and "warning" not in err
    deadline = time.time() + 10  # multiprocessing's resource tracker leaves when it sees the server gone
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)]


def test_ctrl_c_while_the_workers_start_is_clean(trained_model_path, tmp_path):
    """Ctrl-C (to the process group, as a terminal sends it) as soon as the server answers, while its
    preprocessing processes are still importing: no traceback from them, exit 130."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nnlib", "serve", "--model", str(trained_model_path), "--port", str(port)],
                               cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 60
    while True:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    assert children(process.pid)  # the processes were started before the server listened
    os.killpg(process.pid, signal.SIGINT)
    err = process.communicate(timeout=30)[1]
    assert process.returncode == 130 and "Traceback" not in err, err


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_a_bad_model_fails_before_serving(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    for model in ("missing.npz", "bad.npz"):
        result = subprocess.run([sys.executable, "-m", "nnlib", "serve", "--model", model, "--port", str(free_port())],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and model in result.stderr, result.stderr


def test_a_port_in_use_is_one_line_and_exit_2(trained_model_path, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "nnlib", "serve", "--model", str(trained_model_path), "--port", str(port)],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in result.stderr, result.stderr


def test_without_the_extra_it_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None\n"
            "from nnlib.mnist.cli import main; main(['serve', '--model', 'missing.npz'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and ".[serve]" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_open_hosts_get_a_warning():
    assert serve_module.exposure_warning("127.0.0.1") is None and serve_module.exposure_warning("localhost") is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        assert "open to" in serve_module.exposure_warning(host)


def test_the_command_warns_once_when_it_listens_on_every_address(trained_model_path, tmp_path):
    process, port = start(trained_model_path, tmp_path, "--host", "0.0.0.0")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "open to every machine" in warnings[0], err
    assert f"http://0.0.0.0:{port}/" in err and process.returncode == 143


def test_bad_flags_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nnlib", "serve", "--port", "99999"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "port" in result.stderr


def test_the_evaluate_stage_scores_the_drawings(app_parts, tmp_path):
    """stages/evaluate.py's drawn_accuracy: the model on the saved drawings through predict's preprocessing."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    model = app_parts[0]
    assert stage.drawn_scores(model, tmp_path) == {}  # no drawings: no keys, eval.json as before
    for label in (7, 7, 1):
        drawn.save(tmp_path, drawn_seven(), label)
    (tmp_path / "digits" / drawn.read_labels(tmp_path)[0]["file"]).unlink()  # a listed file that is gone is skipped
    assert stage.drawn_scores(model, tmp_path) == {"drawn_accuracy": 0.5, "drawn_images": 2}


def test_an_mlp_shows_its_most_active_first_layer_units(tmp_path):
    from nnlib.model import Sequential  # noqa: PLC0415
    from nnlib.modelfile import save_model  # noqa: PLC0415

    specs = [{"type": "flatten"}, {"type": "dense", "out": 40}, {"type": "relu"}, {"type": "dense", "out": 10}]
    path = tmp_path / "mlp.npz"
    save_model(path, Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(0)).eval(), {"seed": 3})
    model, meta = load_model(path)
    with TestClient(build_app(model, meta, path, drawn_dir=tmp_path)) as c:
        maps = c.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png"}).json()["maps"]
        assert c.get("/api/model").json()["seed"] == 3
    assert maps["kind"] == "dense" and maps["count"] == 16 and (maps["height"], maps["width"]) == (28, 28)
    assert len(base64.b64decode(maps["data"])) == 16 * 28 * 28
    assert len(set(maps["units"])) == 16 and all(0 <= u < 40 for u in maps["units"])
    assert maps["activations"] == sorted(maps["activations"], reverse=True) and min(maps["activations"]) >= 0


def test_the_model_card_names_the_preset_a_model_was_trained_with(tmp_path):
    """Model files record the effective train params, not the preset's name: the card finds the preset."""
    import yaml  # noqa: PLC0415

    from nnlib.mnist.config import presets  # noqa: PLC0415
    from nnlib.mnist.config.schema import effective_params  # noqa: PLC0415

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in presets.names():
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "preset": name}))
        assert serve_module.guess_preset(effective_params(tmp_path / "params.yaml")["train"]) == name
    assert serve_module.guess_preset({"model": [{"type": "flatten"}, {"type": "dense", "out": 10}]}) is None
    assert serve_module.guess_preset(None) is None
