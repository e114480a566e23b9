"""Learning-rate schedules: small objects mapping a step count to a learning rate.

``lr = schedule(t)`` where ``t`` counts from 0 in the unit the train stage uses (steps or epochs,
``schedule.interval`` in params.yaml); ``total`` is the number of such units in the run. Every
schedule can be wrapped in a linear warm-up with :class:`Warmup`.
"""
from __future__ import annotations

import math


class Constant:
    def __init__(self, lr: float, total: int):
        self.lr, self.total = lr, total

    def __call__(self, t: int) -> float:
        return self.lr


class Step:
    """lr * gamma ** (t // step_size)."""

    def __init__(self, lr: float, total: int, step_size: int, gamma: float = 0.1):
        self.lr, self.total, self.step_size, self.gamma = lr, total, step_size, gamma

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.step_size)


class Exponential:
    """lr * gamma ** t."""

    def __init__(self, lr: float, total: int, gamma: float):
        self.lr, self.total, self.gamma = lr, total, gamma

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma**t


class Cosine:
    """Cosine annealing from lr to min_lr over ``total`` units."""

    def __init__(self, lr: float, total: int, min_lr: float = 0.0):
        self.lr, self.total, self.min_lr = lr, total, min_lr

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
        self.lr, self.total, self.pct_start = lr, total, pct_start
        self.initial = lr / div_factor
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
        self.schedule, self.warmup, self.total = schedule, warmup, schedule.total

    def __call__(self, t: int) -> float:
        lr = self.schedule(t)
        return lr * (t + 1) / self.warmup if t < self.warmup else lr


SCHEDULES = {"constant": Constant, "step": Step, "exponential": Exponential, "cosine": Cosine, "onecycle": OneCycle}
