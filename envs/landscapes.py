"""Synthetic probe landscapes: cheap tasks with known optima.

A landscape is a reward function ``f(x, progress) -> [0, 1]`` of the knob value ``x``
(1-d or 2-d, in ``[low, high]``) and of training progress in ``[0, 1]`` (so the optimum
can drift as training goes on). :class:`LandscapeTask` wraps one as a
:class:`hpctl.task.Task`: probing returns ``f`` plus Gaussian noise, "training" advances
progress and a simulated weight vector. A probe costs microseconds, which makes these
the test bed and benchmark for controllers.

Shapes (``width`` is the scale of the peak in knob units):

``peaked``     a Gaussian bump at the optimum;
``flat``       a plateau of half-width ``width`` around the optimum with soft edges
               (every value on the plateau is optimal: distance is measured to it);
``skewed``     a bump three times wider on the right than on the left;
``two-peaked`` the global bump at the optimum plus a wider, lower decoy bump (height
               ``decoy_height``, default 0.7) at ``decoy`` (default: the mirror image of the
               optimum);
``cliff``      a plateau beside a cliff: on the low side of the optimum (its edge) the reward
               rises gently towards it, linearly, by 1/6 per ``width`` (a ratio a long way below
               the edge still scores well); above the edge it falls steeply, a half-Gaussian
               of scale ``width / 5`` (0.14 at ``0.4 * width`` past it), as a quality that
               collapses past a prune ratio does. Every coordinate of a 2-d knob has its own
               edge, the reward is the product. The optimum is the edge itself: distance is
               measured to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpctl.errors import ConfigError
from hpctl.knob import Knob
from hpctl.task import Task

SHAPES = ("peaked", "flat", "skewed", "two-peaked", "cliff")


@dataclass
class Landscape:
    """A noise-free reward function with a known optimum."""

    optimum: tuple[float, ...] = (0.37,)
    shape: str = "peaked"
    width: float = 0.15
    drift: float = 0.0  # the optimum moves by this much (knob units) from progress 0 to 1
    low: float = 0.0
    high: float = 1.0
    decoy: tuple[float, ...] | None = None
    decoy_height: float = 0.7  # two-peaked: the decoy's height (the optimum's is 1)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown landscape shape {self.shape!r} (choose from {', '.join(SHAPES)})")
        if not self.width > 0:
            raise ConfigError(f"landscape width must be > 0, got {self.width}")
        self.optimum = tuple(float(o) for o in np.atleast_1d(self.optimum))
        for o in self.optimum:
            if not self.low <= o <= self.high:
                raise ConfigError(f"optimum {o} is outside the knob's bounds [{self.low}, {self.high}]")
            if not self.low <= o + self.drift <= self.high:
                raise ConfigError(f"optimum {o} drifts by {self.drift} out of the bounds [{self.low}, {self.high}]")
        if not 0 < self.decoy_height < 1:
            raise ConfigError(f"decoy height must be in (0, 1) (the optimum's is 1), got {self.decoy_height}")
        if self.decoy is None:
            mid = (self.low + self.high) / 2
            self.decoy = tuple(2 * mid - o for o in self.optimum)
        self.decoy = tuple(float(d) for d in np.atleast_1d(self.decoy))
        if len(self.decoy) != len(self.optimum):
            raise ConfigError(f"the decoy has {len(self.decoy)} coordinate(s), the optimum {len(self.optimum)}")
        for d in self.decoy:
            if not self.low <= d <= self.high:
                raise ConfigError(f"decoy {d} is outside the knob's bounds [{self.low}, {self.high}]")

    @property
    def dim(self) -> int:
        return len(self.optimum)

    def optimum_at(self, progress: float) -> np.ndarray:
        return np.asarray(self.optimum) + self.drift * float(np.clip(progress, 0.0, 1.0))

    def __call__(self, x: np.ndarray, progress: float = 0.0) -> float:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        opt = self.optimum_at(progress)
        d = x - opt
        w = self.width
        if self.shape == "peaked":
            return float(np.exp(-0.5 * np.sum((d / w) ** 2)))
        if self.shape == "flat":
            outside = np.maximum(np.abs(d) - w, 0.0)
            return float(np.exp(-0.5 * np.sum((outside / (w / 2)) ** 2)))
        if self.shape == "skewed":
            scale = np.where(d < 0, w, 3 * w)
            return float(np.exp(-0.5 * np.sum((d / scale) ** 2)))
        if self.shape == "cliff":
            gentle = np.maximum(1.0 + d / (6 * w), 0.0)  # d <= 0: the plateau side
            steep = np.exp(-0.5 * (d / (w / 5)) ** 2)  # d > 0: past the edge
            return float(np.prod(np.where(d <= 0, gentle, steep)))
        # two-peaked
        main = np.exp(-0.5 * np.sum((d / w) ** 2))
        dd = x - np.asarray(self.decoy) - self.drift * float(np.clip(progress, 0.0, 1.0))
        decoy = self.decoy_height * np.exp(-0.5 * np.sum((dd / (2 * w)) ** 2))
        return float(max(main, decoy))

    def distance(self, x: np.ndarray, progress: float = 1.0) -> float:
        """Euclidean distance from ``x`` to the optimal set (the plateau for ``flat``)."""
        d = np.abs(np.asarray(x, dtype=np.float64).reshape(-1) - self.optimum_at(progress))
        if self.shape == "flat":
            d = np.maximum(d - self.width, 0.0)
        return float(np.linalg.norm(d))


class LandscapeTask(Task):
    """A :class:`Landscape` as a training task.

    Training state: the step counter and a simulated weight vector that moves by
    SGD-like updates whose size depends on the knob (so state changes are observable and
    snapshots are meaningful). Probe noise comes from its own generator, seeded by
    :meth:`reset`, and is part of the snapshot so resumed runs replay it.
    """

    def __init__(self, landscape: Landscape, *, noise: float = 0.01, total_steps: int = 1000,
                 low: float = 0.0, high: float = 1.0, default: float | None = None,
                 probe_delay: float = 0.0) -> None:
        if noise < 0:
            raise ConfigError(f"noise must be >= 0, got {noise}")
        if total_steps < 1:
            raise ConfigError(f"total steps must be >= 1, got {total_steps}")
        self.landscape = landscape
        self.noise = float(noise)
        self.probe_delay = float(probe_delay)
        self.total_steps = int(total_steps)
        mid = (low + high) / 2 if default is None else float(default)
        labels = ("x", "y") if landscape.dim == 2 else ()
        self.knob = Knob("x" if landscape.dim == 1 else "xy", low, high, default=mid,
                         dim=landscape.dim, labels=labels)
        self._seed = 0
        self.reset(0)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._seed = int(seed)
            self._noise_rng = np.random.default_rng([self._seed, 1])
        elif not hasattr(self, "_noise_rng"):
            self._noise_rng = np.random.default_rng([self._seed, 1])
        self.steps = 0
        self.weights = np.zeros(8, dtype=np.float64)

    @property
    def progress(self) -> float:
        return self.steps / self.total_steps

    def train(self, steps: int, value: np.ndarray) -> float:
        value = self.knob.clip(value)
        losses = []
        for _ in range(int(steps)):
            self.steps += 1
            quality = self.landscape(value, self.progress)
            # a deterministic "gradient step": weights drift towards the quality signal
            self.weights += 0.01 * (quality - self.weights)
            losses.append(1.0 - quality)
        return float(np.mean(losses)) if losses else float("nan")

    def true_reward(self, value: np.ndarray) -> float:
        return self.landscape(self.knob.clip(value), self.progress)

    def probe(self, value: np.ndarray) -> float:
        if self.probe_delay:
            time.sleep(self.probe_delay)
        r = self.true_reward(value)
        if self.noise:
            r += float(self._noise_rng.normal(0.0, self.noise))
        return r

    def skip_probes(self, n: int) -> None:
        if self.noise and n > 0:
            self._noise_rng.normal(0.0, self.noise, size=int(n))  # what n probes draw, discarded

    def snapshot(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": self.weights.copy(),
                "noise_rng": self._noise_rng.bit_generator.state, "seed": self._seed}

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.weights = np.array(state["weights"], dtype=np.float64)
        self._seed = int(state["seed"])
        self._noise_rng = np.random.default_rng([self._seed, 1])
        self._noise_rng.bit_generator.state = state["noise_rng"]

    def evaluate(self, split: str, value: np.ndarray) -> dict[str, float]:
        return {
            "true_reward": self.true_reward(value),
            "distance": self.landscape.distance(self.knob.clip(value), self.progress),
        }

    def finish(self, value: np.ndarray) -> dict[str, float]:
        """The final phase trains a whole run at ``value``: it is scored at the end (progress 1),
        where a drifting optimum has arrived, whatever progress the controller stopped at."""
        value = self.knob.clip(value)
        return {"true_reward": self.landscape(value, 1.0), "distance": self.landscape.distance(value, 1.0)}

    def full_run(self, value: np.ndarray) -> float:
        # A grid point costs one whole training run; its dev score is a noisy probe at the end.
        self.reset()
        self.steps = self.total_steps
        return self.probe(value)

    def optimum(self, progress: float = 1.0) -> np.ndarray:
        return self.landscape.optimum_at(progress)

    def describe(self) -> dict[str, Any]:
        ls = self.landscape
        out = {"shape": ls.shape, "optimum": list(ls.optimum), "width": ls.width, "drift": ls.drift,
               "noise": self.noise, "total_steps": self.total_steps, "start": self.knob.default_value.tolist()}
        if ls.shape == "two-peaked":
            out.update(decoy=list(ls.decoy), decoy_height=ls.decoy_height)
        return out
