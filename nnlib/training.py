"""The training loop and its configuration: optimizer and schedule from params (the loss: :func:`nnlib.losses.make_loss`), fit.

The ``train`` section's keys are documented and checked in :mod:`nnlib.mnist.config.schema`.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from . import optim, schedules
from .backend import current
from .errors import Diverged
from .evaluation import evaluate
from .factory import from_section


def make_optimizer(model, cfg: dict):
    """The optimizer of the ``train.optimizer`` section, over the model's parameters.

    With ``ema`` > 0 it carries an :class:`~nnlib.optim.EMA` of the model (``ema_warmup``: its warm-up),
    updated after every step; with ``ema`` 0 or absent, none: nothing is drawn or computed for it.
    """
    decay_filter = optim.decay_all if cfg["decay_bias_and_norm"] else optim.decay_weights_only
    flat = None if model.flat_params is None else (model.flat_params, model.flat_grads)
    optimizer = from_section(optim.OPTIMIZERS, cfg, parameters=model.parameters(), decay_filter=decay_filter, flat=flat)
    if cfg.get("ema"):
        optimizer.ema = optim.EMA(model, cfg["ema"], cfg.get("ema_warmup", True))
    return optimizer


def make_schedule(cfg: dict, lr: float, total: int):
    """The schedule of the ``train.schedule`` section over ``total`` intervals, with its linear warm-up."""
    schedule = from_section(schedules.SCHEDULES, cfg, lr=lr, total=total)
    return schedules.Warmup(schedule, cfg["warmup"]) if cfg["warmup"] else schedule


@dataclass
class History:
    """One dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds."""

    rows: list = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None

    def best(self) -> dict:
        return self.rows[self.best_epoch - 1]


def steps_per_epoch(images_per_epoch: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``images_per_epoch`` images (the last batch may be short)."""
    return math.ceil(images_per_epoch / batch_size)


class EpochTally:
    """The running loss sum and correct count of an epoch's training batches.

    On NumPy each batch's loss is a Python float, checked for divergence as it arrives. On a GPU the
    sums stay on the device and are read back only every ``every`` batches and at the end, so that
    no batch waits for a device-to-host copy; a divergence is then caught within ``every`` steps.
    """

    def __init__(self, xp, every: int = 50):
        self.on_host, self.every = xp is np, every
        self.seen, self.batches = 0, 0
        self.loss_sum, self.correct = (0.0, 0) if self.on_host else (xp.zeros((), np.float64), xp.zeros((), np.int64))

    def add(self, value, logits, y) -> bool:
        """Count one batch (value: its mean loss, 0-d). True when the sums were read back just now."""
        self.seen += len(y)
        self.batches += 1
        hits = (logits.argmax(axis=1) == y).sum()
        if self.on_host:
            self.loss_sum += float(value) * len(y)
            self.correct += int(hits)
            return True
        self.loss_sum += value * len(y)
        self.correct += hits
        return self.batches % self.every == 0

    def mean_loss(self) -> float:
        return float(self.loss_sum) / self.seen

    def accuracy(self) -> float:
        return int(self.correct) / self.seen


def _diverged(loss: float, where: str, lr: float) -> Diverged:
    return Diverged(f"loss became {loss} {where}: lower train.optimizer.lr (now {lr:g}) in params.yaml")


def fit(model, loss_fn, optimizer, schedule, stream, *, epochs: int, images_per_epoch: int, batch_size: int,
        val, interval: str = "step", keep_best: bool = False, progress: bool = True,
        history: History | None = None, on_epoch_end=None) -> History:
    """Train ``model`` for ``epochs`` epochs of ``images_per_epoch`` images drawn from ``stream``.

    ``stream.epoch(n, batch_size)`` yields (x, y) batches: x (B, ...) float on the model's backend, y (B,)
    int64. ``val`` gives the validation batches (same form) after every epoch: a callable returning a
    fresh iterable of them (``lambda: minibatches(x, y, 128)``) or a collection that can be iterated
    again (a list). The learning rate follows ``schedule`` per step or per epoch (``interval``).
    With ``keep_best`` the parameters of the best-validation-accuracy epoch are kept in the history.
    When the optimizer carries a weight average (``optimizer.ema``), validation and ``keep_best`` use the
    averaged weights; the model's own go on training.
    A resumed run passes the ``history`` of the epochs already done (its stream, model and optimizer
    restored to the end of them); training continues with the next epoch and schedule step.
    ``on_epoch_end(history, step)`` runs after every epoch (checkpoints, the live log).
    Raises :class:`Diverged` naming the epoch and step when the loss stops being finite.
    """
    history = history if history is not None else History()
    per_epoch = steps_per_epoch(images_per_epoch, batch_size)
    step = len(history.rows) * per_epoch
    for epoch in range(len(history.rows) + 1, epochs + 1):
        model.train()
        start = time.perf_counter()
        tally = EpochTally(current())
        bar = tqdm(stream.epoch(images_per_epoch, batch_size), total=per_epoch, disable=not progress,
                   desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, mininterval=0.5)
        for xb, yb in bar:
            optimizer.lr = schedule(step if interval == "step" else epoch - 1)
            logits = model.forward(xb)
            value, dlogits = loss_fn.value_and_grad(logits, yb)
            step += 1
            if tally.add(value, logits, yb):  # every step on NumPy; every tally.every steps on a GPU
                loss = tally.mean_loss()
                if not math.isfinite(loss):
                    raise _diverged(loss, f"in epoch {epoch}, step {step}", optimizer.lr)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.lr:.3g}", refresh=False)
            model.backward(dlogits)
            optimizer.step()
        bar.close()
        train_loss, train_acc = tally.mean_loss(), tally.accuracy()
        if not math.isfinite(train_loss):  # on a GPU: in the batches since the last read-back
            raise _diverged(train_loss, f"in epoch {epoch} (by step {step})", optimizer.lr)
        average = getattr(optimizer, "ema", None)
        with average.applied() if average is not None else nullcontext():
            val_loss, val_acc, _ = evaluate(model, loss_fn, val() if callable(val) else val)
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss became {val_loss} after epoch {epoch}, step {step}: "
                           "lower train.optimizer.lr in params.yaml")
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.lr, "seconds": time.perf_counter() - start}
        history.rows.append(row)
        if not history.best_epoch or val_acc > history.best()["val_acc"]:
            history.best_epoch = epoch
            if keep_best:
                history.best_state = average.averaged() if average is not None else {k: v.copy() for k, v in model.state().items()}
        if on_epoch_end is not None:
            on_epoch_end(history, step)
        tqdm.write(f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
                   f"val loss {val_loss:.4f} acc {val_acc:.4f} | lr {optimizer.lr:.3g} | {row['seconds']:.1f}s")
    return history
