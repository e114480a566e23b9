"""Sequential (shape inference, its errors, named parameters) and save_model/load_model."""
from __future__ import annotations

import time

import numpy as np
import pytest

from nnlib import files, layers, losses, modelfile, optim
from nnlib.errors import ModelFileError
from nnlib.layers import ShapeError
from nnlib.model import Sequential

SPECS = [
    {"type": "conv", "out": 4, "k": 3, "pad": 1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "conv", "out": 6, "k": 3, "stride": 2},
    {"type": "flatten"},
    {"type": "dropout", "p": 0.25},
    {"type": "dense", "out": 16},
    {"type": "batchnorm", "momentum": 0.2},
    {"type": "tanh"},
    {"type": "dense", "out": 10, "init": "glorot_uniform"},
]
INPUT = (1, 12, 10)


def trained_model(seed=123, steps=3):
    """A model whose weights, biases, gammas/betas and running statistics are all non-trivial."""
    rng = np.random.default_rng(seed)
    model = Sequential.from_specs(SPECS, INPUT, rng).train()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = losses.SoftmaxCrossEntropy()
    for _ in range(steps):
        x = rng.normal(0.5, 2.0, size=(8, *INPUT)).astype(np.float32)
        _, grad = loss(model(x), rng.integers(0, 10, size=8))
        model.backward(grad)
        opt.step()
    return model.eval()


# --- Sequential -------------------------------------------------------------------------------

def test_parameters_and_gradients_live_in_one_array_each():
    """Sequential packs them (for the optimizers' whole-array steps); every layer's arrays stay views."""
    model = trained_model()
    pairs = [(model.flat_params, [p for _, p, _ in model.parameters()]), (model.flat_grads, [g for _, _, g in model.parameters()])]
    for whole, parts in pairs:
        assert whole.ndim == 1 and whole.size == model.num_parameters()
        assert all(np.shares_memory(part, whole) for part in parts)
        assert whole.tobytes() == np.concatenate([part.reshape(-1) for part in parts]).tobytes()
    assert np.any(model.flat_grads != 0)  # the layers' backward wrote into the views


def test_shapes_are_inferred_and_parameters_named_in_order():
    model = Sequential.from_specs(SPECS, INPUT, np.random.default_rng(0))
    assert model.output_shape == (10,)
    # conv pad 1: 4x12x10 -> maxpool: 4x6x5 -> conv k3 s2: 6x2x2 = 24 features
    assert model.layers[7].params["W"].shape == (24, 16)
    names = [name for name, _, _ in model.parameters()]
    assert names == ["0.conv.W", "0.conv.b", "1.batchnorm.gamma", "1.batchnorm.beta", "4.conv.W", "4.conv.b",
                     "7.dense.W", "7.dense.b", "8.batchnorm.gamma", "8.batchnorm.beta", "10.dense.W", "10.dense.b"]
    assert set(model.state()) == set(names) | {f"{i}.batchnorm.running_{s}" for i in (1, 8) for s in ("mean", "var")}
    assert model.num_parameters() == sum(p.size for _, p, _ in model.parameters())
    assert model.layers[0].skip_input_grad and not model.layers[1].skip_input_grad
    assert model.specs()[4] == {"type": "conv", "out": 6, "k": 3, "stride": 2, "pad": 0, "bias": True,
                                "init": "he_normal", "algorithm": "auto"}


