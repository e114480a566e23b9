"""Your handwriting: digits drawn on ``nnlib serve``'s page, saved with their labels in ``data/drawn/``.

The folder holds a README kept in git, so that it exists in a fresh clone, and a subfolder ``digits/``
made by the first save: PNG files (the raw canvas) whose names the server makes up, and a
``labels.csv`` with the columns ``file, label, time`` (ISO 8601, UTC). ``dvc add data/drawn/digits``
(or ``git add -f``) keeps them. Every file is written atomically (a temporary file renamed into place): a reader, such
as the evaluate stage, sees the old state or the new one, never half of it. The evaluate stage scores
the model on these drawings (``drawn_accuracy``, ``drawn_images`` in ``metrics/eval.json``) through
``nnlib predict``'s preprocessing.
"""
from __future__ import annotations

import csv
import io
import os
import secrets
import threading
import time
from pathlib import Path

from nnlib.errors import InputError
from nnlib.files import atomic_path, write_text
from nnlib.mnist.paths import DRAWN as DEFAULT_FOLDER

DIGITS = "digits"  # the drawings and labels.csv, inside the folder
LABELS = "labels.csv"
COLUMNS = ("file", "label", "time")
CAP = 10_000  # drawings in one folder at most: then saving fails with a clear message


class FolderFull(RuntimeError):
    """The drawings folder holds ``CAP`` drawings already."""


_lock = threading.Lock()  # one writer of labels.csv at a time within a process


def read_labels(folder) -> list[dict]:
    """Rows of ``folder/digits/labels.csv`` as ``{"file": name, "label": int, "time": str}``; [] without the file.

    Raises InputError (one line naming the file) for a corrupt table, a label outside 0-9 or a file
    name that is not a plain name inside the folder.
    """
    path = Path(folder) / DIGITS / LABELS
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return []
            if tuple(reader.fieldnames) != COLUMNS:
                raise InputError(f"{path}: expected the columns {', '.join(COLUMNS)}, got {', '.join(reader.fieldnames)}")
            for line, row in enumerate(reader, start=2):
                name, label = row["file"], row["label"]
                if not name or Path(name).name != name or name.startswith("."):
                    raise InputError(f"{path}, line {line}: file must be a plain file name, got {name!r}")
                if label not in tuple("0123456789"):
                    raise InputError(f"{path}, line {line}: label must be a digit 0-9, got {label!r}")
                rows.append({"file": name, "label": int(label), "time": row["time"]})
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a readable CSV table ({err})") from None
    return rows


def labelled_files(folder) -> tuple[list[Path], list[int]]:
    """The drawings listed in ``labels.csv`` that exist, and their labels (for the evaluate stage)."""
    digits = Path(folder) / DIGITS
    files, labels = [], []
    for row in read_labels(folder):
        if (digits / row["file"]).is_file():
            files.append(digits / row["file"])
            labels.append(row["label"])
    return files, labels


def _table(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row["file"], row["label"], row["time"]])
    return out.getvalue()


def save(folder, png: bytes, label: int, cap: int = CAP) -> dict:
    """Save one drawing (PNG bytes, already checked) with its label -> its row ``{"file", "label", "time"}``.

    The name is made here (time and random hex, never from the client). The PNG is renamed into
    place first, then labels.csv is rewritten atomically with the new row; if that fails, the PNG is
    removed again, so a failed save leaves the folder as it was. FolderFull when the folder holds
    ``cap`` drawings already (rows of labels.csv, or PNG files, whichever are more).
    """
    if not (isinstance(label, int) and 0 <= label <= 9):
        raise ValueError(f"label must be an integer 0-9, got {label!r}")
    folder = Path(folder)
    with _lock:
        rows = read_labels(folder)
        held = max(len(rows), _pictures(folder / DIGITS))
        if held >= cap:
            raise FolderFull(f"{folder / DIGITS} holds {held} drawings, the most it keeps: move them "
                             "elsewhere and start a new folder")
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        name = f"{stamp}-{secrets.token_hex(4)}-{label}.png"
        row = {"file": name, "label": label,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"}
        with atomic_path(folder / DIGITS / name) as tmp:
            with open(tmp, "wb") as f:
                f.write(png)
                f.flush()
                os.fsync(f.fileno())
        try:
            write_text(folder / DIGITS / LABELS, _table([*rows, row]))
        except BaseException:
            (folder / DIGITS / name).unlink(missing_ok=True)
            raise
    return row


def _pictures(digits: Path) -> int:
    """PNG files in the drawings' folder (0 when it does not exist yet)."""
    try:
        with os.scandir(digits) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".png"))
    except FileNotFoundError:
        return 0
