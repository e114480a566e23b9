"""Pure array kernels that layers and losses share. No state, no parameters.

Images are laid out NCHW: ``x: (N, C, H, W)``. Every function works on NumPy or CuPy arrays.
"""
from __future__ import annotations

from .backend import get_array_module


def log_softmax(z, axis: int = -1):
    """Numerically stable log-softmax. z: (N, K) -> (N, K)."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z, axis: int = -1):
    """Numerically stable softmax. z: (N, K) -> probabilities (N, K)."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z):
    """Logistic function, stable for large |z|."""
    xp = get_array_module(z)
    # 0.5 * (1 + tanh(z/2)) never overflows, unlike 1 / (1 + exp(-z)).
    return 0.5 * (1.0 + xp.tanh(0.5 * z))


def conv_output_size(size: int, k: int, stride: int, pad: int) -> int:
    """Spatial output size of a convolution or pooling window."""
    return (size + 2 * pad - k) // stride + 1


def im2col(x, kh: int, kw: int, stride: int, pad: int):
    """Unfold sliding windows into columns.

    x: (N, C, H, W) -> cols: (N, C*kh*kw, Ho*Wo), ordered (c, i, j) like a conv weight (O, C, kh, kw).
    The windows are a strided view; the one copy happens in the final reshape.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if pad:
        x = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = conv_output_size(h, kh, stride, pad)
    wo = conv_output_size(w, kw, stride, pad)
    sn, sc, sh, sw = x.strides
    windows = xp.lib.stride_tricks.as_strided(
        x, shape=(n, c, kh, kw, ho, wo), strides=(sn, sc, sh, sw, sh * stride, sw * stride)
    )
    return windows.reshape(n, c * kh * kw, ho * wo)


def col2im(cols, x_shape, kh: int, kw: int, stride: int, pad: int):
    """Adjoint of :func:`im2col`: scatter-add columns back into an image.

    cols: (N, C*kh*kw, Ho*Wo) -> dx: (N, C, H, W). Loops over the kh*kw kernel offsets only;
    each iteration is one vectorised add over the whole batch.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    ho = conv_output_size(h, kh, stride, pad)
    wo = conv_output_size(w, kw, stride, pad)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    padded = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, :, i, j]
    return padded[:, :, pad : pad + h, pad : pad + w] if pad else padded