@pytest.mark.parametrize("specs, shape, match", [
    ([{"type": "conv", "out": 4, "k": 3}, {"type": "relu"}, {"type": "dense", "out": 10}], (1, 8, 8),
     r"layer 2 \(dense\).*\(4, 6, 6\).*flatten"),
    ([{"type": "conv", "out": 4, "k": 5}], (1, 4, 4), r"layer 0 \(conv\): conv kernel 5.*4x4"),
    ([{"type": "conv", "out": 4, "k": 3}, {"type": "maxpool", "k": 3}, {"type": "dense", "out": 10}], (1, 4, 4),
     r"layer 1 \(maxpool\).*2x2"),
    ([{"type": "flatten"}, {"type": "conv", "out": 2}], (1, 4, 4), r"layer 1 \(conv\).*\(16,\)"),
    ([{"type": "dense", "out": 3}, {"type": "gap"}], (5,), r"layer 1 \(gap\)"),
    ([{"type": "batchnorm"}], (2, 3), r"layer 0 \(batchnorm\)"),
])
def test_shape_errors_name_the_first_layer_that_does_not_fit(specs, shape, match):
    with pytest.raises(ShapeError, match=match):
        Sequential.from_specs(specs, shape, np.random.default_rng(0))


def test_unknown_layer_type_lists_the_valid_names():
    specs = [{"type": "flatten"}, {"type": "linear", "out": 3}]
    with pytest.raises(ValueError, match=r"layer 1: unknown layer type 'linear'") as err:
        Sequential.from_specs(specs, (4,), np.random.default_rng(0))
    for name in layers.LAYERS:
        assert repr(name) in str(err.value)


def test_unknown_option_is_named():
    specs = [{"type": "conv", "out": 3, "kernel": 3}]
    with pytest.raises(ValueError, match=r"layer 0: layer 'conv' has no option 'kernel'.*'stride'"):
        Sequential.from_specs(specs, (1, 5, 5), np.random.default_rng(0))


@pytest.mark.parametrize("spec, match", [
    ({"type": "dense"}, r"layer 0: .*out"),  # required option missing
    ({"out": 3}, r"layer 0: .*'type'"),
])
def test_malformed_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        Sequential.from_specs([spec], (4,), np.random.default_rng(0))


def test_load_state_rejects_mismatched_arrays():
    model = Sequential.from_specs(SPECS, INPUT, np.random.default_rng(0))
    state = {k: v.copy() for k, v in model.state().items()}
    with pytest.raises(ValueError, match=r"missing \['0.conv.b'\]"):
        model.load_state({k: v for k, v in state.items() if k != "0.conv.b"})
    state["7.dense.W"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"7.dense.W: shape \(3, 3\)"):
        model.load_state(state)


# --- save / load ------------------------------------------------------------------------------

def test_round_trip_gives_identical_predictions(tmp_path):
    model = trained_model()
    running_mean = model.layers[1].buffers["running_mean"]
    assert np.abs(running_mean).min() > 0  # the train-mode passes moved the running statistics
    x = np.random.default_rng(7).normal(0.5, 2.0, size=(20, *INPUT)).astype(np.float32)
    before = model.predict_logits(x)

    modelfile.save_model(tmp_path / "model.npz", model, metadata={"epochs": 3, "note": "test"})
    loaded, metadata = modelfile.load_model(tmp_path / "model.npz")

    assert metadata == {"epochs": 3, "note": "test"}
    assert not loaded.training and loaded.specs() == model.specs() and loaded.input_shape == INPUT
    for name, value in model.state().items():
        assert np.array_equal(loaded.state()[name], value), name
        assert loaded.state()[name].dtype == value.dtype
    assert np.array_equal(loaded.predict_logits(x), before)
    assert list(tmp_path.iterdir()) == [tmp_path / "model.npz"]  # no temporary file left behind


def test_predictions_differ_from_a_fresh_model(tmp_path):
    """Guards the round-trip test: a model built from the same specs but never loaded predicts differently."""
    model = trained_model()
    x = np.random.default_rng(7).normal(size=(5, *INPUT)).astype(np.float32)
    fresh = Sequential.from_specs(model.specs(), INPUT, np.random.default_rng(0))
    assert not np.allclose(fresh.predict_logits(x), model.predict_logits(x))


def test_saving_twice_gives_identical_bytes(tmp_path, monkeypatch):
    model = trained_model()
    modelfile.save_model(tmp_path / "a.npz", model, metadata={"k": 1})
    # Two hours later (a wall-clock timestamp in the archive would change the bytes).
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)
    modelfile.save_model(tmp_path / "b.npz", model, metadata={"k": 1})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return "payload"


