"""Matplotlib figures (Agg backend) for the evaluate and prepare stages and ``nnlib predict --show``.

The evaluation figures are built by functions that return the figure; :func:`save_figure` writes one
as PNG (atomically by itself, or to a temporary path that an :class:`~nnlib.files.OutputSet` renames
into place with the stage's other outputs). ``title`` is the header every evaluation figure carries
(the preset, seed and test accuracy).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from nnlib.files import atomic_path  # noqa: E402

DPI = 100
CLASS_COLOURS = plt.get_cmap("tab10")


def save_figure(fig, path, atomic: bool = True) -> None:
    """Write a figure as PNG and close it.

    ``atomic``: through a temporary file renamed onto ``path``. ``atomic=False`` writes straight to
    ``path``: for a temporary path from ``OutputSet.path`` (its ``.tmp`` suffix is why the format is
    given explicitly), which the set renames into place together with the stage's other outputs.
    """
    try:
        if atomic:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        else:
            fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _caption(fig, text: str) -> None:
    """A small line of explanation under the figure."""
    fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=9, color="dimgray", wrap=True)


def _positive(values) -> np.ndarray:
    """values as float64 with those <= 0 as NaN: a log axis cannot show them (matplotlib leaves a gap)."""
    values = np.asarray(values, np.float64)
    return np.where(values > 0, values, np.nan)


def curves(rows: list[dict], title: str):
    """Loss and error rate (1 - accuracy) per epoch on log axes, train and val, with the learning rate on a
    second axis. rows: dicts from metrics/train_log.tsv (epoch, train_loss, train_acc, val_loss, val_acc, lr)."""
    epochs = [r["epoch"] for r in rows]
    panels = [("loss", lambda r, split: r[f"{split}_loss"]), ("error rate (1 - accuracy)", lambda r, split: 1 - r[f"{split}_acc"])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, (label, value) in zip(axes, panels):
        for split, marker in (("train", "o"), ("val", "s")):
            ax.plot(epochs, _positive([value(r, split) for r in rows]), marker=marker, markersize=4, label=split)
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel=f"{label} (log scale)", title=label)
        ax.set_xlim(min(epochs, default=1) - 0.5, max(epochs, default=1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(which="both", alpha=0.25)
        lr_ax = ax.twinx()
        lr_ax.plot(epochs, [r["lr"] for r in rows], color="gray", linestyle="--", linewidth=1, marker=".",
                   label="learning rate")
        lr_ax.set_ylabel("learning rate (at the epoch's end)", color="gray")
        lr_ax.tick_params(axis="y", colors="gray")
        handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    _caption(fig, "train: averages over the epoch's batches while the weights changed (train mode: dropout on); "
                  "val: measured after the epoch (eval mode). An error rate of 0 cannot be drawn on a log axis.")
    return fig


def _annotated_matrix(ax, colour: np.ndarray, labels: list[list[str]], norm, title: str, colour_label: str) -> None:
    """One (K, K) matrix panel: cells coloured by ``colour`` under ``norm``, each labelled; true class vertical."""
    k = len(colour)
    image = ax.imshow(colour, cmap="Blues", norm=norm)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8,
                    color="white" if norm(colour[i, j]) > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class", title=title)
    ax.figure.colorbar(image, ax=ax, label=colour_label, fraction=0.046, pad=0.04)


def confusion(matrix: np.ndarray, title: str):
    """The confusion matrix (K, K) int (row = true class) twice, side by side: counts, and each row as
    percentages of its true class. Zero cells are left blank so the mistakes stand out."""
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    counts = [[str(v) if v else "" for v in row] for row in matrix]
    percents = [[f"{100 * v:.1f}" if c else "" for v, c in zip(share_row, row)] for share_row, row in zip(shares, matrix)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    counted = np.log1p(matrix)
    _annotated_matrix(left, counted, counts, Normalize(0, max(counted.max(), 1e-9)),
                      f"counts ({matrix.trace()} of {matrix.sum()} correct)", "log(1 + count)")
    _annotated_matrix(right, shares, percents, PowerNorm(0.3, 0, 1),
                      "row-normalised: % of each true class", "share of the true class (power scale)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def digit_grid_figure(images: np.ndarray, titles: list[str], columns: int = 8, suptitle: str = ""):
    """A grid of 28x28 uint8 digits (M, 28, 28), each with a title (e.g. 'true 4 / pred 9')."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def digit_grid(images: np.ndarray, titles: list[str], path, columns: int = 8, suptitle: str = "") -> None:
    """:func:`digit_grid_figure` written to ``path`` as PNG, atomically."""
    save_figure(digit_grid_figure(images, titles, columns, suptitle), path)


