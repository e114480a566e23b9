"""Layer gradients by central differences (float64), plus the behaviour finite differences cannot see."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import build_layer, check_layer_gradients, on_device

from nnlib import layers

# (spec, input shape without the batch axis). Batch size 3 everywhere; images are non-square.
GRADCHECK_CASES = {
    "dense": ({"type": "dense", "out": 4}, (5,)),
    "dense-nobias": ({"type": "dense", "out": 4, "bias": False}, (5,)),
    "relu": ({"type": "relu"}, (2, 4, 3)),
    "sigmoid": ({"type": "sigmoid"}, (6,)),
    "tanh": ({"type": "tanh"}, (2, 3, 4)),
    "flatten": ({"type": "flatten"}, (2, 3, 4)),
    "conv-s1-p0": ({"type": "conv", "out": 3, "k": 3}, (2, 6, 5)),
    "conv-s1-p1": ({"type": "conv", "out": 3, "k": 3, "pad": 1}, (2, 6, 5)),
    "conv-s2-p0": ({"type": "conv", "out": 3, "k": 3, "stride": 2}, (2, 7, 6)),
    "conv-s2-p1": ({"type": "conv", "out": 3, "k": 3, "stride": 2, "pad": 1}, (2, 7, 6)),
    "conv-s2-p1-nobias": ({"type": "conv", "out": 3, "k": 3, "stride": 2, "pad": 1, "bias": False}, (2, 7, 6)),
    "conv-k2-s1-p1": ({"type": "conv", "out": 2, "k": 2, "pad": 1}, (3, 4, 5)),
    "conv-k1": ({"type": "conv", "out": 2, "k": 1}, (3, 4, 5)),
    "conv-winograd-k5": ({"type": "conv", "out": 3, "k": 5, "algorithm": "winograd"}, (2, 12, 9)),
    "conv-winograd-k3-p1": ({"type": "conv", "out": 3, "k": 3, "pad": 1, "algorithm": "winograd"}, (2, 6, 5)),
    "conv-winograd-k4-p2-nobias": ({"type": "conv", "out": 2, "k": 4, "pad": 2, "bias": False, "algorithm": "winograd"},
                                   (3, 7, 6)),
    "maxpool-2": ({"type": "maxpool", "k": 2}, (2, 6, 4)),
    "maxpool-3-s2-overlap": ({"type": "maxpool", "k": 3, "stride": 2}, (2, 7, 5)),
    "maxpool-2-odd-input": ({"type": "maxpool", "k": 2}, (1, 5, 7)),
    "avgpool-2": ({"type": "avgpool", "k": 2}, (2, 6, 4)),
    "avgpool-3-s2-overlap": ({"type": "avgpool", "k": 3, "stride": 2}, (2, 7, 5)),
    "gap": ({"type": "gap"}, (3, 4, 5)),
    "batchnorm-1d": ({"type": "batchnorm"}, (4,)),
    "batchnorm-2d": ({"type": "batchnorm"}, (3, 4, 5)),
}


def _input(shape, seed=2, batch=3):
    return np.random.default_rng(seed).standard_normal((batch, *shape))


@pytest.mark.parametrize("spec, shape", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_gradients_match_finite_differences(spec, shape, device):
    layer = build_layer(spec, shape)
    check_layer_gradients(layer, _input(shape), train=True)


@pytest.mark.parametrize("shape", [(4,), (3, 4, 5)], ids=["1d", "2d"])
def test_batchnorm_eval_mode_gradients(shape, device):
    """In eval mode the statistics are constants, so the layer is affine in x."""
    layer = build_layer({"type": "batchnorm"}, shape)
    rng = np.random.default_rng(5)
    layer.buffers["running_mean"][...] = on_device(rng.standard_normal(shape[0]))
    layer.buffers["running_var"][...] = on_device(rng.uniform(0.5, 2.0, shape[0]))
    check_layer_gradients(layer, _input(shape), train=False)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4)])
def test_dropout_gradients_with_fixed_mask(shape):
    layer = build_layer({"type": "dropout", "p": 0.4}, shape)

    def same_mask():
        layer.rng = np.random.default_rng(123)

    errors = check_layer_gradients(layer, _input(shape), train=True, before_forward=same_mask)
    assert set(errors) == {"x"}
    # The mask really drops something, and the survivors are scaled by 1/(1-p).
    same_mask()
    y = layer.forward(np.ones((3, *shape)), train=True)
    values = np.unique(y)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.6)


@pytest.mark.parametrize("spec, shape", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_build_shape_matches_forward_shape(spec, shape):
    layer = layers.from_spec(spec)
    out_shape = layer.build(shape, np.random.default_rng(0))
    y = layer.forward(_input(shape).astype(np.float32), train=True)
    assert y.shape == (3, *out_shape)


def test_dropout_eval_is_identity_and_train_drops_about_p():
    layer = build_layer({"type": "dropout", "p": 0.25}, (1000,))
    x = np.ones((20, 1000))
    assert layer.forward(x, train=False) is x
    y = layer.forward(x, train=True)
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert np.allclose(y[y != 0], 1 / 0.75)
    assert np.array_equal(layer.backward(np.ones_like(x)), y)  # gradient uses the same mask


def test_dropout_rejects_p_outside_unit_interval():
    with pytest.raises(layers.LayerSpecError, match=r"dropout: p must be a number in \[0, 1\), got 1.0"):
        layers.from_spec({"type": "dropout", "p": 1.0})


def _window_grads(dx, k):
    """dx: (N, C, H, W) with H, W multiples of k -> (N, C, Ho, Wo, k*k) per non-overlapping window."""
    n, c, h, w = dx.shape
    return dx.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // k, w // k, k * k)


def test_maxpool_ties_send_the_gradient_to_exactly_one_element():
    layer = build_layer({"type": "maxpool", "k": 2}, (2, 4, 6))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(3, 2, 4, 6)).astype(np.float64)  # many windows with tied maxima
    x[0, 0] = 1.0  # whole channel tied
    y = layer.forward(x, train=True)
    dy = rng.uniform(1.0, 2.0, size=y.shape)
    win = _window_grads(layer.backward(dy), 2)
    assert np.all((win != 0).sum(axis=-1) == 1)
    assert np.allclose(win.sum(axis=-1), dy)
    # The one that gets it is the first maximum in row-major window order (PyTorch's CPU kernel).
    xwin = _window_grads(x, 2)
    assert np.array_equal(np.argmax(win != 0, axis=-1), np.argmax(xwin, axis=-1))


@pytest.mark.parametrize("spec, shape", [
    ({"type": "conv", "out": 3, "k": 3, "pad": 1}, (2, 6, 5)),
    ({"type": "conv", "out": 3, "k": 3, "stride": 2, "bias": False}, (2, 7, 6)),
    ({"type": "maxpool", "k": 2}, (2, 6, 4)),
    ({"type": "maxpool", "k": 3, "stride": 2}, (2, 7, 5)),
], ids=["conv-p1", "conv-s2-nobias", "maxpool-2", "maxpool-3-s2"])
def test_eval_forward_keeps_no_buffers_and_backward_still_works(spec, shape):
    """Eval mode drops what only backward needs (conv's im2col columns, maxpool's argmax); a backward
    after an eval forward rebuilds it, so it matches the train-mode gradients exactly."""
    layer = build_layer(spec, shape)
    x = _input(shape)
    y_train = layer.forward(x, train=True)
    dy = np.random.default_rng(4).standard_normal(y_train.shape)
    dx_train = layer.backward(dy.copy())
    grads_train = {k: v.copy() for k, v in layer.grads.items()}
    y_eval = layer.forward(x, train=False)
    assert getattr(layer, "cols", None) is None and getattr(layer, "argmax", None) is None
    assert np.array_equal(y_eval, y_train)
    assert np.array_equal(layer.backward(dy.copy()), dx_train)
    for key, value in grads_train.items():
        assert np.array_equal(layer.grads[key], value), key


def test_maxpool_forward_values():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    layer = build_layer({"type": "maxpool", "k": 2}, (1, 4, 4))
    assert np.array_equal(layer.forward(x)[0, 0], [[5.0, 7.0], [13.0, 15.0]])
    layer = build_layer({"type": "avgpool", "k": 2}, (1, 4, 4))
    assert np.array_equal(layer.forward(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_conv_is_cross_correlation():
    """A kernel with a single 1 at (0, 1) shifts the image: y[i, j] = x[i, j + 1]."""
    layer = build_layer({"type": "conv", "out": 1, "k": 2, "bias": False}, (1, 3, 4))
    layer.params["W"][...] = 0.0
    layer.params["W"][0, 0, 0, 1] = 1.0
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    assert np.array_equal(layer.forward(x)[0, 0], x[0, 0, :2, 1:])


def test_batchnorm_train_normalises_and_updates_running_stats():
    layer = build_layer({"type": "batchnorm", "momentum": 0.1}, (3, 2, 2), randomize=False)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 3, 2, 2))
    y = layer.forward(x, train=True)
    assert np.allclose(y.mean(axis=(0, 2, 3)), 0.0)
    assert np.allclose(y.var(axis=(0, 2, 3)), 1.0, atol=1e-4)  # eps = 1e-5
    assert np.allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    assert np.allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1))


def test_first_layer_skips_its_input_gradient():
    layer = build_layer({"type": "conv", "out": 2, "k": 3}, (1, 5, 5))
    x = _input((1, 5, 5))
    y = layer.forward(x, train=True)
    dy = np.ones_like(y)
    layer.backward(dy)
    dw = layer.grads["W"].copy()
    layer.skip_input_grad = True
    assert layer.backward(dy) is None
    assert np.array_equal(layer.grads["W"], dw)  # parameter gradients are still computed


@pytest.mark.parametrize("spec", [
    {"type": "dense", "out": 7, "init": "glorot_uniform", "bias": False},
    {"type": "conv", "out": 4, "k": 5, "stride": 2, "pad": 1},
    {"type": "maxpool", "k": 3},
    {"type": "dropout", "p": 0.1},
    {"type": "batchnorm", "momentum": 0.2},
])
def test_config_round_trips_through_from_spec(spec):
    layer = layers.from_spec(spec)
    cfg = layer.config()
    assert {k: cfg[k] for k in spec} == spec
    assert layers.from_spec(cfg).config() == cfg


def _listed_order(model, x, dy):
    """Forward and backward through the layers exactly as listed (no ReLU/max-pool reordering)."""
    for layer in model.layers:
        x = layer.forward(x, train=True)
    out = x
    for layer in reversed(model.layers):
        dy = layer.backward(dy)
    return out, dy


@pytest.mark.parametrize("pool", [{"type": "maxpool", "k": 2}, {"type": "maxpool", "k": 3}])
def test_relu_then_maxpool_runs_pooled_first_with_identical_results(pool):
    from nnlib.model import Sequential, run_order

    specs = [{"type": "conv", "out": 4, "k": 3}, {"type": "relu"}, pool, {"type": "flatten"}, {"type": "dense", "out": 10}]
    assert run_order([layers.from_spec(s) for s in specs]) == [0, 2, 1, 3, 4]
    assert run_order([layers.from_spec(s) for s in [{"type": "relu"}, pool, pool]]) == [1, 2, 0]
    overlapping = {"type": "maxpool", "k": 3, "stride": 2}  # keeps the listed order (see run_order)
    assert run_order([layers.from_spec(s) for s in [{"type": "relu"}, overlapping]]) == [0, 1]
    x = np.random.default_rng(0).integers(-2, 3, (4, 2, 9, 9)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    reordered = Sequential.from_specs(specs, (2, 9, 9), np.random.default_rng(3))
    listed = Sequential.from_specs(specs, (2, 9, 9), np.random.default_rng(3))
    listed.layers[0].skip_input_grad = reordered.layers[0].skip_input_grad = False  # compare dx too
    weights = np.random.default_rng(4).integers(-1, 2, listed.layers[0].params["W"].shape)
    for model in (reordered, listed):  # integer conv outputs: many tied maxima and exact zeros
        model.layers[0].params["W"][...] = weights
    reordered.train()
    out = reordered.forward(x)
    dx = reordered.backward(dy)
    out_listed, dx_listed = _listed_order(listed, x, dy)
    assert out.tobytes() == out_listed.tobytes()  # bit for bit, signed zeros included
    assert dx.tobytes() == dx_listed.tobytes()
    for a, b in zip(reordered.layers, listed.layers):
        for key in a.grads:
            assert a.grads[key].tobytes() == b.grads[key].tobytes(), key


def _norm_and_pool(gamma, k=2, shape=(3, 3, 8, 6), seed=0):
    """A float64 BatchNorm with the given gamma and beta ~ N(0, 1), a k x k max-pool, and an input x."""
    rng = np.random.default_rng(seed)
    norm = build_layer({"type": "batchnorm"}, shape[1:], seed=seed)
    norm.params["gamma"][...] = gamma
    pool = layers.from_spec({"type": "maxpool", "k": k})
    pool.build(shape[1:], rng)
    return norm, pool, rng.standard_normal(shape)


def _two_layers(norm, pool, x, dz, train=True):
    y = pool.forward(norm.forward(x, train=train), train=train)
    return y, norm.backward(pool.backward(dz)), {k: v.copy() for k, v in norm.grads.items()}


@pytest.mark.parametrize("k, shape", [(2, (3, 3, 8, 6)), (3, (2, 4, 7, 9))])  # (3: windows leave a border)
def test_batchnorm_maxpool_unit_pools_first_and_matches_the_two_layers(k, shape):
    norm, pool, x = _norm_and_pool(np.linspace(0.5, 2.0, shape[1]), k, shape)
    unit = layers.BatchNormMaxPool(norm, pool)
    y = unit.forward(x, train=True)
    assert unit.fused
    dz = np.random.default_rng(5).standard_normal(y.shape)
    dx = unit.backward(dz)
    grads = {key: value.copy() for key, value in norm.grads.items()}
    fresh_norm, fresh_pool, _ = _norm_and_pool(np.linspace(0.5, 2.0, shape[1]), k, shape)
    y_two, dx_two, grads_two = _two_layers(fresh_norm, fresh_pool, x, dz)
    # The normalisation is increasing, so the pooled values are the same numbers; the gradient sums
    # run in another order.
    np.testing.assert_array_equal(y, y_two)
    np.testing.assert_allclose(dx, dx_two, rtol=1e-10, atol=1e-12)
    for key in grads:
        np.testing.assert_allclose(grads[key], grads_two[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(norm.buffers[key], fresh_norm.buffers[key])
    check_layer_gradients(unit, x)  # and against central differences (dx; gamma and beta are checked above)


def test_batchnorm_maxpool_unit_gives_the_same_result_in_cache_sized_blocks(monkeypatch):
    """The unit centres, sums and pools block by block of images (functional.batch_blocks); with blocks
    of one image the results match the two layers as with one block for the whole batch."""
    from nnlib import functional

    monkeypatch.setattr(functional, "BLOCK_BYTES", 1)  # one image per block
    shape = (5, 3, 8, 6)
    norm, pool, x = _norm_and_pool(np.linspace(0.5, 2.0, shape[1]), 2, shape)
    unit = layers.BatchNormMaxPool(norm, pool)
    assert len(functional.batch_blocks(shape[0], 1, np)) == shape[0]
    y = unit.forward(x, train=True)
    dz = np.random.default_rng(5).standard_normal(y.shape)
    dx = unit.backward(dz)
    fresh_norm, fresh_pool, _ = _norm_and_pool(np.linspace(0.5, 2.0, shape[1]), 2, shape)
    y_two, dx_two, grads_two = _two_layers(fresh_norm, fresh_pool, x, dz)
    np.testing.assert_allclose(y, y_two, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_two, rtol=1e-10, atol=1e-12)
    for key in grads_two:
        np.testing.assert_allclose(norm.grads[key], grads_two[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(norm.buffers[key], fresh_norm.buffers[key], rtol=1e-12)


@pytest.mark.parametrize("gamma", [[1.0, -0.5, 2.0], [1.0, 0.0, 2.0]])
def test_batchnorm_maxpool_unit_runs_the_two_layers_when_a_gamma_is_not_positive(gamma):
    norm, pool, x = _norm_and_pool(gamma)
    unit = layers.BatchNormMaxPool(norm, pool)
    y = unit.forward(x, train=True)
    assert not unit.fused
    dz = np.random.default_rng(5).standard_normal(y.shape)
    dx = unit.backward(dz)
    fresh_norm, fresh_pool, _ = _norm_and_pool(gamma)
    y_two, dx_two, grads_two = _two_layers(fresh_norm, fresh_pool, x, dz)
    assert y.tobytes() == y_two.tobytes() and dx.tobytes() == dx_two.tobytes()
    assert all(norm.grads[key].tobytes() == grads_two[key].tobytes() for key in grads_two)
    assert not unit.fusable(x, train=False)  # eval mode: always the two layers (running statistics)


def test_sequential_fuses_batchnorm_with_the_max_pool_after_it():
    from nnlib.model import Sequential, run_units

    spec = layers.from_spec
    units = run_units([spec({"type": "batchnorm"}), spec({"type": "maxpool", "k": 2}), spec({"type": "relu"})])
    assert [type(u).__name__ for u in units] == ["BatchNormMaxPool", "ReLU"]
    for kept in ([spec({"type": "batchnorm"}), spec({"type": "maxpool", "k": 3, "stride": 2})],  # overlapping
                 [spec({"type": "maxpool", "k": 2}), spec({"type": "batchnorm"})],
                 [spec({"type": "batchnorm"}), spec({"type": "avgpool", "k": 2})]):
        assert [type(u) for u in run_units(kept)] == [type(layer) for layer in kept]
    specs = [{"type": "conv", "out": 4, "k": 3}, {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool", "k": 2},
             {"type": "flatten"}, {"type": "dense", "out": 10}]
    model = Sequential.from_specs(specs, (1, 8, 8), np.random.default_rng(0))
    assert [u.type_name for u in model.layers_in_run_order] == ["conv", "batchnorm+maxpool", "relu", "flatten", "dense"]
    assert model.layers_in_run_order[1].parts == (model.layers[1], model.layers[3])


def test_batchnorm_kernels_are_pure_with_an_explicit_cache():
    """functional.batchnorm_forward / batchnorm_backward (CS231n's shape): no state, the cache says it all;
    dx, dgamma, dbeta against central differences of sum(out * w) in float64."""
    from nnlib import functional

    rng = np.random.default_rng(0)
    x, gamma, beta = rng.standard_normal((4, 3, 5, 2)), rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    w = rng.standard_normal(x.shape)
    before = x.copy()
    out, cache = functional.batchnorm_forward(x, gamma, beta, 1e-5)
    assert np.array_equal(x, before) and cache.batch_stats and cache.count == 4 * 5 * 2
    np.testing.assert_allclose(cache.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(cache.var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    dx, dgamma, dbeta = functional.batchnorm_backward(w, cache)

    def loss(x_, gamma_, beta_):
        return float((functional.batchnorm_forward(x_, gamma_, beta_, 1e-5)[0] * w).sum())

    for name, array, grad in (("x", x, dx), ("gamma", gamma, dgamma), ("beta", beta, dbeta)):
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            saved = array[i]
            array[i] = saved + 1e-6
            up = loss(x, gamma, beta)
            array[i] = saved - 1e-6
            numeric[i] = (up - loss(x, gamma, beta)) / 2e-6
            array[i] = saved
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=name)
    assert functional.batchnorm_backward(w, cache, input_grad=False)[0] is None
    # Fixed statistics (eval): an affine map, dx = gamma / sqrt(var + eps) * dout.
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    out, cache = functional.batchnorm_forward(x, gamma, beta, 1e-5, mean, var)
    scale = gamma / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(out, (x - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None], rtol=1e-12)
    np.testing.assert_allclose(functional.batchnorm_backward(w, cache)[0], w * scale[:, None, None], rtol=1e-12)


def test_the_fused_kernel_is_batchnorm_then_maxpool():
    from nnlib import functional

    rng = np.random.default_rng(1)
    x, gamma, beta = rng.standard_normal((3, 4, 6, 6)), rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    out, cache = functional.batchnorm_maxpool_forward(x, gamma, beta, 1e-5, 2, 2)
    normed, norm_cache = functional.batchnorm_forward(x, gamma, beta, 1e-5)
    pooled, argmax = functional.maxpool_forward(normed, 2, 2)
    np.testing.assert_allclose(out, pooled, rtol=1e-12)
    np.testing.assert_allclose(cache.var, norm_cache.var, rtol=1e-12)
    dz = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = functional.batchnorm_maxpool_backward(dz, cache)
    dx_two, dgamma_two, dbeta_two = functional.batchnorm_backward(
        functional.maxpool_backward(dz, argmax, x.shape, functional.is_channels_last(normed), 2, 2), norm_cache)
    for got, want in ((dx, dx_two), (dgamma, dgamma_two), (dbeta, dbeta_two)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 32, 28, 28), (37, 16, 9, 9), (256, 64)])
def test_float32_batch_statistics_are_as_precise_as_pytorchs(shape):
    """Integer-valued float32 inputs (pixels): the batch mean and variance within 2e-7 of a float64
    reference, as PyTorch's CPU batch norm (float64 accumulators, ~5e-8). Running float32 sums lose
    ~1e-4 on the variance here."""
    from nnlib import functional

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.float32)
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last, as after a conv
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean64, var64 = x.astype(np.float64).mean(axis=axes), x.astype(np.float64).var(axis=axes)
    c = shape[1]
    caches = [functional.batchnorm_forward(x, np.ones(c, np.float32), np.zeros(c, np.float32), 1e-5)[1]]
    if x.ndim == 4 and shape[2] % 2 == 0:
        caches.append(functional.batchnorm_maxpool_forward(x, np.ones(c, np.float32), np.zeros(c, np.float32), 1e-5, 2, 2)[1])
    for cache in caches:
        assert cache.mean.dtype == cache.var.dtype == np.float32
        assert np.max(np.abs(cache.mean - mean64) / mean64) < 2e-7
        assert np.max(np.abs(cache.var - var64) / var64) < 2e-7


@pytest.mark.parametrize("m", [1, 7, 8, 9, 64, 71, 8 * 8 * 8 + 13, 5000])
def test_column_sums_f64_add_every_row_once(m):
    """The tree of column_sums_f64: every row counted once, whatever rows each level leaves over."""
    from nnlib import functional

    rng = np.random.default_rng(m)
    a, b = rng.standard_normal((m, 3)).astype(np.float32), rng.standard_normal((m, 3)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_allclose(functional.column_sums_f64(a), a64.sum(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(functional.column_sums_f64(a, b), (a64 * b64).sum(axis=0), rtol=1e-6, atol=1e-6)
    assert functional.column_sums_f64(a).dtype == np.float64
