"""Losses: gradients by central differences (float64) and values at hand-computed points."""
from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import numeric_grad, on_device, rel_error

from nnlib import losses

N, K = 5, 4
LOSSES = {
    "ce": losses.SoftmaxCrossEntropy(),
    "ce-smooth-0.1": losses.SoftmaxCrossEntropy(label_smoothing=0.1),
    "ce-smooth-0.3": losses.SoftmaxCrossEntropy(label_smoothing=0.3),
    "mse-half": losses.MSE(half=True),
    "mse-mean": losses.MSE(half=False),
    "mse-half-sigmoid": losses.MSE(half=True, on="sigmoid"),
    "mse-mean-sigmoid": losses.MSE(half=False, on="sigmoid"),
}


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, K)) * 2.0, rng.integers(0, K, size=N)


@pytest.mark.parametrize("loss", LOSSES.values(), ids=LOSSES.keys())
def test_gradient_matches_finite_differences(loss, batch, device):
    z, y = (on_device(a) for a in batch)
    value, grad = loss(z, y)
    assert isinstance(value, float) and grad.shape == z.shape and grad.dtype == np.float64
    numeric = numeric_grad(lambda: loss(z, y)[0], z)
    assert rel_error(grad, numeric) < 1e-6


@pytest.mark.parametrize("loss", LOSSES.values(), ids=LOSSES.keys())
def test_float32_in_float32_out(loss, batch):
    z, y = batch
    _, grad = loss(z.astype(np.float32), y)
    assert grad.dtype == np.float32


def test_cross_entropy_values():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    y = np.array([1, 0])
    logz = math.log(math.e**2 + 3)
    expected = (math.log(4) + (logz - 2.0)) / 2
    assert losses.SoftmaxCrossEntropy()(z, y)[0] == pytest.approx(expected, rel=1e-12)
    # Smoothing s: target (1-s)*onehot + s/K, so the loss adds s * (mean(-log p) - (-log p_y)).
    s = 0.2
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    smooth = np.mean([(1 - s) * -logp[i, y[i]] + s * -logp[i].mean() for i in range(2)])
    assert losses.SoftmaxCrossEntropy(label_smoothing=s)(z, y)[0] == pytest.approx(smooth, rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0]])
    value, grad = losses.SoftmaxCrossEntropy()(z, np.array([2]))
    assert value == pytest.approx(2000.0) and np.all(np.isfinite(grad))


def test_mse_values():
    a = np.array([[0.5, 0.0], [0.0, 0.0]])
    y = np.array([0, 1])
    # squared errors: (0.5-1)^2 + 0 + 0 + (0-1)^2 = 1.25
    assert losses.MSE(half=True)(a, y)[0] == pytest.approx(0.5 * 1.25 / 2)
    assert losses.MSE(half=False)(a, y)[0] == pytest.approx(1.25 / 4)
    # on="sigmoid" compares sigmoid(outputs): sigmoid(0) = 0.5 everywhere.
    z = np.zeros((1, 2))
    assert losses.MSE(half=True, on="sigmoid")(z, np.array([0]))[0] == pytest.approx(0.5 * (0.25 + 0.25))


def test_registry_and_option_errors():
    assert losses.LOSSES == {"cross_entropy": losses.SoftmaxCrossEntropy, "mse": losses.MSE}
    with pytest.raises(ValueError, match=r"^cross_entropy: label_smoothing must be a number in \[0, 1\), got 1.0$"):
        losses.SoftmaxCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"^mse: on must be one of \['identity', 'sigmoid'\], got 'tanh'$"):
        losses.MSE(on="tanh")
    with pytest.raises(ValueError, match=r"^mse: half must be true or false, got 1$"):
        losses.MSE(half=1)


def test_the_loss_names_and_the_label_smoothing_range_have_one_source():
    """nnlib.options: the losses' registry, the params schema and the model files' metadata check all read it."""
    from nnlib import modelfile, options
    from nnlib.mnist.config import schema

    assert tuple(losses.LOSSES) == options.LOSS_NAMES
    name, smoothing = schema.TRAIN["loss"]["name"], schema.TRAIN["loss"]["label_smoothing"]
    assert name.expect == "'cross_entropy' or 'mse'" and smoothing.expect == "a number in [0, 1)"
    for value in (-0.1, 0.0, 0.5, 0.999, 1.0, float("nan"), True):
        accepted = options.valid_label_smoothing(value)
        assert accepted == (not isinstance(value, bool) and 0 <= value < 1)
        assert smoothing.check(value) == accepted
        meta = {"train": {"loss": {"name": "cross_entropy", "label_smoothing": value, "half": True}}}
        if accepted:
            assert losses.make_loss(modelfile.training_loss(meta, "m.npz")).label_smoothing == value
        else:
            with pytest.raises(ValueError):
                losses.SoftmaxCrossEntropy(label_smoothing=value)
            with pytest.raises(modelfile.ModelFileError):
                modelfile.training_loss(meta, "m.npz")
    for loss_name in ("cross_entropy", "mse", "hinge"):
        assert name.check(loss_name) == (loss_name in losses.LOSSES)
