"""Pure array kernels that layers and losses share. No state, no parameters.

Images are NCHW at every layer boundary: ``x: (N, C, H, W)``. Internally the convolution, pooling
and batch-norm kernels work *channels-last*: an NCHW array whose memory is laid out NHWC, i.e.
``x = x_nhwc.transpose(0, 3, 1, 2)`` for a C-contiguous ``x_nhwc: (N, H, W, C)``. Such an array
is an ordinary NCHW array to every caller (same shape, same values); only its strides differ. Keeping
the memory channels-last lets a convolution be one big 2-D GEMM over an ``(N*Ho*Wo, k*k*C)`` column
matrix, and lets conv -> batch-norm -> ReLU -> pooling chains run without any transposing copy.
Every function accepts inputs of any layout (a C-contiguous NCHW array costs one transposing copy).

Every function works on NumPy or CuPy arrays and keeps the input dtype (no float64 upcasts), but for the
batch-norm statistics, summed as precisely as in float64 (:func:`column_sums_f64`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    # 0.5 * (1 + tanh(z/2)) never overflows, unlike 1 / (1 + exp(-z)). One new array, then in place.
    y = xp.multiply(z, 0.5)
    xp.tanh(y, out=y)
    y += 1.0
    y *= 0.5
    return y


def conv_output_size(size: int, k: int, stride: int, pad: int) -> int:
    """Spatial output size of a convolution or pooling window."""
    return (size + 2 * pad - k) // stride + 1


# --------------------------------------------------------------------------- layout helpers

def is_channels_last(x) -> bool:
    """True if the NCHW array x has NHWC memory (its (0, 2, 3, 1) transpose is C-contiguous)."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous


def to_nhwc(x):
    """x: (N, C, H, W) -> C-contiguous (N, H, W, C). A free view when x is channels-last, else one copy."""
    return get_array_module(x).ascontiguousarray(x.transpose(0, 2, 3, 1))


def from_nhwc(x_nhwc):
    """C-contiguous (N, H, W, C) -> the same memory seen as NCHW (N, C, H, W). Never copies."""
    return x_nhwc.transpose(0, 3, 1, 2)


def to_rows(x):
    """Per-channel data as a C-contiguous matrix: (N, F) -> itself, (N, C, H, W) -> (N*H*W, C).

    Free for a C-contiguous (N, F) or a channels-last image batch; otherwise one copy.
    """
    if x.ndim == 2:
        return get_array_module(x).ascontiguousarray(x)
    return to_nhwc(x).reshape(-1, x.shape[1])


def from_rows(rows, shape):
    """Inverse of :func:`to_rows`: (M, C) -> (N, F) or channels-last (N, C, H, W) of ``shape``. No copy."""
    if len(shape) == 2:
        return rows
    n, c, h, w = shape
    return from_nhwc(rows.reshape(n, h, w, c))


