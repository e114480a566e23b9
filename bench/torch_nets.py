"""PyTorch twins of nnlib networks, built from the same layer specs (``train.model`` of params.yaml).

    from torch_nets import torch_network, copy_weights, torch_optimizer, torch_loss
    net = torch_network(specs, (1, 28, 28))          # nn.Sequential, module i <-> nnlib layer i
    copy_weights(nnlib_model, net)                   # same starting point as the nnlib model
    opt = torch_optimizer(net, cfg["optimizer"])     # our train.optimizer section -> torch.optim
    loss_fn = torch_loss(cfg["loss"])                # our train.loss section -> (outputs, labels) -> loss

Every nnlib layer becomes exactly one module, in the same order, so index i of the nn.Sequential is
layer i of the nnlib model (``gap`` is a one-line module for that reason). Defaults (conv stride,
pool stride = k, batch-norm momentum and eps, ...) are read from the nnlib layer's own ``config()``,
so a spec means the same network on both sides. Only torch (and nnlib for the defaults and shapes)
is imported; used by bench/compare.py and bench/torch_twin.py.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnlib.layers import from_spec


class GlobalAvgPool(nn.Module):
    """nnlib's ``gap``: (N, C, H, W) -> (N, C), the mean over all positions."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def _module(cfg: dict, shape: tuple) -> nn.Module:
    """The torch module of one nnlib layer config (every option filled in) for inputs of ``shape``."""
    kind = cfg["type"]
    if kind == "dense":
        return nn.Linear(shape[0], cfg["out"], bias=cfg["bias"])
    if kind == "conv":
        return nn.Conv2d(shape[0], cfg["out"], cfg["k"], stride=cfg["stride"], padding=cfg["pad"], bias=cfg["bias"])
    if kind == "batchnorm":
        norm = nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d
        return norm(shape[0], eps=cfg["eps"], momentum=cfg["momentum"])
    if kind == "maxpool":
        return nn.MaxPool2d(cfg["k"], stride=cfg["stride"])
    if kind == "avgpool":
        return nn.AvgPool2d(cfg["k"], stride=cfg["stride"])
    if kind == "dropout":
        return nn.Dropout(cfg["p"])
    simple = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "flatten": nn.Flatten, "gap": GlobalAvgPool}
    if kind in simple:
        return simple[kind]()
    raise ValueError(f"torch_nets: no PyTorch twin for layer type {kind!r}")


def torch_network(specs: list[dict], input_shape: tuple) -> nn.Sequential:
    """nn.Sequential equivalent to ``Sequential.from_specs(specs, input_shape, ...)``, float32, train mode.

    Shapes are inferred with nnlib's own ``build``; the weights are torch's defaults (use
    :func:`copy_weights` for nnlib's).
    """
    rng = np.random.default_rng(0)
    shape, modules = tuple(input_shape), []
    for spec in specs:
        layer = from_spec(spec)
        modules.append(_module(layer.config(), shape))
        shape = layer.build(shape, rng)
    return nn.Sequential(*modules).train()


def copy_weights(nnlib_model, torch_model: nn.Sequential) -> None:
    """Copy every parameter and buffer of the nnlib model into its twin (in place, torch's dtype).

    dense W (in, out) -> Linear.weight (out, in); conv W (out, C, k, k) as it is; batch-norm
    gamma/beta -> weight/bias, running_mean/var -> the buffers of the same names.
    """
    from nnlib.backend import to_numpy  # noqa: PLC0415

    names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
    with torch.no_grad():
        for layer, module in zip(nnlib_model.layers, torch_model, strict=True):
            for key, value in {**layer.params, **layer.buffers}.items():
                value = to_numpy(value)
                if layer.type_name == "dense" and key == "W":
                    value = value.T
                target = getattr(module, names.get(key, key))
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype))


def torch_optimizer(torch_model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """torch.optim for our ``train.optimizer`` section (sgd / adam / adamw, with every key filled in).

    ``decay_bias_and_norm: false`` puts 1-D parameters (biases, batch-norm) in a group without
    weight decay, as nnlib's ``decay_weights_only`` does.
    """
    params = list(torch_model.parameters())
    wd = cfg["weight_decay"]
    if cfg["decay_bias_and_norm"] or wd == 0:
        groups = [{"params": params, "weight_decay": wd}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    name = cfg["name"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
    raise ValueError(f"torch_nets: no torch.optim twin for optimizer {name!r}")


def torch_loss(cfg: dict):
    """(outputs (N, K), labels (N,) int64) -> scalar loss, as nnlib's ``make_loss(cfg)`` computes it.

    cross_entropy: softmax cross-entropy (label smoothing as configured); mse with ``half``:
    1/2 * ||outputs - onehot||^2 per example, averaged over the batch (Nielsen), else the mean over entries.
    """
    if cfg["name"] == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    def mse(outputs, labels):
        diff = outputs - nn.functional.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
        return 0.5 * (diff * diff).sum() / len(labels) if cfg["half"] else (diff * diff).mean()

    return mse
