"""The robustness suite: the MNIST test set under named corruptions, scored by the evaluate stage.

Every corruption takes uint8 digits (N, 28, 28), white ink on black paper as MNIST holds them, and a
``numpy.random.Generator``, and returns new uint8 digits (N, 28, 28) in 0..255. Each is written with
NumPy, SciPy and Pillow only, is deterministic given the generator's state (the same seed gives the
same bytes), draws its random values image by image (the first k digits of a batch come out as a
batch of k would), and keeps the digit readable to a person. Three entries go through ``nnlib
predict``'s preprocessing (:func:`nnlib.mnist.images.preprocess`) the way a user's picture would:
``low_resolution``, ``small_off_centre`` and ``inverted``.

:data:`SUITE` names the entries in order; :func:`corrupt` applies one, each entry with its own
random stream (``nnlib.mnist.seeding.rng(seed, ROBUST, entry id)``), so adding, removing or
reordering entries changes no other entry's images. :func:`score` runs a model over them.

The suite is a held-out measure: training augmentations may come from the same broad families
(rotation, shear, stroke width, blur, noise), but never these functions at these severities
(docs/robustness.md says which entries share a family with ``nnlib/mnist/data/augment.py``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from nnlib.backend import to_numpy
from nnlib.parallel import map_on_replicas
from nnlib.mnist import images as preprocessing
from nnlib.mnist.data import augment, photometric
from nnlib.mnist.data.stream import to_batch
from nnlib.mnist.seeding import ROBUST, rng as stream_rng

SIZE = 28


# --- helpers ---------------------------------------------------------------------------------------

def _check(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected uint8 digits of shape (N, 28, 28), got {x.dtype} {x.shape}")
    return x


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


PREPROCESS_CHUNK = 500  # pictures preprocessed together (a stack of 500 56x56 float32 pictures is 6 MB)


def through_preprocessing(grays: np.ndarray) -> np.ndarray:
    """Luminance float32 (N, H, W) in [0, 1] -> uint8 (N, 28, 28) through ``nnlib predict``'s preprocessing.

    A picture that comes out blank (no ink left) becomes an all-black digit, which the model then
    gets right only by chance, as a user's blank picture would be refused.
    """
    out = np.zeros((len(grays), SIZE, SIZE), np.uint8)
    for start in range(0, len(grays), PREPROCESS_CHUNK):
        done = preprocessing.preprocess_many(list(grays[start : start + PREPROCESS_CHUNK]))
        for i, digit in enumerate(done, start):
            if not isinstance(digit, ValueError):
                out[i] = digit
    return out


def preprocess_digits(x: np.ndarray) -> np.ndarray:
    """MNIST-form uint8 digits (N, 28, 28), white on black, through the preprocessing as pictures."""
    return through_preprocessing(_check(x).astype(np.float32) / 255)


# --- the corruptions: (uint8 (N, 28, 28), Generator) -> uint8 (N, 28, 28) ------------------------------

def thick_strokes(x, rng):
    """Strokes thickened by grey-scale dilation: a 3x3 square or a 3x3 cross, half the digits each
    (about 2 px wider, as a felt pen writes)."""
    x = _check(x)
    square = ndimage.grey_dilation(x, footprint=np.ones((1, 3, 3), bool))
    cross = ndimage.grey_dilation(x, footprint=ndimage.generate_binary_structure(2, 1)[None])
    return np.where((rng.random(len(x)) < 0.5)[:, None, None], square, cross)


def thin_strokes(x, rng):
    """Strokes thinned by grey-scale erosion with a 2x2 square (about 1 px narrower, as a fine pen
    writes), the erosion's corner chosen per digit so the digit does not drift one way."""
    x = _check(x)
    out = np.empty_like(x)
    corner = rng.integers(0, 4, len(x))
    for k in range(4):
        members = np.flatnonzero(corner == k)
        if members.size:
            origin = (0, -1 if k & 1 else 0, -1 if k & 2 else 0)
            out[members] = ndimage.grey_erosion(x[members], footprint=np.ones((1, 2, 2), bool), origin=origin)
    return out


def gaussian_blur(x, rng):
    """Gaussian blur of sigma uniform in [1.0, 1.5] px per digit (an out-of-focus photo), zero outside
    the frame (as ``gaussian_filter(mode="constant")``), as one matrix product per axis and digit."""
    x = _check(x).astype(np.float32)
    blur = photometric.gaussian_matrices(rng.uniform(1.0, 1.5, len(x)))
    return _to_uint8(blur @ x @ blur.transpose(0, 2, 1))


