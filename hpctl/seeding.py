"""Seeding every RNG a run draws from (Python's, numpy's global one, and torch's when installed).

A module of its own so that :mod:`hpctl.runner` and the engines' workers
(:mod:`hpctl.engines.base`) seed alike without importing each other.
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy's global RNG and, when torch is installed, torch's (now if it
    is imported, else as it is first imported: a run that never uses torch does not import
    it; see :mod:`hpctl.torch_seed`)."""
    from hpctl.torch_seed import seed_torch

    random.seed(seed)
    np.random.seed(seed)
    seed_torch(seed)
