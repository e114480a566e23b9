"""``nnlib export``: a :class:`~nnlib.model.Sequential` as an ONNX graph (opset 17), built with ``onnx.helper``.

The graph takes ``input``: float32 ``(N, *model.input_shape)`` (for MNIST models (N, 1, 28, 28) in
[0, 1], as :func:`nnlib.mnist.data.stream.to_batch` makes it) with a symbolic batch dimension ``N``, and returns
``logits``: float32 ``(N, K)``. Every layer type of :data:`nnlib.layers.LAYERS` maps to ONNX nodes
through one function in :data:`_EXPORTERS`, in inference form:

=========  ==================================================================================
layer      ONNX
=========  ==================================================================================
dense      Gemm(x (N, in), W (in, out)[, b (out,)]): W is stored as nnlib keeps it, no transpose
relu       Relu
sigmoid    Sigmoid
tanh       Tanh
flatten    Flatten(axis=1): (N, C, H, W) -> (N, C*H*W) in C order, as nnlib
dropout    Identity (inverted dropout is the identity at inference)
conv       Conv(W (out, C, k, k)[, b], strides, pads): cross-correlation, as nnlib
maxpool    MaxPool(kernel k, stride), no padding, floor mode
avgpool    AveragePool(kernel k, stride), no padding, floor mode
gap        GlobalAveragePool -> (N, C, 1, 1), then Flatten(axis=1) -> (N, C)
batchnorm  BatchNormalization(gamma, beta, running_mean, running_var, epsilon), inference mode,
           on (N, C, H, W) and directly on (N, F) too: ONNX defines it for (N, C) inputs
           (no spatial axes), as PyTorch exports BatchNorm1d
=========  ==================================================================================

Weights become initializers under their :meth:`~nnlib.model.Sequential.state` names (``"0.conv.W"``),
nodes are named ``"<index>.<type>"``.

A :class:`~nnlib.committee.Committee` becomes one graph that runs every member on ``input`` (its
nodes and weights named as above after the member's prefix, ``"member1/0.conv.W"``, as in the model
file), takes each member's ``Softmax`` (axis 1), weights it (a ``Mul``, left out for weight 1), adds
them up (``Sum``) and divides by the weights' total (``Div``). Its output is therefore not logits but
``probabilities``: float32 ``(N, K)``, rows summing to 1, the committee's mean probabilities. ``onnx`` is imported only when a graph is built, so this module
imports without the ``export`` extra; :class:`~nnlib.errors.MissingExtra` says how to install it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import __version__
from .backend import to_numpy
from .errors import MissingExtra
from .files import atomic_path
from .layers import Layer
from .committee import Committee
from .model import Sequential
from .modelfile import check_outputs, load_model, member_prefix

OPSET = 17  # ONNX 1.12 (2022): supported by every current runtime
INPUT_NAME, OUTPUT_NAME = "input", "logits"
COMMITTEE_OUTPUT_NAME = "probabilities"  # a committee's graph ends in its mean probabilities, not logits


def _onnx():
    """The ``onnx`` module, or :class:`MissingExtra` (exit code 2) naming the extra to install."""
    try:
        import onnx  # noqa: PLC0415 - optional dependency, imported only when exporting
    except ImportError:
        raise MissingExtra("nnlib export needs the export extra: pip install -e '.[export]' "
                           "(onnx and onnxruntime)") from None
    return onnx


class _Graph:
    """Nodes and initializers collected while the layers are exported, in order."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers = onnx, [], []

    def weight(self, name: str, array) -> str:
        """Add ``array`` (float32) as an initializer named ``name``; return the name."""
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(to_numpy(array), np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        """Add one node; its single output is named after the node. Returns that output name."""
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


# Each exporter: (graph, layer, x = the name of its input tensor, name = "<index>.<type>") -> output name.
Exporter = Callable[[_Graph, Layer, str, str], str]


def _weights(g: _Graph, layer: Layer, name: str, keys: tuple[str, ...]) -> list[str]:
    """Initializers for ``layer``'s params / buffers ``keys`` that it has (a layer without bias has no "b")."""
    arrays = {**layer.params, **layer.buffers}
    return [g.weight(f"{name}.{key}", arrays[key]) for key in keys if key in arrays]


def _elementwise(op: str) -> Exporter:
    """An activation: any shape -> the same shape."""
    return lambda g, layer, x, name: g.node(op, [x], name)


def _dense(g, layer, x, name):
    """(N, in) @ W (in, out) [+ b (out,)] -> (N, out)."""
    return g.node("Gemm", [x, *_weights(g, layer, name, ("W", "b"))], name)


def _flatten(g, layer, x, name):
    """(N, ...) -> (N, prod(...)), C order."""
    return g.node("Flatten", [x], name, axis=1)


def _conv(g, layer, x, name):
    """(N, C, H, W) -> (N, out, Ho, Wo); W: (out, C, k, k), b: (out,); same padding on all four sides."""
    k, s, p = layer.k, layer.stride, layer.pad
    return g.node("Conv", [x, *_weights(g, layer, name, ("W", "b"))], name,
                  kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])


