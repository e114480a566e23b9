"""Winograd's minimal filtering: a stride-1 k x k convolution with fewer multiplications.

A k x k kernel g slid over an a x a input tile d gives an m x m output tile Y, a = m + k - 1. Winograd
(1980), as Lavin & Gray brought it to CNNs (2016), computes it with a*a multiplications instead of
m*m*k*k, through three small constant matrices A^T: (m, a), G: (a, k) and B^T: (a, a):

    Y = A^T [ (G g G^T) * (B^T d B) ] A                (* elementwise)

The transforms are linear, so the sum over input channels moves inside: with U = G g G^T per
(channel, output) pair and V = B^T d B per (tile, channel), every one of the a*a positions (xi, nu)
is one GEMM, M[xi, nu] = V[xi, nu] @ U[xi, nu]: (tiles, C) @ (C, O). For k = 5 this library takes
m = 4, a = 8: 64 GEMMs of C*O multiply-adds per 16 output pixels instead of 25 per pixel, 6.25 times
fewer, plus the transforms. The backward pass is the adjoint of the same three linear steps.

Here m = k - 1, so a = 2m and each tile spans two m x m blocks of the (zero-padded) input; tiles start
every m pixels and overlap by one block. A^T, G and B^T come from the interpolation points 0, 1, -1,
2, -2, 1/2, -1/2 and infinity (Toom-Cook): A^T and G are Vandermonde rows, B^T solves the identity
above (:func:`tile_transforms`; exactly, up to float64 rounding). The transforms' constants (up to 8
and 5.25) scale the float32 rounding: the outputs differ from a float64 reference by about 5e-6 of
their largest value with 8 input channels and 1e-5 with 256, where im2col + GEMM stays near 5e-7
(tests/test_winograd.py bounds the gap between the two).

Layouts (channels-last, as in :mod:`nnlib.functional`): x: (N, H, W, C), kernel w: (O, C, k, k).
The 2-D transforms run as GEMMs with Kronecker products of the 1-D matrices (kron(B^T, B^T) maps a
flattened a x a tile to its a*a transformed values), so every step is one BLAS call.
"""
from __future__ import annotations

import functools

import numpy as np

from .backend import get_array_module
from .functional import conv_output_size

KERNEL_SIZES = (3, 4, 5)  # m = k - 1 keeps a = 2m <= 8 points, whose float32 rounding stays small
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # the finite interpolation points, in the order used


@functools.lru_cache(maxsize=None)
def tile_transforms(k: int) -> tuple:
    """(A^T: (m, a), G: (a, k), B^T: (a, a)) in float64 for a k x k kernel, m = k - 1, a = 2m.

    Point j < a - 1 is POINTS[j]; the last is infinity. A^T[i, j] = p_j**i, G[j, l] = p_j**l / prod_{i != j}
    (p_j - p_i), and the row or column of infinity picks the highest power. B^T is the unique solution of
    sum_j A^T[i, j] G[j, l] B^T[j, s] = [s == i + l] for all i < m, l < k, s < a, i.e. of
    Y = A^T [(G g) * (B^T d)] being the 1-D correlation Y[i] = sum_l g[l] d[i + l].
    """
    if k not in KERNEL_SIZES:
        raise ValueError(f"winograd tiles are built for k in {KERNEL_SIZES}, got {k}")
    m = k - 1
    a = 2 * m
    points = np.array(POINTS[: a - 1])
    a_t, g = np.zeros((m, a)), np.zeros((a, k))
    for j, p in enumerate(points):
        a_t[:, j] = p ** np.arange(m)
        g[j] = p ** np.arange(k) / np.prod([p - q for q in np.delete(points, j)])
    a_t[m - 1, a - 1] = g[a - 1, k - 1] = 1.0  # infinity
    # One equation per (i, l, s); unknown B^T[j, s] enters with coefficient A^T[i, j] G[j, l].
    coefficients = np.zeros((m, k, a, a, a))  # (i, l, s) x (j, s')
    for s in range(a):
        coefficients[:, :, s, :, s] = a_t[:, None, :] * g.T[None, :, :]
    targets = np.zeros((m, k, a))
    for i in range(m):
        for l in range(k):
            targets[i, l, i + l] = 1.0
    b_t, *_ = np.linalg.lstsq(coefficients.reshape(m * k * a, a * a), targets.ravel(), rcond=None)
    transforms = a_t, g, b_t.reshape(a, a)
    for t in transforms:  # cached and shared: read-only
        t.flags.writeable = False
    return transforms