def line_kernels(lengths: np.ndarray, angles: np.ndarray, radius: int, points: int = 33) -> np.ndarray:
    """Normalised motion-blur kernels, float64 (n, 2 radius + 1, 2 radius + 1): for each digit a line of
    ``lengths[k]`` px at ``angles[k]`` degrees (counter-clockwise from the horizontal) through the
    centre, drawn by bilinear splatting of ``points`` evenly spaced points along it."""
    n, side = len(lengths), 2 * radius + 1
    theta = np.deg2rad(np.asarray(angles, np.float64))[:, None]
    t = np.asarray(lengths, np.float64)[:, None] * np.linspace(-0.5, 0.5, points)[None]
    r, c = radius - t * np.sin(theta), radius + t * np.cos(theta)
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    fr, fc = r - r0, c - c0
    kernels = np.zeros(n * side * side)
    first = (np.arange(n)[:, None] * side + r0) * side + c0  # flat index of each point's top-left neighbour
    for step, weight in ((0, (1 - fr) * (1 - fc)), (1, (1 - fr) * fc), (side, fr * (1 - fc)), (side + 1, fr * fc)):
        kernels += np.bincount((first + step).ravel(), weight.ravel(), minlength=kernels.size)
    kernels = kernels.reshape(n, side, side)
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)


MOTION_RADIUS = 4  # kernels of motion_blur are 9x9: room for a 6-px line at any angle


def motion_blur(x, rng):
    """Motion blur: each digit smeared along a line of 4 to 6 px at a uniform random angle (a shaken camera).

    Correlation with each digit's kernel, zero outside the frame (as ``ndimage.correlate(mode="constant")``),
    as one multiply-add of shifted copies per kernel tap over the whole batch.
    """
    x = _check(x).astype(np.float32)
    lengths, angles = (rng.random((len(x), 2)) * [2.0, 180.0] + [4.0, 0.0]).T
    kernels = line_kernels(lengths, angles, MOTION_RADIUS).astype(np.float32)
    r = MOTION_RADIUS
    padded = np.pad(x, ((0, 0), (r, r), (r, r)))
    out = np.zeros_like(x)
    for dr in range(2 * r + 1):
        for dc in range(2 * r + 1):
            weight = kernels[:, dr, dc]
            if weight.any():
                out += weight[:, None, None] * padded[:, dr : dr + SIZE, dc : dc + SIZE]
    return _to_uint8(out)


def low_resolution(x, rng):
    """Down to 8x8 pixels (area average) and back up to 28x28 (bilinear), then through ``nnlib predict``'s
    preprocessing (a thumbnail or an old scanner). No random draws."""
    x = _check(x)
    small = [Image.fromarray(image).resize((8, 8), Image.Resampling.BOX) for image in x]
    back = np.stack([np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for image in small])
    return through_preprocessing(back.astype(np.float32) / 255)


def rotation(x, rng):
    """Rotated by 25 degrees, clockwise or counter-clockwise (half each), about the frame's centre."""
    x = _check(x)
    return augment.transform(x, angle=25.0 * rng.choice([-1.0, 1.0], len(x)))


def shear(x, rng):
    """Sheared horizontally by 30 degrees, the top leaning left or right (half each) (italics)."""
    x = _check(x)
    return augment.transform(x, shear=30.0 * rng.choice([-1.0, 1.0], len(x)))


CANVAS = 56  # the large canvas of small_off_centre: two MNIST frames wide


def small_off_centre(x, rng):
    """Small and anywhere on a large canvas: the 28x28 frame scaled to 14 to 20 px (the digit to about
    10 to 14 px), pasted at a uniform random place on a 56x56 canvas, then through ``nnlib predict``'s
    preprocessing (a small digit in a corner of a photo)."""
    x = _check(x)
    draws = rng.random((len(x), 3))
    sizes, corners = 14 + (draws[:, 0] * 7).astype(int), draws[:, 1:]
    canvas = np.zeros((len(x), CANVAS, CANVAS), np.float32)
    for k, (image, size, (top, left)) in enumerate(zip(x, sizes, corners)):
        small = np.asarray(Image.fromarray(image).resize((int(size), int(size)), Image.Resampling.LANCZOS))
        row, col = int(top * (CANVAS - size + 1)), int(left * (CANVAS - size + 1))
        canvas[k, row : row + size, col : col + size] = small
    return through_preprocessing(canvas / 255)


