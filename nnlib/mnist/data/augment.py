"""Random distortions of digit images: affine (rotate, shift, scale, shear, flip) and elastic, then the
photometric families of :mod:`nnlib.mnist.data.photometric` (resolution, blur, occlusion, contrast, noise).

Every output pixel is read from one *source coordinate* in its input image, by bilinear
interpolation with zero fill outside the image. The affine part maps each output pixel about the
image centre; the elastic part (Simard et al. 2003: a field of uniform(-1, 1) displacements smoothed
by a Gaussian of ``elastic_sigma`` and scaled by ``elastic_alpha``) is added on top, so both become
ONE displacement field and ONE interpolation over the whole batch. No Python loop over pixels or
images: the batch is processed in chunks of :data:`CHUNK` images, which keeps the working set in
cache (chunking changes no result: the random fields are drawn image by image).

Two things make this fast (see ``bench/bench_augment.py``):

* the Gaussian smoothing of the random fields is a linear map along each axis, so it is applied
  as two small matrix products (:func:`smoothing_matrix`, the filter applied to the identity)
  instead of ``gaussian_filter``; the result is the same as ``gaussian_filter(mode="constant")``;
* bilinear interpolation is four gathers from the flattened, zero-padded batch (1-D indices), in
  float32, instead of ``map_coordinates`` on the (N, H, W) batch, which interpolates along the
  image axis too (8 corners instead of 4) and is several times slower.

Coordinates are ``(row, col)`` with rows pointing down. Angles are in degrees and follow the
picture as displayed: a positive ``angle`` turns the digit counter-clockwise, a positive ``shear``
leans its top to the right, a positive ``shift`` moves it down / right.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnlib.errors import ParamsError
from nnlib.mnist.data import photometric
from nnlib.mnist.config.params import PARAMS_FILE, validate
from nnlib.mnist.config.schema import AUGMENT

CHUNK = 256  # images interpolated at a time: small enough for the working set to stay in cache
TRUNCATE = 4.0  # Gaussian kernel radius in sigmas (scipy's default)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random distortions; every image draws its own values.

    rotate: max |angle| in degrees (uniform in [-rotate, rotate]), at most 180.
    shift: max |translation| in pixels, drawn separately for rows and columns.
    scale: zoom factor uniform in [1 - scale, 1 + scale], 0 <= scale < 1.
    shear: max |shear angle| in degrees (horizontal shear), below 90.
    elastic_alpha, elastic_sigma: Simard's elastic distortion; alpha > 0 needs sigma > 0.
    flip: mirror left-right with probability 0.5.
    resolution, blur, occlude, contrast, noise: the largest severity of each photometric family (0 = off),
    each given to an image with probability photo_p (:mod:`nnlib.mnist.data.photometric`).
    """

    rotate: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0
    flip: bool = False
    resolution: int = 0
    blur: float = 0.0
    occlude: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    photo_p: float = 0.0

    def __post_init__(self):
        # One set of checks for every range: the schema's (nnlib/mnist/config/schema.py), as params.yaml gets them.
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        validate(values, {name: AUGMENT[name] for name in values}, "prepare.augment")
        if self.elastic_alpha > 0 and self.elastic_sigma == 0:
            raise ParamsError(f"{PARAMS_FILE}: prepare.augment.elastic_alpha > 0 needs prepare.augment.elastic_sigma > 0, "
                              f"got elastic_alpha={self.elastic_alpha!r}, elastic_sigma={self.elastic_sigma!r}")

    @classmethod
    def from_params(cls, section: dict) -> AugmentConfig:
        """Build from a params mapping (e.g. ``prepare.augment``); keys that are not fields are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in section.items() if key in names})

    @property
    def elastic(self) -> bool:
        """Whether the elastic distortion is on."""
        return self.elastic_alpha > 0

    @property
    def severities(self) -> dict:
        """The photometric families' largest severities, by name."""
        return {name: getattr(self, name) for name in photometric.FAMILIES}

    @property
    def photometric(self) -> bool:
        """Whether some photometric family is on (and photo_p > 0)."""
        return self.photo_p > 0 and any(self.severities.values())

    @property
    def geometric(self) -> bool:
        return bool(self.rotate or self.shift or self.scale or self.shear or self.elastic or self.flip)

    @property
    def is_identity(self) -> bool:
        """True when no distortion is switched on: :func:`distort` then returns a copy."""
        return not (self.geometric or self.photometric)


