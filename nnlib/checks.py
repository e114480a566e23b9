"""Argument checks with Keras-style messages, shared by layers, losses, optimizers and schedules.

Each check returns the value (as int, float, bool or str) or raises one line that names the owner,
the argument, what it must be and what it got: ``adam: eps must be a number > 0, got 0``. Bad
arguments fail when the object is made, never in the middle of training.
"""
from __future__ import annotations

import math
import numbers


class ArgumentError(ValueError):
    """An argument has the wrong type or is out of range: ``"<owner>: <detail>"`` in one line."""

    def __init__(self, owner: str, detail: str):
        super().__init__(f"{owner}: {detail}")
        self.owner, self.detail = owner, detail

    def __reduce__(self):  # picklable despite the custom signature
        return type(self), (self.owner, self.detail)


def refuse(owner: str, name: str, expect: str, value, error=ArgumentError):
    """Raise ``error(owner, "<name> must be <expect>, got <value>")``."""
    raise error(owner, f"{name} must be {expect}, got {value!r}")


def check_int(owner: str, name: str, value, minimum: int, error=ArgumentError) -> int:
    """``value`` as an int >= ``minimum``. Bools (``true``) and floats (even ``2.0``) are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        refuse(owner, name, f"an integer >= {minimum}", value, error)
    return int(value)


def float_range(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False) -> str:
    """The words for an interval: ``a number >= 0``, ``a number > 0``, ``a number in [0, 1)``."""
    if math.isinf(high):
        return f"a number {'>' if open_low else '>='} {low:g}"
    return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def in_range(value, low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False) -> bool:
    """Whether ``value`` is a finite real number (not a bool) in the interval."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return not (value < low or value > high or (open_low and value == low) or (open_high and value == high))


def check_float(owner: str, name: str, value, low: float, high: float = math.inf, *,
                open_low: bool = False, open_high: bool = False, error=ArgumentError) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (ints accepted, bools not).

    Each end is included unless ``open_low`` / ``open_high``; ``high = inf`` means no upper bound.
    """
    if not in_range(value, low, high, open_low=open_low, open_high=open_high):
        refuse(owner, name, float_range(low, high, open_low=open_low, open_high=open_high), value, error)
    return float(value)


def check_bool(owner: str, name: str, value, error=ArgumentError) -> bool:
    """``value`` if it is a real bool (``true``/``false``): not ``"no"``, not ``0``."""
    if not isinstance(value, bool):
        refuse(owner, name, "true or false", value, error)
    return value


def check_choice(owner: str, name: str, value, choices, error=ArgumentError) -> str:
    """``value`` if it is one of the names in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        refuse(owner, name, f"one of {sorted(choices)}", value, error)
    return value
