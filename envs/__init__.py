"""Registered Gymnasium ids for hpctl environments.

Gymnasium has no plugin entry points: importing ``hpctl`` (or this module) registers the
ids below. ``gymnasium.make("hpctl/Landscape-v0", optimum=0.2, noise=0.05)`` then works,
and so does ``gymnasium.make("hpctl.envs:hpctl/Landscape-v0")`` without a prior import.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from hpctl.control_env import ControlEnv
from hpctl.envs.landscapes import SHAPES, Landscape, LandscapeTask

#: id -> default landscape keyword arguments
LANDSCAPE_IDS: dict[str, dict[str, Any]] = {
    "hpctl/Landscape-v0": {"shape": "peaked"},
    "hpctl/LandscapeFlat-v0": {"shape": "flat"},
    "hpctl/LandscapeSkewed-v0": {"shape": "skewed"},
    "hpctl/LandscapeTwoPeak-v0": {"shape": "two-peaked", "optimum": 0.25},
    "hpctl/LandscapeDrift-v0": {"shape": "peaked", "optimum": 0.3, "drift": 0.4},
    "hpctl/Landscape2D-v0": {"shape": "peaked", "optimum": (0.3, 0.7)},
}


def make_landscape_env(
    shape: str = "peaked",
    optimum: float | tuple[float, ...] = 0.37,
    noise: float = 0.01,
    width: float = 0.15,
    drift: float = 0.0,
    total_steps: int = 1000,
    group_size: int = 8,
    steps_per_round: int | None = None,
    commit_rule: str = "best",
    reward: str = "score",
) -> ControlEnv:
    """Build a :class:`ControlEnv` over a synthetic landscape."""
    landscape = Landscape(optimum=tuple(float(o) for o in (optimum if isinstance(optimum, (tuple, list)) else (optimum,))),
                          shape=shape, width=width, drift=drift)
    task = LandscapeTask(landscape, noise=noise, total_steps=total_steps)
    return ControlEnv(task, group_size=group_size, steps_per_round=steps_per_round,
                      commit_rule=commit_rule, reward=reward)


def register_envs() -> None:
    for env_id, kwargs in LANDSCAPE_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="hpctl.envs:make_landscape_env", kwargs=kwargs,
                         disable_env_checker=False)


def env_ids() -> list[str]:
    return list(LANDSCAPE_IDS)


register_envs()

__all__ = ["LANDSCAPE_IDS", "SHAPES", "Landscape", "LandscapeTask", "env_ids", "make_landscape_env"]
