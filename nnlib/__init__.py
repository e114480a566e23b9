"""nnlib: a small neural-network library written from scratch in NumPy (CuPy optional).

The library's face: the names a user builds and trains a network with, importable from ``nnlib``
itself, as ``torch.nn`` or tinygrad's ``nn`` offer theirs::

    import numpy as np
    from nnlib import Dense, Flatten, ReLU, SGD, Sequential, SoftmaxCrossEntropy

    x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)  # images (N, C, H, W) float32
    y = np.random.default_rng(2).integers(0, 10, 64)  # labels (N,) int
    model = Sequential([Flatten(), Dense(32), ReLU(), Dense(10)], (1, 28, 28), np.random.default_rng(0))
    loss_fn, optimizer = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.1)
    model.train()
    for step in range(20):
        loss, dlogits = loss_fn(model.forward(x), y)  # logits and dlogits (N, 10) float32
        model.backward(dlogits)
        optimizer.step()

The names resolve lazily (PEP 562): ``import nnlib`` imports no submodule, and ``nnlib.Dense``
imports ``nnlib.layers`` (and what it needs) on first use. That keeps each DVC stage's import
closure, which ``dvc.yaml`` lists as the stage's deps (``tests/test_stage_deps.py``), to what the
stage really uses: the fetch stage never depends on the layers.

Modules, one idea each: backend (NumPy or CuPy), functional (pure kernels), winograd, init, layers,
model (Sequential), committee (networks whose probabilities are averaged), losses, optim, schedules,
metrics, training (fit), evaluation, checkpoints, modelfile (save and load), export (ONNX), files
(atomic outputs), errors (exit codes). The MNIST
application lives in ``nnlib.mnist``, which the library never imports.
"""
import importlib

__version__ = "0.1.0"

_FACE = {  # module -> the names it lends to the face
    "model": ["Sequential"],
    "layers": ["Layer", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool", "BatchNorm", "Dropout",
               "Flatten", "ReLU", "Sigmoid", "Tanh"],
    "losses": ["Loss", "SoftmaxCrossEntropy", "MSE"],
    "optim": ["Optimizer", "SGD", "Adam", "AdamW"],
    "schedules": ["Constant", "Step", "Exponential", "Cosine", "OneCycle", "Warmup"],
    "training": ["fit", "History"],
    "evaluation": ["evaluate"],
    "modelfile": ["save_model", "load_model", "save_committee"],
    "committee": ["Committee"],
}
_MODULE_OF = {name: module for module, names in _FACE.items() for name in names}

__all__ = [name for names in _FACE.values() for name in names]


def __getattr__(name: str):
    """Import the module behind a face name on first use (PEP 562), and keep the name here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
