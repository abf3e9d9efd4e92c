"""Seeding every RNG a run draws from (Python's, numpy's global one, and torch's when installed).

A module of its own so that :mod:`hpctl.runner` and the engines' workers
(:mod:`hpctl.engines.base`) seed alike without importing each other.
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy's global RNG and, when torch is installed, torch's."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # the core runs without torch (its extras bring it)
        return
    torch.manual_seed(seed)