def wide_rows(rows, *vectors, width: int = 16384):
    """Re-block an (M, C) C-contiguous matrix so per-channel broadcasts run in long inner loops.

    rows: (M, C); vectors: per-channel (C,) arrays. Returns (rows viewed as (M/r, r*C), each vector
    tiled r times to (r*C,)), with r the largest power of two dividing M and r*C <= width. The
    elementwise result is identical; NumPy just makes M/r ufunc inner-loop calls instead of M
    calls of length C (C = 32 leaves the loop overhead-bound). r = 1 when M is odd.
    """
    xp = get_array_module(rows)
    m, c = rows.shape
    r = 1
    while m % (2 * r) == 0 and 2 * r * c <= width:
        r *= 2
    return (rows.reshape(m // r, r * c), *(xp.tile(v, r) for v in vectors))


def scale_rows(rows, scale, shift=None):
    """Per-channel affine map of a row matrix: rows: (M, C) -> rows * scale (+ shift): new (M, C).

    scale, shift: (C,). One multiply pass and one in-place add, over the rows re-blocked wide
    (:func:`wide_rows`), so both run in long inner loops.
    """
    wide, *vectors = wide_rows(rows, scale, *(() if shift is None else (shift,)))
    y = wide * vectors[0]
    if shift is not None:
        y += vectors[1]
    return y.reshape(rows.shape)


def column_sums(a):
    """a: (M, C) -> (C,) sums over the rows, by NumPy on one thread.

    The rows are re-blocked wide (:func:`wide_rows`), (M/r, r*C) summed down row by row (contiguous
    vector adds), then the r partial sums of each channel folded: one pass over a, and no threaded BLAS
    call (a threaded GEMV waits for both cores, which on a busy machine costs more than the sum).
    """
    wide, = wide_rows(a)
    return fold_columns(wide.sum(axis=0), a.shape[1])


def fold_columns(v, c: int):
    """(r*C,) per-column results of a wide view -> (C,) per-channel totals (sum over the r copies)."""
    return v.reshape(-1, c).sum(axis=0)


def column_dots(a, b):
    """a, b: (M, C) -> (C,) with out[c] = sum_m a[m, c] * b[m, c], without an (M, C) temporary."""
    return get_array_module(a).einsum("mc,mc->c", a, b)


def column_sums_f64(a, b=None, group: int = 8):
    """Per-channel sums of a: (M, C), or of a * b, accumulated as precisely as in float64 -> (C,) float64.

    A float32 running sum over thousands of rows loses digits (relative error ~1e-4 on integer-valued
    inputs; PyTorch's CPU batch norm accumulates in float64, ~5e-8). Here the first level of a tree
    does the one pass over the data in a's dtype: the rows are cut into ``group`` equal slices added
    elementwise (a[i] + a[i + M/group] + ..., ``group`` terms per partial sum; an einsum for a * b),
    in long inner loops. The M/group partial rows are then cast to float64 and folded the same way,
    level by level; rows left over by a level (fewer than ``group``) are added in float64. Same speed
    as the float32 sum (``python bench/compare.py --no-torch --breakdown cnn``), relative error ~5e-8.
    a, b: C-contiguous (M, C).
    """
    xp = get_array_module(a)
    m, c = a.shape
    total = xp.zeros(c, np.float64)
    main = m - m % group
    if main < m:
        rest = a[main:] if b is None else a[main:] * b[main:]
        total += rest.sum(axis=0, dtype=np.float64)
    if main == 0:
        return total
    sliced = a[:main].reshape(group, -1)  # slice j: rows j*M/group ... (j+1)*M/group - 1, flattened
    level = sliced.sum(axis=0) if b is None else xp.einsum("gw,gw->w", sliced, b[:main].reshape(group, -1))
    level, rows = level.astype(np.float64), main // group  # (rows * C,) partial sums
    while rows >= group:
        cut = rows - rows % group
        if cut < rows:
            total += level[cut * c :].reshape(-1, c).sum(axis=0)
        level, rows = level[: cut * c].reshape(group, -1).sum(axis=0), cut // group
    return total + level.reshape(rows, c).sum(axis=0)


def centre_rows(rows, mean, out):
    """out = rows - mean: (M, C) minus (C,), re-blocked wide (:func:`wide_rows`) -> out's per-channel sums
    of squares: (C,) float64, as precise as float64 accumulation (:func:`column_sums_f64`). out: a
    C-contiguous (M, C) array (it is written through a reshaped view)."""
    wide, wide_mean = wide_rows(rows, mean)
    get_array_module(rows).subtract(wide, wide_mean, out=out.reshape(wide.shape))
    return column_sums_f64(out, out)


# --------------------------------------------------------------------------- cache-sized blocks

BLOCK_BYTES = 1 << 21  # about 2 MiB: small enough that a block's few arrays stay in cache between passes


def batch_blocks(n: int, item_bytes: int, xp, block_bytes: int | None = None) -> list:
    """Consecutive slices of a batch axis of n items (images or rows), each about ``block_bytes``.

    item_bytes: the bytes of one item in the largest array a pass touches. Memory-bound passes
    (batch-norm, max-pool, col2im) run block by block, so the arrays of one block are still in cache
    when the next pass reads them, instead of each pass streaming the whole batch from memory (the
    default cnn's first batch-norm input is 9.4 MB). Every block has at least one item. Default
    size: :data:`BLOCK_BYTES`. On a GPU: one block, the whole batch (fewer kernel launches).
    """
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    per_block = n if xp is not np else max(1, block_bytes // max(1, item_bytes))
    return [slice(first, min(first + per_block, n)) for first in range(0, n, per_block)]


# --------------------------------------------------------------------------- convolution (NHWC)

def im2col_nhwc(x_nhwc, k: int, stride: int, pad: int, ones: bool = False):
    """Unfold k x k windows into the rows of a column matrix.

    x_nhwc: (N, H, W, C), any strides -> cols: (N*Ho*Wo, k*k*C [+ 1]); row (n, ho, wo), column
    (i, j, c) holds x[n, ho*stride + i - pad, wo*stride + j - pad, c] (zero outside the image).
    With ``ones`` a last column of ones is appended, so ``cols @ [W; b]`` adds the bias inside the
    GEMM and ``cols.T @ dy`` yields the bias gradient as its last row.

    The gather is one strided copy, laid out for long contiguous runs: row-major (C-contiguous
    cols, runs of k*C along (j, c)) when that beats a run along the output width, else K-major
    (cols is the transpose of a C-contiguous (K, N*Ho*Wo) matrix, runs of Wo; e.g. a first layer
    with C = 1). Both are plain BLAS operands, so callers need not care which they get.
    """
    xp = get_array_module(x_nhwc)
    n, h, w, c = x_nhwc.shape
    if pad:
        padded = xp.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x_nhwc.dtype)
        padded[:, pad : pad + h, pad : pad + w] = x_nhwc
        x_nhwc = padded
    else:
        x_nhwc = xp.ascontiguousarray(x_nhwc)
    ho = conv_output_size(h, k, stride, pad)
    wo = conv_output_size(w, k, stride, pad)
    rows, kk = n * ho * wo, k * k * c
    sn, sh, sw, sc = x_nhwc.strides
    as_strided = xp.lib.stride_tricks.as_strided
    if stride == 1 and 1 < k and k * c < wo:  # K-major: (i, j, c, n, ho, wo)
        windows = as_strided(x_nhwc, shape=(k, k, c, n, ho, wo), strides=(sh, sw, sc, sn, sh, sw))
        cols_t = xp.empty((kk + ones, rows), dtype=x_nhwc.dtype)
        cols_t[:kk].reshape(k, k, c, n, ho, wo)[...] = windows
        if ones:
            cols_t[kk] = 1
        return cols_t.T
    windows = as_strided(x_nhwc, shape=(n, ho, wo, k, k, c), strides=(sn, sh * stride, sw * stride, sh, sw, sc))
    if not ones:
        return windows.reshape(rows, kk)
    cols = xp.empty((rows, kk + 1), dtype=x_nhwc.dtype)
    cols[:, :kk].reshape(n, ho, wo, k, k, c)[...] = windows
    cols[:, kk] = 1
    return cols


def conv2d_input_grad_nhwc(dy_rows, w_okkc, x_shape_nhwc, stride: int, pad: int, chunk_bytes: int = 1 << 22):
    """Gradient of a convolution with respect to its input, channels-last.

    dy_rows: (N*Ho*Wo, O) output gradient; w_okkc: (O, k, k, C) kernel; x_shape_nhwc: (N, H, W, C).
    Returns dx: (N, H, W, C) (a view into a padded buffer when pad > 0).

    A GEMM gives the column gradient dcols = dy_rows @ W_mat: (N*Ho*Wo, k*k*C), columns (i, j, c)
    as in :func:`im2col_nhwc`; col2im then adds it back into the (padded) input:
    dx[n, ho*s + i, wo*s + j, c] += dcols[(n, ho, wo), (i, j, c)]. For a fixed kernel row i and output
    column wo, the k*C values dcols[(n, ho, wo), (i, :, :)] are contiguous, and so is their target
    dx[n, ho*s + i, wo*s : wo*s + k, :]: so col2im is k*Wo adds of (N, Ho, k*C) blocks, whose inner
    loops run k*C elements, not k*k adds of (N, Ho, Wo, C) blocks with inner loops of C.
    On NumPy both run on chunks of images whose dcols takes about ``chunk_bytes``, so col2im reads
    dcols while it is still in cache (on a GPU, one chunk: fewer kernel launches). With OpenBLAS a GEMM
    over a block of rows gives the same bits as the whole GEMM (BLAS does not promise it; the
    default preset's seed-0 model bytes check it end to end).
    """
    xp = get_array_module(dy_rows)
    n, h, w, c = x_shape_nhwc
    k = w_okkc.shape[1]
    ho = conv_output_size(h, k, stride, pad)
    wo = conv_output_size(w, k, stride, pad)
    w_mat = w_okkc.reshape(w_okkc.shape[0], k * k * c)  # (O, k*k*C)
    dx = xp.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=dy_rows.dtype)
    blocks = batch_blocks(n, ho * wo * k * k * c * dy_rows.itemsize, xp, chunk_bytes)
    dcols_buffer = xp.empty(((blocks[0].stop - blocks[0].start) * ho * wo, k * k * c), dtype=dy_rows.dtype)
    for block in blocks:
        first, last = block.start, block.stop  # images first..last-1
        dcols = dcols_buffer[: (last - first) * ho * wo]
        xp.matmul(dy_rows[first * ho * wo : last * ho * wo], w_mat, out=dcols)
        dcols = dcols.reshape(last - first, ho, wo, k, k, c)
        for i in range(k):
            dx_rows_i = dx[first:last, i : i + stride * (ho - 1) + 1 : stride]  # input rows ho*s + i: (n', Ho, W + 2*pad, C)
            # Descending output columns add each dx element's terms in ascending j, as a loop over (i, j) would.
            for col in reversed(range(wo)):
                dx_rows_i[:, :, col * stride : col * stride + k] += dcols[:, :, col, i]  # (n', Ho, k, C)
    return dx[:, pad : pad + h, pad : pad + w] if pad else dx


# --------------------------------------------------------------------------- ReLU

def relu_forward(x):
    """max(x, 0) in x's dtype and layout (channels-last images run as their contiguous NHWC view)."""
    xp = get_array_module(x)
    if is_channels_last(x):
        return from_nhwc(xp.maximum(to_nhwc(x), 0))
    return xp.maximum(x, 0)


def relu_backward(dy, y):
    """dy * (y > 0), with y the forward output; the bool mask is multiplied in without a float copy."""
    xp = get_array_module(dy)
    if is_channels_last(dy) and is_channels_last(y):
        return from_nhwc(xp.multiply(to_nhwc(dy), to_nhwc(y) > 0, dtype=dy.dtype))
    return xp.multiply(dy, y > 0, dtype=dy.dtype)


# --------------------------------------------------------------------------- pooling

def pool_windows(x, k: int, stride: int, axes=(2, 3)):
    """The k*k strided views of a pooling window, in row-major window order (i, j).

    x: (N, C, H, W) (or any array with its two spatial dims at ``axes``) -> list of k*k views of the
    output shape; view [i*k + j][..., a, b] is x[..., a*stride + i, b*stride + j]. For a 2x2 /
    stride-2 pool on even H, W these are exactly the four slices of x.reshape(N, C, H/2, 2, W/2, 2).
    No copies.
    """
    h_axis, w_axis = axes
    ho = conv_output_size(x.shape[h_axis], k, stride, 0)
    wo = conv_output_size(x.shape[w_axis], k, stride, 0)
    h_end, w_end = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    views = []
    for i in range(k):
        for j in range(k):
            index = [slice(None)] * x.ndim
            index[h_axis] = slice(i, i + h_end, stride)
            index[w_axis] = slice(j, j + w_end, stride)
            views.append(x[tuple(index)])
    return views


def _pool_operand(x, channels_last: bool):
    """The array a pool kernel walks, and its spatial axes: a channels-last x as its contiguous
    (N, H, W, C) view (one copy if it is not channels-last yet), else x itself, NCHW."""
    return (to_nhwc(x), (1, 2)) if channels_last else (x, (2, 3))


def _empty_operand(xp, x_shape, dtype, channels_last: bool):
    """Uninitialised dx in the layout :func:`_pool_operand` uses: (N, H, W, C) or (N, C, H, W)."""
    n, c, h, w = x_shape
    return xp.empty((n, h, w, c) if channels_last else x_shape, dtype=dtype)


def maxpool_forward(x, k: int, stride: int, index: bool = True, out=None):
    """Max over k x k windows. x: (N, C, H, W) -> y: (N, C, Ho, Wo), idx: (N, C, Ho, Wo) uint8.

    ``idx`` is the row-major position (i*k + j) of the *first* maximum of each window, as in
    PyTorch's CPU kernel, so that the backward routes each gradient to exactly one element.
    y and idx keep x's memory layout. With ``index=False`` (inference) idx is not computed and None
    is returned in its place. ``out``: an optional (y, idx) pair to write into, laid out as the
    kernel walks them: (N, Ho, Wo, C) arrays when x is channels-last, else (N, C, Ho, Wo).
    """
    xp = get_array_module(x)
    channels_last = is_channels_last(x)
    a, axes = _pool_operand(x, channels_last)
    views = pool_windows(a, k, stride, axes)
    if out is not None:
        y, idx = out
    else:
        y = xp.empty(views[0].shape, dtype=x.dtype)
        idx = xp.empty(y.shape, dtype=window_index_dtype(xp, k)) if index else None
    _maxpool_into(views, y, idx, xp)
    if channels_last:
        return from_nhwc(y), (None if idx is None else from_nhwc(idx))
    return y, idx


def window_index_dtype(xp, k: int):
    """The dtype of max-pool indices: uint8 holds every window position i*k + j up to a 16x16 window."""
    return xp.uint8 if k * k <= 256 else xp.int32


def _maxpool_into(views, y, idx, xp) -> None:
    """y = max over the window views; idx = position of the first maximum (skipped if idx is None).

    The 2x2 case is a pairwise tree; the general case a running max over the k*k views (strict '>'
    keeps the first maximum).
    """
    if idx is None:  # y = max over the views, nothing else
        y[...] = views[0]
        for view in views[1:]:
            xp.maximum(y, view, out=y)
    elif len(views) == 4:  # 2x2: views v00, v01, v10, v11
        v00, v01, v10, v11 = views
        top, bottom = xp.maximum(v00, v01), xp.maximum(v10, v11)
        # top != v00 <=> v01 > v00, but reads only v00's half of x again. Ties -> 0 (comes first).
        xp.not_equal(top, v00, out=idx.view(xp.bool_))  # 0 or 1
        idx_bottom = (bottom != v10).view(xp.uint8)
        idx_bottom += 2  # 2 or 3
        use_bottom = (bottom > top).view(xp.uint8)  # ties -> the top row (comes first)
        idx_bottom -= idx  # (2 or 3) - (0 or 1) >= 1: no uint8 wrap-around
        idx_bottom *= use_bottom
        idx += idx_bottom  # idx_bottom where the bottom row wins
        xp.maximum(top, bottom, out=y)
    else:
        y[...] = views[0]
        idx[...] = 0
        for t in range(1, len(views)):
            greater = (views[t] > y).view(xp.uint8)
            idx += greater * (t - idx)  # idx = t where greater; t > idx, so no underflow
            xp.maximum(y, views[t], out=y)


def maxpool_backward(dy, idx, x_shape, channels_last: bool, k: int, stride: int, out=None):
    """Adjoint of :func:`maxpool_forward`: each dy (N, C, Ho, Wo) goes to the one element idx chose.

    Returns dx: ``x_shape`` (N, C, H, W), channels-last in memory if ``channels_last`` (the
    forward input's layout). Non-overlapping windows write each slot once; overlapping ones add.
    ``out``: an optional array to write dx into, in that layout ((N, H, W, C) or (N, C, H, W)).
    """
    xp = get_array_module(dy)
    g, axes = _pool_operand(dy, channels_last)
    idx, _ = _pool_operand(idx, channels_last)
    dx = _empty_operand(xp, x_shape, dy.dtype, channels_last) if out is None else out
    overlapping = stride < k
    if not _tiles_exactly(x_shape, dy.shape, k, stride):
        dx[...] = 0  # elements in no window (or, when overlapping, reached by several) start at 0
    for t, view in enumerate(pool_windows(dx, k, stride, axes)):
        if overlapping:
            view += g * (idx == t)
        else:
            xp.multiply(g, idx == t, out=view)
    return from_nhwc(dx) if channels_last else dx


def _tiles_exactly(x_shape, y_shape, k, stride) -> bool:
    """True if the k x k windows cover every input element exactly once."""
    return stride == k and x_shape[2] == k * y_shape[2] and x_shape[3] == k * y_shape[3]


def avgpool_forward(x, k: int, stride: int):
    """Mean over k x k windows. x: (N, C, H, W) -> (N, C, Ho, Wo), same layout and dtype as x."""
    channels_last = is_channels_last(x)
    a, axes = _pool_operand(x, channels_last)
    views = pool_windows(a, k, stride, axes)
    y = views[0].copy()
    for view in views[1:]:
        y += view
    y *= 1.0 / (k * k)  # a Python float stays in x's dtype
    return from_nhwc(y) if channels_last else y


def avgpool_backward(dy, x_shape, channels_last: bool, k: int, stride: int):
    """Adjoint of :func:`avgpool_forward`. dy: (N, C, Ho, Wo) -> dx: ``x_shape`` (layout as for max)."""
    xp = get_array_module(dy)
    g, axes = _pool_operand(dy, channels_last)
    share = g * (1.0 / (k * k))
    dx = _empty_operand(xp, x_shape, dy.dtype, channels_last)
    overlapping = stride < k
    if not _tiles_exactly(x_shape, dy.shape, k, stride):
        dx[...] = 0
    for view in pool_windows(dx, k, stride, axes):
        if overlapping:
            view += share
        else:
            view[...] = share
    return from_nhwc(dx) if channels_last else dx



# --------------------------------------------------------------------------- batch normalisation
#
# CS231n's shape: ``out, cache = batchnorm_forward(...)`` and ``dx, dgamma, dbeta = batchnorm_backward(dout,
# cache)``. Everything runs on the (M, C) row matrix of :func:`to_rows` (M = N for (N, F) inputs, N*H*W
# for images; free for channels-last images); image outputs and input gradients are channels-last.


@dataclass(frozen=True)
class BatchNormCache:
    """What :func:`batchnorm_backward` needs from a :func:`batchnorm_forward`.

    shape: x's shape, (N, F) or (N, C, H, W); count: M, the values per channel; gamma: (C,), the
    parameter itself (read again by the backward); inv_std: (C,) 1 / sqrt(var + eps); mean: (C,) the
    statistics normalised with (the batch's, or the running ones); var: (C,) their variance (biased
    when the batch's); batch_stats: whether they are the batch's (train) or fixed (eval). With batch
    statistics ``centred`` = x_rows - mean: (M, C) is kept; else ``x_rows``: (M, C), and the backward
    centres it again only if it runs.
    """

    shape: tuple
    count: int
    gamma: object
    inv_std: object
    mean: object
    var: object
    batch_stats: bool
    centred: object = None
    x_rows: object = None

    def centred_rows(self):
        """(M, C) x_rows - mean: kept with batch statistics, computed again otherwise."""
        return self.centred if self.batch_stats else self.x_rows - self.mean


def centre_and_square_sums(x_rows, mean, out, blocks):
    """out = x_rows - mean, block by block of rows -> the per-channel sums of squares of out: (C,) float64.

    x_rows, out: (M, C); mean: (C,); blocks: slices of the rows (:func:`batch_blocks`), each centred
    and its squares summed while it is in cache. The sums add up block after block, in float64.
    """
    square_sums = 0
    for rows in blocks:
        square_sums = square_sums + centre_rows(x_rows[rows], mean, out[rows])
    return square_sums


def batchnorm_forward(x, gamma, beta, eps: float, mean=None, var=None):
    """Batch normalisation. x: (N, F) or (N, C, H, W) -> (out: x's shape, cache: :class:`BatchNormCache`).

    gamma, beta: (C,). With ``mean`` and ``var`` None (train mode) x is normalised by its own batch
    statistics: mean and biased variance per channel, the rows centred block by block (:func:`batch_blocks`)
    and each block's squares summed while it is in cache, both sums as precise as float64 accumulation
    (as PyTorch's CPU kernel: relative error ~5e-8, where float32 running sums lose ~1e-4;
    :func:`column_sums_f64`); ``cache.mean`` / ``cache.var`` return them
    (for the running statistics, :func:`batchnorm_update_running`). With ``mean`` and ``var`` (C,) given
    (eval mode: the running statistics) it is the affine map x * s + (beta - mean * s), s = gamma / sqrt(var + eps).
    """
    xp = get_array_module(x)
    x_rows = to_rows(x)  # (M, C)
    count, c = x_rows.shape
    if mean is None:
        mean = (column_sums_f64(x_rows) / count).astype(x.dtype)  # (C,), summed in float64
        centred = xp.empty_like(x_rows)  # x_hat = centred * inv_std
        square_sums = centre_and_square_sums(x_rows, mean, centred, batch_blocks(count, c * x_rows.itemsize, xp))
        var = (square_sums / count).astype(x.dtype)  # biased; square_sums: float64
        inv_std = 1.0 / xp.sqrt(var + eps)  # (C,), x's dtype (eps is a Python float)
        out = scale_rows(centred, gamma * inv_std, beta)  # = x_hat * gamma + beta, without forming x_hat
        cache = BatchNormCache(x.shape, count, gamma, inv_std, mean, var, True, centred=centred)
    else:
        inv_std = 1.0 / xp.sqrt(var + eps)
        scale = gamma * inv_std
        out = scale_rows(x_rows, scale, beta - mean * scale)  # two passes; centred only if a backward runs
        cache = BatchNormCache(x.shape, count, gamma, inv_std, mean, var, False, x_rows=x_rows)
    return from_rows(out, x.shape), cache


def batchnorm_update_running(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """Move the running statistics (C,) towards a batch's, in place (PyTorch's convention):
    running = (1 - m) * running + m * batch, with the batch's variance made unbiased (count / (count - 1))."""
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (count / max(count - 1, 1))


def batchnorm_param_grads(dy_rows, centred_rows, inv_std):
    """(dgamma, dbeta): (C,) each, sum(dy * x_hat) and sum(dy) per channel.

    dy_rows, centred_rows: (M', C), centred_rows = x - mean at the rows dy is given for; inv_std: (C,).
    """
    return column_dots(dy_rows, centred_rows) * inv_std, column_sums(dy_rows)


def batchnorm_backward(dout, cache: BatchNormCache, input_grad: bool = True):
    """Gradients of :func:`batchnorm_forward`: dout: x's shape -> (dx: x's shape or None, dgamma, dbeta: (C,)).

    With batch statistics dx = s * (dy - mean(dy) - x_hat * mean(dy * x_hat)), s = gamma * inv_std,
    computed as centred * a + dy - b in four passes over one buffer; with fixed statistics (eval) the
    layer is affine and dx = s * dy. ``input_grad`` False skips dx (None).
    """
    dy_rows = to_rows(dout)  # (M, C)
    centred = cache.centred_rows()
    inv_std, count = cache.inv_std, cache.count
    dgamma, dbeta = batchnorm_param_grads(dy_rows, centred, inv_std)
    if not input_grad:
        return None, dgamma, dbeta
    scale = cache.gamma * inv_std  # (C,)
    if not cache.batch_stats:
        return from_rows(scale_rows(dy_rows, scale), cache.shape), dgamma, dbeta
    # x_hat * mean(dy * x_hat) = centred * (inv_std * dgamma / M): the rows re-blocked wide (wide_rows).
    wide_c, a, b, scale = wide_rows(centred, -inv_std * dgamma / count, dbeta / count, scale)
    dx = wide_c * a
    dx += dy_rows.reshape(dx.shape)
    dx -= b
    dx *= scale
    return from_rows(dx.reshape(dy_rows.shape), cache.shape), dgamma, dbeta


@dataclass(frozen=True)
class BatchNormMaxPoolCache:
    """What :func:`batchnorm_maxpool_backward` needs from a :func:`batchnorm_maxpool_forward`.

    x_shape: (N, C, H, W); x_rows: (M, C) the input's rows (M = N*H*W); mean, var, inv_std: (C,) the batch
    statistics; gamma: (C,); pooled_rows: (Mq, C) the centred value at each window's maximum (Mq = N*Ho*Wo);
    argmax: (N, Ho, Wo, C) the window position of each maximum; k, stride: the pooling window.
    """

    x_shape: tuple
    x_rows: object
    mean: object
    var: object
    inv_std: object
    gamma: object
    pooled_rows: object
    argmax: object
    k: int
    stride: int

    @property
    def count(self) -> int:
        return self.x_rows.shape[0]


def image_blocks(x_shape, itemsize: int) -> list:
    """Cache-sized blocks of the images of x: (N, C, H, W), as (image slice, the slice of its rows in the
    (N*H*W, C) row matrix, the block's (N', C, H, W) shape), from :func:`batch_blocks` (NumPy)."""
    n, c, h, w = x_shape
    return [(images, slice(images.start * h * w, images.stop * h * w), (images.stop - images.start, c, h, w))
            for images in batch_blocks(n, h * w * c * itemsize, np)]


def batchnorm_maxpool_forward(x, gamma, beta, eps: float, k: int, stride: int):
    """maxpool(batchnorm(x)) with batch statistics, normalising only the pooled values (NumPy; every gamma > 0).

    x: (N, C, H, W) -> (out: (N, C, Ho, Wo) channels-last, cache: :class:`BatchNormMaxPoolCache`); windows
    must not overlap (stride >= k). With gamma > 0 the per-channel map centred -> centred * s + beta,
    s = gamma * inv_std > 0, is increasing, so the max of a window of normalised values is the normalised
    max of its centred values: the centred values are max-pooled and only the pooled ones normalised
    (k*k times fewer). Block by block of images (:func:`image_blocks`): a block is centred into a reused
    buffer, its squares summed and it is pooled while in cache, so ``centred`` is never stored whole.
    ``cache.mean`` / ``cache.var`` are the batch statistics (biased variance).
    """
    x_rows = to_rows(x)  # (M, C), M = N*H*W
    n, c, h, w = x.shape
    count = x_rows.shape[0]
    ho, wo = (conv_output_size(size, k, stride, 0) for size in (h, w))
    mean = (column_sums_f64(x_rows) / count).astype(x.dtype)  # (C,), summed in float64
    pooled = np.empty((n, ho, wo, c), dtype=x.dtype)  # the centred value at each window's maximum
    argmax = np.empty((n, ho, wo, c), dtype=window_index_dtype(np, k))
    blocks = image_blocks(x.shape, x.itemsize)
    centred = np.empty((blocks[0][1].stop, c), dtype=x.dtype)  # one block's x - mean
    square_sums = 0
    for images, rows, block_shape in blocks:
        block = centred[: rows.stop - rows.start]
        square_sums = square_sums + centre_rows(x_rows[rows], mean, block)
        maxpool_forward(from_rows(block, block_shape), k, stride, out=(pooled[images], argmax[images]))
    var = (square_sums / count).astype(x.dtype)  # square_sums: float64
    inv_std = 1.0 / np.sqrt(var + eps)
    pooled_rows = pooled.reshape(-1, c)  # (Mq, C)
    out = from_rows(scale_rows(pooled_rows, gamma * inv_std, beta), (n, c, ho, wo))
    return out, BatchNormMaxPoolCache(x.shape, x_rows, mean, var, inv_std, gamma, pooled_rows, argmax, k, stride)


def batchnorm_maxpool_backward(dout, cache: BatchNormMaxPoolCache, input_grad: bool = True):
    """Gradients of :func:`batchnorm_maxpool_forward`: dout: (N, C, Ho, Wo) -> (dx: (N, C, H, W) channels-last
    or None, dgamma, dbeta: (C,)).

    The gradient dy of the full batch-norm output is zero except at each window's maximum, where it is dout:

        sum(dy) = sum(dout),   sum(dy * x_hat) = sum(dout * pooled centred) * inv_std   (per channel)
        dx = s * route(dout) + centred * a + b,   a = -s * inv_std * sum(dy * x_hat) / M,  b = -s * sum(dy) / M

    (route: the max-pool backward; M = N*H*W), the affine part added as x * a + (b - mean * a), block by
    block of images, so ``centred`` is never formed.
    """
    dz_rows = to_rows(dout)  # (Mq, C)
    inv_std = cache.inv_std
    dgamma, dbeta = batchnorm_param_grads(dz_rows, cache.pooled_rows, inv_std)
    if not input_grad:
        return None, dgamma, dbeta
    scale = cache.gamma * inv_std  # s: (C,)
    n, c, h, w = cache.x_shape
    routed = scale_rows(dz_rows, scale).reshape(cache.argmax.shape)  # s * dz: (N, Ho, Wo, C)
    x_rows, count = cache.x_rows, cache.count  # (M, C), M
    a, b = -scale * inv_std * dgamma / count, -scale * dbeta / count
    shift = b - cache.mean * a  # centred * a + b = x * a + shift
    dx = np.empty((n, h, w, c), dtype=x_rows.dtype)
    dx_rows = dx.reshape(count, c)
    for images, rows, block_shape in image_blocks(cache.x_shape, dx.itemsize):  # route, add the affine part
        maxpool_backward(from_nhwc(routed[images]), from_nhwc(cache.argmax[images]), block_shape, True, cache.k,
                         cache.stride, out=dx[images])
        dx_rows[rows] += scale_rows(x_rows[rows], a, shift)
    return from_nhwc(dx), dgamma, dbeta
