"""Inputs of ``nnlib predict``: images, directories, arrays and IDX files, as MNIST-form uint8 digits.

Inputs end up as :class:`Digits`: uint8 images (N, 28, 28), white ink on black paper with values
0..255, exactly what MNIST holds and what :func:`nnlib.mnist.data.stream.to_batch` turns into network input.

Images (PNG, JPEG, BMP, GIF, any size, colour, grey, 16-bit grey or with alpha) are preprocessed the
way MNIST itself was made, one small function per step (README, "Use the model"):

1. :func:`grayscale`               luminance in [0, 1]; transparent pixels become paper
2. :func:`normalise_paper`          ink relative to the paper around it: 1 - luminance / local paper level
                                    (light ink on dark paper is turned around first), so that vignettes,
                                    shadows and gradients of a phone photo become paper
3. :func:`adaptive_threshold`       ink scaled to a maximum of 1; pixels less than 20% of the ink's
                                    contrast darker than their own paper set to 0
   :func:`keep_main_ink`            only the largest ink component and the sizeable pieces near it stay
4. :func:`crop_to_ink`              cut to the bounding box of the ink
5. :func:`fit_box`                  longest side scaled to 20 px, aspect kept, anti-aliased
6. :func:`center_by_mass`           pasted into 28x28 with the ink's centre of mass at (14, 14)

:func:`steps` returns every intermediate of one picture; ``nnlib predict --show`` draws them. The
global steps of the first version (:func:`invert_if_light_paper`, :func:`threshold`) remain: on a
clean scan of white paper they give the same ink as steps 2 and 3.

Arrays (``.npy``, ``.npz``) and IDX files (plain or ``.gz``) already are MNIST-form and are only
checked and converted. Every problem with one input raises :class:`~nnlib.errors.InputError`
whose message is one line naming the file; :func:`load` turns any read error into one, and
:func:`read_paths` reads a batch of files, preprocessing equally sized pictures together.
"""
from __future__ import annotations

import gzip
import math
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from nnlib.mnist.data.stream import IDX_DTYPES, parse_idx
from nnlib.errors import InputError
from nnlib.files import npy_header

TOO_LARGE = "split it into smaller files"

SIZE = 28  # MNIST's frame
BOX = 20  # MNIST's digits are scaled to fit a 20x20 box inside the frame
CENTRE = 14.0  # where MNIST's centres of mass lie (mean over the test set: row 13.99, column 14.01)
BORDER = 2  # width of the frame of pixels that decides the paper colour
INK_FRACTION = 0.2  # after scaling the ink to a maximum of 1, values below this are paper noise
MAX_STACK_PIXELS = 1 << 22  # pictures read but not yet preprocessed hold at most about this many pixels
MAX_IMAGE_PIXELS = 50_000_000  # a larger picture is refused before it is decoded (Pillow's own limit is 89 MP)
MAX_ARRAY_BYTES = 128 << 20  # an array or IDX file holds at most this much data (about 170,000 MNIST images)
PAPER_WINDOW = 4  # the paper is estimated by a grey closing whose window is 1/PAPER_WINDOW of the shorter side
PAPER_SIDE = 96  # ... on a copy averaged down to at most this many pixels on its shorter side
EDGE_FRAME = 0.05  # the outer frame of this share of the shorter side is not trusted as paper (a photo's filled edges)
EVEN_BORDER = 0.1  # a border whose luminance spreads less than this is even: it is the paper
MIN_CONTRAST = 0.06  # ink must be at least this much darker than its paper (relative): else the picture is blank
STRONG = 0.6  # ... and those whose darkest ink is fainter than this share of its darkest ...
PIECE = 0.02  # pieces of ink smaller than this share of the largest component are dropped ...
NEAR = 0.3  # ... and so are those farther from its bounding box than this share of its longer side

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
ARRAY_SUFFIXES = (".npy", ".npz")
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # Pillow modes of 16/32-bit integer or float grey
EXIF_ORIENTATION = 0x0112

# Everything a corrupt, truncated or odd input file can raise while it is read and decoded.
READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, zlib.error, struct.error,
               IndexError, KeyError, TypeError, zipfile.BadZipFile, Image.DecompressionBombError)


@dataclass
class Digits:
    """What one input path holds: ``images`` uint8 (N, 28, 28), white on black in 0..255.

    ``indexed`` is True for arrays and IDX files of shape (N, 28, 28), whose images are reported as
    ``file[i]``; False for a single image or a single (28, 28) array.
    """

    file: str
    images: np.ndarray
    indexed: bool


