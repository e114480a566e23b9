"""What ``nnlib predict`` does: classify the digits in files, format the answers, draw what the network saw.

:func:`predict_paths` reads the inputs with :mod:`nnlib.mnist.images` ``batch_size`` files at a time,
collects their images into batches of ``batch_size`` across files, and runs the network once per
batch. Each image gets a :class:`Prediction` (softmax probabilities of the network's outputs, whatever
loss it was trained with; a committee's averaged probabilities); each input that cannot be read gets one :class:`Failure`, and the other
inputs are still predicted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnlib.backend import to_numpy
from nnlib.committee import Committee
from nnlib.mnist.data.stream import to_batch
from nnlib.errors import InputError
from nnlib.functional import softmax
from nnlib.mnist.images import IMAGE_SUFFIXES, expand, read_image, read_paths, steps

GRID_LIMIT = 100  # --show draws at most this many digits
GRID_COLUMNS = 10
STEPS_LIMIT = 30  # with at most this many digits, --show draws every preprocessing step of each picture
STEPS_SIDE = 160  # pictures are drawn at most this many pixels on their longer side


@dataclass
class Prediction:
    """One classified image.

    file: the input path; index: the position in an array or IDX file (None for a single image);
    probabilities: float64 (10,) summing to 1; image: uint8 (28, 28), what the network saw.
    """

    file: str
    index: int | None
    probabilities: np.ndarray
    image: np.ndarray

    @property
    def digit(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def probability(self) -> float:
        return float(self.probabilities[self.digit])

    @property
    def name(self) -> str:
        """``file``, or ``file[index]`` for an image of an array."""
        return self.file if self.index is None else f"{self.file}[{self.index}]"


@dataclass
class Failure:
    """An input that could not be predicted; ``message`` is one line naming the file and the problem."""

    file: str
    message: str


def probabilities(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float64 (N, K): the softmax of the model's outputs, rows summing to 1;
    for a :class:`~nnlib.committee.Committee`, the mean of its members' (:meth:`~nnlib.committee.Committee.probabilities`).

    The images become network input exactly as in training (:func:`nnlib.mnist.data.stream.to_batch`).
    """
    if isinstance(model, Committee):
        return to_numpy(model.probabilities(to_batch(images), batch_size))
    logits = to_numpy(model.predict_logits(to_batch(images), batch_size))
    return softmax(logits.astype(np.float64), axis=1)


def expand_all(paths) -> list[Path | Failure]:
    """Input paths -> the files to read, in order: a directory becomes its images sorted by name
    (a Failure when it holds none); anything else stays itself (reading it tells whether it exists)."""
    files: list[Path | Failure] = []
    for path in paths:
        try:
            files.extend(expand(path))
        except InputError as err:
            files.append(Failure(str(path), str(err)))
    return files


def read_batches(paths, preprocess: bool, batch_size: int):
    """Yield ``(file, Digits | Failure)`` for every file of ``paths`` in order, reading ``batch_size``
    files at a time so that their pictures are preprocessed together (:func:`nnlib.mnist.images.read_paths`)."""
    files = expand_all(paths)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        readable = [f for f in chunk if not isinstance(f, Failure)]
        read = iter(read_paths(readable, preprocess))
        for entry in chunk:
            if isinstance(entry, Failure):
                yield entry.file, entry
                continue
            item = next(read)
            yield str(entry), Failure(str(entry), str(item)) if isinstance(item, InputError) else item


def predict_paths(model, paths, *, preprocess: bool = True, batch_size: int = 256) -> list[Prediction | Failure]:
    """Classify every image in ``paths`` -> one Prediction per image and one Failure per bad input, in order.

    paths: images, directories of images, ``.npy``/``.npz`` arrays or IDX files (see :mod:`nnlib.mnist.images`).
    Files are read ``batch_size`` at a time, and the network runs on batches of ``batch_size`` images
    gathered across files; images are preprocessed unless ``preprocess`` is False (arrays never are).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[Prediction | Failure | None] = []
    pending: list[tuple[int, str, int | None, np.ndarray]] = []  # (slot in results, file, index, image)

    def run_network():
        probs = probabilities(model, np.stack([image for *_, image in pending]), batch_size)
        for (slot, file, index, image), p in zip(pending, probs):
            results[slot] = Prediction(file, index, p, image)
        pending.clear()

    for file, item in read_batches(paths, preprocess, batch_size):
        if isinstance(item, Failure):
            results.append(item)
            continue
        for i, image in enumerate(item.images):
            pending.append((len(results), file, i if item.indexed else None, image))
            results.append(None)
            if len(pending) == batch_size:
                run_network()
    if pending:
        run_network()
    return results


def top_k(pred: Prediction, k: int = 1) -> list[tuple[int, float]]:
    """The k most likely digits of a prediction, most likely first: [(digit, probability), ...]."""
    order = np.argsort(-pred.probabilities, kind="stable")[:k]
    return [(int(d), float(pred.probabilities[d])) for d in order]


def format_line(pred: Prediction, top: int = 1) -> str:
    """One line: ``file: 7 (99.2%)``, ``file[3]: ...`` for arrays; with top K, the K best, e.g.
    ``digits/seven.png: 7 (99.2%)  1 (0.5%)  2 (0.1%)``."""
    return f"{pred.name}: " + "  ".join(f"{d} ({100 * p:.1f}%)" for d, p in top_k(pred, top))


def to_json(pred: Prediction) -> dict:
    """The JSON Lines record of a prediction: file, index (None for a single image), digit, probability
    (in [0, 1]) and the probabilities of all digits (summing to 1)."""
    return {"file": pred.file, "index": pred.index, "digit": pred.digit, "probability": pred.probability,
            "probabilities": [float(p) for p in pred.probabilities]}


def grid_title(pred: Prediction, width: int = 16) -> str:
    """A two-line grid caption: the file's name (and index), shortened to ``width``; digit and probability."""
    name = Path(pred.file).name + ("" if pred.index is None else f"[{pred.index}]")
    if len(name) > width:
        name = "…" + name[-(width - 1):]
    return f"{name}\n{pred.digit} ({100 * pred.probability:.1f}%)"