def salt_and_pepper(x, rng):
    """Salt-and-pepper noise: 5% of the pixels set to white or black (half each) (dust and dropouts)."""
    x = _check(x)
    draw = rng.random(x.shape)
    out = x.copy()
    out[draw < 0.025] = 0
    out[(draw >= 0.025) & (draw < 0.05)] = 255
    return out


def gaussian_noise(x, rng):
    """Additive Gaussian noise of standard deviation 0.25 of the range (64 grey levels), clipped (sensor noise)."""
    x = _check(x)
    return _to_uint8(x + rng.normal(0.0, 0.25 * 255, x.shape))


def low_contrast(x, rng):
    """Grey ink on grey paper: the paper at a level uniform in [60, 100] and the ink 70 to 100 levels
    above it, per digit (pencil on recycled paper)."""
    x = _check(x)
    paper, contrast = (rng.random((len(x), 2)) * [40.0, 30.0] + [60.0, 70.0]).T[:, :, None, None]
    ink = paper + contrast
    return _to_uint8(paper + (ink - paper) * (x / 255.0))


def broken_strokes(x, rng):
    """Broken strokes: black stripes 1 px wide every 4 px at a uniform random angle and phase per digit
    occlude the ink (a dry pen, a scanner's dropped lines)."""
    x = _check(x)
    angles, phases = (rng.random((len(x), 2)) * [np.pi, 4.0]).T
    rows, cols = np.indices((SIZE, SIZE), dtype=np.float64)
    distance = rows[None] * np.sin(angles)[:, None, None] + cols[None] * np.cos(angles)[:, None, None]
    stripes = np.mod(distance + phases[:, None, None], 4.0) < 1.0
    return np.where(stripes, np.uint8(0), x)


JPEG_CELL = 32  # each digit is coded in its own 4x4 JPEG blocks: its 28x28 frame padded with black paper to 32x32
JPEG_COLUMNS = 64  # digits per row of the mosaic that is coded at once


