"""The user's trade-off between sparsity and loss as one scalar reward (higher is better).

``L(s)`` is the mean answer-token loss of the adapter on the backbone pruned at sparsity ``s``;
``L_ref`` is the loss of the *dense* backbone with the same adapter training (the same
initialisation, data order, learning rate and number of steps, :mod:`.task`), on the same
examples; ``s`` is the achieved fraction of block-linear weights pruned. With ``tol`` the
tolerance and ``penalty`` the price of a violation:

``objective="tolerance"`` (the default): the sparsest backbone whose loss stays within ``tol``
of the dense one::

    reward(s) = s - penalty * max(0, L(s) / L_ref - 1 - tol) / tol

Inside the tolerance the reward is the sparsity itself; every further ``tol`` of relative loss
costs ``penalty`` units of sparsity. It is continuous in ``L``; since ``L(s)`` grows with ``s``
the reward rises up to the sparsity ``s*`` where ``L(s*) = (1 + tol) L_ref`` and falls after it
as soon as the relative loss grows faster than ``tol / penalty`` per unit of sparsity, so the
optimum is interior (at ``s*``) whenever the range reaches past ``s*``.

``objective="price"``: a linear trade-off without a free zone,
``reward(s) = s - penalty * (L(s) / L_ref - 1) / tol`` (its optimum is where the relative loss
grows at ``tol / penalty`` per unit of sparsity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpctl.errors import ConfigError

OBJECTIVES = ("tolerance", "price")


@dataclass(frozen=True)
class Objective:
    """``reward(sparsity, loss, ref)`` as defined in the module docstring."""

    kind: str = "tolerance"
    tolerance: float = 0.05
    penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.kind!r} (choose from {', '.join(OBJECTIVES)})")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance}")
        if not (math.isfinite(self.penalty) and self.penalty > 0):
            raise ConfigError(f"penalty must be > 0, got {self.penalty}")

    def excess(self, loss: float, ref: float) -> float:
        """``L / L_ref - 1``: the relative loss increase over the dense backbone."""
        if not ref > 0:
            raise ValueError(f"the dense reference loss must be > 0, got {ref}")
        return float(loss) / float(ref) - 1.0

    def __call__(self, sparsity: float, loss: float, ref: float) -> float:
        excess = self.excess(loss, ref)
        if self.kind == "tolerance":
            return float(sparsity) - self.penalty * max(0.0, excess - self.tolerance) / self.tolerance
        return float(sparsity) - self.penalty * excess / self.tolerance

    def within(self, loss: float, ref: float) -> bool:
        """Whether ``loss`` is within the tolerance of ``ref``."""
        return self.excess(loss, ref) <= self.tolerance
