"""Committee: the mean of the members' softmax probabilities, its model file, its ONNX graph, and the commands.

The members are two tiny networks of different architectures with random weights (no training needed:
only the arithmetic of the committee is under test), saved as ordinary model files.
"""
from __future__ import annotations

import importlib.util
import io
import json
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hostile import assert_one_line, nnlib
from model_faults import COMMITTEE_FAULTS, make_bad_committee
from nnlib import backend, evaluation, losses
from nnlib.checks import ArgumentError
from nnlib.committee import PROBABILITY_FLOOR, Committee, first_network
from nnlib.errors import ModelFileError, ParamsError
from nnlib.export import export_onnx
from nnlib.files import load_npz
from nnlib.mnist.predict import probabilities as predict_probabilities
from nnlib.model import Sequential
from nnlib.modelfile import META_KEY, load_model, load_weights, save_committee, save_model

CONV = [{"type": "conv", "out": 4, "k": 5, "stride": 2}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool", "k": 2}, {"type": "flatten"}, {"type": "dense", "out": 10}]
MLP = [{"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "tanh"}, {"type": "dense", "out": 10}]
LOSS = {"name": "cross_entropy", "label_smoothing": 0.0, "half": True}


def member(specs, seed: int, input_shape=(1, 28, 28)) -> Sequential:
    """A network of ``specs`` with random weights and biases, and BatchNorm statistics from train-mode passes."""
    rng = np.random.default_rng(seed)
    model = Sequential.from_specs(specs, input_shape, rng)
    for layer in model.layers:
        for value in layer.params.values():
            value += rng.normal(0.0, 0.3, value.shape).astype(np.float32)
    model.train()
    for _ in range(2):
        model.forward(rng.random((8, *input_shape), dtype=np.float32))
    return model.eval()


def images(n: int, seed: int = 7) -> np.ndarray:
    """float32 (n, 1, 28, 28) in [0, 1]."""
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def softmax64(logits) -> np.ndarray:
    """float64 softmax of (N, K), written out here rather than taken from nnlib."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def members() -> list[Sequential]:
    return [member(CONV, 0), member(MLP, 1)]


@pytest.fixture(scope="module")
def files(members, tmp_path_factory) -> dict:
    """The members as model files, and a committee file of the two: {"members": [path, path], "committee": path}."""
    folder = tmp_path_factory.mktemp("committee")
    paths = []
    for index, (network, specs) in enumerate(zip(members, (CONV, MLP))):
        path = folder / f"member{index}.npz"
        save_model(path, network, {"seed": index, "epoch": index + 1, "train": {"model": specs, "loss": LOSS}})
        paths.append(path)
    committee_path = folder / "committee.npz"
    records = [load_model(path)[1] for path in paths]
    save_committee(committee_path, Committee(members), {"members": records, "note": "two members"})
    return {"members": paths, "committee": committee_path}


# --- the committee's answer ----------------------------------------------------------------------------

def test_probabilities_are_the_mean_of_the_members_softmax(members):
    x = images(50)
    each = [softmax64(network.predict_logits(x)) for network in members]
    assert np.abs(each[0] - each[1]).max() > 0.1  # the members disagree: the mean is not either one
    got = Committee(members).probabilities(x)
    assert got.dtype == np.float64 and got.shape == (50, 10)
    np.testing.assert_allclose(got, (each[0] + each[1]) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_weights_give_the_weighted_mean(members):
    x = images(20)
    each = [softmax64(network.predict_logits(x)) for network in members]
    got = Committee(members, weights=[3, 1]).probabilities(x)
    np.testing.assert_allclose(got, (3 * each[0] + each[1]) / 4, rtol=0, atol=1e-15)


def test_logits_are_log_probabilities_whose_softmax_gives_them_back(members):
    committee = Committee(members)
    x = images(40)
    logits = committee.predict_logits(x)
    assert logits.dtype == np.float32 and logits.shape == (40, 10)
    np.testing.assert_allclose(softmax64(logits), committee.probabilities(x), rtol=0, atol=1e-7)
    assert (committee.predict(x) == committee.probabilities(x).argmax(axis=1)).all()
    np.testing.assert_allclose(committee.forward(x), logits, rtol=0, atol=1e-6)


def test_a_probability_of_zero_gets_a_finite_logit(members):
    sure = [member(MLP, seed) for seed in (2, 3)]
    for network in sure:  # outputs in the thousands: the softmax underflows to exactly 0 in float64
        network.layers[-1].params["W"] *= 1e4
    committee = Committee(sure)
    x = images(20)
    assert (committee.probabilities(x) == 0).any()
    logits = committee.predict_logits(x)
    assert np.isfinite(logits).all()
    assert logits.min() == np.float32(np.log(PROBABILITY_FLOOR))


def test_members_run_in_eval_mode_and_keep_their_modes(members):
    committee = Committee(members)
    x = images(16)
    expected = committee.predict_logits(x)
    members[0].train()  # batch statistics and dropout would change the answer
    try:
        with committee.evaluating():
            assert not any(network.training for network in members)
        assert members[0].training
        np.testing.assert_array_equal(committee.predict_logits(x), expected)
        assert members[0].training and not members[1].training
    finally:
        members[0].eval()
    assert committee.eval() is committee and not any(network.training for network in members)


def test_shapes_parameters_and_the_first_network(members):
    committee = Committee(members)
    assert committee.input_shape == (1, 28, 28) and committee.output_shape == (10,) and len(committee) == 2
    assert committee.num_parameters() == members[0].num_parameters() + members[1].num_parameters()
    assert committee.members == members and committee.weights.tolist() == [1.0, 1.0]
    assert first_network(committee) is members[0] and first_network(members[1]) is members[1]


@pytest.mark.parametrize("make, weights, words", [
    (lambda m: [m[0]], None, "members must hold at least 2 networks, got 1"),
    (lambda m: m[0], None, "members must be a list of Sequential networks"),
    (lambda m: [m[0], "model.npz"], None, "members must be a list of Sequential networks"),
    (lambda m: [m[0], member([{"type": "flatten"}, {"type": "dense", "out": 5}], 4)], None, "members[1] gives outputs (5,)"),
    (lambda m: [m[0], member(MLP, 4, (1, 14, 14))], None, "members[1] takes inputs (1, 14, 14)"),
    (lambda m: [m[0], member([{"type": "conv", "out": 2, "k": 3}], 4)], None, "must end in (K,)"),
    (lambda m: m, [1], "weights must be None or a list of 2 numbers > 0"),
    (lambda m: m, [1, 0], "weights must be"),
    (lambda m: m, [1, float("nan")], "weights must be"),
    (lambda m: m, [True, 1], "weights must be"),
    (lambda m: m, "11", "weights must be"),
])
def test_arguments_are_checked_keras_style(members, make, weights, words):
    with pytest.raises(ArgumentError) as err:
        Committee(make(members), weights)
    assert str(err.value).startswith("committee: ") and words in str(err.value)


def test_evaluation_runs_a_committee_with_its_first_members_features(members):
    committee = Committee(members)
    x, y = images(40), np.random.default_rng(3).integers(0, 10, 40)
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    result = evaluation.run(committee, losses.SoftmaxCrossEntropy(), batches)
    probabilities = committee.probabilities(x)
    # float32 sums in batches of 25 and 15 against one of 40: some CPUs' BLAS kernels round by batch size
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
    nll = -np.log(probabilities[np.arange(40), y]).mean()  # cross-entropy of log-probabilities: the committee's NLL
    assert abs(result.loss - nll) < 1e-5
    alone = evaluation.run(members[0], losses.SoftmaxCrossEntropy(), batches)
    np.testing.assert_array_equal(result.features, alone.features)
    np.testing.assert_array_equal(evaluation.first_layer_images(committee)[0], evaluation.first_layer_images(members[0])[0])


def test_a_committee_runs_on_every_backend(files, members, device):
    """Loaded while a backend is active, the members' arrays live there; the answer matches NumPy's."""
    committee, _ = load_model(files["committee"])
    assert all(backend.get_array_module(p) is backend.current() for m in committee.members for _, p, _ in m.parameters())
    digits = np.random.default_rng(5).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    got = predict_probabilities(committee, digits)  # to_numpy at the end: a host array
    logits = committee.predict_logits(backend.current().asarray(digits[:, None].astype(np.float32) / np.float32(255)))
    assert backend.get_array_module(logits) is backend.current() and logits.dtype == np.float32
    scaled = digits[:, None].astype(np.float32) * np.float32(1 / 255)
    np.testing.assert_allclose(got, Committee(members).probabilities(scaled), rtol=0, atol=1e-6)


# --- the model file --------------------------------------------------------------------------------------

def test_a_committee_file_loads_back_with_the_same_answers(files, members, tmp_path):
    loaded, meta = load_model(files["committee"])
    assert isinstance(loaded, Committee) and len(loaded) == 2
    x = images(30)
    np.testing.assert_array_equal(loaded.probabilities(x), Committee(members).probabilities(x))
    assert [record["seed"] for record in meta["members"]] == [0, 1] and meta["note"] == "two members"
    assert meta["members"][1]["train"]["model"] == MLP
    again = tmp_path / "again.npz"
    save_committee(again, loaded, meta)  # what load_model gives back saves as the very same bytes
    assert again.read_bytes() == files["committee"].read_bytes()


def test_the_archive_holds_each_member_under_its_prefix(files, members):
    arrays = load_npz(files["committee"])
    described = json.loads(str(arrays.pop(META_KEY)))
    assert described["kind"] == "committee" and described["format_version"] == 1
    assert [entry["layers"] for entry in described["members"]] == [network.specs() for network in members]
    assert {name.split("/")[0] for name in arrays} == {"member0", "member1"}
    assert "member0/0.conv.W" in arrays and "member1/3.dense.W" in arrays


def test_a_single_model_file_still_loads_as_a_sequential(files):
    model, meta = load_model(files["members"][0])
    assert type(model) is Sequential and meta["seed"] == 0 and "members" not in meta


def test_init_from_refuses_a_committee(files):
    with pytest.raises(ParamsError, match="is a committee of 2 networks"):
        load_weights(Sequential.from_specs(CONV, (1, 28, 28), np.random.default_rng(0)), files["committee"])


def test_save_committee_refuses_member_metadata_that_does_not_fit(members, tmp_path):
    with pytest.raises(ValueError, match="one per member"):
        save_committee(tmp_path / "c.npz", Committee(members), {"members": [{"seed": 0}]})
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("name", sorted(COMMITTEE_FAULTS))
def test_every_bad_committee_file_is_one_model_file_error(name, files, tmp_path):
    bad = make_bad_committee(name, files["committee"], tmp_path)
    start = time.monotonic()
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    assert time.monotonic() - start < 10  # too_many_members: refused by count, no member built
    message = str(err.value)
    assert COMMITTEE_FAULTS[name][1] in message and str(bad) in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(COMMITTEE_FAULTS))
def test_nnlib_info_refuses_every_bad_committee_file_in_one_line(name, files, tmp_path):
    bad = make_bad_committee(name, files["committee"], tmp_path)
    result = nnlib("info", bad, cwd=tmp_path)
    assert_one_line(result, 1, str(bad), COMMITTEE_FAULTS[name][1])
    assert result.stdout == b""


@pytest.mark.parametrize("command", ["predict", "export"])
def test_predict_and_export_refuse_a_bad_committee_file_in_one_line(command, files, tmp_path):
    bad = make_bad_committee("members_of_other_shapes", files["committee"], tmp_path)
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    args = ["predict", tmp_path / "digit.npy", "--model", bad] if command == "predict" else ["export", bad, tmp_path / "c.onnx"]
    assert_one_line(nnlib(*args, cwd=tmp_path), 1, str(bad), "do not make a committee")
    assert not (tmp_path / "c.onnx").exists()


# --- ONNX ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [None, [2.0, 1.0]])
def test_the_onnx_graph_gives_the_committees_probabilities(members, weights, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    committee = Committee(members, weights)
    out = tmp_path / "committee.onnx"
    export_onnx(committee, out)
    proto = onnx.load(str(out))
    (graph_output,) = proto.graph.output
    assert graph_output.name == "probabilities"
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["N", 10]
    assert [node.op_type for node in proto.graph.node].count("Softmax") == 2
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = images(64)
    for batch in (x, x[:1]):
        got = session.run(["probabilities"], {"input": batch})[0]
        np.testing.assert_allclose(got, committee.probabilities(batch), rtol=0, atol=1e-6)


# --- the commands ------------------------------------------------------------------------------------------

def test_nnlib_committee_writes_a_file_that_predict_info_and_export_take(files, members, tmp_path):
    out = tmp_path / "joined.npz"
    result = nnlib("committee", out, *files["members"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().strip() == f"committee: wrote {out} (2 members, {Committee(members).num_parameters():,} parameters)"
    committee, meta = load_model(out)
    x = images(10)
    np.testing.assert_array_equal(committee.probabilities(x), Committee(members).probabilities(x))
    assert [record["seed"] for record in meta["members"]] == [0, 1]
    assert [source["path"] for source in meta["sources"]] == [str(p) for p in files["members"]]

    digits = np.random.default_rng(5).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "digits.npy", digits)
    predicted = nnlib("predict", tmp_path / "digits.npy", "--model", out, "--json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    records = [json.loads(line) for line in predicted.stdout.decode().splitlines()]
    expected = predict_probabilities(committee, digits)
    np.testing.assert_allclose([r["probabilities"] for r in records], expected, rtol=0, atol=1e-15)
    scaled = digits[:, None].astype(np.float32) * np.float32(1 / 255)  # the network's input, as training makes it
    np.testing.assert_allclose(expected, Committee(members).probabilities(scaled), rtol=0, atol=1e-15)
    assert [r["digit"] for r in records] == expected.argmax(axis=1).tolist()

    text = nnlib("info", out, "--eval-json", tmp_path / "none.json", cwd=tmp_path).stdout.decode()
    assert text.startswith(f"committee: {out}") and "members: 2, their softmax probabilities averaged" in text
    assert "member 0: " in text and "seed 0" in text and "member 1: " in text and "seed 1" in text
    assert "conv (out=4" in text and "tanh" in text and f"built from:        {files['members'][1]} (sha256 " in text
    described = json.loads(nnlib("info", out, "--json", cwd=tmp_path).stdout)
    assert described["kind"] == "committee" and [m["seed"] for m in described["members"]] == [0, 1]
    assert described["total_parameters"] == committee.num_parameters() == sum(m["total_parameters"] for m in described["members"])

    if importlib.util.find_spec("onnx") is not None:
        exported = nnlib("export", out, tmp_path / "joined.onnx", cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr
        assert (tmp_path / "joined.onnx").stat().st_size > 0


def refusal_cases(files, tmp_path) -> dict:
    """name -> (arguments after ``committee``, exit code, words of the one line)."""
    other = tmp_path / "five.npz"
    save_model(other, member([{"type": "flatten"}, {"type": "dense", "out": 5}], 4))
    out = tmp_path / "out.npz"
    first, second = files["members"]
    return {
        "other_shapes": ([out, first, other], 2, [str(other), "gives outputs (5,)", "same outputs"]),
        "one_member": ([out, first], 2, ["give 2 to 64 member model files, got 1"]),
        "out_is_a_member": ([second, first, second], 2, [str(second), "would destroy it"]),
        "member_missing": ([out, first, tmp_path / "gone.npz"], 1, ["gone.npz: no such model file"]),
        "member_is_a_committee": ([out, first, files["committee"]], 2, ["is a committee itself"]),
        "bad_weights": ([out, first, second, "--weights", "1,-2"], 2, ["weights must be"]),
        "missing_folder": ([tmp_path / "no" / "out.npz", first, second], 1, ["no such folder"]),
    }


@pytest.mark.parametrize("case", ["other_shapes", "one_member", "out_is_a_member", "member_missing",
                                  "member_is_a_committee", "bad_weights", "missing_folder"])
def test_nnlib_committee_refuses_in_one_line_and_writes_nothing(case, files, tmp_path):
    args, code, words = refusal_cases(files, tmp_path)[case]
    before = {path: path.read_bytes() for path in files["members"]}
    (tmp_path / "cwd").mkdir()  # the working directory: a missing folder outside it is never created
    assert_one_line(nnlib("committee", *args, cwd=tmp_path / "cwd"), code, *words)
    assert not (tmp_path / "out.npz").exists() and not list(tmp_path.rglob(".*.tmp"))
    assert {path: path.read_bytes() for path in files["members"]} == before


def drawn_seven() -> bytes:
    image = Image.new("L", (140, 140), 255)
    ImageDraw.Draw(image).line([(40, 35), (100, 35), (65, 110)], fill=0, width=9)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_serve_answers_with_the_committees_probabilities(files, tmp_path):
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from starlette.testclient import TestClient  # noqa: PLC0415

    from nnlib.mnist.serve import build_app  # noqa: PLC0415

    committee, meta = load_model(files["committee"])
    with TestClient(build_app(committee, meta, files["committee"], drawn_dir=tmp_path)) as client:
        answer = client.post("/api/predict", content=drawn_seven(), headers={"content-type": "image/png"}).json()
        card = client.get("/api/model").json()
    seen = np.array(answer["input"], np.uint8)[None]
    np.testing.assert_allclose(answer["probabilities"], predict_probabilities(committee, seen)[0], rtol=0, atol=1e-15)
    assert answer["digit"] == int(np.argmax(answer["probabilities"]))
    maps = answer["maps"]  # the first member's first conv layer
    assert maps["kind"] == "conv" and maps["count"] == 4 and "first member" in maps["layers"]
    assert card["members"] == 2 and card["seed"] == [0, 1] and card["parameters"] == committee.num_parameters()
    assert card["layers"] == [spec["type"] for spec in CONV]