# --- preprocessing, MNIST's steps ------------------------------------------------------------------
# Steps 2 and 3 take one image (H, W) or a stack of equally sized images (N, H, W), so a batch of
# same-sized pictures is preprocessed with a few array operations; steps 4 to 6 take one image.

def grayscale(image: Image.Image, paper: float | None = None) -> np.ndarray:
    """Step 1: a Pillow image of any mode -> luminance float32 (H, W) in [0, 1] (0 black, 1 white).

    16-bit and 32-bit integer greyscale (modes ``I;16``, ``I``) are scaled by 65535 when their
    maximum exceeds 255, else by 255. Alpha is composited onto ``paper`` (a luminance in [0, 1]):
    transparent pixels are paper. With ``paper=None`` the paper is chosen to contrast with the ink,
    i.e. with the opaque pixels: white behind dark ink, black behind light ink.
    """
    if image.mode in DEEP_MODES:
        values = np.asarray(image, dtype=np.float32)
        if image.mode != "F":
            values /= np.float32(65535 if values.max(initial=0) > 255 else 255)
        return np.clip(values, 0, 1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema() == (255, 255):
        # opaque (a canvas): the luminance as it is, which Pillow computes for "L" as for "LA"
        return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255)
    if "A" not in image.getbands():
        grey = image if image.mode == "L" else image.convert("L")
        return np.asarray(grey, dtype=np.float32) / np.float32(255)
    lum_band, alpha_band = image.convert("LA").split()
    if alpha_band.getextrema() == (255, 255):  # opaque: alpha 1 everywhere leaves the luminance as it is
        return np.asarray(lum_band, dtype=np.float32) / np.float32(255)
    luminance, alpha = (np.asarray(band, dtype=np.float32) / np.float32(255) for band in (lum_band, alpha_band))
    if paper is None:
        ink = float((luminance * alpha).sum() / max(alpha.sum(), 1e-6))  # mean luminance of the opaque pixels
        paper = 1.0 if ink < 0.5 else 0.0
    return alpha * luminance + (1 - alpha) * np.float32(paper)