@functools.lru_cache(maxsize=None)
def kron_transforms(k: int, dtype_name: str, xp) -> tuple:
    """(KA: (m*m, a*a), KG: (a*a, k*k), KB: (a*a, a*a)) = kron of A^T, G, B^T with themselves, as ``xp``
    arrays of ``dtype_name``; made once per kernel size, dtype and backend (on CuPy they stay on the device).

    Cached and shared by every Winograd layer of the process, so read-only on NumPy (a write raises
    instead of silently changing every such convolution); CuPy arrays have no read-only flag.
    """
    transforms = tuple(xp.asarray(np.kron(t, t).astype(dtype_name)) for t in tile_transforms(k))
    for t in transforms:
        if isinstance(t, np.ndarray):
            t.flags.writeable = False
    return transforms


def tile_grid(h: int, w: int, k: int, pad: int) -> tuple:
    """(th, tw): output tiles down and across for an (h, w) input; the zero-padded input is (th+1)*m
    by (tw+1)*m, m = k - 1 (the image sits at offset ``pad``, zeros fill the rest)."""
    m = k - 1
    ho, wo = conv_output_size(h, k, 1, pad), conv_output_size(w, k, 1, pad)
    return -(-ho // m), -(-wo // m)


def transform_input(x_nhwc, k: int, pad: int):
    """Input tiles -> V: (a*a, P, C), P = N*th*tw tiles, V[:, p] = vec(B^T d_p B) per channel."""
    xp = get_array_module(x_nhwc)
    n, h, w, c = x_nhwc.shape
    m = k - 1
    th, tw = tile_grid(h, w, k, pad)
    padded = xp.zeros((n, (th + 1) * m, (tw + 1) * m, c), dtype=x_nhwc.dtype)  # >= (H + 2*pad, W + 2*pad)
    padded[:, pad : pad + h, pad : pad + w] = x_nhwc
    sn, sh, sw, sc = padded.strides
    # tiles[(a1, a2), (b1, b2), n, ty, tx, c] = padded[n, (ty + a1)*m + a2, (tx + b1)*m + b2, c]
    tiles = xp.lib.stride_tricks.as_strided(padded, shape=(2, m, 2, m, n, th, tw, c),
                                            strides=(m * sh, sh, m * sw, sw, sn, m * sh, m * sw, sc))
    d = xp.ascontiguousarray(tiles).reshape(4 * m * m, n * th * tw * c)  # (a*a, P*C)
    kb = kron_transforms(k, x_nhwc.dtype.name, xp)[2]
    return (kb @ d).reshape(4 * m * m, n * th * tw, c)


def transform_kernel(w):
    """Kernel w: (O, C, k, k) -> U: (a*a, C, O), U[:, c, o] = vec(G g_oc G^T)."""
    xp = get_array_module(w)
    o, c, k, _ = w.shape
    kg = kron_transforms(k, w.dtype.name, xp)[1]
    return (kg @ w.transpose(2, 3, 1, 0).reshape(k * k, c * o)).reshape(-1, c, o)


def transform(x_nhwc, w, k: int, pad: int) -> tuple:
    """(V, U): the transformed input tiles and kernel (:func:`transform_input`, :func:`transform_kernel`),
    what :func:`backward` needs from the forward."""
    return transform_input(x_nhwc, k, pad), transform_kernel(w)


def forward(x_nhwc, w, k: int, pad: int):
    """y: (N, Ho, Wo, O) (no bias), and (V, U) for :func:`backward`. x_nhwc: (N, H, W, C), w: (O, C, k, k)."""
    xp = get_array_module(x_nhwc)
    n, h, width, _ = x_nhwc.shape
    o, m = w.shape[0], k - 1
    th, tw = tile_grid(h, width, k, pad)
    v, u = transform(x_nhwc, w, k, pad)
    products = xp.matmul(v, u)  # (a*a, P, O): one (P, C) @ (C, O) GEMM per transformed position
    ka = kron_transforms(k, x_nhwc.dtype.name, xp)[0]
    y_tiles = (ka @ products.reshape(4 * m * m, -1)).reshape(m, m, n, th, tw, o)  # (i, j, n, ty, tx, o)
    y = xp.empty((n, th, m, tw, m, o), dtype=x_nhwc.dtype)
    y[...] = y_tiles.transpose(2, 3, 0, 4, 1, 5)  # y[n, ty*m + i, tx*m + j, o]
    ho, wo = conv_output_size(h, k, 1, pad), conv_output_size(width, k, 1, pad)
    return y.reshape(n, th * m, tw * m, o)[:, :ho, :wo], (v, u)


def backward(dy_nhwc, v, u, x_shape_nhwc, k: int, pad: int, input_grad: bool = True):
    """Adjoint of :func:`forward`. dy_nhwc: (N, Ho, Wo, O) -> (dx: (N, H, W, C) or None, dw: (O, C, k, k)).

    With Z = A dY A^T per output tile (the adjoint of the output transform), dU = V^T Z and dV = Z U^T
    at each of the a*a positions (two batched GEMMs), dw = G^T dU G and the input tiles' gradient
    B dV B^T, which is added back into the overlapping tiles of the padded input.
    """
    xp = get_array_module(dy_nhwc)
    n, h, w, c = x_shape_nhwc
    _, ho, wo, o = dy_nhwc.shape
    m = k - 1
    th, tw = tile_grid(h, w, k, pad)
    ka, kg, kb = kron_transforms(k, dy_nhwc.dtype.name, xp)
    if (th * m, tw * m) != (ho, wo):  # the last tiles stick out: their extra outputs get dy = 0
        padded = xp.zeros((n, th * m, tw * m, o), dtype=dy_nhwc.dtype)
        padded[:, :ho, :wo] = dy_nhwc
        dy_nhwc = padded
    # dy_tiles[i, j, n, ty, tx, o] = dy[n, ty*m + i, tx*m + j, o]
    dy_tiles = xp.ascontiguousarray(dy_nhwc.reshape(n, th, m, tw, m, o).transpose(2, 4, 0, 1, 3, 5))
    z = (ka.T @ dy_tiles.reshape(m * m, -1)).reshape(4 * m * m, n * th * tw, o)  # (a*a, P, O)
    du = xp.matmul(v.transpose(0, 2, 1), z)  # (a*a, C, O)
    dw = (kg.T @ du.reshape(4 * m * m, c * o)).reshape(k, k, c, o).transpose(3, 2, 0, 1)
    if not input_grad:
        return None, dw
    dv = xp.matmul(z, u.transpose(0, 2, 1))  # (a*a, P, C)
    d_tiles = (kb.T @ dv.reshape(4 * m * m, -1)).reshape(2, m, 2, m, n, th, tw, c)  # (a1, a2, b1, b2, n, ty, tx, c)
    dx = xp.zeros((n, th + 1, m, tw + 1, m, c), dtype=dy_nhwc.dtype)  # the padded input, as m x m blocks
    for a1 in range(2):  # a tile covers blocks (ty + a1, tx + b1): four adds of non-overlapping blocks
        for b1 in range(2):
            dx[:, a1 : a1 + th, :, b1 : b1 + tw] += d_tiles[a1, :, b1].transpose(2, 3, 0, 4, 1, 5)
    dx = dx.reshape(n, (th + 1) * m, (tw + 1) * m, c)
    return xp.ascontiguousarray(dx[:, pad : pad + h, pad : pad + w]), dw
