"""Learning-rate schedules: small objects mapping a step count to a learning rate.

``lr = schedule(t)`` where ``t`` counts from 0 in the unit the train stage uses (steps or epochs,
``schedule.interval`` in params.yaml); ``total`` is the number of such units in the run. Every
schedule can be wrapped in a linear warm-up with :class:`Warmup`.

Every constructor checks its arguments (:mod:`nnlib.checks`): a bad one raises
:class:`~nnlib.checks.ArgumentError` (a ValueError) naming the schedule, the argument, the allowed
range and the value, e.g. ``step: step_size must be an integer >= 1, got 0``.
"""
from __future__ import annotations

import math

from .checks import check_float, check_int


def _lr_and_total(owner: str, lr, total) -> tuple[float, int]:
    """The peak learning rate (a number >= 0) and the run's length (an integer >= 0), checked."""
    return check_float(owner, "lr", lr, 0.0), check_int(owner, "total", total, 0)


class Constant:
    """lr."""

    def __init__(self, lr: float, total: int):
        self.lr, self.total = _lr_and_total("constant", lr, total)

    def __call__(self, t: int) -> float:
        return self.lr


class Step:
    """lr * gamma ** (t // step_size)."""

    def __init__(self, lr: float, total: int, step_size: int, gamma: float = 0.1):
        self.lr, self.total = _lr_and_total("step", lr, total)
        self.step_size = check_int("step", "step_size", step_size, 1)
        self.gamma = check_float("step", "gamma", gamma, 0.0, open_low=True)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.step_size)


class Exponential:
    """lr * gamma ** t."""

    def __init__(self, lr: float, total: int, gamma: float):
        self.lr, self.total = _lr_and_total("exponential", lr, total)
        self.gamma = check_float("exponential", "gamma", gamma, 0.0, open_low=True)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma**t


class Cosine:
    """Cosine annealing from lr to min_lr over ``total`` units."""

    def __init__(self, lr: float, total: int, min_lr: float = 0.0):
        self.lr, self.total = _lr_and_total("cosine", lr, total)
        self.min_lr = check_float("cosine", "min_lr", min_lr, 0.0)

    def __call__(self, t: int) -> float:
        progress = min(t / max(self.total, 1), 1.0)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


class OneCycle:
    """One-cycle (Smith 2018), cosine form as in PyTorch's OneCycleLR.

    Rises from lr/div_factor to lr over the first ``pct_start`` of the run, then falls to
    lr/(div_factor*final_div_factor).
    """

    def __init__(self, lr: float, total: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        self.lr, self.total = _lr_and_total("onecycle", lr, total)
        self.pct_start = check_float("onecycle", "pct_start", pct_start, 0.0, 1.0, open_low=True, open_high=True)
        div_factor = check_float("onecycle", "div_factor", div_factor, 1.0, open_low=True)
        final_div_factor = check_float("onecycle", "final_div_factor", final_div_factor, 1.0, open_low=True)
        self.initial = self.lr / div_factor
        self.final = self.initial / final_div_factor

    @staticmethod
    def _anneal(start: float, end: float, progress: float) -> float:
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, t: int) -> float:
        peak = max(self.pct_start * self.total - 1, 1)
        if t <= peak:
            return self._anneal(self.initial, self.lr, t / peak)
        rest = max(self.total - 1 - peak, 1)
        return self._anneal(self.lr, self.final, min((t - peak) / rest, 1.0))


class Warmup:
    """Linear warm-up over ``warmup`` units from lr/warmup up to the wrapped schedule's value."""

    def __init__(self, schedule, warmup: int):
        self.schedule, self.warmup, self.total = schedule, check_int("warmup", "warmup", warmup, 1), schedule.total

    def __call__(self, t: int) -> float:
        lr = self.schedule(t)
        return lr * (t + 1) / self.warmup if t < self.warmup else lr


SCHEDULES = {"constant": Constant, "step": Step, "exponential": Exponential, "cosine": Cosine, "onecycle": OneCycle}
