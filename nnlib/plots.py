"""Matplotlib figures (Agg backend) for the evaluate and prepare stages, written atomically as PNG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402


def save_figure(fig, path) -> None:
    """Write a figure to ``path`` as PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def training_curves(rows: list[dict], path) -> None:
    """Train/val loss and accuracy per epoch, side by side. rows: dicts from metrics/train_log.tsv."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], marker="o", label=split)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def confusion(matrix: np.ndarray, path) -> None:
    """Annotated confusion matrix: rows are true classes, columns predicted; each cell shows its count."""
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(7, 6))
    shown = np.log1p(matrix)  # log scale so that the off-diagonal errors are visible next to ~1000s
    image = ax.imshow(shown, cmap="Blues")
    threshold = shown.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > threshold else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true",
           title=f"confusion matrix ({matrix.trace()} / {matrix.sum()} correct)")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    save_figure(fig, path)


def digit_grid(images: np.ndarray, titles: list[str], path, columns: int = 8, suptitle: str = "") -> None:
    """A grid of 28x28 uint8 digits, each with a title (e.g. 'true 4 / pred 9')."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    save_figure(fig, path)
