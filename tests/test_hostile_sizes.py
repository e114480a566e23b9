"""Hostile inputs, sizes: a small file that declares something huge ends in one line, within seconds,
without the memory it declares (each run's peak RSS is measured in a fresh child process).

See docs/hostile-inputs.md for the table of cases.
"""
from __future__ import annotations

import gzip
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest

from hostile import assert_one_line, measured, nnlib, write_params
from model_faults import make_bad_committee
from nnlib.committee import Committee
from nnlib.model import Sequential
from nnlib.modelfile import META_KEY, load_model, save_committee, save_model

EXTRA_MIB = 200  # most memory a refused input may cost above a run on a valid small input
SECONDS = 20  # generous on a loaded 2-core machine; an unbounded read takes minutes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    specs = [{"type": "flatten"}, {"type": "dense", "out": 10}]
    save_model(path, Sequential.from_specs(specs, (1, 28, 28), np.random.default_rng(0)), {"seed": 0})
    return path


@pytest.fixture(scope="module")
def baseline(model, tmp_path_factory):
    """Peak RSS (MiB) of predicting one small valid array: what any run costs."""
    folder = tmp_path_factory.mktemp("baseline")
    np.save(folder / "one.npy", np.zeros((28, 28), np.uint8))
    result, rss, _ = measured(["predict", folder / "one.npy", "--model", model], folder)
    assert result.returncode == 0, result.stderr
    return rss


def assert_cheap_refusal(args, tmp_path, baseline, code, *words):
    result, rss, seconds = measured(args, tmp_path)
    line = assert_one_line(result, code, *words)
    assert rss < baseline + EXTRA_MIB, f"{rss:.0f} MiB peak, baseline {baseline:.0f} MiB: {line}"
    assert seconds < SECONDS, f"{seconds:.1f} s: {line}"


def deflated_zeros(write, size: int, chunk: int = 8 << 20) -> None:
    """Write ``size`` zero bytes through ``write`` in chunks (the archive compresses them to almost nothing)."""
    block = bytes(chunk)
    while size > 0:
        write(block[: min(chunk, size)])
        size -= chunk


def npy_header(shape, descr="|u1") -> bytes:
    header = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def test_npy_header_declaring_285_tib(tmp_path, model, baseline):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header((10**11, 28, 28)) + bytes(100))
    assert_cheap_refusal(["predict", path, "--model", model], tmp_path, baseline, 1, str(path), "MiB")


def test_npz_of_2_5_million_zero_images(tmp_path, model, baseline):
    path = tmp_path / "zeros.npz"
    n = 2_500_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_header((n, 28, 28)))
            deflated_zeros(member.write, n * 784)
    assert path.stat().st_size < 20 << 20
    assert_cheap_refusal(["predict", path, "--model", model], tmp_path, baseline, 1, str(path), "more than 128 MiB")


def test_gzipped_idx_of_2_5_million_zero_images(tmp_path, model, baseline):
    path = tmp_path / "zeros-idx3-ubyte.gz"
    n = 2_500_000
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28))
        deflated_zeros(f.write, n * 784)
    assert_cheap_refusal(["predict", path, "--model", model], tmp_path, baseline, 1, str(path), "more than 128 MiB")


def png(path, width: int, height: int, bit_depth: int = 1) -> None:
    """A valid greyscale PNG of zero pixels, written row by row (never held in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = bytes(1 + -(-width * bit_depth // 8))
    compressor = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)))
        data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
        f.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(12000, 12000), (170_000_000, 1)])
def test_png_just_under_pillows_bomb_limit(tmp_path, model, baseline, width, height):
    path = tmp_path / "bomb.png"
    png(path, width, height)
    assert path.stat().st_size < 1 << 20
    assert_cheap_refusal(["predict", path, "--model", model], tmp_path, baseline, 1, str(path), "more than 50 MP")


def rewrite(model, bad, edit_meta=None, extra=None):
    """A copy of ``model`` with its metadata edited and/or an extra member written as raw npy bytes."""
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == f"{META_KEY}.npy" and edit_meta:
                import io
                meta = json.loads(str(np.load(io.BytesIO(data))))
                buffer = io.BytesIO()
                np.save(buffer, np.array(json.dumps(edit_meta(meta))))
                data = buffer.getvalue()
            target.writestr(info.filename, data)
        if extra:
            with target.open("extra.npy", "w", force_zip64=True) as member:
                member.write(npy_header((extra,)))
                deflated_zeros(member.write, extra)


def test_model_whose_metadata_declares_dense_out_200000(tmp_path, model, baseline):
    bad = tmp_path / "wide.npz"

    def wide(meta):
        meta["layers"][1]["out"] = 200_000
        return meta
    rewrite(model, bad, edit_meta=wide)
    for command in (["info", bad], ["predict", tmp_path / "x.npy", "--model", bad], ["export", bad, tmp_path / "m.onnx"]):
        assert_cheap_refusal(command, tmp_path, baseline, 1, str(bad), "do not fit its layers", "157,000,000 values")


def test_model_with_an_extra_2_gb_zero_member(tmp_path, model, baseline):
    bad = tmp_path / "padded.npz"
    rewrite(model, bad, extra=2 << 30)
    assert bad.stat().st_size < 20 << 20
    assert_cheap_refusal(["info", bad], tmp_path, baseline, 1, str(bad), "array extra is 2.0 GiB", "no layer")


@pytest.fixture(scope="module")
def committee(model, tmp_path_factory):
    """A committee file of two copies of ``model``."""
    path = tmp_path_factory.mktemp("committee") / "committee.npz"
    network, _ = load_model(model)
    save_committee(path, Committee([network, network]))
    return path


def test_committee_listing_30000_members(tmp_path, committee, baseline):
    bad = make_bad_committee("too_many_members", committee, tmp_path)  # built, its members would take 1 GiB
    assert_cheap_refusal(["info", bad], tmp_path, baseline, 1, str(bad), "30,002 members, more than the 64")


def test_committee_whose_second_member_declares_dense_out_200000(tmp_path, committee, baseline):
    bad = tmp_path / "wide.npz"

    def wide(meta):
        meta["members"][1]["layers"][1]["out"] = 200_000
        return meta
    rewrite(committee, bad, edit_meta=wide)
    assert_cheap_refusal(["info", bad], tmp_path, baseline, 1, str(bad), "do not fit its layers", "157,007,850 values")


def test_layer_spec_dense_out_1e11(tmp_path):
    write_params(tmp_path, {"train": {"model": [{"type": "flatten"}, {"type": "dense", "out": 10**11}]}})
    result = nnlib("params", cwd=tmp_path)
    assert_one_line(result, 2, "train.model", "PiB", "78,500,000,000,000 parameters", "make the layers smaller")


BILLION_LAUGHS = "lol0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i + 1}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)) + "train: {model: *i}\n"


def test_billion_laughs_params(tmp_path):
    (tmp_path / "params.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1024
    result, rss, seconds = measured(["params"], tmp_path, cwd=tmp_path)
    assert_one_line(result, 2, "params.yaml", "aliases expand to more than 100,000 values")
    assert rss < 300 and seconds < SECONDS
