"""Objects from a params section: the one rule by which losses, optimizers and schedules are built.

A section is a dict such as ``{"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "momentum": 0.0}``:
its ``name`` picks a class of a registry (``losses.LOSSES``, ``optim.OPTIMIZERS``,
``schedules.SCHEDULES``), and each other key is passed when that class's constructor has a parameter
of that name (``momentum`` is SGD's, so Adam never sees it).
"""
from __future__ import annotations

import inspect


def from_section(registry: dict, section: dict, **given):
    """``registry[section["name"]]`` built from the keys of ``section`` that its constructor takes.

    ``given`` supplies the rest (the parameters, the total step count) and wins over the section.
    """
    cls = registry[section["name"]]
    accepted = inspect.signature(cls).parameters
    return cls(**given, **{k: v for k, v in section.items() if k in accepted and k not in given})