def affine_matrices(angle=0.0, scale=1.0, shear=0.0, flip=False) -> np.ndarray:
    """Forward 2x2 maps in (row, col) coordinates, one per image: ``rotate @ shear @ zoom @ flip``.

    Arguments are scalars or per-image arrays (broadcast together); angles in degrees.
    Returns float64 of shape (N, 2, 2).
    """
    angle, scale, shear, flip = np.broadcast_arrays(
        np.atleast_1d(np.asarray(angle, dtype=np.float64)),
        np.atleast_1d(np.asarray(scale, dtype=np.float64)),
        np.atleast_1d(np.asarray(shear, dtype=np.float64)),
        np.atleast_1d(np.asarray(flip, dtype=bool)),
    )
    n = angle.shape[0]
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_map = np.zeros((n, 2, 2))
    shear_map[:, 0, 0] = shear_map[:, 1, 1] = 1.0
    shear_map[:, 1, 0] = -np.tan(np.deg2rad(shear))  # col' = col + tan(shear) * height above centre
    mirror = np.zeros((n, 2, 2))
    mirror[:, 0, 0] = 1.0
    mirror[:, 1, 1] = np.where(flip, -1.0, 1.0)
    return rotate @ shear_map @ mirror * scale[:, None, None]


@functools.lru_cache(maxsize=32)
def smoothing_matrix(sigma: float, size: int) -> np.ndarray:
    """The Gaussian filter of ``sigma`` along one axis of length ``size``, as a (size, size) matrix.

    ``G @ f`` equals ``gaussian_filter1d(f, sigma, mode="constant")``: column j is the filtered unit
    impulse at j. Read-only float32 (cached).
    """
    matrix = ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0, mode="constant", truncate=TRUNCATE)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def elastic_field(rng: np.random.Generator, n: int, alpha: float, sigma: float, shape=(28, 28)) -> np.ndarray:
    """Simard's displacement fields: uniform(-1, 1) noise, Gaussian-smoothed, times ``alpha``.

    Returns float32 (n, 2, H, W): row and column displacements in pixels, per image. Draws the
    noise image by image, so drawing n1 then n2 fields gives the same values as n1 + n2 at once.
    """
    height, width = shape
    noise = rng.random((n, 2, height, width), dtype=np.float32)
    noise *= 2
    noise -= 1
    smooth_cols = smoothing_matrix(float(sigma), width)
    smooth_rows = smoothing_matrix(float(sigma), height)
    # Per-image 2-D products (tiny, so BLAS never starts threads for them, which would cost more
    # than it gains): smooth along each row, then along each column.
    field = noise @ smooth_cols.T
    field = smooth_rows @ field
    field *= alpha
    return field


