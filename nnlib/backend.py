"""The one place that chooses between NumPy and CuPy.

Every array operation in nnlib goes through ``xp``, obtained either from
:func:`get_array_module` (given arrays) or :func:`current` (the active backend).
NumPy is the default; CuPy is used only when asked for (``use("cupy")``) and installed.
"""
from __future__ import annotations

import numpy as np

from .errors import MissingExtra

DEFAULT_DTYPE = np.float32

_active = np  # the module used to create new arrays (numpy or cupy)


def use(name: str):
    """Select the backend that creates new arrays: ``"numpy"`` or ``"cupy"``. Returns the module."""
    global _active
    if name == "numpy":
        _active = np
    elif name == "cupy":
        try:
            import cupy  # noqa: PLC0415 - optional dependency
        except ImportError:  # pragma: no cover - depends on the machine
            raise MissingExtra(
                "backend is 'cupy' but CuPy is not installed: pip install -e '.[gpu]' (CUDA 12) or '.[gpu-cuda13]' "
                "on a machine with an NVIDIA GPU, or set train.backend and evaluate.backend to numpy in params.yaml"
            ) from None
        _active = cupy
    else:
        raise ValueError(f"unknown backend {name!r}: expected 'numpy' or 'cupy'")
    return _active


def current():
    """The array module that new arrays are created with."""
    return _active


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever owns the given arrays (DeZero/CuPy style)."""
    if _active is not np:
        import cupy  # noqa: PLC0415

        return cupy.get_array_module(*arrays)
    return np


def to_numpy(x) -> np.ndarray:
    """Copy an array to host memory (a no-op for NumPy arrays)."""
    if isinstance(x, np.ndarray):
        return x
    return x.get() if hasattr(x, "get") else np.asarray(x)


def to_device(x: np.ndarray):
    """Move a host array to the active backend (a no-op on NumPy)."""
    return x if _active is np else _active.asarray(x)
