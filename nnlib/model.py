"""Sequential: a list of layers with named parameters and a train/eval mode.

The mode rule: :meth:`Sequential.forward` (and ``model(x)``) runs in the model's mode, set by
:meth:`~Sequential.train` / :meth:`~Sequential.eval` (train: batch statistics, dropout; eval: running
statistics, no dropout). What only infers (:meth:`~Sequential.predict`, :meth:`~Sequential.predict_logits`,
:func:`nnlib.evaluation.run`) runs in eval mode inside :meth:`~Sequential.evaluating` and leaves the
model in the mode it found it in.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .backend import get_array_module
from .layers import BatchNorm, BatchNormMaxPool, Layer, LayerSpecError, MaxPool2D, ReLU, ShapeError, from_spec

# Images per forward pass when nothing is trained (validation, evaluation, Sequential.predict). Small batches
# keep every activation and im2col buffer in the allocator's reused memory: the default cnn validates
# 5,000 images faster at 128 than at 1,000 (bench/README.md gives the command and its figures).
EVAL_BATCH_SIZE = 128


class Sequential:
    """Layers applied in order. ``x: (N, *input_shape) -> logits: (N, K)``.

    Parameters are named ``"<index>.<type>.<key>"``, e.g. ``"0.conv.W"``; optimizers see them through
    :meth:`parameters`, and through ``flat_params`` / ``flat_grads``, the two 1-D arrays of which every
    parameter and gradient is a view (:func:`pack_parameters`).
    """

    def __init__(self, layers: list[Layer], input_shape: tuple, rng: np.random.Generator):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.training = False
        shape = self.input_shape
        self.layer_shapes = []  # each layer's output shape, without the batch axis
        for index, layer in enumerate(layers):
            try:
                shape = layer.build(shape, rng)
            except ShapeError as err:
                raise ShapeError(f"layer {index} ({layer.type_name}): {err}") from None
            self.layer_shapes.append(tuple(shape))
        self.output_shape = shape
        # No gradient is needed below the first layer with parameters (e.g. the dense layer after
        # flatten in an MLP): it skips its input gradient, and backward stops there.
        first = next((layer for layer in layers if layer.params), layers[0] if layers else None)
        if first is not None:
            first.skip_input_grad = True
        self.run_order = run_order(layers)
        self.layers_in_run_order = run_units([layers[i] for i in self.run_order])  # backward runs it reversed
        self.flat_params, self.flat_grads = pack_parameters(layers)

    @classmethod
    def from_specs(cls, specs: list[dict], input_shape: tuple, rng: np.random.Generator,
                   num_classes: int | None = None) -> "Sequential":
        """Build from a list of layer spec dicts, inferring every shape.

        Every error is one line that names the layer's index: :class:`LayerSpecError` for a bad
        option (``layer 4 (conv): stride must be an integer >= 1, got 0``), ValueError for an unknown
        type or option, :class:`ShapeError` for a shape that does not fit. With ``num_classes``, a
        network whose output is not ``(num_classes,)`` logits is refused with a ShapeError too.
        """
        layers = []
        for index, spec in enumerate(specs):
            try:
                layers.append(from_spec(spec))
            except LayerSpecError as err:
                raise err.at(index) from None
            except (ValueError, TypeError) as err:
                raise ValueError(f"layer {index}: {err}") from None
        model = cls(layers, input_shape, rng)
        if num_classes is not None:
            model.require_output(num_classes)
        return model

    def require_output(self, num_classes: int) -> None:
        """Raise ShapeError unless the network ends in ``num_classes`` logits per example."""
        if self.output_shape == (num_classes,):
            return
        last = f"layer {len(self.layers) - 1} ({self.layers[-1].type_name})" if self.layers else "the empty network"
        flatten = "" if len(self.output_shape) == 1 else "{type: flatten} and "
        raise ShapeError(f"the last layer must produce {num_classes} logits, got shape {self.output_shape} "
                         f"from {last}: end the network with {flatten}{{type: dense, out: {num_classes}}}")

    def specs(self) -> list[dict]:
        return [layer.config() for layer in self.layers]

    def train(self) -> "Sequential":
        self.training = True
        return self

    def eval(self) -> "Sequential":
        self.training = False
        return self

    @contextmanager
    def evaluating(self):
        """``with model.evaluating():`` eval mode inside, the previous mode restored afterwards."""
        was_training, self.training = self.training, False
        try:
            yield self
        finally:
            self.training = was_training

    def _run(self, units, x):
        """The one forward loop: x through ``units`` (a slice of the run order) in the model's mode."""
        for unit in units:
            x = unit.forward(x, train=self.training)
        return x

    def forward(self, x):
        """x: (N, *input_shape) -> (N, *output_shape), in the model's mode."""
        return self._run(self.layers_in_run_order, x)

    __call__ = forward

    def forward_with_input_of(self, index: int, x):
        """(outputs, the input of layer ``index``) of one :meth:`forward` in the model's mode.

        x: (N, *input_shape) -> ((N, *output_shape), (N, *shape reaching layer ``index``)). Layer ``index``
        must begin a unit of the run order (any layer but the pool of a fused or reordered pair).
        """
        split = self._unit_starting_at(index)
        hidden = self._run(self.layers_in_run_order[:split], x)
        return self._run(self.layers_in_run_order[split:], hidden), hidden

    def _unit_starting_at(self, index: int) -> int:
        """The position in ``layers_in_run_order`` before which exactly the layers 0..index-1 have run."""
        done = 0
        for position, unit in enumerate([*self.layers_in_run_order, None]):
            if sorted(self.run_order[:done]) == list(range(index)):
                return position
            done += len(getattr(unit, "parts", (unit,)))
        raise ValueError(f"layer {index} runs inside a pair of the run order: its input is never formed")

    def backward(self, dy):
        """Back-propagate d(loss)/d(logits); fills every layer's grads.

        Stops at the first layer with parameters, whose input gradient nothing needs (returns None).
        """
        for layer in reversed(self.layers_in_run_order):
            dy = layer.backward(dy)
            if dy is None:
                break
        return dy

    def parameters(self):
        """Yield ``(name, param, grad)`` for every learnable array, in layer order."""
        for index, layer in enumerate(self.layers):
            for key, value in layer.params.items():
                yield f"{index}.{layer.type_name}.{key}", value, layer.grads[key]

    def state(self) -> dict:
        """Every array that defines the model (parameters and buffers), by name."""
        out = {}
        for index, layer in enumerate(self.layers):
            for key, value in {**layer.params, **layer.buffers}.items():
                out[f"{index}.{layer.type_name}.{key}"] = value
        return out

    def load_state(self, arrays: dict) -> None:
        """Copy arrays (from :meth:`state`) into the model; names and shapes must match exactly."""
        own = self.state()
        missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
        if missing or extra:
            raise ValueError(f"model arrays do not match the architecture: missing {missing}, unexpected {extra}")
        for name, target in own.items():
            if tuple(arrays[name].shape) != tuple(target.shape):
                raise ValueError(f"array {name}: shape {arrays[name].shape}, expected {target.shape}")
            target[...] = get_array_module(target).asarray(arrays[name])  # host -> device when on CuPy

    def num_parameters(self) -> int:
        return int(sum(p.size for _, p, _ in self.parameters()))

    def predict(self, x, batch_size: int = EVAL_BATCH_SIZE):
        """Class predictions (N,) in eval mode, batch by batch."""
        return self.predict_logits(x, batch_size).argmax(axis=1)

    def predict_logits(self, x, batch_size: int = EVAL_BATCH_SIZE):
        """Logits (N, K) in eval mode, batch by batch; restores the previous mode."""
        with self.evaluating():
            xp = get_array_module(x)
            return xp.concatenate([self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def pack_parameters(layers: list[Layer]):
    """Move every parameter into one 1-D array and every gradient into another; the layers keep views.

    Returns ``(params, grads)``, the parameters in :meth:`Sequential.parameters` order, so that an
    optimizer can update all of them with a few whole-array operations (``flat`` in
    :class:`nnlib.optim.Optimizer`); ``(None, None)`` for a network without parameters or with mixed
    dtypes. Layers write their gradients in place (``grads[key][...] = ...``), which keeps the views valid.
    """
    entries = [(layer, key) for layer in layers for key in layer.params]
    if not entries or len({layer.params[key].dtype for layer, key in entries}) > 1:
        return None, None
    first = entries[0][0].params[entries[0][1]]
    xp = get_array_module(first)
    total = sum(layer.params[key].size for layer, key in entries)
    params, grads = xp.empty(total, dtype=first.dtype), xp.zeros(total, dtype=first.dtype)
    offset = 0
    for layer, key in entries:
        value = layer.params[key]
        span = slice(offset, offset + value.size)
        params[span] = value.reshape(-1)
        layer.params[key] = params[span].reshape(value.shape)
        layer.grads[key] = grads[span].reshape(value.shape)
        offset += value.size
    return params, grads


def run_order(layers: list[Layer]) -> list[int]:
    """Indices of ``layers`` in the order to run them: as listed, except that ReLU -> MaxPool2D with
    non-overlapping windows (stride >= k) runs as MaxPool2D -> ReLU.

    Max-pooling and ReLU commute exactly: max(relu(a), relu(b)) = relu(max(a, b)), and the gradients
    agree too (a window whose max is <= 0 gets no gradient either way; otherwise the same first
    maximum gets it). Pooling first lets ReLU touch k*k times fewer values, forward and backward.
    Outputs, gradients and saved models are bit-identical to running the list as written. (With
    overlapping windows the gradients would still be equal in value, but a few zeros could change
    sign, so those keep the listed order.)
    """
    order = list(range(len(layers)))
    for i in range(len(layers) - 1):
        if type(layers[order[i]]) is ReLU and _non_overlapping_max_pool(layers[order[i + 1]]):
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


def run_units(layers: list[Layer]) -> list[Layer]:
    """``layers`` (in run order) with each BatchNorm directly followed by a non-overlapping MaxPool2D
    replaced by one :class:`~nnlib.layers.BatchNormMaxPool` unit, which normalises only the pooled values."""
    units = []
    for layer in layers:
        previous = units[-1] if units else None
        if _non_overlapping_max_pool(layer) and type(previous) is BatchNorm:
            units[-1] = BatchNormMaxPool(previous, layer)
        else:
            units.append(layer)
    return units


def _non_overlapping_max_pool(layer: Layer) -> bool:
    """A MaxPool2D whose windows do not overlap (stride >= k): each input element is in one window at most."""
    return type(layer) is MaxPool2D and layer.stride >= layer.k
