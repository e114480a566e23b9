"""Layers in the CS231n / numpy-ml style.

Every layer keeps its learnable arrays in ``self.params`` and their gradients, same keys and shapes,
in ``self.grads``. ``forward`` stores what ``backward`` needs; ``backward(dy)`` fills ``self.grads``
in place (``grads[key][...] = ...``: in a model they are views of one flat array, see
:func:`nnlib.model.pack_parameters`) and returns the gradient with respect to the input. Shapes exclude nothing: ``x: (N, ...)``.

A layer is built from a spec dict such as ``{"type": "conv", "out": 32, "k": 5}``: the ``type``
picks the class in :data:`LAYERS`, the other keys are its constructor arguments. ``build`` is given
the input shape (without the batch axis) and returns the output shape, so shapes are inferred.

Each constructor checks its own options (types and ranges) with :func:`check_int`,
:func:`check_float`, :func:`check_bool` and :func:`check_choice`, so a bad spec fails when the
model is built, with one line such as ``conv: stride must be an integer >= 1, got 0``, never in
the middle of training.
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from . import backend, checks, winograd
from .errors import did_you_mean
from . import init as initializers
from .backend import DEFAULT_DTYPE, get_array_module, to_device
from .checks import ArgumentError
from .functional import (
    avgpool_backward,
    avgpool_forward,
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_maxpool_backward,
    batchnorm_maxpool_forward,
    batchnorm_update_running,
    column_sums,
    conv2d_input_grad_nhwc,
    conv_output_size,
    from_nhwc,
    im2col_nhwc,
    is_channels_last,
    maxpool_backward,
    maxpool_forward,
    relu_backward,
    relu_forward,
    sigmoid,
    to_nhwc,
    to_rows,
)


class ShapeError(ValueError):
    """A layer cannot accept the shape that reaches it."""


class LayerSpecError(ArgumentError):
    """A layer option has the wrong type or is out of range.

    The message is one line naming the layer, the option, what it must be and what it got:
    ``conv: stride must be an integer >= 1, got 0``; :meth:`at` puts the layer's index in front:
    ``layer 4 (conv): stride must be an integer >= 1, got 0``.
    """

    def __init__(self, layer: str, detail: str, index: int | None = None):
        super().__init__(layer if index is None else f"layer {index} ({layer})", detail)
        self.layer, self.detail, self.index = layer, detail, index

    def at(self, index: int) -> "LayerSpecError":
        """The same error, located at position ``index`` of a layer list."""
        return LayerSpecError(self.layer, self.detail, index)

    def __reduce__(self):  # picklable despite the custom signature
        return type(self), (self.layer, self.detail, self.index)


# The checks of :mod:`nnlib.checks`, for a layer: the message names its type and the error is a LayerSpecError.

def check_int(layer: "Layer", name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (:func:`nnlib.checks.check_int`)."""
    return checks.check_int(layer.type_name, name, value, minimum, error=LayerSpecError)