def paper_level(gray: np.ndarray, border: int = BORDER) -> np.ndarray:
    """The colour of the paper: median luminance of the outer ``border``-pixel frame of each image.

    gray: float32 (..., H, W) -> float32 (...). The frame, not the mean of the picture: a bold digit
    can cover more than half of a tight crop, but the edges of a picture of a digit are paper.
    """
    h, w = gray.shape[-2:]
    b = max(1, min(border, h // 2, w // 2))
    lead = gray.shape[:-2]
    sides = (gray[..., :b, :], gray[..., h - b :, :], gray[..., b : h - b, :b], gray[..., b : h - b, w - b :])
    return np.median(np.concatenate([side.reshape(*lead, -1) for side in sides], axis=-1), axis=-1)


def invert_if_light_paper(gray: np.ndarray) -> np.ndarray:
    """Step 2: luminance float32 (..., H, W) -> ink float32 (..., H, W) >= 0, bright ink on black (0) paper.

    An image whose paper (:func:`paper_level`) is light, i.e. above 0.5, is inverted. The paper level
    is subtracted, so grey paper becomes 0 as well; pixels beyond the paper level are clipped to 0.
    """
    paper = paper_level(gray)[..., None, None]
    ink = np.where(paper > 0.5, paper - gray, gray - paper)
    return np.maximum(ink, 0, out=ink)


def threshold(ink: np.ndarray, fraction: float = INK_FRACTION) -> np.ndarray:
    """Step 3: ink float32 (..., H, W) >= 0 -> each image scaled to a maximum of 1, values below
    ``fraction`` set to 0.

    Scaling gives faint pencil the full range of MNIST's ink (whose maximum is 255 in every digit);
    zeroing the faint remainder removes paper texture, shadows and JPEG noise that would otherwise
    widen the bounding box. An image without ink stays all zero.
    """
    peak = ink.max(axis=(-2, -1), keepdims=True)
    scaled = ink / np.where(peak > 0, peak, np.float32(1))
    scaled[scaled < fraction] = 0
    return scaled


def border_spread(gray: np.ndarray, border: int = BORDER) -> np.ndarray:
    """How uneven the outer ``border``-pixel frame of each image is: the spread between its 10th and
    90th percentiles, float32 (...). A scan or a drawing has an even border; a photo often does not."""
    h, w = gray.shape[-2:]
    b = max(1, min(border, h // 2, w // 2))
    lead = gray.shape[:-2]
    sides = (gray[..., :b, :], gray[..., h - b :, :], gray[..., b : h - b, :b], gray[..., b : h - b, w - b :])
    frame = np.concatenate([side.reshape(*lead, -1) for side in sides], axis=-1)
    low, high = np.percentile(frame, [10, 90], axis=-1)
    return (high - low).astype(np.float32)


def light_paper_form(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminance float32 (..., H, W) -> (``light``, ``paper``): the picture as dark ink on light paper,
    and the paper's level at every pixel (:func:`paper_background`), both float32 (..., H, W).

    Which way round the picture is: the paper is dark only where the border is dark (:func:`paper_level`
    at most 0.5) and even (spread below :data:`EVEN_BORDER`), just inside the outer frame that is not
    trusted as paper (:func:`inside_frame`) as well, and most of the picture is dark too, as in MNIST's
    own arrays, screenshots and chalk on a board. Anything else is taken as what photos and scans of
    writing show, dark ink on light paper: a photo whose vignette, shadow or gradient darkens the edges
    has an uneven border, or a border darker than most of the picture. A tilted photo filled out at its
    edges with the light of one dark corner has an even, dark edge, but the paper inside it is uneven.
    """
    gray = np.asarray(gray, np.float32)
    lead = gray.shape[:-2]
    light_paper = paper_level(gray) > 0.5
    if not np.all(light_paper):  # the other tests only matter where the border is dark (a drawing's is white)
        mostly_dark = np.median(gray.reshape(*lead, -1), axis=-1) <= 0.5
        even = (border_spread(gray) < EVEN_BORDER) & (border_spread(inside_frame(gray)) < EVEN_BORDER)
        light_paper = light_paper | ~even | ~mostly_dark
    light = gray if light_paper.all() else np.where(light_paper[..., None, None], gray, np.float32(1) - gray)
    return light, paper_background(light)


def paper_background(light: np.ndarray, window: int = PAPER_WINDOW, side: int = PAPER_SIDE) -> np.ndarray:
    """The paper's level at every pixel of dark-ink-on-light-paper pictures (..., H, W) -> float32, same shape.

    A grey closing (dilation then erosion) with a square window of 1/``window`` of the shorter side
    removes every dark feature narrower than the window, i.e. the strokes, and keeps what varies
    slowly or over wide areas: vignettes, gradients, wide shadows. It runs on a copy averaged down by
    whole blocks to at most ``side`` pixels on its shorter side, whose outer frame is evened out to the
    darkest value across it (:func:`darkest_frame`), and is brought back up bilinearly.
    """
    h, w = light.shape[-2:]
    factor = max(1, -(-min(h, w) // side))
    lead = light.shape[:-2]
    small = light[..., : h - h % factor or h, : w - w % factor or w] if factor > 1 else light
    if factor > 1:
        sh, sw = small.shape[-2] // factor, small.shape[-1] // factor
        small = block_mean(small.reshape(*lead, sh, factor, sw, factor))
    size = max(3, min(small.shape[-2:]) // window)
    # Padded by the window with the edge values first: a closing whose dilation and erosion each extend
    # their own input at the edges would carry the brighter inside out to the darker edges of a vignette.
    padded = np.pad(darkest_frame(small), [(0, 0)] * len(lead) + [(size, size), (size, size)], mode="edge")
    closed = ndimage.grey_closing(padded, size=(1,) * len(lead) + (size, size))[..., size:-size, size:-size]
    if factor == 1:
        return closed.astype(np.float32, copy=False)
    flat = closed.reshape(-1, closed.shape[-2] * closed.shape[-1])
    out = np.empty(light.shape, np.float32)
    if (flat.min(axis=1) == flat.max(axis=1)).all():
        # Even paper (a drawing on a flat background, a clean scan): bilinear interpolation of a constant
        # is that constant exactly, so the resampling below would give the same array.
        out[...] = flat[:, 0].astype(np.float32).reshape(*lead, 1, 1)
        return out
    out[...] = upsample_bilinear(closed, h, w)
    return out


def interpolation_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from ``n_in`` samples to ``n_out``, pixel centres aligned (``grid_mode``) and
    the edge values held beyond the edges: for each output pixel the two input indices (intp) and the
    weight of the second, float64 (n_out,)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    first = np.floor(x).astype(np.intp)
    return first, np.minimum(first + 1, n_in - 1), x - first


def upsample_bilinear(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Images float32 (..., hs, ws) -> float32 (..., h, w), bilinear with pixel centres aligned and edges
    held: ``scipy.ndimage.zoom(small, ..., order=1, mode="nearest", grid_mode=True)``, computed in float64
    as that is (the same values, but for a rare last-bit difference), about 9 times faster: columns then
    rows, each a gather of two neighbours and their weights."""
    r0, r1, fr = interpolation_taps(small.shape[-2], h)
    c0, c1, fc = interpolation_taps(small.shape[-1], w)
    wide = small.astype(np.float64)
    cols = np.take(wide, c0, axis=-1)
    cols *= 1 - fc
    cols += np.take(wide, c1, axis=-1) * fc  # (..., hs, w)
    out = np.take(cols, r0, axis=-2)
    out *= (1 - fr)[:, None]
    out += np.take(cols, r1, axis=-2) * fr[:, None]
    return out.astype(np.float32)


def edge_frame(shape: tuple, share: float = EDGE_FRAME) -> int:
    """Width in pixels of the outer frame of pictures of ``shape`` (..., h, w) that is not trusted as paper:
    ``share`` of the shorter side, rounded, at least 1 (1 up to 29 pixels a side, MNIST's 28 included)."""
    return max(1, round(share * min(shape[-2:])))


def inside_frame(gray: np.ndarray) -> np.ndarray:
    """Pictures (..., h, w) -> a view without their outer frame of :func:`edge_frame` pixels, where that is
    more than 1 pixel wide; else the pictures themselves (MNIST's 28 x 28 arrays keep their edges)."""
    h, w = gray.shape[-2:]
    frame = edge_frame(gray.shape)
    return gray if frame == 1 else gray[..., frame : h - frame, frame : w - frame]


def darkest_frame(light: np.ndarray, share: float = EDGE_FRAME) -> np.ndarray:
    """Pictures float32 (..., h, w) as dark ink on light paper -> the same, float32 (..., h, w), except that the
    outer frame (:func:`edge_frame` pixels wide) holds along each line across it the darkest value on that line.

    The frame of a photo is not to be trusted as paper: a tilted photo filled out at its edges, or a light
    desk beyond the paper's edge, puts a bright strip there, which would wall in the darker paper next to
    it (a shadow or a vignette's corner) so that the paper estimate's closing fills that in as if it were
    ink. The darkest value across the frame is the paper inside such a strip, and on a plain border, or a
    vignette that darkens outwards, it is the edge's own value. With a 1-pixel frame (pictures of up to 29
    pixels a side) that is the pictures themselves, returned as they are; else a copy.
    """
    h, w = light.shape[-2:]
    frame = edge_frame(light.shape, share)
    if frame == 1:
        return light
    out = light.copy()
    out[..., :frame, :] = out[..., :frame, :].min(axis=-2, keepdims=True)
    out[..., h - frame :, :] = out[..., h - frame :, :].min(axis=-2, keepdims=True)
    out[..., :, :frame] = out[..., :, :frame].min(axis=-1, keepdims=True)
    out[..., :, w - frame :] = out[..., :, w - frame :].min(axis=-1, keepdims=True)
    return out


def block_mean(blocks: np.ndarray) -> np.ndarray:
    """``blocks.mean(axis=(-3, -1))`` of float32 blocks (..., h, f, w, f), the same bits about 8 times faster
    for f < 8: NumPy sums such short rows one by one, each row of a block, then the rows, as done here."""
    factor = blocks.shape[-1]
    if factor >= 8 or blocks.dtype != np.float32:  # NumPy sums 8 or more values pairwise: leave it to NumPy
        return blocks.mean(axis=(-3, -1))
    total = None
    for i in range(factor):
        row = blocks[..., i, :, 0].copy()
        for j in range(1, factor):
            row += blocks[..., i, :, j]
        total = row if total is None else total.__iadd__(row)
    total /= np.float32(factor * factor)
    return total


def normalise_paper(gray: np.ndarray) -> np.ndarray:
    """Step 2: luminance float32 (..., H, W) -> ink float32 (..., H, W) in [0, 1], bright ink on black (0) paper.

    The picture is taken as dark ink on light paper and divided by its own paper (:func:`light_paper_form`): ink = 1 - luminance / paper, how much darker each pixel is than
    the paper around it. Uneven light (a vignette, a shadow wider than half the picture, a gradient)
    becomes paper, 0, and a stroke in shadow keeps the contrast it has against its shadowed paper.
    """
    light, paper = light_paper_form(gray)
    ink = np.float32(1) - light / np.maximum(paper, np.float32(1e-3))
    return np.clip(ink, 0, 1, out=ink)


def adaptive_threshold(ink: np.ndarray, fraction: float = INK_FRACTION, min_contrast: float = MIN_CONTRAST) -> np.ndarray:
    """Step 3: ink float32 (..., H, W) from :func:`normalise_paper` -> each image scaled to a maximum of
    1, pixels below ``fraction`` of that maximum (or below ``min_contrast`` before scaling) set to 0.

    Since step 2 measures ink against the paper around it, this threshold adapts to the light at each
    place: a pixel is ink when it is darker than ``1 - fraction * contrast`` times its own paper
    (Bradley and Roth's adaptive threshold, with the paper's level instead of a local mean). An image
    whose darkest ink is less than ``min_contrast`` darker than its paper has no ink: all zero.
    """
    peak = ink.max(axis=(-2, -1), keepdims=True)
    scaled = ink / np.where(peak > 0, peak, np.float32(1))
    scaled[(scaled < fraction) | (peak < min_contrast)] = 0
    return scaled


STACK_STRUCTURE = np.zeros((3, 3, 3), bool)
STACK_STRUCTURE[1] = True  # 8-connected within an image, never across images of a stack


def keep_main_ink(ink: np.ndarray, piece: float = PIECE, near: float = NEAR) -> np.ndarray:
    """Step 3, second part: thresholded ink (..., H, W) -> the same with only the digit's components, rescaled
    to a maximum of 1.

    The largest 8-connected component of ink is the digit (or its main stroke). Other components stay
    when they hold at least ``piece`` of its pixels, their bounding box comes within ``near`` times
    its longer side of its bounding box, their darkest ink reaches :data:`STRONG` of its darkest and
    they do not touch the picture's edge (a '5' whose bar is
    apart, a broken stroke); the rest, specks of noise, dirt, a shadow's edge or a second mark far
    away, is paper.
    """
    h, w = ink.shape[-2:]
    stack = ink.reshape(-1, h, w)
    rows, cols = np.flatnonzero(stack.any(axis=(0, 2))), np.flatnonzero(stack.any(axis=(0, 1)))
    if rows.size == 0:
        return ink
    y0, x0 = int(rows[0]), int(cols[0])  # labelled inside the box holding all the ink: the same labels, less work
    window = (slice(None), slice(y0, int(rows[-1]) + 1), slice(x0, int(cols[-1]) + 1))
    labels, count = ndimage.label(stack[window] > 0, STACK_STRUCTURE)
    if count == 0:
        return ink
    if count == 1:  # one component, which stays: only the rescaling below (thresholded paper is +0 already)
        peak = stack.max(axis=(-2, -1), keepdims=True)
        return (stack / np.where(peak > 0, peak, np.float32(1))).reshape(ink.shape)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    inked = labels > 0
    peaks = np.zeros(count + 1, stack.dtype)
    np.maximum.at(peaks, labels[inked], stack[window][inked])  # the darkest ink of each component
    peaks = peaks[1:]
    boxes = np.array([(s[0].start, s[1].start + y0, s[1].stop + y0, s[2].start + x0, s[2].stop + x0)
                      for s in ndimage.find_objects(labels)])  # in the whole picture's coordinates
    keep = np.zeros(count + 1, bool)
    order = np.lexsort((-areas, boxes[:, 0]))  # by image, the largest component first
    starts = np.flatnonzero(np.r_[True, boxes[order[1:], 0] != boxes[order[:-1], 0]])
    for first, stop in zip(starts, np.r_[starts[1:], count]):
        members = order[first:stop]
        main = members[0]
        _, top, bottom, left, right = boxes[main]
        margin = near * max(bottom - top, right - left)
        _, t, b, l, r = boxes[members].T
        close = (t < bottom + margin) & (b > top - margin) & (l < right + margin) & (r > left - margin)
        inside = (t > 0) & (l > 0) & (b < h) & (r < w)  # a piece touching the edge is a shadow's or the frame's
        strong = peaks[members] >= STRONG * peaks[main]  # a shadow's edge is fainter than pen strokes
        keep[members[close & inside & strong & (areas[members] >= piece * areas[main])] + 1] = True
        keep[main + 1] = True
    kept = np.zeros_like(stack)
    kept[window] = np.where(keep[labels], stack[window], np.float32(0))
    kept = kept.reshape(ink.shape)
    peak = kept.max(axis=(-2, -1), keepdims=True)
    return kept / np.where(peak > 0, peak, np.float32(1))


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """Step 4: ink float32 (H, W) -> the smallest sub-array (h, w) holding every non-zero pixel (a view).

    Raises ValueError for an image without ink.
    """
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise ValueError("blank image (no ink after thresholding)")
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Step 5: ink float32 (h, w) -> float32 with its longest side ``box`` px, aspect ratio kept, in [0, 1].

    Anti-aliased like MNIST's grey levels, by Pillow's Lanczos filter (widened when shrinking, so it
    averages like an area filter but keeps strokes sharper; its ringing is clipped away).
    """
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow sizes are (width, height)
    if size == (w, h):
        return ink
    image = Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32), mode="F")
    resized = image.resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0, 1)


def center_by_mass(ink: np.ndarray, size: int = SIZE, centre: float = CENTRE) -> np.ndarray:
    """Step 6: ink float32 (h, w) in [0, 1], h, w <= size -> uint8 (size, size), MNIST's frame.

    The ink is shifted by whole pixels so that its centre of mass lands at (centre, centre), then the
    shift is clipped so that the whole ink stays inside the frame. Values become 0..255.
    """
    h, w = ink.shape
    mass = float(ink.sum())
    com_row = float(ink.sum(axis=1) @ np.arange(h, dtype=ink.dtype)) / mass
    com_col = float(ink.sum(axis=0) @ np.arange(w, dtype=ink.dtype)) / mass
    top = min(max(round(centre - com_row), 0), size - h)
    left = min(max(round(centre - com_col), 0), size - w)
    frame = np.zeros((size, size), dtype=np.uint8)
    frame[top : top + h, left : left + w] = np.rint(ink * 255)
    return frame


def finish(ink: np.ndarray) -> np.ndarray:
    """Steps 4 to 6 on one thresholded image: ink float32 (H, W) -> uint8 (28, 28). ValueError if blank."""
    return center_by_mass(fit_box(crop_to_ink(ink)))


def find_ink(gray: np.ndarray) -> np.ndarray:
    """Steps 2 and 3 on one image (H, W) or a stack of equally sized ones (N, H, W): luminance ->
    thresholded ink of the digit's components, in [0, 1], bright on black."""
    return keep_main_ink(adaptive_threshold(normalise_paper(gray)))


def preprocess(gray: np.ndarray) -> np.ndarray:
    """Steps 2 to 6 on one image: luminance float32 (H, W) from :func:`grayscale` -> uint8 (28, 28),
    white digit on black, centred like MNIST. Raises ValueError for a blank image."""
    return finish(find_ink(gray))


def steps(gray: np.ndarray) -> dict:
    """Every intermediate of :func:`preprocess` on one picture (H, W), for ``nnlib predict --show``:
    ``light`` (dark ink on light paper), ``paper`` (its estimated level), ``ink`` (step 2),
    ``thresholded`` (step 3), ``kept`` (its components that stay), and ``digit`` uint8 (28, 28), or
    None for a blank picture. All but ``digit`` are float32 (H, W) in [0, 1]."""
    light, paper = light_paper_form(gray)
    ink = normalise_paper(gray)
    thresholded = adaptive_threshold(ink)
    kept = keep_main_ink(thresholded)
    try:
        digit = finish(kept)
    except ValueError:
        digit = None
    return {"light": light, "paper": paper, "ink": ink, "thresholded": thresholded,
            "kept": kept, "digit": digit}


def preprocess_many(grays: list[np.ndarray]) -> list[np.ndarray | ValueError]:
    """:func:`preprocess` on many images -> for each, uint8 (28, 28) or the ValueError it raised.

    Equally sized images are stacked so that steps 2 and 3 run once per stack (callers bound the
    memory by the images they pass); the result is the same as preprocessing them one by one.
    """
    out: list[np.ndarray | ValueError | None] = [None] * len(grays)
    by_shape: dict[tuple, list[int]] = {}
    for i, gray in enumerate(grays):
        by_shape.setdefault(gray.shape, []).append(i)
    for members in by_shape.values():
        inks = find_ink(np.stack([grays[i] for i in members]))
        for i, ink in zip(members, inks):
            try:
                out[i] = finish(ink)
            except ValueError as err:
                out[i] = err.with_traceback(None)  # its traceback would hold this frame, and so every image, in a cycle
    return out


def as_is(gray: np.ndarray) -> np.ndarray:
    """``--no-preprocess``: a 28x28 luminance image, white on black, taken as it is -> uint8 (28, 28).

    Raises ValueError for any other size.
    """
    if gray.shape != (SIZE, SIZE):
        raise ValueError(f"is {gray.shape[1]}x{gray.shape[0]} pixels: --no-preprocess takes only 28x28 images "
                         "(white digit on black); leave the flag out to preprocess it")
    return np.rint(gray * 255).astype(np.uint8)


# --- readers ---------------------------------------------------------------------------------------

@dataclass
class Picture:
    """An image file after step 1, waiting for the rest: ``gray`` float32 (H, W), luminance in [0, 1]."""

    file: str
    gray: np.ndarray


def read_image(path: Path, paper: float | None = None) -> Picture:
    """Decode an image file completely (the first frame of a GIF), upright as its EXIF orientation
    says, and take its luminance (step 1, :func:`grayscale`; ``paper`` is for transparent pixels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies below
        image = Image.open(path)
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(f"{path}: image of {width}x{height} pixels ({width * height / 1e6:.0f} MP), more than "
                             f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP: scale it down first (a digit needs no more than a few hundred pixels a side)")
        image.load()  # decode now: a truncated file fails here, inside load()'s error handling
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return Picture(str(path), grayscale(image, paper))


def read_array_or_image(path: Path, preprocess_images: bool) -> Digits | Picture:
    """Dispatch on the file name (see :func:`load`); errors propagate as raised."""
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return to_digits(read_npy_or_npz(path), str(path))
    if suffix == ".gz":
        with gzip.open(path, "rb") as f:
            raw = f.read(MAX_ARRAY_BYTES + 64)
            if len(raw) > MAX_ARRAY_BYTES + 64 - 1:
                raise InputError(f"{path}: decompresses to more than {MAX_ARRAY_BYTES >> 20} MiB: "
                                 f"{TOO_LARGE}")
        return to_digits(parse_idx(raw, str(path)), str(path))
    if suffix not in IMAGE_SUFFIXES:
        with open(path, "rb") as f:
            if looks_like_idx(f.read(4)):
                if path.stat().st_size > MAX_ARRAY_BYTES + 64:
                    raise InputError(f"{path}: IDX file of {path.stat().st_size >> 20} MiB: {TOO_LARGE}")
                return to_digits(parse_idx(path.read_bytes(), str(path)), str(path))
    if preprocess_images:
        return read_image(path)
    picture = read_image(path, paper=0.0)  # taken as white on black: transparent is black paper
    try:
        return Digits(str(path), as_is(picture.gray)[None], indexed=False)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None


def looks_like_idx(raw: bytes) -> bool:
    """Whether bytes start with the magic number of an IDX file of unsigned bytes."""
    return len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] in IDX_DTYPES


def _check_array_size(path: Path, shape: tuple, dtype: np.dtype, holds: int) -> None:
    """Refuse an array header that declares more data than the file holds, or more than MAX_ARRAY_BYTES."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise InputError(f"{path}: array of shape {shape[:8]} ({nbytes / 2**20:,.0f} MiB), more than "
                         f"{MAX_ARRAY_BYTES >> 20} MiB: {TOO_LARGE}")
    if nbytes > holds:
        raise InputError(f"{path}: truncated or corrupt (its header declares shape {shape[:8]}, {nbytes:,} bytes, "
                         f"but it holds {holds:,})")


def read_npy_or_npz(path: Path) -> np.ndarray:
    """The array of a ``.npy``, or of an ``.npz`` holding one array or one named ``x`` (no pickles).

    The sizes are checked from the headers before any array is read (:data:`MAX_ARRAY_BYTES`).
    """
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"
        if not zipped:
            f.seek(0)
            shape, dtype = npy_header(f)
            _check_array_size(path, shape, dtype, path.stat().st_size - f.tell())
            f.seek(0)
            return np.load(f, allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        names = archive.files
        if len(names) == 1 or "x" in names:
            name = names[0] if len(names) == 1 else "x"
            info = archive.zip.getinfo(f"{name}.npy")
            with archive.zip.open(info) as member:
                shape, dtype = npy_header(member)
            _check_array_size(path, shape, dtype, info.file_size)
            return archive[name]
    raise InputError(f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}) and none named 'x': "
                     "expected a single array, or the images named 'x'")


def to_digits(array: np.ndarray, file: str) -> Digits:
    """Check an array read from ``file`` and convert it to MNIST-form Digits.

    Accepted: shape (28, 28) or (N, 28, 28); uint8 (or another integer type) in 0..255, or float in
    [0, 1] (rounded to 0..255). Anything else raises InputError saying what is expected.
    """
    if array.ndim not in (2, 3) or array.shape[-2:] != (SIZE, SIZE) or (array.ndim == 3 and len(array) == 0):
        raise InputError(f"{file}: array of shape {array.shape}: expected (28, 28) or (N, 28, 28)")
    kind = array.dtype.kind
    if kind in "ui":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"{file}: {array.dtype} values from {array.min()} to {array.max()}: expected 0..255")
        images = array.astype(np.uint8, copy=False)
    elif kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"{file}: holds NaN or infinite values: expected floats in [0, 1] or uint8 in 0..255")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise InputError(f"{file}: float values from {array.min():g} to {array.max():g}: "
                             "expected floats in [0, 1] or uint8 in 0..255")
        images = np.rint(array * 255).astype(np.uint8)
    else:
        raise InputError(f"{file}: array of dtype {array.dtype}: expected uint8 in 0..255 or float in [0, 1]")
    indexed = array.ndim == 3
    return Digits(file, images if indexed else images[None], indexed)


def load(path, preprocess_images: bool = True) -> Digits | Picture:
    """Read one file: an array or IDX file -> Digits; an image -> a Picture to preprocess, or with
    ``preprocess_images=False`` Digits of the image taken as it is.

    ``.png .jpg .jpeg .bmp .gif``: an image. ``.npy .npz``: an array. ``.gz``: a gzipped IDX file.
    Any other name: an IDX file when its first bytes say so, else an image if Pillow can decode it.
    Every failure is an InputError whose one-line message names the file.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # opening a FIFO would wait for a writer forever
            raise InputError(f"{path}: not a regular file (a FIFO, device or socket): give the path of an image, "
                             "array or IDX file")
        return read_array_or_image(path, preprocess_images)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except UnidentifiedImageError:
        what = "a readable image" if path.suffix.lower() in IMAGE_SUFFIXES else "an image, .npy/.npz array or IDX file"
        raise InputError(f"{path}: not {what} (Pillow cannot identify it; images may be PNG, JPEG, BMP "
                         "or GIF)") from None
    except READ_ERRORS as err:
        raise InputError(f"{path}: cannot read it ({one_line(err)})") from None


def read_paths(paths, preprocess_images: bool = True, max_pixels: int = MAX_STACK_PIXELS) -> list[Digits | InputError]:
    """Read files -> for each path, in order, Digits or the InputError (one line naming the file) it gave.

    Pictures are preprocessed together (:func:`preprocess_many`) whenever those read so far hold
    ``max_pixels`` pixels, so memory stays bounded however large the images are.
    """
    results: list[Digits | Picture | InputError] = []
    waiting: list[int] = []  # positions of Pictures not yet preprocessed
    pixels = 0  # held by those Pictures

    def preprocess_waiting():
        digits = preprocess_many([results[i].gray for i in waiting])
        for i, digit in zip(waiting, digits):
            file = results[i].file
            blank = isinstance(digit, ValueError)
            results[i] = InputError(f"{file}: {digit}") if blank else Digits(file, digit[None], indexed=False)
        waiting.clear()

    for path in paths:
        try:
            results.append(load(path, preprocess_images))
        except InputError as err:
            results.append(err)
        if isinstance(results[-1], Picture):
            waiting.append(len(results) - 1)
            pixels += results[-1].gray.size
            if pixels >= max_pixels:
                preprocess_waiting()
                pixels = 0
    preprocess_waiting()
    return results


def one_line(err: BaseException) -> str:
    """An exception as one short line: its type and message, whitespace collapsed."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def expand(path) -> list[Path]:
    """A path -> the files it names: itself, or a directory's images (by extension) sorted by name.

    Raises InputError for a directory that holds no image.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise InputError(f"{path}: directory holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
