"""Layer specs are checked when the model is built: one line naming the layer, the option and the value."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from nnlib import layers
from nnlib.layers import LayerSpecError, ShapeError
from nnlib.model import Sequential

IMAGE = (1, 8, 8)
# A layer put in front of the bad one, so that its index (1) is not the default 0.
PREFIX = {"conv": [{"type": "relu"}], "maxpool": [{"type": "relu"}], "avgpool": [{"type": "relu"}],
          "batchnorm": [{"type": "relu"}], "dense": [{"type": "flatten"}], "dropout": [{"type": "flatten"}]}

INF, NAN = float("inf"), float("nan")
BAD_SPECS = [  # (spec, fragment of the message after "layer 1 (<type>): ")
    ({"type": "conv", "out": 4, "stride": 0}, "stride must be an integer >= 1, got 0"),
    ({"type": "conv", "out": 4, "k": 0}, "k must be an integer >= 1, got 0"),
    ({"type": "conv", "out": 0}, "out must be an integer >= 1, got 0"),
    ({"type": "conv", "out": 4, "pad": -1}, "pad must be an integer >= 0, got -1"),
    ({"type": "conv", "out": 4, "k": 2.0}, "k must be an integer >= 1, got 2.0"),
    ({"type": "conv", "out": 4, "stride": "2"}, "stride must be an integer >= 1, got '2'"),
    ({"type": "conv", "out": True}, "out must be an integer >= 1, got True"),
    ({"type": "conv", "out": 4, "bias": 1}, "bias must be true or false, got 1"),
    ({"type": "conv", "out": 4, "init": "xavier"}, "init must be one of ['glorot_normal', 'glorot_uniform', 'he_normal'"),
    ({"type": "conv", "out": 4, "algorithm": "fft"}, "algorithm must be one of ['auto', 'gemm', 'winograd'], got 'fft'"),
    ({"type": "conv", "out": 4, "stride": 2, "algorithm": "winograd"},
     "algorithm 'winograd' needs stride 1 and k in (3, 4, 5), got stride 2 and k 3: use 'auto' or 'gemm'"),
    ({"type": "conv", "out": 4, "k": 7, "algorithm": "winograd"}, "needs stride 1 and k in (3, 4, 5), got stride 1 and k 7"),
    ({"type": "dense", "out": 0}, "out must be an integer >= 1, got 0"),
    ({"type": "dense", "out": True}, "out must be an integer >= 1, got True"),
    ({"type": "dense", "out": None}, "out must be an integer >= 1, got None"),
    ({"type": "dense", "out": 10, "bias": "no"}, "bias must be true or false, got 'no'"),
    ({"type": "dense", "out": 10, "init": "zeros"}, "init must be one of"),
    ({"type": "dense", "out": 10, "init": ["normal"]}, "init must be one of"),
    ({"type": "maxpool", "k": 0}, "k must be an integer >= 1, got 0"),
    ({"type": "maxpool", "stride": 0}, "stride must be an integer >= 1, got 0"),
    ({"type": "avgpool", "k": 0}, "k must be an integer >= 1, got 0"),
    ({"type": "avgpool", "k": 2, "stride": 0}, "stride must be an integer >= 1, got 0"),
    ({"type": "avgpool", "k": -2}, "k must be an integer >= 1, got -2"),
    ({"type": "batchnorm", "momentum": -1}, "momentum must be a number in [0, 1], got -1"),
    ({"type": "batchnorm", "momentum": 5}, "momentum must be a number in [0, 1], got 5"),
    ({"type": "batchnorm", "momentum": NAN}, "momentum must be a number in [0, 1], got nan"),
    ({"type": "batchnorm", "momentum": True}, "momentum must be a number in [0, 1], got True"),
    ({"type": "batchnorm", "eps": 0}, "eps must be a number > 0, got 0"),
    ({"type": "batchnorm", "eps": -1e-5}, "eps must be a number > 0, got -1e-05"),
    ({"type": "batchnorm", "eps": INF}, "eps must be a number > 0, got inf"),
    ({"type": "batchnorm", "eps": "1e-5"}, "eps must be a number > 0, got '1e-5'"),
    ({"type": "dropout", "p": 1.0}, "p must be a number in [0, 1), got 1.0"),
    ({"type": "dropout", "p": -0.1}, "p must be a number in [0, 1), got -0.1"),
    ({"type": "dropout", "p": False}, "p must be a number in [0, 1), got False"),
]


def _build(specs, shape=IMAGE, num_classes=None):
    return Sequential.from_specs(specs, shape, np.random.default_rng(0), num_classes=num_classes)


def _ids(cases):
    return [f"{spec['type']}-{'-'.join(f'{k}={v}' for k, v in spec.items() if k != 'type')}" for spec, _ in cases]


@pytest.mark.parametrize("spec, fragment", BAD_SPECS, ids=_ids(BAD_SPECS))
def test_bad_option_is_one_line_naming_layer_index_and_option(spec, fragment):
    specs = [*PREFIX[spec["type"]], spec]
    with pytest.raises(LayerSpecError) as err:
        _build(specs)
    message = str(err.value)
    assert message.startswith(f"layer 1 ({spec['type']}): "), message
    assert fragment in message
    assert "\n" not in message
    assert isinstance(err.value, ValueError)  # stages/train.py turns ValueErrors into a params error


def test_message_without_a_model_names_the_layer_type():
    with pytest.raises(LayerSpecError, match=r"^conv: stride must be an integer >= 1, got 0$"):
        layers.from_spec({"type": "conv", "out": 4, "stride": 0})


def test_layer_spec_error_pickles_with_its_message():
    err = LayerSpecError("conv", "k must be an integer >= 1, got 0").at(3)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == "layer 3 (conv): k must be an integer >= 1, got 0"


GOOD_SPECS = [
    [{"type": "conv", "out": 4, "k": 3, "stride": 2, "pad": 1, "bias": False, "init": "glorot_uniform"}, {"type": "gap"}],
    [{"type": "conv", "out": 2, "k": 1, "pad": 0}, {"type": "maxpool", "k": 2, "stride": None}, {"type": "flatten"}],
    [{"type": "avgpool", "k": 3, "stride": 1}, {"type": "batchnorm", "momentum": 0, "eps": 1}],
    [{"type": "batchnorm", "momentum": 1, "eps": 1e-3}, {"type": "flatten"}, {"type": "dropout", "p": 0}],
    [{"type": "flatten"}, {"type": "dense", "out": 10, "init": "normal", "bias": True}, {"type": "dropout", "p": 0.99}],
    [{"type": "flatten"}, {"type": "dense", "out": np.int64(3)}, {"type": "batchnorm", "momentum": 0.5}],
]


@pytest.mark.parametrize("specs", GOOD_SPECS)
def test_good_specs_build_and_round_trip(specs):
    model = _build(specs)
    assert _build(model.specs()).specs() == model.specs()


@pytest.mark.parametrize("momentum", [0, 1, 0.0, 1.0])
def test_batchnorm_momentum_ends_are_accepted(momentum):
    layer = layers.from_spec({"type": "batchnorm", "momentum": momentum})
    assert layer.momentum == momentum and isinstance(layer.momentum, float)
    layer.build((3,), np.random.default_rng(0))
    x = np.random.default_rng(1).normal(2.0, 1.0, size=(8, 3)).astype(np.float32)
    layer.forward(x, train=True)
    expected_mean = 0.0 if momentum == 0 else x.mean(axis=0)
    assert np.allclose(layer.buffers["running_mean"], expected_mean, atol=1e-6)


def test_checked_ints_are_plain_ints():
    layer = layers.from_spec({"type": "dense", "out": np.int64(5)})
    assert type(layer.out) is int  # so the spec saved with the model stays JSON


def test_missing_option_is_named():
    with pytest.raises(ValueError, match=r"^layer 1: layer 'conv' needs option 'out'"):
        _build([{"type": "relu"}, {"type": "conv", "k": 3}])


@pytest.mark.parametrize("specs, shape, match", [
    ([{"type": "flatten"}, {"type": "dense", "out": 5}], IMAGE,
     r"^the last layer must produce 10 logits, got shape \(5,\) from layer 1 \(dense\): end the network with \{type: dense, out: 10\}$"),
    ([{"type": "conv", "out": 10, "k": 3}], IMAGE, r"got shape \(10, 6, 6\) from layer 0 \(conv\).*\{type: flatten\} and"),
    ([], (10, 1), r"got shape \(10, 1\) from the empty network"),
])
def test_num_classes_refuses_the_wrong_output(specs, shape, match):
    _build(specs, shape)  # builds without the requirement
    with pytest.raises(ShapeError, match=match) as err:
        _build(specs, shape, num_classes=10)
    assert "\n" not in str(err.value)


def test_num_classes_accepts_ten_logits():
    model = _build([{"type": "conv", "out": 10, "k": 3}, {"type": "gap"}], num_classes=10)
    assert model.output_shape == (10,)
