"""Winograd convolution: the tile transforms, agreement with the direct GEMM, and when 'auto' uses it."""
from __future__ import annotations

import numpy as np
import pytest

from nnlib import winograd
from nnlib.layers import Conv2D


@pytest.mark.parametrize("k", winograd.KERNEL_SIZES)
def test_the_tile_transforms_compute_a_1d_correlation_exactly(k):
    a_t, g, b_t = winograd.tile_transforms(k)
    m = k - 1
    assert a_t.shape == (m, 2 * m) and g.shape == (2 * m, k) and b_t.shape == (2 * m, 2 * m)
    rng = np.random.default_rng(0)
    d, kernel = rng.standard_normal(2 * m), rng.standard_normal(k)
    direct = np.array([kernel @ d[i : i + k] for i in range(m)])
    np.testing.assert_allclose(a_t @ ((g @ kernel) * (b_t @ d)), direct, rtol=1e-12, atol=1e-12)


def _pair(out, k, pad, shape, dtype, seed=1):
    layers = []
    for algorithm in ("gemm", "winograd"):
        layer = Conv2D(out, k, pad=pad, algorithm=algorithm)
        layer.build(shape, np.random.default_rng(seed))
        layer.params = {name: (value + 0.25).astype(dtype) for name, value in layer.params.items()}
        layer._zero_grads()
        layers.append(layer)
    return layers


# (out, k, pad, input shape): exact tiles, a ragged last tile, padding, the default cnn's second conv
SHAPES = [(5, 5, 0, (4, 12, 12)), (3, 5, 0, (2, 7, 9)), (4, 3, 1, (3, 9, 8)), (2, 4, 2, (3, 7, 6)), (64, 5, 0, (32, 12, 12)),
          (16, 5, 0, (256, 8, 8))]  # the float32 gap grows with the input channels: about 1e-5 at 256


@pytest.mark.parametrize("out, k, pad, shape", SHAPES)
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_winograd_matches_the_gemm_convolution(out, k, pad, shape, dtype, rtol):
    """Same outputs and gradients as im2col + GEMM: to rounding in float64, to a few parts in a million of
    the largest value in float32 (the transforms' constants, up to 8 and 5.25, scale the rounding)."""
    gemm, wino = _pair(out, k, pad, shape, dtype)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, *shape)).astype(dtype)
    y_gemm, y_wino = gemm.forward(x, train=True), wino.forward(x, train=True)
    assert y_wino.dtype == dtype
    dy = rng.standard_normal(y_gemm.shape).astype(dtype)
    pairs = [(y_gemm, y_wino), (gemm.backward(dy), wino.backward(dy))]
    pairs += [(gemm.grads[name], wino.grads[name]) for name in gemm.grads]
    for expected, got in pairs:
        assert np.abs(got - expected).max() <= rtol * np.abs(expected).max()


def test_an_eval_forward_keeps_no_tiles_and_a_backward_after_it_rebuilds_them():
    gemm, wino = _pair(4, 5, 0, (8, 10, 10), np.float64)
    x = np.random.default_rng(3).standard_normal((2, 8, 10, 10))
    y = wino.forward(x, train=False)
    assert wino.tiles is None
    dy = np.ones_like(y)
    gemm.forward(x, train=True)
    np.testing.assert_allclose(wino.backward(dy), gemm.backward(dy), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wino.grads["W"], gemm.grads["W"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k, stride, channels, method", [
    (5, 1, 32, "winograd"), (5, 1, 8, "winograd"), (4, 1, 16, "winograd"),
    (5, 1, 1, "gemm"),  # a first layer: the a*a GEMMs would be (tiles, 1) @ (1, out)
    (3, 1, 32, "gemm"),  # F(2, 3) saves nothing here
    (5, 2, 32, "gemm"),  # no tiles for stride 2
])
def test_auto_uses_winograd_for_wide_stride_1_kernels_of_4_or_5(k, stride, channels, method):
    layer = Conv2D(16, k, stride=stride)
    layer.build((channels, 20, 20), np.random.default_rng(0))
    assert layer.method == method
    assert Conv2D(16, 5, algorithm="gemm").choose_method(32) == "gemm"


def test_auto_keeps_gemm_off_numpy_until_winograd_is_measured_there(monkeypatch):
    from nnlib import backend

    monkeypatch.setattr(backend, "current", lambda: object())  # any backend but NumPy
    assert Conv2D(64, 5).choose_method(32) == "gemm"
    assert Conv2D(64, 5, algorithm="winograd").choose_method(32) == "winograd"


@pytest.mark.parametrize("k", winograd.KERNEL_SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_cached_transforms_are_read_only(k, dtype):
    """Every Winograd layer of the process shares them: a write must raise, not zero every such conv."""
    for t in (*winograd.tile_transforms(k), *winograd.kron_transforms(k, dtype, np)):
        assert not t.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            t[0, 0] = 0.0
