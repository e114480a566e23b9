"""Digits drawn the way a user would, shown to a trained model: the README's "Use the model" figures.

    python bench/handwriting_demo.py --model models/model.npz --out bench/figures

Draws the ten digits with Pillow (thick dark strokes on a large, light, slightly uneven canvas, a
little rotated and off-centre, as a phone photo of a pen digit would be), writes them as PNGs, then
runs the same path as ``nnlib predict``: it prints the predictions, writes the ``--show`` grid
(``predict_grid.png``), and a figure of MNIST's six preprocessing steps on one digit
(``preprocessing_steps.png``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nnlib.mnist import images
from nnlib.modelfile import load_model
from nnlib.mnist.predict import format_line, predict_paths, save_grid

CANVAS = 400
# Each digit as strokes in a unit box: ("line", [(x, y), ...]) polylines and ("arc", box, start, end) arcs.
STROKES = {
    0: [("arc", (0.25, 0.1, 0.75, 0.9), 0, 360)],
    1: [("line", [(0.38, 0.25), (0.52, 0.1), (0.52, 0.9)])],
    2: [("arc", (0.25, 0.1, 0.75, 0.5), 180, 30), ("line", [(0.72, 0.38), (0.25, 0.9), (0.78, 0.9)])],
    3: [("arc", (0.28, 0.1, 0.72, 0.5), 200, 90), ("arc", (0.25, 0.5, 0.75, 0.9), 270, 160)],
    4: [("line", [(0.6, 0.9), (0.6, 0.1), (0.2, 0.65), (0.8, 0.65)])],
    5: [("line", [(0.72, 0.1), (0.32, 0.1), (0.28, 0.45)]), ("arc", (0.25, 0.38, 0.75, 0.9), 230, 150)],
    6: [("arc", (0.25, 0.45, 0.75, 0.9), 0, 360), ("line", [(0.66, 0.12), (0.4, 0.35), (0.27, 0.65)])],
    7: [("line", [(0.22, 0.12), (0.78, 0.12), (0.42, 0.9)])],
    8: [("arc", (0.3, 0.1, 0.7, 0.48), 0, 360), ("arc", (0.25, 0.48, 0.75, 0.9), 0, 360)],
    9: [("arc", (0.27, 0.1, 0.73, 0.52), 0, 360), ("line", [(0.72, 0.32), (0.62, 0.9)])],
}


def draw_digit(digit: int, rng: np.random.Generator) -> Image.Image:
    """A light canvas (CANVAS x CANVAS, RGB) with the digit in thick dark strokes, placed off-centre."""
    paper = rng.integers(215, 245)
    noise = rng.normal(0, 6, (CANVAS, CANVAS, 1)) + np.linspace(-10, 10, CANVAS)[None, :, None]  # uneven light
    canvas = Image.fromarray(np.clip(paper + noise, 0, 255).astype(np.uint8).repeat(3, axis=2))
    size = int(rng.integers(150, 230))
    x0, y0 = (int(v) for v in rng.integers(20, CANVAS - size - 20, 2))
    glyph = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(glyph)
    width = max(6, size // 11)

    def at(x, y):
        return (x * size, y * size)

    for stroke in STROKES[digit]:
        if stroke[0] == "line":
            pen.line([at(*p) for p in stroke[1]], fill=255, width=width, joint="curve")
        else:
            (a, b, c, d), start, end = stroke[1], stroke[2], stroke[3]
            pen.arc([*at(a, b), *at(c, d)], start, end, fill=255, width=width)
    glyph = glyph.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    ink = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(20, 70, 3)))
    canvas.paste(ink, (x0, y0), glyph)
    return canvas


def steps_figure(path: Path, picture: Path, out: Path) -> None:
    """The six preprocessing steps on one image, left to right."""
    from nnlib.mnist.plots import plt, save_figure  # noqa: PLC0415

    gray = images.grayscale(Image.open(picture))
    ink = images.invert_if_light_paper(gray)
    kept = images.threshold(ink)
    cropped = images.crop_to_ink(kept)
    boxed = images.fit_box(cropped)
    final = images.center_by_mass(boxed)
    panels = [("photo", np.asarray(Image.open(picture))), ("1 grayscale", gray), ("2 invert (light paper)", ink),
              ("3 threshold", kept), ("4 crop to ink", cropped), ("5 longest side 20 px", boxed),
              ("6 centre of mass at centre", final)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=255 if image.dtype == np.uint8 else None)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"what `nnlib predict` does to {path.name}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/model.npz", help="model file (default: models/model.npz)")
    parser.add_argument("--out", type=Path, default=Path("bench/figures"), help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawing (default 0)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    drawn = args.out / "drawn"
    drawn.mkdir(parents=True, exist_ok=True)
    paths = []
    for digit in range(10):
        path = drawn / f"digit_{digit}.png"
        draw_digit(digit, rng).save(path)
        paths.append(path)
    model, _ = load_model(args.model)
    results = predict_paths(model, [drawn])
    for result in results:
        print(format_line(result, top=2))
    save_grid(results, args.out / "predict_grid.png")
    steps_figure(paths[2], paths[2], args.out / "preprocessing_steps.png")


if __name__ == "__main__":
    main()