def save_grid(preds: list[Prediction], path, limit: int = GRID_LIMIT, show_steps: bool = True) -> None:
    """Write a PNG grid of what the network saw (the 28x28 inputs) with each prediction, atomically.

    At most ``limit`` digits are drawn (the first ones); the figure's title says so when there are more.
    With ``show_steps`` and at most :data:`STEPS_LIMIT` predictions of which some come from pictures,
    each picture gets a row of its preprocessing steps instead (:func:`save_steps`).
    """
    from nnlib.mnist.plots import digit_grid  # noqa: PLC0415 - matplotlib only when a grid is asked for

    if show_steps and 0 < len(preds) <= STEPS_LIMIT and any(from_picture(p) for p in preds):
        save_steps(preds, path)
        return
    shown = preds[:limit]
    suptitle = f"first {len(shown)} of {len(preds)} predictions" if len(preds) > len(shown) else ""
    if not preds:
        suptitle = "no predictions"
    digit_grid(np.array([p.image for p in shown]).reshape(-1, 28, 28), [grid_title(p) for p in shown], path,
               columns=min(GRID_COLUMNS, max(1, len(shown))), suptitle=suptitle)


def from_picture(pred: Prediction) -> bool:
    """Whether a prediction's image was made by the preprocessing from a picture file (not an array)."""
    return pred.index is None and Path(pred.file).suffix.lower() in IMAGE_SUFFIXES


def thumbnail(image: np.ndarray, side: int = STEPS_SIDE) -> np.ndarray:
    """A float or RGB array in [0, 1] shrunk (area average) to at most ``side`` px on its longer side, for drawing."""
    from PIL import Image  # noqa: PLC0415

    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    if image.ndim == 2:
        return np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
    return np.stack([thumbnail(image[..., c], side) for c in range(image.shape[2])], axis=-1)


STEP_TITLES = ("picture (dark ink on light paper)", "paper: its estimated level", "ink: 1 - picture / paper",
               "threshold; red: dropped", "28x28: what the network saw")


def save_steps(preds: list[Prediction], path) -> None:
    """Write a PNG with one row per prediction: for a picture, what each preprocessing step did (the
    picture as dark ink on light paper, the paper's estimated level, the ink relative to it, the
    thresholded ink with the dropped components in red, and the 28x28 input); for an array, the input."""
    from nnlib.mnist.plots import plt, save_figure  # noqa: PLC0415

    fig, axes = plt.subplots(len(preds), len(STEP_TITLES), figsize=(2.1 * len(STEP_TITLES), 2.2 * len(preds) + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, pred in zip(axes, preds):
        row[-1].imshow(pred.image, cmap="gray_r", vmin=0, vmax=255)
        row[-1].set_title(grid_title(pred, 24), fontsize=8)
        if not from_picture(pred):
            continue
        try:
            found = steps(read_image(Path(pred.file)).gray)
        except Exception:  # noqa: BLE001 - a file changed since: draw its 28x28 input only
            continue
        dropped = (found["thresholded"] > 0) & (found["kept"] == 0)
        overlay = np.repeat((1 - found["kept"])[..., None], 3, axis=-1)
        overlay[dropped] = (0.9, 0.1, 0.1)
        panels = (found["light"], found["paper"], 1 - found["ink"], overlay)
        for ax, panel, title in zip(row, panels, STEP_TITLES):
            ax.imshow(thumbnail(panel), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{Path(pred.file).name}: {title}" if ax is row[0] else title, fontsize=7)
    fig.suptitle("nnlib predict: the preprocessing steps of each picture (README, docs/robustness.md)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
