"""Seed torch's global generator without importing torch (about 2 s) for runs that never use it.

:func:`seed_torch` seeds torch at once when it is already imported; otherwise it arranges
for torch to be seeded the moment it is first imported, before any code can draw from
its generator. Either way torch's random numbers are those after ``torch.manual_seed(seed)``,
as if the seeding had imported torch itself; a run whose plugin and controller never
import torch (the synthetic landscapes, the search controllers) never pays for it.

The mechanism is a finder at the front of :data:`sys.meta_path` that answers only for
``torch``: it asks the other finders for torch's spec and wraps that spec's loader so
that ``manual_seed`` runs right after torch's module body (the approach of post-import
hooks such as ``wrapt``'s). Once torch is imported the finder is never asked again.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from typing import Any

__all__ = ["seed_torch"]


class _SeedOnImport(importlib.abc.MetaPathFinder):
    """Seeds torch as it is first imported, with the seed last passed to :func:`seed_torch`."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):  # noqa: ANN201 - importlib API
        if fullname != "torch" or self.seed is None or getattr(self._busy, "on", False):
            return None
        self._busy.on = True  # the other finders give torch's real spec
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            self._busy.on = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_seed(module) -> None:  # noqa: ANN001 - importlib API
            exec_module(module)
            if self.seed is not None:
                module.manual_seed(self.seed)

        loader.exec_module = exec_and_seed  # this loader instance serves torch alone
        return spec


_FINDER = _SeedOnImport()


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)`` now if torch is imported, else as soon as it is (if ever)."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        torch.manual_seed(seed)
        return
    _FINDER.seed = int(seed)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
