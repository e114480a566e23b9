"""Layers in the CS231n / numpy-ml style.

Every layer keeps its learnable arrays in ``self.params`` and their gradients, same keys and shapes,
in ``self.grads``. ``forward`` stores what ``backward`` needs; ``backward(dy)`` fills ``self.grads``
and returns the gradient with respect to the input. Shapes exclude nothing: ``x: (N, ...)``.

A layer is built from a spec dict such as ``{"type": "conv", "out": 32, "k": 5}``: the ``type``
picks the class in :data:`LAYERS`, the other keys are its constructor arguments. ``build`` is given
the input shape (without the batch axis) and returns the output shape, so shapes are inferred.
"""
from __future__ import annotations

import inspect

import numpy as np

from . import init as initializers
from .backend import DEFAULT_DTYPE, get_array_module, to_device
from .functional import col2im, conv_output_size, im2col, sigmoid


class ShapeError(ValueError):
    """A layer cannot accept the shape that reaches it."""


class Layer:
    """Base class: no parameters, identity shape, and a spec that round-trips through ``config``."""

    type_name = "layer"
    skip_input_grad = False  # set on the first layer: its input gradient is never needed

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}  # non-learnable state that is saved with the model (BN statistics)

    def build(self, input_shape: tuple, rng: np.random.Generator) -> tuple:
        """Create parameters for inputs of ``input_shape`` (no batch axis); return the output shape."""
        return input_shape

    def forward(self, x, train: bool = False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def config(self) -> dict:
        """The spec this layer was made from, with every default filled in."""
        sig = inspect.signature(type(self).__init__)
        cfg = {"type": self.type_name}
        for name in list(sig.parameters)[1:]:
            cfg[name] = getattr(self, name)
        return cfg

    def _zero_grads(self):
        xp = get_array_module(*self.params.values())
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected: y = x @ W + b.   x: (N, in) -> y: (N, out); W: (in, out), b: (out,)."""

    type_name = "dense"

    def __init__(self, out: int, init: str = "he_normal", bias: bool = True):
        super().__init__()
        self.out, self.init, self.bias = out, init, bias

    def build(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ShapeError(f"dense expects flat inputs (features,), got {input_shape}: add {{type: flatten}} before it")
        fan_in = input_shape[0]
        self.params["W"] = to_device(initializers.get(self.init)((fan_in, self.out), rng))
        if self.bias:
            self.params["b"] = to_device(np.zeros(self.out, DEFAULT_DTYPE))
        self._zero_grads()
        return (self.out,)

    def forward(self, x, train=False):
        self.x = x
        y = x @ self.params["W"]
        if self.bias:
            y += self.params["b"]
        return y

    def backward(self, dy):
        self.grads["W"][...] = self.x.T @ dy
        if self.bias:
            self.grads["b"][...] = dy.sum(axis=0)
        return None if self.skip_input_grad else dy @ self.params["W"].T


class ReLU(Layer):
    """max(x, 0), elementwise. Any shape."""

    type_name = "relu"

    def forward(self, x, train=False):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), elementwise. Any shape."""

    type_name = "sigmoid"

    def forward(self, x, train=False):
        self.y = sigmoid(x)
        return self.y

    def backward(self, dy):
        return dy * self.y * (1.0 - self.y)


class Tanh(Layer):
    """tanh(x), elementwise. Any shape."""

    type_name = "tanh"

    def forward(self, x, train=False):
        xp = get_array_module(x)
        self.y = xp.tanh(x)
        return self.y

    def backward(self, dy):
        return dy * (1.0 - self.y * self.y)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C order (matches torch.flatten)."""

    type_name = "flatten"

    def build(self, input_shape, rng):
        return (int(np.prod(input_shape)),)

    def forward(self, x, train=False):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability p and scale the rest by 1/(1-p).

    In eval mode it is the identity. The mask comes from the layer's own Generator, seeded at build.
    """

    type_name = "dropout"

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def build(self, input_shape, rng):
        self.rng = np.random.default_rng(rng.integers(2**63))
        return input_shape

    def forward(self, x, train=False):
        if not train or self.p == 0.0:
            self.mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        self.mask = to_device(keep.astype(x.dtype) / np.asarray(1.0 - self.p, x.dtype))
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + one batched GEMM.

    x: (N, C, H, W) -> y: (N, out, Ho, Wo); W: (out, C, k, k), b: (out,).
    """

    type_name = "conv"

    def __init__(self, out: int, k: int = 3, stride: int = 1, pad: int = 0, bias: bool = True, init: str = "he_normal"):
        super().__init__()
        self.out, self.k, self.stride, self.pad, self.bias, self.init = out, k, stride, pad, bias, init

    def build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ShapeError(f"conv expects images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        ho, wo = (conv_output_size(s, self.k, self.stride, self.pad) for s in (h, w))
        if ho < 1 or wo < 1:
            raise ShapeError(f"conv kernel {self.k} (pad {self.pad}) does not fit a {h}x{w} input")
        self.params["W"] = to_device(initializers.get(self.init)((self.out, c, self.k, self.k), rng))
        if self.bias:
            self.params["b"] = to_device(np.zeros(self.out, DEFAULT_DTYPE))
        self._zero_grads()
        return (self.out, ho, wo)

    def forward(self, x, train=False):
        n, _, h, w = x.shape
        self.x_shape = x.shape
        self.cols = im2col(x, self.k, self.k, self.stride, self.pad)  # (N, C*k*k, P)
        w_mat = self.params["W"].reshape(self.out, -1)  # (out, C*k*k)
        y = w_mat @ self.cols  # (N, out, P)
        if self.bias:
            y += self.params["b"][:, None]
        ho, wo = (conv_output_size(s, self.k, self.stride, self.pad) for s in (h, w))
        return y.reshape(n, self.out, ho, wo)

    def backward(self, dy):
        n = dy.shape[0]
        dy = dy.reshape(n, self.out, -1)  # (N, out, P)
        xp = get_array_module(dy)
        # dW = sum_n dy[n] @ cols[n].T, done as one GEMM over the (n, p) axes.
        dw = xp.tensordot(dy, self.cols, axes=([0, 2], [0, 2]))  # (out, C*k*k)
        self.grads["W"][...] = dw.reshape(self.params["W"].shape)
        if self.bias:
            self.grads["b"][...] = dy.sum(axis=(0, 2))
        if self.skip_input_grad:
            return None
        dcols = self.params["W"].reshape(self.out, -1).T @ dy  # (N, C*k*k, P)
        return col2im(dcols, self.x_shape, self.k, self.k, self.stride, self.pad)


class _Pool2D(Layer):
    """Shared shape logic for pooling over k x k windows with a stride (default: k)."""

    def __init__(self, k: int = 2, stride: int | None = None):
        super().__init__()
        self.k, self.stride = k, stride if stride is not None else k

    def build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ShapeError(f"{self.type_name} expects images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        ho, wo = conv_output_size(h, self.k, self.stride, 0), conv_output_size(w, self.k, self.stride, 0)
        if ho < 1 or wo < 1:
            raise ShapeError(f"{self.type_name} window {self.k} does not fit a {h}x{w} input")
        return (c, ho, wo)

    def _windows(self, x):
        """x: (N, C, H, W) -> (N, C, Ho, Wo, k*k) window values (a copy)."""
        n, c, h, w = x.shape
        cols = im2col(x.reshape(n * c, 1, h, w), self.k, self.k, self.stride, 0)  # (N*C, k*k, P)
        ho, wo = conv_output_size(h, self.k, self.stride, 0), conv_output_size(w, self.k, self.stride, 0)
        return cols.reshape(n, c, self.k * self.k, ho, wo)

    def _scatter(self, dwin):
        """Adjoint of ``_windows``. dwin: (N, C, k*k, Ho, Wo) -> dx: (N, C, H, W)."""
        n, c, h, w = self.x_shape
        cols = dwin.reshape(n * c, self.k * self.k, -1)
        return col2im(cols, (n * c, 1, h, w), self.k, self.k, self.stride, 0).reshape(self.x_shape)


class MaxPool2D(_Pool2D):
    """Max over k x k windows. x: (N, C, H, W) -> (N, C, Ho, Wo). Ties send the gradient to the first max."""

    type_name = "maxpool"

    def forward(self, x, train=False):
        self.x_shape = x.shape
        win = self._windows(x)  # (N, C, k*k, Ho, Wo)
        xp = get_array_module(x)
        self.argmax = win.argmax(axis=2)
        return xp.take_along_axis(win, self.argmax[:, :, None], axis=2)[:, :, 0]

    def backward(self, dy):
        xp = get_array_module(dy)
        n, c, ho, wo = dy.shape
        dwin = xp.zeros((n, c, self.k * self.k, ho, wo), dtype=dy.dtype)
        xp.put_along_axis(dwin, self.argmax[:, :, None], dy[:, :, None], axis=2)
        return self._scatter(dwin)


class AvgPool2D(_Pool2D):
    """Mean over k x k windows. x: (N, C, H, W) -> (N, C, Ho, Wo)."""

    type_name = "avgpool"

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return self._windows(x).mean(axis=2)

    def backward(self, dy):
        xp = get_array_module(dy)
        n, c, ho, wo = dy.shape
        share = dy[:, :, None] / (self.k * self.k)
        return self._scatter(xp.broadcast_to(share, (n, c, self.k * self.k, ho, wo)))


class GlobalAvgPool(Layer):
    """Mean over all positions. x: (N, C, H, W) -> (N, C)."""

    type_name = "gap"

    def build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ShapeError(f"gap expects images (C, H, W), got {input_shape}")
        return (input_shape[0],)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        xp = get_array_module(dy)
        h, w = self.x_shape[2:]
        return xp.broadcast_to((dy / (h * w))[:, :, None, None], self.x_shape).copy()


class BatchNorm(Layer):
    """Batch normalisation over features (N, F) or channels (N, C, H, W).

    Train mode normalises by the batch statistics and updates running statistics with
    ``momentum`` (PyTorch convention: running = (1-m)*running + m*batch, unbiased batch variance);
    eval mode normalises by the running statistics. gamma, beta: (F,) or (C,).
    """

    type_name = "batchnorm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps

    def build(self, input_shape, rng):
        if len(input_shape) not in (1, 3):
            raise ShapeError(f"batchnorm expects (F,) or (C, H, W), got {input_shape}")
        f = input_shape[0]
        self.params["gamma"] = to_device(np.ones(f, DEFAULT_DTYPE))
        self.params["beta"] = to_device(np.zeros(f, DEFAULT_DTYPE))
        self.buffers["running_mean"] = to_device(np.zeros(f, DEFAULT_DTYPE))
        self.buffers["running_var"] = to_device(np.ones(f, DEFAULT_DTYPE))
        self._zero_grads()
        return input_shape

    @staticmethod
    def _axes_and_shape(x):
        """Reduction axes and the broadcast shape of per-channel vectors for x."""
        if x.ndim == 2:
            return (0,), (1, -1)
        return (0, 2, 3), (1, -1, 1, 1)

    def forward(self, x, train=False):
        axes, shape = self._axes_and_shape(x)
        gamma, beta = self.params["gamma"].reshape(shape), self.params["beta"].reshape(shape)
        if train:
            mean = x.mean(axis=axes)
            centred = x - mean.reshape(shape)
            var = (centred * centred).mean(axis=axes)
            count = x.size // mean.size
            m = self.momentum
            self.buffers["running_mean"] *= 1 - m
            self.buffers["running_mean"] += m * mean
            self.buffers["running_var"] *= 1 - m
            self.buffers["running_var"] += m * var * (count / max(count - 1, 1))
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            centred = x - mean.reshape(shape)
        inv_std = 1.0 / get_array_module(x).sqrt(var + self.eps)
        self.axes, self.shape, self.batch_stats = axes, shape, train
        self.x_hat = centred * inv_std.reshape(shape)
        self.inv_std = inv_std
        return self.x_hat * gamma + beta

    def backward(self, dy):
        axes, shape = self.axes, self.shape
        self.grads["gamma"][...] = (dy * self.x_hat).sum(axis=axes)
        self.grads["beta"][...] = dy.sum(axis=axes)
        if self.skip_input_grad:
            return None
        scale = (self.params["gamma"] * self.inv_std).reshape(shape)
        if not self.batch_stats:  # eval mode: running statistics are constants, the layer is affine
            return scale * dy
        # Standard simplified form for batch statistics:
        # dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat))
        count = dy.size // self.grads["beta"].size
        mean_dy = (self.grads["beta"] / count).reshape(shape)
        mean_dy_xhat = (self.grads["gamma"] / count).reshape(shape)
        return scale * (dy - mean_dy - self.x_hat * mean_dy_xhat)


LAYERS = {
    cls.type_name: cls
    for cls in (Dense, ReLU, Sigmoid, Tanh, Flatten, Dropout, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, BatchNorm)
}


def from_spec(spec: dict) -> Layer:
    """Make a layer from a spec dict such as ``{"type": "dense", "out": 10}``.

    Raises ValueError naming the unknown type (with the valid ones) or the unexpected key.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"layer spec must be a mapping with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r}: expected one of {sorted(LAYERS)}")
    cls = LAYERS[kind]
    allowed = list(inspect.signature(cls.__init__).parameters)[1:]
    args = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"layer {kind!r} has no option {unknown[0]!r}: allowed options are {allowed}")
    return cls(**args)
