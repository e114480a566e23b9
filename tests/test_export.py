"""``nnlib export``: the ONNX graph computes nnlib's logits (checked with onnxruntime), every layer type
has an exporter, and the command's errors are one line with the documented exit code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnlib import __version__
from nnlib.backend import to_numpy
from nnlib.mnist.data.stream import to_batch
from nnlib.errors import MissingExtra
from nnlib.export import _EXPORTERS, export_model_file, export_onnx
from nnlib.layers import LAYERS
from nnlib.model import Sequential
from nnlib.modelfile import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # absolute, on logits

# Two models that between them hold every layer type (flatten and gap cannot share one), with strides,
# padding, pooling windows other than 2x2, a conv and a dense without bias, and batch norm on images
# and on features with a non-default eps.
ALL_LAYER_MODELS = {
    "flatten": [
        {"type": "conv", "out": 6, "k": 3, "stride": 2, "pad": 1},
        {"type": "batchnorm", "momentum": 0.5, "eps": 1e-3},
        {"type": "relu"},
        {"type": "maxpool", "k": 3, "stride": 2},
        {"type": "conv", "out": 8, "k": 3, "pad": 1, "bias": False},
        {"type": "tanh"},
        {"type": "avgpool", "k": 2},
        {"type": "flatten"},
        {"type": "dense", "out": 32, "bias": False},
        {"type": "batchnorm", "momentum": 0.5},
        {"type": "sigmoid"},
        {"type": "dropout", "p": 0.3},
        {"type": "dense", "out": 10},
    ],
    "gap": [
        {"type": "conv", "out": 8, "k": 5},
        {"type": "batchnorm", "momentum": 0.5},
        {"type": "relu"},
        {"type": "avgpool", "k": 3, "stride": 1},
        {"type": "conv", "out": 12, "k": 3, "stride": 2, "pad": 2},
        {"type": "maxpool", "k": 2},
        {"type": "gap"},
        {"type": "dense", "out": 16},
        {"type": "tanh"},
        {"type": "dropout"},
        {"type": "dense", "out": 10, "bias": False},
    ],
}


def onnx_logits(path, x: np.ndarray) -> np.ndarray:
    """Run an exported graph with onnxruntime on float32 (N, 1, 28, 28)."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def all_layer_model(name: str, seed: int = 0) -> Sequential:
    """A model with random weights, biases, gammas and betas, and running statistics from train-mode passes."""
    rng = np.random.default_rng(seed)
    model = Sequential.from_specs(ALL_LAYER_MODELS[name], (1, 28, 28), rng)
    for layer in model.layers:
        for value in layer.params.values():
            value += rng.normal(0.0, 0.2, value.shape).astype(np.float32)
    model.train()
    for _ in range(3):
        model.forward(rng.random((16, 1, 28, 28), dtype=np.float32))
    return model.eval()


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnlib", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_trained_model_matches_nnlib(trained_model_path, mnist, tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    export_model_file(trained_model_path, out)
    model, _ = load_model(trained_model_path)
    x = to_numpy(to_batch(mnist["test_x"][:1000]))
    expected = to_numpy(model.predict_logits(x))
    got = onnx_logits(out, x)
    assert got.shape == expected.shape == (1000, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_graph_is_checked_and_described(trained_model_path, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    export_model_file(trained_model_path, out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert (proto.producer_name, proto.producer_version) == ("nnlib", __version__)
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert graph_input.name == "input" and graph_output.name == "logits"

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]
    assert dims(graph_input) == ["N", 1, 28, 28] and dims(graph_output) == ["N", 10]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("name", sorted(ALL_LAYER_MODELS))
def test_every_layer_type_matches_nnlib(name, tmp_path):
    pytest.importorskip("onnx")
    model = all_layer_model(name)
    bn = next(layer for layer in model.layers if layer.type_name == "batchnorm")
    assert not np.allclose(bn.buffers["running_var"], 1.0)  # the export must use non-trivial statistics
    out = tmp_path / f"{name}.onnx"
    export_onnx(model, out)
    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
    for batch in (x, x[:1]):  # the batch dimension is symbolic
        np.testing.assert_allclose(onnx_logits(out, batch), model.predict_logits(batch), rtol=0, atol=TOLERANCE)


def test_every_layer_type_has_an_exporter_and_a_test():
    assert set(_EXPORTERS) == set(LAYERS)
    tested = {spec["type"] for specs in ALL_LAYER_MODELS.values() for spec in specs}
    assert tested == set(LAYERS)


def test_cli_writes_the_graph(trained_model_path, tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "sub" / "model.onnx"
    out.parent.mkdir()  # a missing folder outside the working directory is never created (docs/hostile-inputs.md)
    result = run_cli("export", trained_model_path, out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    assert result.stderr.strip() == f"export: wrote {out}"


def test_cli_corrupt_model_is_one_line_and_writes_nothing(trained_model_path, tmp_path):
    pytest.importorskip("onnx")
    corrupt = tmp_path / "corrupt.npz"
    data = trained_model_path.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_cli("export", corrupt, out_dir / "model.onnx")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(corrupt) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list(out_dir.iterdir()) == []


def test_without_onnx_the_error_names_the_extra(tmp_path, monkeypatch):
    model_path, out = tmp_path / "model.npz", tmp_path / "model.onnx"
    save_model(model_path, all_layer_model("gap"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(MissingExtra, match=r"\.\[export\]"):
        export_model_file(model_path, out)
    assert not out.exists()


def test_cli_without_onnx_exits_2_with_one_line(tmp_path):
    # The extra is checked before the model file is read, so even a missing file gives exit code 2.
    code = ("import sys; sys.modules['onnx'] = None; from nnlib.mnist.cli import main; "
            f"main(['export', 'missing.npz', {str(tmp_path / 'model.onnx')!r}])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "pip install -e '.[export]'" in lines[0], result.stderr
    assert not (tmp_path / "model.onnx").exists()
