"""nnlib against PyTorch (the oracle), in float64 with identical weights: layers forward and backward,
losses, optimizer steps, and a small CNN trained for 20 steps. Every test runs on each available
backend (the ``device`` fixture: NumPy, the strict CuPy stand-in, CuPy on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import build_layer, model_to_float64, on_device, on_host

from nnlib import losses, optim
from nnlib.model import Sequential

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-5, 1e-10  # float64 throughout; observed relative differences are below 1e-13

pytestmark = pytest.mark.usefixtures("device")  # every test, on every available backend


def assert_close(actual, expected, what=""):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else on_host(expected)
    np.testing.assert_allclose(on_host(actual), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def leaf(array):
    return torch.tensor(on_host(array), dtype=torch.float64, requires_grad=True)


def compare_layer(layer, torch_fn, torch_params, x, train=True, seed=3):
    """Forward x and backward a random dy through both; compare output, dx and every param grad.

    ``torch_fn(xt)`` computes the torch output; ``torch_params`` maps nnlib param names to
    ``(torch leaf, to_nnlib)`` where ``to_nnlib`` maps the torch grad to nnlib's layout.
    """
    y = layer.forward(on_device(x), train=train)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    dx = layer.backward(on_device(dy))

    xt = leaf(x)
    yt = torch_fn(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt, "output")
    assert_close(dx, xt.grad, "input grad")
    assert set(torch_params) == set(layer.grads)
    for name, (param, to_nnlib) in torch_params.items():
        assert_close(layer.grads[name], to_nnlib(param.grad.detach().numpy()), f"grad {name}")


def same(g):
    return g


def images(shape, batch=4, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *shape))


# --- layers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, stride, pad, bias, shape, algorithm", [
    (3, 1, 0, True, (3, 9, 8), "gemm"),
    (3, 1, 1, True, (3, 9, 8), "gemm"),
    (3, 2, 0, True, (2, 9, 8), "gemm"),
    (3, 2, 1, False, (2, 9, 8), "gemm"),
    (5, 2, 2, True, (1, 11, 7), "gemm"),
    (2, 1, 0, True, (2, 5, 6), "gemm"),
    (1, 1, 0, False, (4, 3, 5), "gemm"),
    (5, 1, 0, True, (8, 12, 12), "winograd"),
    (5, 1, 2, False, (3, 10, 7), "winograd"),
    (3, 1, 1, True, (3, 9, 8), "winograd"),
    (4, 1, 1, True, (2, 9, 8), "winograd"),
])
def test_conv2d(k, stride, pad, bias, shape, algorithm):
    layer = build_layer({"type": "conv", "out": 5, "k": k, "stride": stride, "pad": pad, "bias": bias,
                         "algorithm": algorithm}, shape)
    w = leaf(layer.params["W"])
    params = {"W": (w, same)}
    b = None
    if bias:
        b = leaf(layer.params["b"])
        params["b"] = (b, same)
    compare_layer(layer, lambda xt: F.conv2d(xt, w, b, stride=stride, padding=pad), params, images(shape))


@pytest.mark.parametrize("k, stride, shape", [(2, 2, (3, 8, 6)), (3, 2, (2, 9, 7)), (2, 2, (2, 7, 5)), (3, 1, (1, 5, 6))])
def test_maxpool2d(k, stride, shape):
    layer = build_layer({"type": "maxpool", "k": k, "stride": stride}, shape)
    compare_layer(layer, lambda xt: F.max_pool2d(xt, k, stride), {}, images(shape))


@pytest.mark.parametrize("k, stride", [(2, 2), (3, 2), (3, 1)])
def test_maxpool2d_ties_pick_the_same_element(k, stride):
    """Inputs from {0, 1}: most windows are tied; the gradient must land on the element torch picks."""
    shape = (2, 7, 8)
    layer = build_layer({"type": "maxpool", "k": k, "stride": stride}, shape)
    x = np.random.default_rng(1).integers(0, 2, size=(3, *shape)).astype(np.float64)
    x[0, 0] = 0.0  # every window of this channel fully tied
    compare_layer(layer, lambda xt: F.max_pool2d(xt, k, stride), {}, x)


@pytest.mark.parametrize("k, stride, shape", [(2, 2, (3, 8, 6)), (3, 2, (2, 9, 7)), (2, 2, (2, 7, 5))])
def test_avgpool2d(k, stride, shape):
    layer = build_layer({"type": "avgpool", "k": k, "stride": stride}, shape)
    compare_layer(layer, lambda xt: F.avg_pool2d(xt, k, stride), {}, images(shape))


def test_global_avg_pool():
    layer = build_layer({"type": "gap"}, (3, 5, 4))
    compare_layer(layer, lambda xt: xt.mean(dim=(2, 3)), {}, images((3, 5, 4)))


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    layer = build_layer({"type": "dense", "out": 6, "bias": bias}, (7,))
    w_t = leaf(layer.params["W"].T)  # torch stores (out, in)
    params = {"W": (w_t, lambda g: g.T)}
    b = None
    if bias:
        b = leaf(layer.params["b"])
        params["b"] = (b, same)
    compare_layer(layer, lambda xt: F.linear(xt, w_t, b), params, images((7,), batch=5))


def test_dropout_p0_is_identity_in_training():
    layer = build_layer({"type": "dropout", "p": 0.0}, (3, 4, 4))
    compare_layer(layer, lambda xt: F.dropout(xt, p=0.0, training=True), {}, images((3, 4, 4)))


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "flatten"])
def test_elementwise_and_flatten(name):
    fn = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "flatten": lambda t: t.flatten(1)}[name]
    layer = build_layer({"type": name}, (2, 3, 4))
    compare_layer(layer, fn, {}, images((2, 3, 4)))


def _batchnorm_pair(shape, momentum, seed=0):
    """An nnlib BatchNorm and a torch BatchNorm1d/2d with the same gamma, beta and running stats."""
    layer = build_layer({"type": "batchnorm", "momentum": momentum}, shape, seed=seed)
    rng = np.random.default_rng(seed + 1)
    layer.buffers["running_mean"][...] = on_device(rng.standard_normal(shape[0]))
    layer.buffers["running_var"][...] = on_device(rng.uniform(0.5, 2.0, shape[0]))
    cls = torch.nn.BatchNorm1d if len(shape) == 1 else torch.nn.BatchNorm2d
    ref = cls(shape[0], eps=layer.eps, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(on_host(layer.params["gamma"])))
        ref.bias.copy_(torch.tensor(on_host(layer.params["beta"])))
        ref.running_mean.copy_(torch.tensor(on_host(layer.buffers["running_mean"])))
        ref.running_var.copy_(torch.tensor(on_host(layer.buffers["running_var"])))
    params = {"gamma": (ref.weight, same), "beta": (ref.bias, same)}
    return layer, ref, params


@pytest.mark.parametrize("shape", [(5,), (3, 4, 5)], ids=["1d", "2d"])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_train_mode(shape, momentum):
    layer, ref, params = _batchnorm_pair(shape, momentum)
    x = images(shape, batch=6) * 2.0 + 0.5
    ref.train()
    compare_layer(layer, ref, params, x, train=True)
    assert_close(layer.buffers["running_mean"], ref.running_mean, "running_mean")
    assert_close(layer.buffers["running_var"], ref.running_var, "running_var")
    # A second batch: the running statistics keep following torch's (unbiased-variance) update.
    ref.zero_grad()
    compare_layer(layer, ref, params, images(shape, batch=6, seed=9), train=True)
    assert_close(layer.buffers["running_mean"], ref.running_mean, "running_mean after 2 batches")
    assert_close(layer.buffers["running_var"], ref.running_var, "running_var after 2 batches")


@pytest.mark.parametrize("shape", [(5,), (3, 4, 5)], ids=["1d", "2d"])
def test_batchnorm_eval_mode(shape):
    layer, ref, params = _batchnorm_pair(shape, 0.1)
    running = {k: on_host(v) for k, v in layer.buffers.items()}
    ref.eval()
    compare_layer(layer, ref, params, images(shape, batch=6), train=False)
    for name, value in running.items():
        assert np.array_equal(on_host(layer.buffers[name]), value), f"{name} changed in eval mode"


# --- losses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.25])
def test_cross_entropy_with_label_smoothing(smoothing):
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((8, 5)) * 3.0, rng.integers(0, 5, size=8)
    value, grad = losses.SoftmaxCrossEntropy(label_smoothing=smoothing)(on_device(z), on_device(y))
    zt = leaf(z)
    ref = F.cross_entropy(zt, torch.tensor(y), label_smoothing=smoothing)
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=RTOL)
    assert_close(grad, zt.grad, "d logits")


def test_mse_mean_matches_mse_loss():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((6, 4)), rng.integers(0, 4, size=6)
    value, grad = losses.MSE(half=False)(on_device(z), on_device(y))
    zt = leaf(z)
    ref = F.mse_loss(zt, F.one_hot(torch.tensor(y), 4).double())
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=RTOL)
    assert_close(grad, zt.grad, "d outputs")


# --- optimizers ---------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": (lambda p, **kw: optim.SGD(p, lr=0.1, **kw), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd-momentum": (lambda p, **kw: optim.SGD(p, lr=0.1, momentum=0.9, **kw),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "sgd-nesterov-wd": (lambda p, **kw: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, **kw),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam-wd": (lambda p, **kw: optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, **kw),
                lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    "adamw": (lambda p, **kw: optim.AdamW(p, lr=0.05, weight_decay=0.1, **kw),
              lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
}


@pytest.mark.parametrize("weights_only", [False, True], ids=["decay-all", "decay-weights-only"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_match_torch(name, weights_only):
    make_ours, make_ref = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    start = {"0.dense.W": rng.standard_normal((3, 4)), "0.dense.b": rng.standard_normal(4)}
    ours = {k: on_device(v.copy()) for k, v in start.items()}
    grads = {k: on_device(np.zeros_like(v)) for k, v in start.items()}
    kw = {"decay_filter": optim.decay_weights_only} if weights_only else {}
    opt = make_ours([(k, ours[k], grads[k]) for k in start], **kw)

    ref = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    bias_group = {"params": [ref["0.dense.b"]], **({"weight_decay": 0.0} if weights_only else {})}
    ref_opt = make_ref([{"params": [ref["0.dense.W"]]}, bias_group])

    for step in range(3):
        for k in start:
            grads[k][...] = on_device(rng.standard_normal(start[k].shape))
            ref[k].grad = torch.tensor(on_host(grads[k]))
        opt.step()
        ref_opt.step()
        for k in start:
            np.testing.assert_allclose(on_host(ours[k]), ref[k].detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} {k} step {step + 1}")


# --- whole model --------------------------------------------------------------------------------

CNN = [
    {"type": "conv", "out": 4, "k": 3, "pad": 1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "maxpool", "k": 2},
    {"type": "flatten"},
    {"type": "dense", "out": 10},
]
MODEL_RTOL = 1e-9  # float64; the curves agree to ~6e-14 in practice


def _torch_copy(model):
    conv, bn, dense = model.layers[0], model.layers[1], model.layers[5]
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 5, 10),
    ).double()
    with torch.no_grad():
        ref[0].weight.copy_(torch.tensor(on_host(conv.params["W"])))
        ref[0].bias.copy_(torch.tensor(on_host(conv.params["b"])))
        ref[1].weight.copy_(torch.tensor(on_host(bn.params["gamma"])))
        ref[1].bias.copy_(torch.tensor(on_host(bn.params["beta"])))
        ref[5].weight.copy_(torch.tensor(on_host(dense.params["W"]).T))
        ref[5].bias.copy_(torch.tensor(on_host(dense.params["b"])))
    return ref


def test_small_cnn_follows_torch_loss_curve_for_20_sgd_momentum_steps():
    rng = np.random.default_rng(0)
    model = model_to_float64(Sequential.from_specs(CNN, (1, 8, 10), rng))
    for layer in model.layers:  # non-zero biases / gamma / beta, so every parameter matters
        for value in layer.params.values():
            if value.ndim == 1:
                value[...] = on_device(rng.normal(float(value.mean()), 0.1, value.shape))
    ref = _torch_copy(model)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, flat=(model.flat_params, model.flat_grads))  # as in fit
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    loss_fn = losses.SoftmaxCrossEntropy()

    ours, theirs = [], []
    model.train()
    ref.train()
    for _ in range(20):
        x, y = rng.standard_normal((16, 1, 8, 10)), rng.integers(0, 10, size=16)
        value, grad = loss_fn(model(on_device(x)), on_device(y))
        model.backward(grad)
        opt.step()
        ours.append(value)

        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(torch.tensor(x)), torch.tensor(y))
        ref_loss.backward()
        ref_opt.step()
        theirs.append(ref_loss.item())

    np.testing.assert_allclose(ours, theirs, rtol=MODEL_RTOL)
    assert ours[-1] < ours[0]  # it is actually learning
    # Eval mode after training: the running statistics matter and must agree too.
    x = rng.standard_normal((8, 1, 8, 10))
    ref.eval()
    with torch.no_grad():
        np.testing.assert_allclose(on_host(model.predict_logits(on_device(x))), ref(torch.tensor(x)).numpy(),
                                   rtol=MODEL_RTOL, atol=1e-12)
