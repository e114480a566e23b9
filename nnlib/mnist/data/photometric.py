"""Photometric distortions of digit images: the camera, the paper and the pen rather than the hand.

Five families, each switched on in ``prepare.augment`` by its largest severity (0 = off). Each image
gets each family that is on with probability ``photo_p``, independently, in this order:

==============  ==========================================================================================
``resolution``  down to s x s pixels (area average) and back to 28 x 28 (linear), s uniform in
                [resolution, 20]: a thumbnail or an old scanner; a digit down to at most 12 pixels is then
                framed again as ``nnlib predict`` frames a picture (:func:`nnlib.mnist.images.preprocess_many`)
``blur``        Gaussian blur of sigma uniform in [0, blur] pixels: a photo out of focus
``occlude``     each pixel back to paper with a probability uniform in [0, occlude]: a dry pen, dust
``contrast``    paper at a level uniform in [0, contrast x 255], ink uniform between paper + 64 and 255:
                grey ink on grey paper
``noise``       additive Gaussian noise of a standard deviation uniform in [0, noise] of the range
==============  ==========================================================================================

Every operation is a few whole-batch array operations (per-image 28 x 28 matrices for the resampling
and the blur, ``M @ x @ M.T``), with no loop over pixels. The robustness suite of the evaluate stage
(:mod:`nnlib.mnist.robustness`) is held out: it shares families with these (docs/robustness.md says
which) but not its functions at its severities.
"""
from __future__ import annotations

import functools

import numpy as np

from nnlib.mnist.images import preprocess_many

SIZE = 28
FAMILIES = ("resolution", "blur", "occlude", "contrast", "noise")
LARGEST_SIDE = 20  # resolution draws sides in [resolution, 20]
REFRAMED_SIDE = 12  # digits down to at most this many pixels are framed again afterwards
INK_ABOVE_PAPER = 64.0  # the least ink-paper contrast that contrast draws, in grey levels


def gaussian_matrices(sigmas: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Gaussian filters of ``sigmas`` (n,) along one axis of length ``size``, as float32 (n, size, size)
    matrices: ``G[k] @ f`` is ``gaussian_filter1d(f, sigmas[k], mode="constant")`` (scipy's kernel:
    radius round(4 sigma), weights normalised over the kernel, zero outside). A sigma of 0 is the identity."""
    sigmas = np.maximum(np.asarray(sigmas, np.float64), 1e-6)[:, None, None]
    offset = np.subtract.outer(np.arange(size), np.arange(size))[None].astype(np.float64)
    radius = np.floor(4.0 * sigmas + 0.5)
    weights = np.exp(-0.5 * (offset / sigmas) ** 2) * (np.abs(offset) <= radius)
    span = np.arange(-size, size + 1)[None, None, :]
    total = (np.exp(-0.5 * (span / sigmas) ** 2) * (np.abs(span) <= radius)).sum(axis=-1, keepdims=True)
    return (weights / total).astype(np.float32)


@functools.lru_cache(maxsize=None)
def resampling_matrix(side: int, size: int = SIZE) -> np.ndarray:
    """(size, size) float32: down to ``side`` samples by area averaging, then back up by linear
    interpolation between sample centres (edges held). Read-only (cached)."""
    down = np.zeros((side, size))
    edges = np.arange(side + 1) * (size / side)
    for i in range(side):  # the share of each source pixel [j, j + 1) inside target cell [edges[i], edges[i+1])
        low, high = edges[i], edges[i + 1]
        overlap = np.clip(np.minimum(np.arange(1, size + 1), high) - np.maximum(np.arange(size), low), 0, None)
        down[i] = overlap / overlap.sum()
    source = np.clip((np.arange(size) + 0.5) * (side / size) - 0.5, 0, side - 1)
    left = np.minimum(np.floor(source).astype(int), side - 2) if side > 1 else np.zeros(size, int)
    frac = source - left
    up = np.zeros((size, side))
    up[np.arange(size), left] = 1 - frac
    if side > 1:
        up[np.arange(size), left + 1] += frac
    matrix = (up @ down).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def _sandwich(matrices: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``M[k] @ x[k] @ M[k].T`` for float32 (n, S, S) matrices and images."""
    return matrices @ images @ matrices.transpose(0, 2, 1)


def _reframe(x: np.ndarray, members: np.ndarray) -> None:
    """Frame the digits ``x[members]`` again (in place) as ``nnlib predict`` frames a user's picture: the ink
    cropped, scaled into 20 x 20 and centred by mass. A digit with no ink left stays as it is."""
    if members.size == 0:
        return
    framed = preprocess_many(list(np.clip(x[members], 0, 255) / np.float32(255)))
    for i, digit in zip(members, framed):
        if not isinstance(digit, ValueError):
            x[i] = digit


def distort(images: np.ndarray, rng: np.random.Generator, severities: dict, p: float) -> np.ndarray:
    """Photometric distortions of float32 grey levels (n, 28, 28) in [0, 255] (a new array, not rounded).

    ``severities`` maps each family of :data:`FAMILIES` to its largest severity (0 = off); ``p`` is the
    probability that an image gets a family that is on. Draws, in this order: which families each image
    gets (n, 5) and their severities (n, 6), then the occlusion and noise fields of the images that get
    them. Nothing is drawn when every family is off.
    """
    on_families = [name for name in FAMILIES if severities.get(name, 0)]
    if not on_families or p == 0:
        return images.copy()
    n = len(images)
    gets = rng.random((n, len(FAMILIES))) < p
    draws = rng.random((n, len(FAMILIES) + 1))
    x = images.astype(np.float32, copy=True)
    for column, name in enumerate(FAMILIES):
        chosen = np.flatnonzero(gets[:, column]) if severities.get(name, 0) else np.empty(0, int)
        if chosen.size == 0:
            continue
        u = draws[chosen, column]
        severity = severities[name]
        if name == "resolution":
            sides = severity + np.floor(u * (LARGEST_SIDE - severity + 1)).astype(int)
            for side in np.unique(sides):
                group = chosen[sides == side]
                x[group] = _sandwich(np.broadcast_to(resampling_matrix(int(side)), (len(group), SIZE, SIZE)), x[group])
            _reframe(x, chosen[sides <= REFRAMED_SIDE])
        elif name == "blur":
            x[chosen] = _sandwich(gaussian_matrices(u * severity), x[chosen])
        elif name == "occlude":
            x[chosen] *= rng.random((chosen.size, SIZE, SIZE), dtype=np.float32) >= (u * severity)[:, None, None]
        elif name == "contrast":
            paper = (u * severity * 255.0)[:, None, None]
            ink = paper + INK_ABOVE_PAPER + draws[chosen, -1][:, None, None] * (255.0 - INK_ABOVE_PAPER - paper)
            x[chosen] = (paper + (ink - paper) * (x[chosen] / 255.0)).astype(np.float32)
        else:  # noise
            x[chosen] += rng.standard_normal((chosen.size, SIZE, SIZE), dtype=np.float32) * (u * severity * 255.0)[:, None, None]
    return x