def jpeg(x, rng, quality: int = 15):
    """Saved as a greyscale JPEG at quality 15 by Pillow and decoded again (blocks and ringing). No random draws.

    Each digit, padded with black paper to 32x32, fills whole 8x8 JPEG blocks of its own, so a mosaic
    of many digits coded as one picture gives every digit exactly the pixels it would get alone.
    """
    x = _check(x)
    n, cell = len(x), JPEG_CELL
    rows = -(-n // JPEG_COLUMNS)
    mosaic = np.zeros((rows * JPEG_COLUMNS, cell, cell), np.uint8)
    mosaic[:n, :SIZE, :SIZE] = x
    mosaic = mosaic.reshape(rows, JPEG_COLUMNS, cell, cell).transpose(0, 2, 1, 3).reshape(rows * cell, JPEG_COLUMNS * cell)
    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        back = np.asarray(decoded.convert("L"))
    back = back.reshape(rows, cell, JPEG_COLUMNS, cell).transpose(0, 2, 1, 3).reshape(-1, cell, cell)
    return np.ascontiguousarray(back[:n, :SIZE, :SIZE])


def inverted(x, rng):
    """Inverted: dark ink on light paper, as a scan or photo of a written digit shows it, then through
    ``nnlib predict``'s preprocessing (which must find the paper and turn the digit back). No random draws."""
    x = _check(x)
    return through_preprocessing(1.0 - x.astype(np.float32) / 255)


@dataclass(frozen=True)
class Entry:
    """One corruption of the suite: its name, its random stream's id (fixed forever, so that entries
    can be added or removed without changing the others) and its function."""

    name: str
    stream: int
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


SUITE = (
    Entry("thick_strokes", 1, thick_strokes),
    Entry("thin_strokes", 2, thin_strokes),
    Entry("gaussian_blur", 3, gaussian_blur),
    Entry("motion_blur", 4, motion_blur),
    Entry("low_resolution", 5, low_resolution),
    Entry("rotation", 6, rotation),
    Entry("shear", 7, shear),
    Entry("small_off_centre", 8, small_off_centre),
    Entry("salt_and_pepper", 9, salt_and_pepper),
    Entry("gaussian_noise", 10, gaussian_noise),
    Entry("low_contrast", 11, low_contrast),
    Entry("broken_strokes", 12, broken_strokes),
    Entry("jpeg", 13, jpeg),
    Entry("inverted", 14, inverted),
)
NAMES = tuple(entry.name for entry in SUITE)


def corrupt(name: str, x: np.ndarray, seed: int) -> np.ndarray:
    """The suite's corruption ``name`` of uint8 digits (N, 28, 28), drawn from the stream of ``seed``."""
    entry = next((e for e in SUITE if e.name == name), None)
    if entry is None:
        raise ValueError(f"unknown corruption {name!r}: the suite has {list(NAMES)}")
    return entry.apply(x, stream_rng(seed, ROBUST, entry.stream))


def subsample(n: int, images: int) -> np.ndarray:
    """The test images the suite scores: all ``n`` when ``images`` is 0 or at least n, else every
    (n / images)-th one, evenly spread (deterministic, no random draw; indices sorted)."""
    if images <= 0 or images >= n:
        return np.arange(n)
    return np.floor(np.arange(images) * (n / images)).astype(np.int64)


@dataclass
class Robustness:
    """What :func:`score` measured on the same ``images`` test digits: ``clean`` accuracy, ``accuracy``
    per corruption (in suite order), their ``mean``; ``examples`` uint8 (1 + len(SUITE), 28, 28): the
    first scored digit as it is, then under each corruption."""

    clean: float
    accuracy: dict
    images: int
    seed: int
    examples: np.ndarray

    @property
    def mean(self) -> float:
        """robust_accuracy: the mean accuracy over the suite."""
        return float(np.mean(list(self.accuracy.values())))

    def details(self) -> dict:
        """For metrics/eval_details.json."""
        return {"mean_accuracy": self.mean, "clean_accuracy": self.clean, "images": self.images, "seed": self.seed,
                "accuracy": dict(self.accuracy)}


def accuracy_of(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """The share of uint8 digits x (N, 28, 28) that ``model`` classifies as y (N,)."""
    correct = 0
    for start in range(0, len(x), batch_size * 8):  # the network input of a chunk at a time, not of all N
        logits = to_numpy(model.predict_logits(to_batch(x[start : start + batch_size * 8]), batch_size))
        correct += int((logits.argmax(axis=1) == y[start : start + batch_size * 8]).sum())
    return correct / len(x)


def score(model, x: np.ndarray, y: np.ndarray, seed: int, images: int = 0, batch_size: int = 128,
          log: Callable[[str], None] | None = None, threads: int = 1, correct: np.ndarray | None = None) -> Robustness:
    """Accuracy of ``model`` on the test digits x (N, 28, 28) uint8, labels y (N,), clean and under every
    corruption. ``images`` > 0 scores that many digits, evenly spread over the set (:func:`subsample`); 0 all.
    ``threads`` > 1 corrupts and scores that many entries at a time, each thread on a replica of the model
    (:func:`nnlib.parallel.map_on_replicas`; pin BLAS to one thread meanwhile): the same figures.
    ``correct``: bool (N,), which of all N digits the caller's own clean pass of this model got right
    (the evaluate stage has one): the clean accuracy is taken from it instead of a second pass.
    """
    chosen = subsample(len(x), images)
    if correct is not None and np.shape(correct) != (len(x),):
        raise ValueError(f"correct: expected one flag per digit ({len(x)}), got shape {np.shape(correct)}")
    x, y = _check(x)[chosen], np.asarray(y)[chosen]
    clean = accuracy_of(model, x, y, batch_size) if correct is None else float(np.asarray(correct, bool)[chosen].mean())

    def entry_score(replica, entry: Entry):
        corrupted = corrupt(entry.name, x, seed)
        return accuracy_of(replica, corrupted, y, batch_size), corrupted[0]

    scored = map_on_replicas(model, entry_score, SUITE, threads)
    accuracy = {entry.name: value for entry, (value, _) in zip(SUITE, scored)}
    examples = [x[0], *(example for _, example in scored)]
    for name in accuracy:
        if log is not None:
            log(f"robustness: {name} {100 * accuracy[name]:.2f}%")
    return Robustness(clean, accuracy, len(x), seed, np.stack(examples))


def figure(result: Robustness, title: str):
    """One example digit per corruption, titled with the corruption's accuracy, after the clean digit."""
    from nnlib.mnist.plots import digit_grid_figure  # noqa: PLC0415 - matplotlib only when drawn

    titles = [f"clean\n{100 * result.clean:.2f}%"] + [f"{name.replace('_', ' ')}\n{100 * acc:.2f}%"
                                                      for name, acc in result.accuracy.items()]
    return digit_grid_figure(result.examples, titles, columns=5, suptitle=(
        f"{title}\nrobustness: mean {100 * result.mean:.2f}% over {len(result.accuracy)} corruptions "
        f"of {result.images} test digits (docs/robustness.md)"))