def weight_images(images: np.ndarray | None, description: str, title: str, columns: int = 8):
    """Weights shown as images (M, h, w): red positive, blue negative, each on its own symmetric scale.
    ``images`` None draws just the ``description`` (why there is nothing to show)."""
    if images is None:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"nothing to draw: {description}", ha="center", va="center")
        fig.suptitle(title)
        return fig
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images):
        scale = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    fig.suptitle(f"{title}\n{description}")
    fig.tight_layout()
    _caption(fig, "red: positive weights, blue: negative; each image on its own scale (white = 0)")
    return fig


def reliability(count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray, ece: float, title: str):
    """Reliability diagram over B equal-width confidence bins: accuracy against mean confidence per bin
    (count, confidence, accuracy: (B,) each, from ``nnlib.metrics.calibration_bins``), above the
    histogram of confidences, each bin labelled with its image count."""
    bins = len(count)
    edges = np.linspace(0, 1, bins + 1)
    centres, used = (edges[:-1] + edges[1:]) / 2, count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[used], accuracy[used], width=1 / bins, edgecolor="black", alpha=0.75, label="accuracy in the bin")
    top.plot(confidence[used], accuracy[used], "o", color="tab:red", markersize=4, label="(mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"reliability: ECE {100 * ece:.2f}% over {bins} bins")
    top.legend(loc="upper left")
    top.grid(alpha=0.25)
    bars = bottom.bar(centres, count, width=1 / bins, edgecolor="black", color="tab:gray")
    bottom.bar_label(bars, labels=[f"{n:,}" if n else "" for n in count], fontsize=6.5, padding=1)  # per-bin counts
    bottom.set_yscale("log")
    bottom.set_ylim(top=max(1, count.max()) * 4)  # room for the labels above the tallest bar
    bottom.set(xlim=(0, 1), xlabel="confidence (softmax probability of the predicted class)", ylabel="images (log)")
    bottom.grid(alpha=0.25)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def feature_map(points: np.ndarray, y: np.ndarray, wrong: np.ndarray, explained: np.ndarray, title: str):
    """Scatter of 2-D points (N, 2) (principal components of penultimate features) coloured by true class
    y (N,), with the mistakes (wrong: (N,) bool) marked by black crosses and each class named at its median."""
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    for k in np.unique(y):
        members = points[y == k]
        ax.scatter(members[:, 0], members[:, 1], s=3, alpha=0.4, color=CLASS_COLOURS(int(k) % 10), label=str(k), rasterized=True)
        ax.text(*np.median(members, axis=0), str(k), fontsize=14, weight="bold", ha="center", va="center",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.7, "edgecolor": CLASS_COLOURS(int(k) % 10)})
    ax.scatter(points[wrong, 0], points[wrong, 1], s=14, marker="x", color="black", linewidths=0.8,
               label=f"mistakes ({int(wrong.sum())})")
    ax.set(xlabel=f"PC1 ({100 * explained[0]:.1f}% of the variance)", ylabel=f"PC2 ({100 * explained[1]:.1f}% of the variance)",
           title="penultimate-layer features of the test set, 2-D PCA (colour: true class)")
    ax.legend(markerscale=3, fontsize=8, loc="best", ncol=2)
    ax.grid(alpha=0.25)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
