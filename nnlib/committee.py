"""Committee: networks that answer together, by averaging their softmax probabilities.

``Committee(members)`` takes trained :class:`~nnlib.model.Sequential` networks with the same input
shape and the same ``(K,)`` outputs (members trained differently: other seeds, augmentations,
architectures). Its answer for inputs x: (N, *input_shape) is the mean of the members' softmax
probabilities, in float64 and in member order::

    p(x) = (w_0 * softmax(f_0(x)) + w_1 * softmax(f_1(x)) + ...) / (w_0 + w_1 + ...)     (N, K)

with every weight 1 by default (the plain mean). It offers what the callers of a Sequential use for
inference (:meth:`predict_logits`, :meth:`predict`, :meth:`forward`, :meth:`evaluating`, :meth:`eval`,
``input_shape``, ``output_shape``, :meth:`num_parameters`), so evaluation, ``nnlib predict``, ``serve``
and the model file take either. Its "logits" are ``log(p)``: since ``softmax(log p) = p / sum(p) = p``,
whatever turns logits into probabilities (softmax, cross-entropy, argmax) sees the committee's
probabilities. A committee is never trained: it always runs its members in eval mode.
"""
from __future__ import annotations

import math
import numbers
from contextlib import ExitStack, contextmanager

import numpy as np

from .backend import get_array_module
from .checks import ArgumentError, refuse
from .functional import softmax
from .model import EVAL_BATCH_SIZE, Sequential

MIN_MEMBERS = 2  # a committee of one is its member: save that as a plain model file instead
# log(p) of a probability below this floor is taken at the floor: the smallest normal float32, so the
# float32 "logits" are always finite (log(0) would be -inf) and softmax gives back p to about 2e-8.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


def first_network(model) -> Sequential:
    """The network whose insides a report shows (first-layer weights, feature maps, layer table):
    ``model`` itself, or a committee's first member."""
    return model.members[0] if isinstance(model, Committee) else model


class Committee:
    """Members whose softmax probabilities are averaged. ``x: (N, *input_shape) -> (N, K)``.

    members: at least two Sequential networks, all with ``input_shape`` and ``(K,)`` outputs.
    weights: None (every member counts once) or one positive finite number per member; the answer is
    the weighted mean of the members' probabilities. ``weights`` is kept as float64 (M,).
    """

    def __init__(self, members, weights=None):
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, Sequential) for m in members):
            refuse("committee", "members", "a list of Sequential networks", members)
        if len(members) < MIN_MEMBERS:
            raise ArgumentError("committee", f"members must hold at least {MIN_MEMBERS} networks, got {len(members)} "
                                             "(a single network is saved as a plain model file)")
        first = members[0]
        for index, member in enumerate(members):
            if member.input_shape != first.input_shape:
                raise ArgumentError("committee", f"members[{index}] takes inputs {member.input_shape}, "
                                                 f"members[0] takes {first.input_shape}: every member must take the same inputs")
            if len(member.output_shape) != 1:
                raise ArgumentError("committee", f"members[{index}] gives outputs {member.output_shape}: every member "
                                                 "must end in (K,) class scores (flatten, then dense)")
            if member.output_shape != first.output_shape:
                raise ArgumentError("committee", f"members[{index}] gives outputs {member.output_shape}, "
                                                 f"members[0] gives {first.output_shape}: every member must score the same classes")
        self.members = list(members)
        self.weights = self._check_weights(weights, len(members))
        self.input_shape = first.input_shape
        self.output_shape = first.output_shape

    @staticmethod
    def _check_weights(weights, count: int) -> np.ndarray:
        """float64 (count,): ones for None, else the given positive finite numbers."""
        if weights is None:
            return np.ones(count)
        expect = f"None or a list of {count} numbers > 0, one per member"
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) != count:
            refuse("committee", "weights", expect, weights)
        for value in weights:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                refuse("committee", "weights", expect, list(weights))
        return np.array([float(w) for w in weights])

    def __len__(self) -> int:
        return len(self.members)

    def eval(self) -> "Committee":
        """Put every member in eval mode (a committee only infers)."""
        for member in self.members:
            member.eval()
        return self

    @contextmanager
    def evaluating(self):
        """``with committee.evaluating():`` every member in eval mode inside, each one's mode restored afterwards."""
        with ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.evaluating())
            yield self

    def combine(self, member_logits) -> "np.ndarray":
        """The members' outputs, M arrays (N, K) in member order -> the committee's probabilities, float64 (N, K).

        Each member's softmax is taken in float64; then their weighted mean, summed in member order.
        """
        total = None
        for weight, logits in zip(self.weights, member_logits, strict=True):
            xp = get_array_module(logits)
            share = softmax(logits.astype(xp.float64), axis=1) * float(weight)
            total = share if total is None else total + share
        return total / float(self.weights.sum())

    def probabilities(self, x, batch_size: int = EVAL_BATCH_SIZE):
        """x: (N, *input_shape) float32 -> float64 (N, K), rows summing to 1; members in eval mode."""
        return self.combine([member.predict_logits(x, batch_size) for member in self.members])

    def log_probabilities(self, probabilities):
        """float (N, K) probabilities -> float32 (N, K) ``log(max(p, PROBABILITY_FLOOR))``: never -inf, and
        ``softmax`` of it gives ``p`` back (to about 2e-8 absolute: float32 rounding of the logs)."""
        xp = get_array_module(probabilities)
        return xp.log(xp.maximum(probabilities, PROBABILITY_FLOOR)).astype(xp.float32)

    def predict_logits(self, x, batch_size: int = EVAL_BATCH_SIZE):
        """x: (N, *input_shape) float32 -> float32 (N, K): ``log`` of :meth:`probabilities` (see the module)."""
        return self.log_probabilities(self.probabilities(x, batch_size))

    def predict(self, x, batch_size: int = EVAL_BATCH_SIZE):
        """Class predictions (N,): the argmax of the committee's probabilities."""
        return self.probabilities(x, batch_size).argmax(axis=1)

    def forward(self, x):
        """x: (N, *input_shape) -> float32 (N, K) log-probabilities, in one pass, members always in eval mode."""
        return self.predict_logits(x, max(len(x), 1))

    __call__ = forward

    def forward_with_input_of(self, index: int, x):
        """(the committee's :meth:`forward`, the input of the first member's layer ``index``): what
        :func:`nnlib.evaluation.run` keeps as features, from the network :func:`first_network` names."""
        with self.evaluating():
            first, hidden = self.members[0].forward_with_input_of(index, x)
            rest = [member.forward(x) for member in self.members[1:]]
        return self.log_probabilities(self.combine([first, *rest])), hidden

    def num_parameters(self) -> int:
        """Every member's parameters, all together."""
        return sum(member.num_parameters() for member in self.members)
