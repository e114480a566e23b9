"""Optimizers: SGD (momentum, Nesterov, L2 weight decay), Adam, AdamW.

Each takes the model's ``parameters()`` triples ``(name, param, grad)`` once, keeps its per-parameter
state in dicts keyed by name (or, given the model's flat arrays, one array per slot over all
parameters: see :class:`Optimizer`), and updates the params in place on ``step()``. The updates follow
PyTorch's ``torch.optim`` exactly, so the two can be compared step by step.

``decay_filter`` (optional) decides which parameters get weight decay; :func:`decay_all` and
:func:`decay_weights_only` (skips 1-D arrays: biases and BatchNorm's gamma/beta) are provided.

An optimizer may carry an :class:`EMA` (``optimizer.ema``, as Keras optimizers' ``use_ema``): an
exponential moving average of the model's weights, updated after every step, that validation and the
saved model use while the raw weights go on training.

Every constructor checks its arguments (:mod:`nnlib.checks`): a bad one raises
:class:`~nnlib.checks.ArgumentError` (a ValueError) naming the optimizer, the argument, the allowed
range and the value, e.g. ``adam: betas[1] must be a number in [0, 1), got 1.0``.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .backend import get_array_module
from .checks import ArgumentError, check_bool, check_float


def decay_all(name: str, param) -> bool:
    return True


def decay_weights_only(name: str, param) -> bool:
    """Weight decay on matrices and kernels only, not on biases or normalisation parameters."""
    return param.ndim > 1


class Optimizer:
    """Base class: walks ``(name, param, grad)`` triples; subclasses implement ``update``.

    ``slots`` names the state dicts (momentum buffers, Adam moments) that :meth:`state` /
    :meth:`load_state` save and restore for checkpoints, always per parameter name.

    ``flat``: optional ``(params, grads)``, two 1-D arrays of which the parameters and gradients are
    consecutive views in the order given (what :class:`~nnlib.model.Sequential` builds). Then a step is
    one ``update`` over the two whole arrays (``name`` None) instead of one per parameter: the same
    arithmetic on every element, with a few calls in all instead of a few per array (for a small
    network the calls are most of the optimizer's time); each state dict then holds one flat array
    under the key None. Weight decay, which only some parameters get, still runs per parameter
    (:meth:`decayed`), on views.
    """

    slots: tuple[str, ...] = ()
    type_name = "optimizer"  # the name in OPTIMIZERS, and in its error messages

    def __init__(self, parameters, lr: float, weight_decay: float = 0.0, decay_filter=decay_all, flat=None):
        self.lr = check_float(self.type_name, "lr", lr, 0.0)
        self.weight_decay = check_float(self.type_name, "weight_decay", weight_decay, 0.0)
        self.params = list(parameters)
        self.decays = {name: weight_decay > 0 and decay_filter(name, p) for name, p, _ in self.params}
        self.steps = 0
        self._scratch = {}
        self.flat = flat
        self._spans = {}  # name -> slice of the flat arrays
        if flat is not None:
            self._check_flat(*flat)
        # The (param, grad) pairs that get weight decay: views of the flat arrays, or single arrays.
        self._decayed = [(name, p, g) for name, p, g in self.params if self.decays[name]]
        self.ema: EMA | None = None  # a moving average of the weights, updated after every step when set

    def _check_flat(self, flat_params, flat_grads) -> None:
        """Refuse flat arrays of which the parameters and gradients are not consecutive views."""
        xp = get_array_module(flat_params)
        offset = 0
        for name, param, grad in self.params:
            self._spans[name] = slice(offset, offset + param.size)
            offset += param.size
            if not (xp.shares_memory(param, flat_params) and xp.shares_memory(grad, flat_grads)):
                raise ValueError(f"parameter {name!r} or its gradient is not a view of the flat arrays "
                                 "(were the layer's arrays replaced after the model packed them?)")
        if offset != flat_params.size or flat_params.shape != flat_grads.shape:
            raise ValueError(f"flat arrays of {flat_params.size} elements do not hold the {offset} parameter elements")

    def step(self) -> None:
        self.steps += 1
        if self.flat is not None:
            self.update(None, *self.flat)
        else:
            for name, param, grad in self.params:
                self.update(name, param, grad)
        if self.ema is not None:
            self.ema.update()

    def update(self, name, param, grad) -> None:
        """Update ``param`` in place from ``grad``; ``name`` None means the flat arrays (all parameters)."""
        raise NotImplementedError

    def has_decay(self, name) -> bool:
        """Whether the parameter ``name`` (None: any parameter of the flat arrays) gets weight decay."""
        return bool(self._decayed) if name is None else self.decays[name]

    def decayed(self, name, param, grad, out=None):
        """The ``(param, grad, out)`` arrays of an update that get weight decay.

        For one parameter: itself, or nothing. For the flat arrays (``name`` None): the views of each
        decayed parameter, with the matching view of ``out`` (an array shaped like the flat ones;
        None if the caller needs no output array).
        """
        if name is not None:
            return [(param, grad, out)] if self.decays[name] else []
        return [(p, g, None if out is None else out[self._spans[n]].reshape(p.shape)) for n, p, g in self._decayed]

    def l2_gradient(self, name, param, grad, out):
        """grad + weight_decay * param where decayed, grad elsewhere, written into ``out`` (returned)."""
        if name is None:
            out[...] = grad
        xp = get_array_module(out)
        for p, g, o in self.decayed(name, param, grad, out):
            xp.multiply(p, self.weight_decay, out=o)
            o += g
        return out

    def scratch(self, name, param, slot: int = 0):
        """A work array shaped like ``param``, kept between steps (not saved: it holds no state)."""
        key = (name, slot)
        if key not in self._scratch:
            self._scratch[key] = get_array_module(param).empty_like(param)
        return self._scratch[key]

    def state(self) -> tuple[int, dict]:
        """(step count, arrays by ``"<slot>/<param name>"``): everything a resumed run needs.

        With flat arrays, each parameter's state is its view of the slot's flat array.
        """
        arrays = {}
        for slot in self.slots:
            values = getattr(self, slot)
            if None in values:  # one flat array for all parameters
                values = {name: values[None][self._spans[name]].reshape(param.shape) for name, param, _ in self.params}
            arrays.update({f"{slot}/{name}": value for name, value in values.items()})
        return self.steps, arrays

    def load_state(self, steps: int, arrays: dict) -> None:
        """Restore what :meth:`state` returned (arrays are copied onto the parameters' backend)."""
        self.steps = int(steps)
        xp = get_array_module(*(p for _, p, _ in self.params))
        for slot in self.slots:
            getattr(self, slot).clear()
        for key, value in arrays.items():
            slot, name = key.split("/", 1)
            if slot not in self.slots or name not in self.decays:
                raise ValueError(f"optimizer state {key!r} does not belong to this optimizer")
            getattr(self, slot)[name] = xp.array(value)
        if self.flat is not None:
            for slot in self.slots:
                values = getattr(self, slot)
                if values and set(values) != set(self.decays):
                    missing = sorted(set(self.decays) - set(values))
                    raise ValueError(f"optimizer state {slot!r} is missing parameters {missing}")
                if values:  # per-parameter arrays -> one flat array, in the flat arrays' order
                    flat = xp.empty_like(self.flat[0])
                    for name, param, _ in self.params:
                        if values[name].shape != param.shape:
                            raise ValueError(f"optimizer state {slot}/{name} has shape {values[name].shape}, "
                                             f"the parameter {param.shape}")
                        flat[self._spans[name]] = values[name].reshape(-1)
                    values.clear()
                    values[None] = flat


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + (g + wd * p)  (PyTorch's form, dampening 0).

    With ``nesterov=True`` the step uses g + momentum * v instead of v.
    """

    slots = ("velocity",)
    type_name = "sgd"

    def __init__(self, parameters, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, decay_filter=decay_all, flat=None):
        super().__init__(parameters, lr, weight_decay, decay_filter, flat)
        self.momentum = check_float(self.type_name, "momentum", momentum, 0.0, 1.0, open_high=True)
        self.nesterov = check_bool(self.type_name, "nesterov", nesterov)
        if nesterov and momentum == 0:
            raise ArgumentError(self.type_name, f"nesterov momentum needs momentum > 0, got momentum {momentum!r}")
        self.velocity = {}

    def update(self, name, param, grad):
        xp = get_array_module(param)
        step = self.scratch(name, param)  # the step lr * g, built in place (one copy only for Nesterov with decay)
        if self.has_decay(name):  # g = grad + wd * param where decayed, grad elsewhere
            grad = self.l2_gradient(name, param, grad, step)
        if self.momentum:
            v = self.velocity.get(name)
            if v is None:
                v = self.velocity[name] = grad.copy()
            else:
                v *= self.momentum
                v += grad
            if self.nesterov:  # the direction is g + momentum * v
                if grad is step:
                    grad = grad.copy()
                xp.multiply(v, self.momentum, out=step)
                step += grad
                grad = step
            else:  # the direction is v
                grad = v
        xp.multiply(grad, self.lr, out=step)  # lr * direction (in place when the direction is step)
        param -= step


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is L2 added to the gradient (PyTorch's Adam)."""

    decoupled = False
    slots = ("m", "v")
    type_name = "adam"

    def __init__(self, parameters, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_filter=decay_all, flat=None):
        super().__init__(parameters, lr, weight_decay, decay_filter, flat)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ArgumentError(self.type_name, f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = (check_float(self.type_name, f"betas[{i}]", beta, 0.0, 1.0, open_high=True)
                                  for i, beta in enumerate(betas))
        self.eps = check_float(self.type_name, "eps", eps, 0.0, open_low=True)
        self.m, self.v = {}, {}

    def update(self, name, param, grad):
        xp = get_array_module(param)
        if self.decoupled:
            for p, _, _ in self.decayed(name, param, grad):
                p *= 1.0 - self.lr * self.weight_decay
        elif self.has_decay(name):  # L2: g = grad + wd * param where decayed, grad elsewhere
            grad = self.l2_gradient(name, param, grad, self.scratch(name, param, 2))
        if name not in self.m:
            self.m[name], self.v[name] = xp.zeros_like(param), xp.zeros_like(param)
        m, v = self.m[name], self.v[name]
        s = self.scratch(name, param)  # temporaries built in place
        m *= self.beta1
        xp.multiply(grad, 1.0 - self.beta1, out=s)
        m += s  # m = beta1 * m + (1 - beta1) * g
        v *= self.beta2
        xp.multiply(grad, 1.0 - self.beta2, out=s)
        s *= grad
        v += s  # v = beta2 * v + (1 - beta2) * g * g
        correction1 = 1.0 - self.beta1**self.steps
        correction2 = 1.0 - self.beta2**self.steps
        xp.divide(v, correction2, out=s)
        xp.sqrt(s, out=s)
        s += self.eps  # s = sqrt(v / correction2) + eps
        step = self.scratch(name, param, 1)
        xp.multiply(m, self.lr / correction1, out=step)
        step /= s
        param -= step  # p -= (lr / correction1) * m / (sqrt(v / correction2) + eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * wd before the Adam step."""

    decoupled = True
    type_name = "adamw"

    def __init__(self, parameters, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_filter=decay_all, flat=None):
        super().__init__(parameters, lr, betas, eps, weight_decay, decay_filter, flat)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class EMA:
    """An exponential moving average of a model's weights (Keras optimizers' ``use_ema`` / ``ema_momentum``;
    PyTorch's ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``).

    ``update()`` runs after every optimizer step (:meth:`Optimizer.step` calls it when ``optimizer.ema``
    is set). Its n-th call (n = 0, 1, 2, ...) sets each averaged array ``a`` from the model's array ``p``::

        n = 0:   a = p                          (the first update copies: the random start is never averaged in)
        n >= 1:  a = a + (1 - d_n) * (p - a)    (torch.lerp(a, p, 1 - d_n))
                 d_n = min(decay, (1 + n) / (10 + n))   with ``warmup``, else d_n = decay

    The warm-up is TensorFlow's ``ExponentialMovingAverage(num_updates=n)`` rule (timm's EMA warm-up plays
    the same part): d_n is 0.18 at n = 1, 0.55 at 10, 0.92 at 100, and reaches decay = 0.999 at n = 8,990,
    so the average of a short run or of its first epochs is not held back by the first steps' weights.

    **What is averaged**: every array of ``model.state()``, the parameters and BatchNorm's running
    statistics, as ``AveragedModel(use_buffers=True)`` (and timm's ModelEma) do. The running statistics
    of the raw model describe the activations of the latest raw weights, not of the average; averaged
    with the same decay they follow the averaged weights, at no cost, whereas recomputing them
    (``torch.optim.swa_utils.update_bn``) would take a pass over the training data at every validation.

    **dtype**: the average is float64 whatever the model's dtype. At decay 0.999 an update moves it by
    a thousandth of its distance to the weights, which in float32 is often below the rounding step of
    the average itself (2**-24 of its size), so a float32 average would stall and drift with rounding;
    float64 costs 8 bytes and one pass per parameter per step. :meth:`averaged` rounds it to the
    model's dtypes.

    **Determinism**: element-wise operations in a fixed order. It reads the model itself, never the
    replicas of :class:`~nnlib.parallel.DataParallel`: their parameters are views of the model's, and the
    model's running statistics are their mean after each forward, so the average depends on the worker
    count as the weights do, not on threads. :meth:`state` / :meth:`load_state` carry it through checkpoints.
    """

    type_name = "ema"

    def __init__(self, model, decay: float, warmup: bool = True):
        self.decay = check_float(self.type_name, "decay", decay, 0.0, 1.0, open_high=True)
        self.warmup = check_bool(self.type_name, "warmup", warmup)
        self.model = model
        self.updates = 0
        state = model.state()
        xp = get_array_module(*state.values())
        self.average = {}  # name -> float64 array, as model.state() names them
        self._pairs = []  # (the model's array, its average): one pair for the flat parameters, one per other array
        flat = model.flat_params
        if flat is not None:  # the parameters' average is one array too, updated in a few whole-array operations
            average = xp.zeros(flat.size, np.float64)
            self._pairs.append((flat, average))
            offset = 0
            for name, param, _ in model.parameters():
                self.average[name] = average[offset:offset + param.size].reshape(param.shape)
                offset += param.size
        for name, value in state.items():
            if name not in self.average:
                self.average[name] = xp.zeros(value.shape, np.float64)
                self._pairs.append((value, self.average[name]))
        self._scratch = [xp.empty_like(average) for _, average in self._pairs]

    def current_decay(self) -> float:
        """d_n of the next update (n = the updates done so far; 0 before the first, which copies)."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """Move the average towards the model's arrays as they are now (see the class docstring)."""
        if self.updates == 0:
            for source, average in self._pairs:
                average[...] = source
        else:
            weight = 1.0 - self.current_decay()
            xp = get_array_module(self._pairs[0][1])
            for (source, average), scratch in zip(self._pairs, self._scratch):
                xp.subtract(source, average, out=scratch)
                scratch *= weight
                average += scratch
        self.updates += 1

    def averaged(self) -> dict:
        """The averaged arrays in the model's dtypes, new arrays named as ``model.state()`` names them
        (before the first update: copies of the model's own)."""
        state = self.model.state()
        if self.updates == 0:
            return {name: value.copy() for name, value in state.items()}
        return {name: self.average[name].astype(value.dtype) for name, value in state.items()}

    @contextmanager
    def applied(self):
        """``with ema.applied():`` the model holds the averaged weights; afterwards its own again, bit for bit.

        The arrays are overwritten in place, so views of them (the flat arrays, DataParallel's replicas) see it.
        """
        own = {name: value.copy() for name, value in self.model.state().items()}
        self.model.load_state(self.averaged())
        try:
            yield self.model
        finally:
            self.model.load_state(own)

    def state(self) -> tuple[int, dict]:
        """(updates done, the float64 averages by name): what a resumed run needs."""
        return self.updates, dict(self.average)

    def load_state(self, updates: int, arrays: dict) -> None:
        """Restore what :meth:`state` returned (copied in place, onto the model's backend)."""
        if set(arrays) != set(self.average):
            raise ValueError(f"weight average arrays {sorted(arrays)} do not match the model's {sorted(self.average)}")
        for name, target in self.average.items():
            if tuple(arrays[name].shape) != tuple(target.shape):
                raise ValueError(f"weight average {name}: shape {arrays[name].shape}, expected {target.shape}")
            target[...] = get_array_module(target).asarray(arrays[name])
        self.updates = int(updates)
