"""A strict stand-in for the CuPy module, for machines without a GPU.

Arrays of this module are :class:`DeviceArray` objects wrapping a NumPy array. Like CuPy's, they
refuse implicit conversion to NumPy (``np.asarray(a)``, a NumPy ufunc or function applied to them,
``float(a)`` of a non-scalar): only ``a.get()`` / ``strict_cupy.asnumpy(a)`` copy to the host, as
with CuPy. Mixing a host NumPy array into a device operation is refused too (CuPy raises there).
So code that passes a training step and an evaluation under this module sends every array
operation through the backend switch (``xp``) and never mixes host and device arrays.

Install it with ``monkeypatch.setitem(sys.modules, "cupy", strict_cupy)``.
"""
from __future__ import annotations

import numbers

import numpy as np

__version__ = "0.0-strict-stand-in"


class DeviceArray:
    """A 'device' array: wraps a NumPy array and refuses to turn into one implicitly."""

    __array_priority__ = 1000
    __array_ufunc__ = None  # NumPy ufuncs on a DeviceArray raise TypeError (host ufunc on device data)

    def __init__(self, data: np.ndarray):
        self._data = data

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array: use the backend's xp.{func.__name__}")

    def get(self) -> np.ndarray:
        return self._data.copy()

    def __repr__(self) -> str:
        return f"DeviceArray({self._data!r})"

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self):
        return (wrap(v) for v in self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __float__(self) -> float:
        if self._data.size != 1:
            raise TypeError("only size-1 device arrays convert to Python scalars")
        return float(self._data)

    def __int__(self) -> int:
        if self._data.size != 1:
            raise TypeError("only size-1 device arrays convert to Python scalars")
        return int(self._data)

    def __index__(self) -> int:
        return int(self)

    def item(self):
        return self._data.item()

    def __getitem__(self, key):
        key = unwrap(key, indexing=True)
        item = self._data[key]
        if isinstance(item, np.generic):  # CuPy gives a 0-d view, not a scalar copy: so do we
            item = self._data[(*key, Ellipsis) if isinstance(key, tuple) else (key, Ellipsis)]
        return wrap(item)

    def __setitem__(self, key, value):
        self._data[unwrap(key, indexing=True)] = unwrap(value)

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co.: NumPy must not see the data
            raise AttributeError(name)
        attr = getattr(self._data, name)
        if callable(attr):
            return lambda *a, **k: wrap(attr(*unwrap(a), **unwrap(k)))
        return wrap(attr)

    @property
    def T(self):
        return wrap(self._data.T)


def _binary(name):
    def method(self, other):
        return wrap(getattr(self._data, name)(unwrap(other)))
    return method


def _inplace(name):
    def method(self, other):
        getattr(self._data, name)(unwrap(other))
        return self
    return method


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
            "lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceArray, f"__{_op}__", _binary(f"__{_op}__"))
    if _op not in ("lt", "le", "gt", "ge", "eq", "ne"):
        setattr(DeviceArray, f"__r{_op}__", _binary(f"__r{_op}__"))
        setattr(DeviceArray, f"__i{_op}__", _inplace(f"__i{_op}__"))
for _op in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_op}__", lambda self, _n=_op: wrap(getattr(self._data, f"__{_n}__")()))


def wrap(value):
    """NumPy arrays (not scalars) become DeviceArrays; containers are wrapped element by element."""
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def unwrap(value, indexing: bool = False):
    """DeviceArrays become their NumPy data; a host ndarray (but for indexing) is refused, as in CuPy."""
    if isinstance(value, DeviceArray):
        return value._data
    if isinstance(value, np.ndarray) and value.ndim > 0 and not indexing:
        raise TypeError("a host NumPy array was mixed into a device operation: move it with xp.asarray first")
    if isinstance(value, tuple):
        return tuple(unwrap(v, indexing) for v in value)
    if isinstance(value, list):
        return [unwrap(v, indexing) for v in value]
    if isinstance(value, dict):
        return {k: unwrap(v, indexing) for k, v in value.items()}
    return value


def asarray(value, dtype=None):
    """Host -> device (the one explicit way in)."""
    if isinstance(value, DeviceArray):
        return value if dtype is None else wrap(value._data.astype(dtype, copy=False))
    return DeviceArray(np.array(value, dtype=dtype))


array = asarray


def asnumpy(value):
    return value.get() if isinstance(value, DeviceArray) else np.asarray(value)


def get_array_module(*arrays):
    import sys  # noqa: PLC0415
    return sys.modules[__name__] if any(isinstance(a, DeviceArray) for a in arrays) else np


class _Namespace:
    """A sub-module such as ``lib.stride_tricks``: every function unwraps, calls NumPy's, wraps."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if callable(attr) and not isinstance(attr, type):
            return lambda *a, **k: wrap(attr(*unwrap(a), **unwrap(k)))
        if isinstance(attr, type(np)):
            return _Namespace(attr)
        return attr


_numpy = _Namespace(np)
lib = _Namespace(np.lib)
class _Generator:
    """``cupy.random.Generator``'s ``random``: numbers made 'on the device' from a seeded stream."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def random(self, size=None, dtype=np.float64):
        return DeviceArray(np.asarray(self._rng.random(size, dtype=dtype)))


class _Random:
    @staticmethod
    def default_rng(seed):
        if not isinstance(seed, (int, np.integer)):
            raise TypeError("seed the device generator with a Python int")
        return _Generator(int(seed))


random = _Random()


def __getattr__(name):
    attr = getattr(np, name)
    if isinstance(attr, (type, numbers.Number)) or name in ("newaxis", "pi", "e", "inf", "nan"):
        return attr  # dtypes (float32, int64, ...) and constants are shared with NumPy
    return getattr(_numpy, name)
