"""What a network of layer specs will cost, worked out from the specs alone: nothing is allocated.

:func:`arrays` lists every parameter and buffer a :class:`~nnlib.model.Sequential` built from the
specs would hold (names as :meth:`~nnlib.model.Sequential.state` gives them, and shapes);
:func:`estimate` adds the activations of one image. A model file's archive is checked against the
first before any layer is built (:mod:`nnlib.modelfile`), and the train stage and ``nnlib params``
refuse a network that cannot fit in memory (:func:`check_fits`) before anything starts.

Specs that do not build give ``None``: the real builder then reports what is wrong with them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import ParamsError

BYTES = 4  # float32
# Per parameter while training: the weight, its gradient and up to two optimizer moments.
TRAIN_COPIES = 4
# Per activation value while training: the output, what backward keeps, and its gradient.
ACTIVATION_COPIES = 3


@dataclass
class Footprint:
    """values: parameters and buffers; per_image: activation values of one image, all layers."""

    arrays: dict
    values: int
    per_image: int

    def training_bytes(self, batch_size: int) -> int:
        return BYTES * (TRAIN_COPIES * self.values + ACTIVATION_COPIES * batch_size * self.per_image)


def _conv_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _walk(layer, shape: tuple) -> tuple[dict, tuple] | None:
    """(arrays of the layer by key, output shape), or None when the shapes do not fit."""
    kind = layer.type_name
    if kind == "dense":
        if len(shape) != 1:
            return None
        arrays = {"W": (shape[0], layer.out)}
        if layer.bias:
            arrays["b"] = (layer.out,)
        return arrays, (layer.out,)
    if kind == "flatten":
        return {}, (math.prod(shape),)
    if kind == "conv":
        if len(shape) != 3:
            return None
        c, h, w = shape
        ho, wo = (_conv_size(s, layer.k, layer.stride, layer.pad) for s in (h, w))
        if ho < 1 or wo < 1:
            return None
        arrays = {"W": (layer.out, c, layer.k, layer.k)}
        if layer.bias:
            arrays["b"] = (layer.out,)
        return arrays, (layer.out, ho, wo)
    if kind in ("maxpool", "avgpool"):
        if len(shape) != 3:
            return None
        c, h, w = shape
        ho, wo = (_conv_size(s, layer.k, layer.stride, 0) for s in (h, w))
        return (None if ho < 1 or wo < 1 else ({}, (c, ho, wo)))
    if kind == "gap":
        return (({}, (shape[0],)) if len(shape) == 3 else None)
    if kind == "batchnorm":
        if len(shape) not in (1, 3):
            return None
        f = (shape[0],)
        return {"gamma": f, "beta": f, "running_mean": f, "running_var": f}, shape
    if kind in ("relu", "sigmoid", "tanh", "dropout"):
        return {}, shape
    return None  # a layer type this module does not know: no estimate


def estimate(specs, input_shape) -> Footprint | None:
    """The arrays and activation size of the network ``specs`` on inputs ``input_shape``, or None."""
    from .layers import from_spec  # noqa: PLC0415 - layers import this package's errors only

    try:
        shape = tuple(int(d) for d in input_shape)
        arrays, values, per_image = {}, 0, math.prod(shape)
        for index, spec in enumerate(specs):
            layer = from_spec(spec)  # checks the options; allocates nothing
            walked = _walk(layer, shape)
            if walked is None:
                return None
            own, shape = walked
            for key, array_shape in own.items():
                arrays[f"{index}.{layer.type_name}.{key}"] = array_shape
                values += math.prod(array_shape)
            per_image += math.prod(shape)
        return Footprint(arrays, values, per_image)
    except Exception:  # noqa: BLE001 - a spec that does not build has no estimate
        return None


def memory_bytes() -> int:
    """This machine's physical memory in bytes (a large number when it cannot be found)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def size_text(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def check_fits(specs, input_shape, batch_size: int, where: str = "params.yaml: train.model") -> None:
    """Raise ParamsError (one line, with the figures) when training ``specs`` cannot fit in memory."""
    footprint = estimate(specs, input_shape)
    if footprint is None:
        return
    need, have = footprint.training_bytes(batch_size), memory_bytes()
    if need > have:
        raise ParamsError(f"{where}: this network needs about {size_text(need)} to train ({footprint.values:,} "
                          f"parameters, {footprint.per_image:,} activations per image x batch {batch_size}), more than "
                          f"this machine's {size_text(have)} of memory: make the layers smaller")