class _Payload:
    def __reduce__(self):
        return _record_unpickling, ()


def test_loading_a_pickled_object_array_fails_without_running_it(tmp_path):
    model = trained_model(steps=1)
    modelfile.save_model(tmp_path / "good.npz", model)
    arrays = files.load_npz(tmp_path / "good.npz")
    arrays["0.conv.b"] = np.array([_Payload()], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)  # savez pickles object arrays
    with pytest.raises(ModelFileError, match="pickle"):
        modelfile.load_model(tmp_path / "evil.npz")
    assert UNPICKLED == []


def test_load_rejects_files_that_are_not_models(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(ModelFileError, match="not an nnlib model"):
        modelfile.load_model(tmp_path / "plain.npz")
    model = trained_model(steps=1)
    modelfile.save_model(tmp_path / "m.npz", model)
    arrays = files.load_npz(tmp_path / "m.npz")
    arrays[modelfile.META_KEY] = np.array(str(arrays[modelfile.META_KEY]).replace('"format_version": 1', '"format_version": 99'))
    files.save_npz(tmp_path / "future.npz", arrays)
    with pytest.raises(ModelFileError, match="model format 99"):
        modelfile.load_model(tmp_path / "future.npz")


def test_backward_stops_at_the_first_layer_with_parameters():
    """In an MLP, flatten -> dense: the dense layer computes no input gradient and flatten no backward."""
    specs = [{"type": "flatten"}, {"type": "dense", "out": 5}, {"type": "relu"}, {"type": "dense", "out": 3}]
    model = Sequential.from_specs(specs, (1, 4, 4), np.random.default_rng(0))
    assert [layer.skip_input_grad for layer in model.layers] == [False, True, False, False]
    x = np.random.default_rng(1).normal(size=(6, 1, 4, 4)).astype(np.float32)
    model.train()
    model.forward(x)
    assert model.backward(np.ones((6, 3), np.float32)) is None
    reference = Sequential.from_specs(specs, (1, 4, 4), np.random.default_rng(0))
    reference.layers[1].skip_input_grad = False  # the full chain, down to the input
    reference.train()
    reference.forward(x)
    assert reference.backward(np.ones((6, 3), np.float32)).shape == x.shape
    for (name, _, grad), (_, _, expected) in zip(model.parameters(), reference.parameters()):
        assert np.array_equal(grad, expected), name


def test_one_forward_loop_and_one_mode_rule():
    """forward runs in the model's mode; predict_logits and evaluation.run run in eval mode and restore it;
    forward_with_input_of is the same loop, cut before a layer (here across a reordered relu/maxpool pair)."""
    from nnlib import evaluation

    specs = [{"type": "conv", "out": 4, "k": 3}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
             {"type": "flatten"}, {"type": "dense", "out": 8}, {"type": "relu"}, {"type": "dense", "out": 10}]
    model = Sequential.from_specs(specs, (1, 10, 10), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((6, 1, 10, 10)).astype(np.float32)
    assert model.layer_shapes == [(4, 8, 8), (4, 8, 8), (4, 8, 8), (4, 4, 4), (64,), (8,), (8,), (10,)]
    for training in (True, False):
        model.training = training
        model.predict_logits(x)
        evaluation.run(model, losses.SoftmaxCrossEntropy(), [(x, np.zeros(6, np.int64))])
        assert model.training is training
    with model.evaluating():
        out, hidden = model.forward_with_input_of(7, x)
        assert np.array_equal(out, model.forward(x)) and hidden.shape == (6, 8)
        assert np.array_equal(model.forward_with_input_of(4, x)[1], model.forward_with_input_of(5, x)[1].reshape(6, 4, 4, 4))
    with pytest.raises(ValueError, match="layer 2 runs inside"):  # relu runs after the pool: its input never forms
        model.forward_with_input_of(2, x)
