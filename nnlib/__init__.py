"""nnlib: a small neural-network library written from scratch in NumPy (CuPy optional).

Modules, one idea each: backend, functional, layers, losses, model, optim, schedules, init,
data, augment, io, params, metrics. See README.md for the architecture.
"""
__version__ = "0.1.0"