def _pool(op: str) -> Exporter:
    """k x k windows with a stride: (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H - k) // stride + 1."""
    return lambda g, layer, x, name: g.node(op, [x], name, kernel_shape=[layer.k, layer.k],
                                            strides=[layer.stride, layer.stride])


def _gap(g, layer, x, name):
    """(N, C, H, W) -> (N, C, 1, 1) -> (N, C)."""
    pooled = g.node("GlobalAveragePool", [x], f"{name}.pool")
    return g.node("Flatten", [pooled], name, axis=1)


def _batchnorm(g, layer, x, name):
    """(N, F) or (N, C, H, W), normalised by the running statistics: y = (x - mean) / sqrt(var + eps) * gamma + beta."""
    inputs = _weights(g, layer, name, ("gamma", "beta", "running_mean", "running_var"))
    return g.node("BatchNormalization", [x, *inputs], name, epsilon=float(layer.eps))


_EXPORTERS: dict[str, Exporter] = {
    "dense": _dense,
    "relu": _elementwise("Relu"),
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "flatten": _flatten,
    "dropout": _elementwise("Identity"),
    "conv": _conv,
    "maxpool": _pool("MaxPool"),
    "avgpool": _pool("AveragePool"),
    "gap": _gap,
    "batchnorm": _batchnorm,
}


def _network(g: _Graph, model: Sequential, x: str, prefix: str = "") -> str:
    """Add the nodes of every layer of ``model`` on tensor ``x``, names after ``prefix``; return the output's name."""
    for index, layer in enumerate(model.layers):
        exporter = _EXPORTERS.get(layer.type_name)
        if exporter is None:
            raise ValueError(f"{prefix}layer {index}: type {layer.type_name!r} has no ONNX exporter (nnlib/export.py)")
        x = exporter(g, layer, x, f"{prefix}{index}.{layer.type_name}")
    return x


def _committee(g: _Graph, committee: Committee, x: str) -> str:
    """Add every member on ``x``, their softmax probabilities and their weighted mean; return its name."""
    shares = []
    for index, (member, weight) in enumerate(zip(committee.members, committee.weights)):
        prefix = member_prefix(index)
        probabilities = g.node("Softmax", [_network(g, member, x, prefix)], f"{prefix}softmax", axis=1)
        if weight != 1:
            probabilities = g.node("Mul", [probabilities, g.weight(f"{prefix}weight", np.array(weight))], f"{prefix}weighted")
        shares.append(probabilities)
    total = g.node("Sum", shares, "sum")
    return g.node("Div", [total, g.weight("total_weight", np.array(committee.weights.sum()))], "mean")


def to_onnx(model: Sequential | Committee, opset: int = OPSET):
    """The model as a checked ``onnx.ModelProto``: ``input`` (N, *input_shape) -> ``logits`` (N, *output_shape);
    a committee's -> ``probabilities`` (N, K).

    Raises :class:`MissingExtra` without ``onnx``, ValueError for a layer type that has no exporter.
    """
    onnx = _onnx()
    helper = onnx.helper
    g = _Graph(onnx)
    if isinstance(model, Committee):
        _committee(g, model, INPUT_NAME)
        output = COMMITTEE_OUTPUT_NAME
    else:
        _network(g, model, INPUT_NAME)
        output = OUTPUT_NAME
    g.nodes[-1].output[0] = output  # the last node's output is the graph's
    float32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "nnlib",
        [helper.make_tensor_value_info(INPUT_NAME, float32, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(output, float32, ["N", *model.output_shape])],
        initializer=g.initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, producer_name="nnlib", producer_version=__version__, opset_imports=opset_ids,
                              ir_version=helper.find_min_ir_version_for(opset_ids))  # readable by older runtimes
    onnx.checker.check_model(proto, full_check=True)  # full_check: shape inference must agree too
    return proto


def export_onnx(model: Sequential | Committee, out_path, opset: int = OPSET) -> None:
    """Write :func:`to_onnx` of ``model`` to ``out_path`` atomically (nothing is left behind on failure),
    or to ``out_path`` itself when it is a binary stream."""
    proto = to_onnx(model, opset)
    if hasattr(out_path, "write"):  # a binary stream (nnlib export MODEL -: stdout)
        out_path.write(proto.SerializeToString())
        return
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(proto.SerializeToString())


def export_model_file(model_path, out_path) -> None:
    """``nnlib export MODEL OUT.onnx``: load a model file (one network or a committee) and write it as ONNX.

    Raises :class:`MissingExtra` (exit code 2) without ``onnx``, before the model is read, and
    :class:`~nnlib.errors.ModelFileError` (exit code 1) for a missing or corrupt model file.
    """
    _onnx()
    model, _ = load_model(model_path)
    check_outputs(model, model_path)
    export_onnx(model, out_path)
