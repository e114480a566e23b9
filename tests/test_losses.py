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
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.SoftmaxCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="'on'"):
        losses.MSE(on="tanh")
