"""Optimizers: SGD (momentum, Nesterov, L2 weight decay), Adam, AdamW.

Each takes the model's ``parameters()`` triples ``(name, param, grad)`` once, keeps its per-parameter
state in dicts keyed by name, and updates the params in place on ``step()``. The updates follow
PyTorch's ``torch.optim`` exactly, so the two can be compared step by step.

``decay_filter`` (optional) decides which parameters get weight decay; :func:`decay_all` and
:func:`decay_weights_only` (skips 1-D arrays: biases and BatchNorm's gamma/beta) are provided.
"""
from __future__ import annotations

from .backend import get_array_module


def decay_all(name: str, param) -> bool:
    return True


def decay_weights_only(name: str, param) -> bool:
    """Weight decay on matrices and kernels only, not on biases or normalisation parameters."""
    return param.ndim > 1


class Optimizer:
    """Base class: walks ``(name, param, grad)`` triples; subclasses implement ``update``.

    ``slots`` names the per-parameter state dicts (momentum buffers, Adam moments) that
    :meth:`state` / :meth:`load_state` save and restore for checkpoints.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, parameters, lr: float, weight_decay: float = 0.0, decay_filter=decay_all):
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = list(parameters)
        self.lr = lr
        self.weight_decay = weight_decay
        self.decays = {name: weight_decay > 0 and decay_filter(name, p) for name, p, _ in self.params}
        self.steps = 0
        self._scratch = {}

    def step(self) -> None:
        self.steps += 1
        for name, param, grad in self.params:
            self.update(name, param, grad)

    def update(self, name, param, grad) -> None:
        raise NotImplementedError

    def scratch(self, name: str, param, slot: int = 0):
        """A work array shaped like ``param``, kept between steps (not saved: it holds no state)."""
        key = (name, slot)
        if key not in self._scratch:
            self._scratch[key] = get_array_module(param).empty_like(param)
        return self._scratch[key]

    def state(self) -> tuple[int, dict]:
        """(step count, arrays by ``"<slot>/<param name>"``): everything a resumed run needs."""
        arrays = {f"{slot}/{name}": value for slot in self.slots for name, value in getattr(self, slot).items()}
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


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + (g + wd * p)  (PyTorch's form, dampening 0).

    With ``nesterov=True`` the step uses g + momentum * v instead of v.
    """

    slots = ("velocity",)

    def __init__(self, parameters, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, decay_filter=decay_all):
        super().__init__(parameters, lr, weight_decay, decay_filter)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = {}

    def update(self, name, param, grad):
        xp = get_array_module(param)
        step = self.scratch(name, param)  # the step lr * g, built in place (one copy only for Nesterov with decay)
        if self.decays[name]:  # g = grad + wd * param
            xp.multiply(param, self.weight_decay, out=step)
            step += grad
            grad = step
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

    def __init__(self, parameters, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_filter=decay_all):
        super().__init__(parameters, lr, weight_decay, decay_filter)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m, self.v = {}, {}

    def update(self, name, param, grad):
        xp = get_array_module(param)
        if self.decays[name]:
            if self.decoupled:
                param *= 1.0 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        if name not in self.m:
            self.m[name], self.v[name] = xp.zeros_like(param), xp.zeros_like(param)
        m, v = self.m[name], self.v[name]
        s = self.scratch(name, param)  # temporaries built in place (L2 decay, decoupled=False, adds two)
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

    def __init__(self, parameters, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_filter=decay_all):
        super().__init__(parameters, lr, betas, eps, weight_decay, decay_filter)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