def check_float(layer: "Layer", name: str, value, low: float, high: float = math.inf, *,
                open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (:func:`nnlib.checks.check_float`)."""
    return checks.check_float(layer.type_name, name, value, low, high, open_low=open_low, open_high=open_high,
                              error=LayerSpecError)


def check_bool(layer: "Layer", name: str, value) -> bool:
    """``value`` if it is a real bool (:func:`nnlib.checks.check_bool`)."""
    return checks.check_bool(layer.type_name, name, value, error=LayerSpecError)


def check_choice(layer: "Layer", name: str, value, choices) -> str:
    """``value`` if it is one of the names in ``choices`` (:func:`nnlib.checks.check_choice`)."""
    return checks.check_choice(layer.type_name, name, value, choices, error=LayerSpecError)


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
        self.out = check_int(self, "out", out, 1)
        self.init = check_choice(self, "init", init, initializers.INITIALIZERS)
        self.bias = check_bool(self, "bias", bias)

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
        xp = get_array_module(dy)
        xp.matmul(self.x.T, dy, out=self.grads["W"])  # dW = x.T @ dy: (in, out), written in place
        if self.bias:
            dy.sum(axis=0, out=self.grads["b"])
        return None if self.skip_input_grad else dy @ self.params["W"].T


class ReLU(Layer):
    """max(x, 0), elementwise. Any shape; keeps the input's memory layout."""

    type_name = "relu"

    def forward(self, x, train=False):
        self.y = relu_forward(x)  # one pass; the output doubles as the mask for backward
        return self.y

    def backward(self, dy):
        return relu_backward(dy, self.y)  # dy * (y > 0)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), elementwise. Any shape."""

    type_name = "sigmoid"

    def forward(self, x, train=False):
        self.y = sigmoid(x)
        return self.y

    def backward(self, dy):
        dx = dy * self.y  # (dy * y) * (1 - y), multiplied in place
        dx *= 1.0 - self.y
        return dx


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
        self.shape, self.channels_last = x.shape, is_channels_last(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        dx = dy.reshape(self.shape)  # (N, C, H, W), C-contiguous
        if self.channels_last:  # hand back the input's layout, so the ReLU / pool gradients below stay channels-last
            return from_nhwc(to_nhwc(dx))
        return dx


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability p and scale the rest by 1/(1-p).

    In eval mode it is the identity. The mask comes from the layer's own Generator, seeded at build:
    on NumPy that Generator draws it; on CuPy a device Generator, seeded once from it, draws it on the
    GPU (no host-to-device copy per batch), so all randomness still flows from ``seed``. A replica of
    :class:`nnlib.parallel.DataParallel` is ``handed`` its rows of the draw its model's layer made for the
    whole batch, and uses them instead of drawing.
    """

    type_name = "dropout"

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_float(self, "p", p, 0.0, 1.0, open_high=True)

    def build(self, input_shape, rng):
        self.rng = np.random.default_rng(rng.integers(2**63))
        self.device_rng = None  # made from self.rng at the first draw on a non-NumPy backend
        self.handed = None  # uniforms for the next forward, drawn elsewhere (DataParallel)
        return input_shape

    def draw_uniform(self, shape, xp):
        """Uniform [0, 1) float32 of ``shape`` on the backend ``xp``."""
        if xp is np:
            return self.rng.random(shape, dtype=np.float32)
        if self.device_rng is None:
            self.device_rng = xp.random.default_rng(int(self.rng.integers(2**63)))
        return self.device_rng.random(shape, dtype=np.float32)

    def forward(self, x, train=False):
        if not train or self.p == 0.0:
            self.mask = None
            return x
        uniforms, self.handed = self.handed, None
        if uniforms is None:
            uniforms = self.draw_uniform(x.shape, get_array_module(x))
        elif uniforms.shape != x.shape:
            raise ValueError(f"dropout: handed uniforms of shape {uniforms.shape} for input {x.shape}")
        keep = uniforms >= self.p
        # mask = keep / (1 - p) in x's dtype (the divisor is cast first, so nothing becomes float64).
        self.mask = keep.astype(x.dtype)
        self.mask /= x.dtype.type(1.0 - self.p)
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch), computed one of two ways (``algorithm``).

    x: (N, C, H, W) -> y: (N, out, Ho, Wo); W: (out, C, k, k), b: (out,).

    'gemm', one 2-D GEMM over channels-last columns: cols = im2col_nhwc(x): (N*Ho*Wo, k*k*C + 1),
    columns ordered (i, j, c) plus a column of ones, and y_rows = cols @ [W_mat; b]: (N*Ho*Wo, out) with
    W_mat = W as (k*k*C, out). y is returned as an NCHW view of y_rows (channels-last memory, see
    :mod:`nnlib.functional`), so no transposing copy is made and a following conv / batch-norm / pool
    reads it in place. Backward: [dW; db] from one GEMM of cols and dy_rows, and (unless
    ``skip_input_grad``) dx by one (N*Ho*Wo, out) @ (out, k*k*C) GEMM and col2im (each offset's slice
    added into the shifted window).

    'winograd' computes the same convolution by Winograd's minimal filtering (:mod:`nnlib.winograd`:
    stride 1, k = 3, 4 or 5), with fewer multiplications; 'auto' (the default) picks one per layer from
    its shape when the model is built (:meth:`choose_method`).
    """

    type_name = "conv"

    ALGORITHMS = ("auto", "gemm", "winograd")

    def __init__(self, out: int, k: int = 3, stride: int = 1, pad: int = 0, bias: bool = True, init: str = "he_normal",
                 algorithm: str = "auto"):
        super().__init__()
        self.out = check_int(self, "out", out, 1)
        self.k = check_int(self, "k", k, 1)
        self.stride = check_int(self, "stride", stride, 1)
        self.pad = check_int(self, "pad", pad, 0)
        self.bias = check_bool(self, "bias", bias)
        self.init = check_choice(self, "init", init, initializers.INITIALIZERS)
        self.algorithm = check_choice(self, "algorithm", algorithm, self.ALGORITHMS)
        if algorithm == "winograd" and not self.winograd_fits():
            raise LayerSpecError(self.type_name, f"algorithm 'winograd' needs stride 1 and k in {winograd.KERNEL_SIZES}, "
                                                 f"got stride {stride} and k {k}: use 'auto' or 'gemm'")

    def winograd_fits(self) -> bool:
        """Whether :mod:`nnlib.winograd` has tiles for this kernel: stride 1, k = 3, 4 or 5."""
        return self.stride == 1 and self.k in winograd.KERNEL_SIZES

    def choose_method(self, channels: int) -> str:
        """'winograd' or 'gemm' for ``channels`` input channels: the ``algorithm`` option, or for 'auto'
        Winograd for stride 1, k = 4 or 5 and at least 8 input channels on NumPy, where it measured
        faster (``python bench/bench_conv.py``); GEMM otherwise: 3x3 kernels gain nothing from F(2, 3)
        here, with a few input channels (a first layer) the a*a GEMMs are too thin, and on a GPU it has
        not been measured yet (``algorithm: winograd`` runs it there)."""
        if self.algorithm != "auto":
            return self.algorithm
        on_numpy = backend.current() is np
        return "winograd" if on_numpy and self.winograd_fits() and self.k >= 4 and channels >= 8 else "gemm"

    def build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ShapeError(f"conv expects images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        ho, wo = (conv_output_size(s, self.k, self.stride, self.pad) for s in (h, w))
        if ho < 1 or wo < 1:
            raise ShapeError(f"conv kernel {self.k} (pad {self.pad}) does not fit a {h}x{w} input")
        self.method = self.choose_method(c)  # 'gemm' or 'winograd'
        self.params["W"] = to_device(initializers.get(self.init)((self.out, c, self.k, self.k), rng))
        if self.bias:
            self.params["b"] = to_device(np.zeros(self.out, DEFAULT_DTYPE))
        self._zero_grads()
        return (self.out, ho, wo)

    def forward(self, x, train=False):
        n, c, h, w = x.shape
        k = self.k
        self.x_shape_nhwc = (n, h, w, c)
        if self.method == "winograd":
            return self._winograd_forward(x, train)
        ho, wo = (conv_output_size(s, k, self.stride, self.pad) for s in (h, w))
        # (N, H, W, C) view -> cols (N*Ho*Wo, k*k*C [+1 column of ones when there is a bias]).
        cols = im2col_nhwc(x.transpose(0, 2, 3, 1), k, self.stride, self.pad, ones=self.bias)
        w_mat = self.params["W"].transpose(2, 3, 1, 0).reshape(k * k * c, self.out)  # rows (i, j, c)
        if self.bias:  # [W; b]: (k*k*C + 1, out), so the GEMM adds the bias
            w_mat = get_array_module(w_mat).concatenate([w_mat, self.params["b"][None]])
        y = cols @ w_mat  # (N*Ho*Wo, out)
        # Train mode keeps cols for dW. Eval mode keeps only a reference to x: cols is the largest
        # array of the network (k*k times the input), so it is dropped, and rebuilt if a backward follows.
        self.cols, self.x = (cols, None) if train else (None, x)
        return from_nhwc(y.reshape(n, ho, wo, self.out))  # (N, out, Ho, Wo), channels-last memory

    def _winograd_forward(self, x, train):
        """y = conv(x) by :func:`nnlib.winograd.forward`; train mode keeps V and U for the backward."""
        xp = get_array_module(x)
        y, tiles = winograd.forward(to_nhwc(x), self.params["W"], self.k, self.pad)  # (N, Ho, Wo, out)
        y = y + self.params["b"] if self.bias else xp.ascontiguousarray(y)
        self.tiles, self.x = (tiles, None) if train else (None, x)
        return from_nhwc(y)  # (N, out, Ho, Wo), channels-last memory

    def _winograd_backward(self, dy):
        tiles = self.tiles
        if tiles is None:  # the forward ran in eval mode: transform the input and kernel again
            tiles = winograd.transform(to_nhwc(self.x), self.params["W"], self.k, self.pad)
        dy_nhwc = to_nhwc(dy)  # (N, Ho, Wo, out); free when dy is channels-last
        dx, dw = winograd.backward(dy_nhwc, *tiles, self.x_shape_nhwc, self.k, self.pad,
                                   input_grad=not self.skip_input_grad)
        self.grads["W"][...] = dw
        if self.bias:
            self.grads["b"][...] = column_sums(dy_nhwc.reshape(-1, self.out))
        return None if dx is None else from_nhwc(dx)

    def backward(self, dy):
        if self.method == "winograd":
            return self._winograd_backward(dy)
        n, h, w, c = self.x_shape_nhwc
        k = self.k
        cols = self.cols
        if cols is None:  # the forward ran in eval mode
            cols = im2col_nhwc(self.x.transpose(0, 2, 3, 1), k, self.stride, self.pad, ones=self.bias)
        dy_rows = to_rows(dy)  # (N*Ho*Wo, out); free when dy is channels-last
        # dw_t: (out, k*k*C [+1]), one GEMM over all N*Ho*Wo positions, in the orientation OpenBLAS ran
        # faster for cols' layout: cols.T @ dy_rows when cols is K-major (cols.T C-contiguous, as a first
        # layer's), else dy_rows.T @ cols.
        dw_t = (cols.T @ dy_rows).T if cols.T.flags.c_contiguous else dy_rows.T @ cols
        self.grads["W"][...] = dw_t[:, : k * k * c].reshape(self.out, k, k, c).transpose(0, 3, 1, 2)
        if self.bias:  # the ones column of cols makes the last column of dw_t the sums of dy
            self.grads["b"][...] = dw_t[:, k * k * c]
        if self.skip_input_grad:  # first layer: no dx, so no GEMM and no scatter into the image
            return None
        xp = get_array_module(dy_rows)
        w_okkc = xp.ascontiguousarray(self.params["W"].transpose(0, 2, 3, 1))  # (out, k, k, C)
        dx = conv2d_input_grad_nhwc(dy_rows, w_okkc, self.x_shape_nhwc, self.stride, self.pad)
        return from_nhwc(dx)  # (N, C, H, W)


class _Pool2D(Layer):
    """Shared shape logic for pooling over k x k windows with a stride (default: k).

    The kernels in :mod:`nnlib.functional` work on the k*k strided views of the input (for 2x2 /
    stride 2: the four slices of x.reshape(N, C, H/2, 2, W/2, 2)), so there is no im2col copy and no
    loop over pixels; outputs and input gradients keep the input's memory layout.
    """

    def __init__(self, k: int = 2, stride: int | None = None):
        super().__init__()
        self.k = check_int(self, "k", k, 1)
        self.stride = self.k if stride is None else check_int(self, "stride", stride, 1)

    def build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ShapeError(f"{self.type_name} expects images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        ho, wo = conv_output_size(h, self.k, self.stride, 0), conv_output_size(w, self.k, self.stride, 0)
        if ho < 1 or wo < 1:
            raise ShapeError(f"{self.type_name} window {self.k} does not fit a {h}x{w} input")
        return (c, ho, wo)

    def _remember_input(self, x):
        self.x_shape, self.channels_last = x.shape, is_channels_last(x)


class MaxPool2D(_Pool2D):
    """Max over k x k windows. x: (N, C, H, W) -> (N, C, Ho, Wo). Ties send the gradient to the first max."""

    type_name = "maxpool"

    def forward(self, x, train=False):
        self._remember_input(x)
        # argmax: (N, C, Ho, Wo) uint8, only in train mode; eval keeps a reference to x instead.
        y, self.argmax = maxpool_forward(x, self.k, self.stride, index=train)
        self.x = None if train else x
        return y

    def backward(self, dy):
        argmax = self.argmax
        if argmax is None:  # the forward ran in eval mode
            argmax = maxpool_forward(self.x, self.k, self.stride)[1]
        return maxpool_backward(dy, argmax, self.x_shape, self.channels_last, self.k, self.stride)


class AvgPool2D(_Pool2D):
    """Mean over k x k windows. x: (N, C, H, W) -> (N, C, Ho, Wo)."""

    type_name = "avgpool"

    def forward(self, x, train=False):
        self._remember_input(x)
        return avgpool_forward(x, self.k, self.stride)

    def backward(self, dy):
        return avgpool_backward(dy, self.x_shape, self.channels_last, self.k, self.stride)


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

    The arithmetic is :func:`~nnlib.functional.batchnorm_forward` / :func:`~nnlib.functional.batchnorm_backward`,
    on a (M, C) row matrix (M = N or N*H*W; free for channels-last images); the layer keeps the forward's
    cache for its backward. Image outputs and input gradients are channels-last.
    """

    type_name = "batchnorm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = check_float(self, "momentum", momentum, 0.0, 1.0)
        self.eps = check_float(self, "eps", eps, 0.0, open_low=True)

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

    def forward(self, x, train=False):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:  # the batch's statistics; the running ones move towards them
            y, self.cache = batchnorm_forward(x, gamma, beta, self.eps)
            self.update_running(self.cache)
        else:
            y, self.cache = batchnorm_forward(x, gamma, beta, self.eps, self.buffers["running_mean"],
                                              self.buffers["running_var"])
        return y

    def update_running(self, cache) -> None:
        """Move the running statistics towards the batch statistics of a forward's ``cache`` (its
        ``mean``, ``var``: (C,) and ``count``)."""
        batchnorm_update_running(self.buffers["running_mean"], self.buffers["running_var"], cache.mean, cache.var,
                                 cache.count, self.momentum)

    def set_grads(self, dgamma, dbeta) -> None:
        """Write the parameter gradients (C,) in place (they are views of the model's flat array)."""
        self.grads["gamma"][...] = dgamma
        self.grads["beta"][...] = dbeta

    def backward(self, dy):
        dx, dgamma, dbeta = batchnorm_backward(dy, self.cache, input_grad=not self.skip_input_grad)
        self.set_grads(dgamma, dbeta)
        return dx


class BatchNormMaxPool(Layer):
    """A BatchNorm and the non-overlapping MaxPool2D right after it, trained as one unit.

    Not a layer of a spec: :class:`~nnlib.model.Sequential` runs such a pair through it (see
    :func:`nnlib.model.run_units`); the two layers keep their parameters, buffers and gradients.
    x: (N, C, H, W) -> (N, C, Ho, Wo), as pool(norm(x)).

    In train mode with every gamma > 0 (on NumPy) it runs the fused kernels
    :func:`~nnlib.functional.batchnorm_maxpool_forward` / :func:`~nnlib.functional.batchnorm_maxpool_backward`,
    which max-pool the centred values and normalise only the pooled ones, block by block of images; the
    norm's running statistics and gradients are set through its public methods. Same values as the two
    layers up to float32 rounding (ties between window values that normalise to the same float may pick
    another maximum). Otherwise (eval mode, a gamma <= 0, another backend) it runs the two layers one after
    the other.
    """

    type_name = "batchnorm+maxpool"

    def __init__(self, norm: BatchNorm, pool: MaxPool2D):
        super().__init__()
        self.norm, self.pool = norm, pool
        self.fused = False
        self.cache = None

    @property
    def parts(self) -> tuple:
        """The layers this unit runs: (norm, pool)."""
        return self.norm, self.pool

    def fusable(self, x, train: bool) -> bool:
        """Whether this forward can pool first: train mode, images, NumPy and every gamma > 0 (on CuPy
        reading gamma's sign would cost a device-to-host wait every step, so the layers run as listed)."""
        return train and x.ndim == 4 and get_array_module(x) is np and bool((self.norm.params["gamma"] > 0).all())

    def forward(self, x, train=False):
        norm, pool = self.norm, self.pool
        self.fused = self.fusable(x, train)
        if not self.fused:
            self.cache = None  # nothing of an earlier fused step is kept alive
            return pool.forward(norm.forward(x, train), train)
        y, self.cache = batchnorm_maxpool_forward(x, norm.params["gamma"], norm.params["beta"], norm.eps,
                                                  pool.k, pool.stride)
        norm.update_running(self.cache)
        return y

    def backward(self, dy):
        if not self.fused:
            return self.norm.backward(self.pool.backward(dy))
        dx, dgamma, dbeta = batchnorm_maxpool_backward(dy, self.cache, input_grad=not self.norm.skip_input_grad)
        self.norm.set_grads(dgamma, dbeta)
        return dx


LAYERS = {
    cls.type_name: cls
    for cls in (Dense, ReLU, Sigmoid, Tanh, Flatten, Dropout, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, BatchNorm)
}


def from_spec(spec: dict) -> Layer:
    """Make a layer from a spec dict such as ``{"type": "dense", "out": 10}``.

    Raises ValueError naming the unknown type (with the valid ones), the unexpected or missing key,
    and :class:`LayerSpecError` (a ValueError) for an option of the wrong type or out of range.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"layer spec must be a mapping with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r}: expected one of {sorted(LAYERS)}{did_you_mean(kind, LAYERS)}")
    cls = LAYERS[kind]
    options = list(inspect.signature(cls.__init__).parameters.values())[1:]
    allowed = [option.name for option in options]
    args = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"layer {kind!r} has no option {unknown[0]!r}: allowed options are {allowed}"
                         f"{did_you_mean(unknown[0], allowed)}")
    required = [option.name for option in options if option.default is inspect.Parameter.empty]
    missing = [name for name in required if name not in args]
    if missing:
        raise ValueError(f"layer {kind!r} needs option {missing[0]!r}: its options are {allowed}")
    return cls(**args)
