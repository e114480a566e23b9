"""Every random stream derives from the one global ``seed`` in params.yaml.

``rng(seed, STREAM, *more)`` gives an independent ``numpy.random.Generator`` for each named purpose
(and, with ``more``, e.g. for each shard), via ``numpy.random.SeedSequence``. No global state.
"""
from __future__ import annotations

import numpy as np

SPLIT = 1  # train/validation split and the max_train subset
AUGMENT = 2  # distortions; one child stream per shard index
INIT = 3  # weight initialisation (and dropout masks)
SHUFFLE = 4  # order of training images
PREVIEW = 5  # which digits the augmentation preview shows
ROBUST = 6  # the robustness suite's corruptions (nnlib/mnist/robustness.py); one child stream per entry


def rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    """An independent Generator for ``stream`` (and optional sub-keys such as a shard index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *more]))
