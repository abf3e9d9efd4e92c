"""Search baselines: ``grid``, ``random`` and ``fixed``.

They probe candidate values at the training state they find (the start of training when
the runner calls them) and never train: the learned value is the best-scoring
candidate (ties: the first), and the runner's ``task.finish`` does the final run.
Candidates are laid out in the knob's unit cube (``knob.from_unit``), so a log-scale
knob gets points evenly spaced in log space.

``grid`` with ``full_runs=True`` is the paper's grid baseline: each point costs one whole
fine-tune at that value (``task.full_run``), scored on its dev set; each counts as one
probe of the budget and is recorded with :meth:`hpctl.control_env.ControlEnv.record`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hpctl.controllers.base import Controller, register
from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, ResumeError


class SearchController(Controller):
    """Shared loop: evaluate a list of candidates in order, within the budget.

    Subclasses implement :meth:`candidates` (unit-cube points, shape (n, dim)) and may
    override :meth:`measure`. ``callback`` runs after every ``env.group_size``
    evaluations and after the last one.
    """

    def __init__(self, env: ControlEnv, config: Any = None, seed: int = 0) -> None:
        super().__init__(env, config, seed)
        # The state stays the same size however long the run: the candidates are drawn
        # once (and redrawn from the saved RNG state on resume), only the best is kept.
        self.points: np.ndarray | None = None  # unit coordinates, fixed at the first run()
        self.points_rng: dict[str, Any] | None = None  # the RNG state the points were drawn from
        self.points_budget = 0
        self.evaluated = 0
        self.best_value: np.ndarray | None = None
        self.best_score = -math.inf

    def candidates(self, budget: int) -> np.ndarray:
        raise NotImplementedError

    def to_value(self, u: np.ndarray) -> np.ndarray:
        """A candidate in knob units."""
        return self.knob.from_unit(u)

    def measure(self, value: np.ndarray) -> float:
        """Score one candidate (one probe of the budget)."""
        return self.env.probe(value)

    def _draw_points(self, budget: int) -> None:
        if self.points is None:
            self.points_rng, self.points_budget = self.rng.bit_generator.state, int(budget)
            self.points = np.asarray(self.candidates(budget), dtype=np.float64).reshape(-1, self.knob.dim)

    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        self._draw_points(budget)
        group = self.env.group_size
        since = 0
        for u in self.points[self.evaluated:]:
            if self.env.probes >= budget:
                break
            value = self.to_value(u)
            score = float(self.measure(value))
            self.evaluated += 1
            if math.isfinite(score) and score > self.best_score:  # the first of ties wins
                self.best_value, self.best_score = value, score
            since += 1
            if since == group and callback is not None:
                callback(self)
                since = 0
        if since and callback is not None:
            callback(self)
        return self.best()

    def answer(self) -> np.ndarray:
        return self.best()

    def best(self) -> np.ndarray:
        """The best-scoring value so far (first of ties); the current value if none scored."""
        if self.best_value is None:
            return self.env.current.copy()
        return self.best_value.copy()

    def state(self) -> dict[str, float]:
        """The best value per component, its score, and the number of evaluations."""
        out = {f"best/{n}" if self.knob.dim > 1 else "best": float(v)
               for n, v in zip(self.knob.component_names, self.best())}
        if self.best_value is not None:
            out["best_score"] = self.best_score
        out["evaluated"] = float(self.evaluated)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "points_rng": self.points_rng,
                "points_budget": self.points_budget, "evaluated": self.evaluated,
                "best_value": None if self.best_value is None else self.best_value.copy(),
                "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.points = None
            if state["points_rng"] is not None:  # the same points, drawn again
                self.rng.bit_generator.state = state["points_rng"]
                self._draw_points(int(state["points_budget"]))
            self.rng.bit_generator.state = state["rng"]
            self.evaluated = int(state["evaluated"])
            self.best_value = None if state["best_value"] is None else np.asarray(state["best_value"], np.float64)
            self.best_score = float(state["best_score"])
        except KeyError as exc:
            raise ResumeError(f"{self.name} checkpoint lacks {exc.args[0]!r}") from None


# --------------------------------------------------------------------- grid --------
@dataclass
class GridConfig:
    """Settings of :class:`Grid`."""

    k: int = 8  # points per dimension (fewer if the budget cannot pay for k**dim)
    full_runs: bool = False  # each point is a whole fine-tune (task.full_run), not a probe

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        self.k = int(self.k)


def grid_points(k: int, dim: int, budget: int) -> np.ndarray:
    """``m`` evenly spaced points per dimension over [0, 1] (ends included), all
    combinations; ``m = min(k, floor(budget ** (1/dim)))``; one point is the centre."""
    m = max(1, min(k, int(math.floor(budget ** (1.0 / dim) + 1e-9))))
    axis = np.linspace(0.0, 1.0, m) if m > 1 else np.array([0.5])
    return np.array(list(itertools.product(axis, repeat=dim)), dtype=np.float64)


@register
class Grid(SearchController):
    """``k`` evenly spaced values per dimension (a k x k grid for a 2-d knob), best wins."""

    name = "grid"
    Config = GridConfig

    def candidates(self, budget: int) -> np.ndarray:
        return grid_points(self.config.k, self.knob.dim, budget)

    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        # With an engine (env.workers), the points this call will measure run their full
        # fine-tunes in parallel first; measure() then records them in order, as without one.
        self._ready: list[tuple[float, str | None]] = []
        if self.config.full_runs and getattr(self.env, "workers", None) is not None:
            self._draw_points(budget)
            todo = self.points[self.evaluated:][:max(0, budget - self.env.probes)]
            if len(todo) > 1:
                self._ready = self.env.full_runs([self.to_value(u) for u in todo])
        return super().run(budget, callback)

    def measure(self, value: np.ndarray) -> float:
        if not self.config.full_runs:
            return self.env.probe(value)
        if getattr(self, "_ready", None):
            score, error = self._ready.pop(0)
            return self.env.record(value, score, kind="candidate", error=error)
        error = None
        try:
            score = float(self.env.task.full_run(value.copy()))
        except Exception as exc:  # noqa: BLE001 - a failed run is a fault, as for probes
            if isinstance(exc, (KeyboardInterrupt, ConfigError)):
                raise
            score, error = float("nan"), f"{type(exc).__name__}: {exc}"
        return self.env.record(value, score, kind="candidate", error=error)


# -------------------------------------------------------------------- random -------
@dataclass
class RandomConfig:
    """Settings of :class:`RandomSearch`."""

    n: int | None = None  # samples; None: the whole budget

    def __post_init__(self) -> None:
        if self.n is not None and (isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1):
            raise ValueError(f"n must be a positive integer, got {self.n!r}")


@register
class RandomSearch(SearchController):
    """Uniform samples over the knob's unit cube, best wins."""

    name = "random"
    Config = RandomConfig

    def candidates(self, budget: int) -> np.ndarray:
        n = int(self.config.n or budget)
        return self.rng.uniform(0.0, 1.0, size=(n, self.knob.dim))


# --------------------------------------------------------------------- fixed -------
@dataclass
class FixedConfig:
    """Settings of :class:`Fixed`."""

    value: float | list[float] | None = None  # knob units; None: the knob's default


@register
class Fixed(SearchController):
    """One given value; probed once so the run has a score for it."""

    name = "fixed"
    Config = FixedConfig

    def __init__(self, env: ControlEnv, config: FixedConfig | None = None, seed: int = 0) -> None:
        super().__init__(env, config, seed)
        raw = self.knob.default if self.config.value is None else self.config.value
        try:
            self.value = self.knob.validate(raw)
        except ConfigError as exc:
            raise ConfigError(f"controller 'fixed': {exc}") from None

    def candidates(self, budget: int) -> np.ndarray:
        return self.knob.to_unit(self.value)[None, :]

    def to_value(self, u: np.ndarray) -> np.ndarray:
        return self.value.copy()  # exactly the given value (no unit round trip)

    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        super().run(budget, callback)
        return self.value.copy()
