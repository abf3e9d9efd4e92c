"""A knob: the training hyperparameter a controller sets.

A knob has a name, bounds, units and a default, and may be a vector (one value per
module group, say). Values are always handled as 1-d float arrays of length ``dim``.
A log-scale knob (a learning rate) is searched in log space: ``to_unit``/``from_unit``
map between the knob's units and the unit cube the agents work in.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from hpctl.errors import ConfigError, shorten


@dataclass(frozen=True)
class Knob:
    """A bounded control variable.

    Args:
        name: identifier, e.g. ``"prune_ratio"``.
        low, high: inclusive bounds in the knob's units (``low < high``).
        default: starting value (scalar, or one per dimension).
        dim: number of components (1 for a scalar knob).
        log: search in log space (requires ``low > 0``).
        units: free text for plots and tables.
        labels: one name per component, e.g. ``("attn", "mlp")``.
    """

    name: str
    low: float
    high: float
    default: float | tuple[float, ...] = 0.0
    dim: int = 1
    log: bool = False
    units: str = ""
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a knob's name must be a non-empty string, got {shorten(repr(self.name))}")
        for what in ("low", "high"):
            value = getattr(self, what)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ConfigError(f"knob {self.name!r}: {what} must be a number, got {shorten(repr(value))}")
        if isinstance(self.dim, (bool, np.bool_)) or not isinstance(self.dim, numbers.Integral):
            raise ConfigError(f"knob {self.name!r}: dim must be a whole number, got {shorten(repr(self.dim))}")
        if not isinstance(self.log, (bool, np.bool_)):
            raise ConfigError(f"knob {self.name!r}: log must be True or False, got {shorten(repr(self.log))}")
        if not isinstance(self.units, str):
            raise ConfigError(f"knob {self.name!r}: units must be a string, got {shorten(repr(self.units))}")
        if isinstance(self.labels, str) or not isinstance(self.labels, (tuple, list)) \
                or not all(isinstance(n, str) for n in self.labels):
            raise ConfigError(f"knob {self.name!r}: labels must be a tuple of names, one per component, "
                              f"got {shorten(repr(self.labels))}")
        object.__setattr__(self, "labels", tuple(self.labels))  # a list works too, and the knob stays hashable
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ConfigError(f"knob {self.name!r}: bounds must be finite, got [{self.low}, {self.high}]")
        if not self.low < self.high:
            raise ConfigError(
                f"knob {self.name!r}: bounds out of order: low={self.low} must be < high={self.high}"
            )
        if self.dim < 1:
            raise ConfigError(f"knob {self.name!r}: dim must be >= 1, got {self.dim}")
        if self.log and self.low <= 0:
            raise ConfigError(f"knob {self.name!r}: a log-scale knob needs low > 0, got {self.low}")
        if self.labels and len(self.labels) != self.dim:
            raise ConfigError(f"knob {self.name!r}: {len(self.labels)} labels for dim={self.dim}")
        self.validate(self.default)

    # -- values -----------------------------------------------------------------
    @property
    def component_names(self) -> tuple[str, ...]:
        if self.labels:
            return tuple(self.labels)
        if self.dim == 1:
            return (self.name,)
        return tuple(f"{self.name}[{i}]" for i in range(self.dim))

    @property
    def default_value(self) -> np.ndarray:
        return self.as_array(self.default)

    def as_array(self, value: float | Sequence[float] | np.ndarray) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(f"knob {self.name!r}: {shorten(repr(value))} is not a number") from None
        if arr.size == 1 and self.dim > 1:
            arr = np.full(self.dim, float(arr[0]))
        if arr.size != self.dim:
            raise ConfigError(f"knob {self.name!r} takes {self.dim} value(s), got {arr.size}")
        return arr

    def validate(self, value: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Return ``value`` as an array, or raise ConfigError if it is outside the bounds."""
        arr = self.as_array(value)
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"knob {self.name!r}: value {arr.tolist()} is not finite")
        # A tiny tolerance so values that round-trip through float32 (SB3) stay legal.
        tol = 1e-6 * (self.high - self.low)
        if np.any(arr < self.low - tol) or np.any(arr > self.high + tol):
            shown = arr[0] if self.dim == 1 else arr.tolist()
            raise ConfigError(f"knob {self.name!r}: value {shown} is outside its bounds [{self.low}, {self.high}]")
        return np.clip(arr, self.low, self.high)

    def clip(self, value: float | Sequence[float] | np.ndarray) -> np.ndarray:
        return np.clip(self.as_array(value), self.low, self.high)

    # -- unit-cube transform used by agents ---------------------------------------
    def to_unit(self, value: np.ndarray | float) -> np.ndarray:
        arr = self.as_array(value)
        if self.log:
            return (np.log(arr) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (arr - self.low) / (self.high - self.low)

    def from_unit(self, u: np.ndarray | float) -> np.ndarray:
        arr = np.clip(self.as_array(u), 0.0, 1.0)
        if self.log:
            return np.exp(math.log(self.low) + arr * (math.log(self.high) - math.log(self.low)))
        return self.low + arr * (self.high - self.low)

    def format(self, value: np.ndarray | float) -> str:
        arr = self.as_array(value)
        if self.dim == 1:
            return f"{arr[0]:.4g}"
        return ", ".join(f"{n}={v:.4g}" for n, v in zip(self.component_names, arr))

    def to_dict(self, value: np.ndarray | float) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.component_names, self.as_array(value))}