def _bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``images[k]`` at float (rows[k], cols[k]), bilinear, zero outside; float32 result.

    The batch is zero-padded (1 pixel before, 2 after, so a corner one step past a clipped
    coordinate stays inside) and flattened, and the four corners are gathered by 1-D index.
    Coordinates are clipped to [-1, size], which does not change the result: beyond that band
    every corner is zero anyway.
    """
    n, height, width = images.shape
    pad_h, pad_w = height + 3, width + 3
    padded = np.zeros((n, pad_h, pad_w), dtype=np.float32)
    padded[:, 1 : height + 1, 1 : width + 1] = images
    flat = padded.ravel()

    rows = np.clip(rows, -1, height) + 1  # new arrays, in padded coordinates
    cols = np.clip(cols, -1, width) + 1
    row0, col0 = np.floor(rows), np.floor(cols)
    rows -= row0  # now the fractional parts
    cols -= col0
    index = row0.astype(np.int32) * pad_w + col0.astype(np.int32)
    index += (np.arange(n, dtype=np.int32) * (pad_h * pad_w))[:, None, None]

    top_left, top_right = flat[index], flat[index + 1]
    bottom_left, bottom_right = flat[index + pad_w], flat[index + pad_w + 1]
    top = top_left + cols * (top_right - top_left)
    bottom = bottom_left + cols * (bottom_right - bottom_left)
    return top + rows * (bottom - top)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def warp(images, matrices, shifts, displacement=None) -> np.ndarray:
    """Apply per-image affine maps (and optional displacement fields) to uint8 images (N, H, W).

    ``matrices`` (N, 2, 2): forward maps about the image centre, as from :func:`affine_matrices`;
    ``shifts`` (N, 2): (down, right) translations in pixels, applied after the map;
    ``displacement`` (N, 2, H, W) or None: added to each output pixel's source coordinate.
    Output pixel ``o`` reads the input at ``inv(M) @ (o - centre - shift) + centre + displacement(o)``.
    Returns uint8 (N, H, W), rounded. Works on any batch size; :func:`distort` feeds it chunks.
    """
    images = _check_images(images)
    n, height, width = images.shape
    inverse = np.linalg.inv(np.asarray(matrices, dtype=np.float64).reshape(n, 2, 2))
    shifts = np.broadcast_to(np.asarray(shifts, dtype=np.float64), (n, 2))
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    # source = inverse @ output + offset, with offset = centre - inverse @ (centre + shift)
    offset = (centre - np.einsum("nij,nj->ni", inverse, centre + shifts)).astype(np.float32)
    inverse = inverse.astype(np.float32)[:, :, :, None, None]
    out_rows = np.arange(height, dtype=np.float32)[:, None]
    out_cols = np.arange(width, dtype=np.float32)[None, :]
    src_rows = inverse[:, 0, 0] * out_rows + inverse[:, 0, 1] * out_cols + offset[:, 0, None, None]
    src_cols = inverse[:, 1, 0] * out_rows + inverse[:, 1, 1] * out_cols + offset[:, 1, None, None]
    if displacement is not None:
        src_rows += displacement[:, 0]
        src_cols += displacement[:, 1]
    return _to_uint8(_bilinear(images, src_rows, src_cols))


def transform(images, angle=0.0, scale=1.0, shear=0.0, shift=0.0, flip=False, displacement=None) -> np.ndarray:
    """Distort with explicit per-image values (scalars or arrays of length N; ``shift`` (N, 2)).

    ``distort(images, rng, cfg)`` equals ``transform(images, **sample_params(n, rng, cfg),
    displacement=elastic_field(rng, n, alpha, sigma))`` (the fields drawn next from the same ``rng``).
    """
    images = _check_images(images)
    n = len(images)
    matrices = np.broadcast_to(affine_matrices(angle, scale, shear, flip), (n, 2, 2))
    return warp(images, matrices, np.broadcast_to(np.asarray(shift, dtype=np.float64), (n, 2)), displacement)


def sample_params(n: int, rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    """Draw per-image affine values from ``rng``: angle, scale, shear (arrays (n,)), shift (n, 2), flip.

    A distortion that is off draws nothing, so switching one on or off leaves the others' streams
    as they were only up to that point. The order of draws is fixed: angle, scale, shear, shift, flip.
    """
    return {
        "angle": rng.uniform(-cfg.rotate, cfg.rotate, n) if cfg.rotate else np.zeros(n),
        "scale": rng.uniform(1 - cfg.scale, 1 + cfg.scale, n) if cfg.scale else np.ones(n),
        "shear": rng.uniform(-cfg.shear, cfg.shear, n) if cfg.shear else np.zeros(n),
        "shift": rng.uniform(-cfg.shift, cfg.shift, (n, 2)) if cfg.shift else np.zeros((n, 2)),
        "flip": rng.random(n) < 0.5 if cfg.flip else np.zeros(n, dtype=bool),
    }


def distort(images, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Randomly distort uint8 images (N, H, W) with ``cfg``; every image gets its own draws.

    Deterministic given the state of ``rng``: first the affine values of all N images
    (:func:`sample_params`), then the elastic fields image by image (if elastic is on), then the
    photometric draws of all N images (if a family is on). Returns a new uint8 array of the same shape.
    """
    images = _check_images(images)
    if cfg.is_identity:
        return images.copy()
    out = _distort_geometry(images, rng, cfg) if cfg.geometric else images.copy()
    if cfg.photometric:
        out = _to_uint8(photometric.distort(out, rng, cfg.severities, cfg.photo_p))
    return out


def _distort_geometry(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    n = len(images)
    params = sample_params(n, rng, cfg)
    matrices = affine_matrices(params["angle"], params["scale"], params["shear"], params["flip"])
    out = np.empty_like(images)
    for start in range(0, n, CHUNK):
        part = slice(start, min(n, start + CHUNK))
        field = None
        if cfg.elastic:
            field = elastic_field(rng, part.stop - start, cfg.elastic_alpha, cfg.elastic_sigma, images.shape[1:])
        out[part] = warp(images[part], matrices[part], params["shift"][part], field)
    return out


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    return images
