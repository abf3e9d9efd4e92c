"""Registered Gymnasium ids for hpctl environments.

Gymnasium has no plugin entry points: ``import hpctl`` (or ``import hpctl.envs``)
registers the ids below, and ``gymnasium.make("hpctl.envs:hpctl/Landscape-v0")`` works
without a prior import. Registration is cheap: every id names its entry point as a string
(``"hpctl.envs:make_plugin_env"``), so nothing heavy (torch, transformers) is imported
until ``gymnasium.make`` builds an environment.

Synthetic landscapes (microseconds per step; keyword arguments of :func:`make_landscape_env`)::

    env = gym.make("hpctl/LandscapeDrift-v0", noise=0.05)

Real plugins (:data:`PLUGIN_IDS`; keyword arguments of :func:`make_plugin_env`: the run
options ``seed``, ``budget``, ``group_size``, ``commit_rule``, ``reward``, ``out_dir``, and
any option of the plugin, as ``hpctl run PLUGIN`` takes it)::

    env = gym.make("hpctl/MagnitudePrune-v0", total_steps=200, seed=1)
    env = gym.make("hpctl/GraspLoraSmoke-v0")             # grasp_lora --preset smoke
    env = gym.make("hpctl/GraspLora-v0", task="xquad", lang="ar")   # the default preset
    env = gym.make("hpctl/BackbonePruneSmoke-v0")         # backbone_prune --preset smoke

The environment is the one ``hpctl run PLUGIN`` trains its controller on (built by
:func:`hpctl.runner.build`): one episode is one training run, a step probes one value and
returns its score, and every ``group_size`` steps the env commits a value and trains a
round (see :mod:`hpctl.control_env`). Its actions are knob values in the knob's units.

Stable-Baselines3: wrap the env in :class:`hpctl.controllers.sb3.UnitActionWrapper`, which
rescales actions to ``[-1, 1]`` (log-scale knobs in log space); a Gaussian policy on the
raw ``Box(low, high)`` piles up at the clip bounds::

    from stable_baselines3 import PPO
    from hpctl.controllers.sb3 import UnitActionWrapper

    env = UnitActionWrapper(gym.make("hpctl/MagnitudePrune-v0"))
    PPO("MlpPolicy", env, n_steps=16, batch_size=16).learn(64)

``env.close()`` releases the task (a plugin env's default ``out_dir`` is a temporary folder,
removed with the env).
"""

from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
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

#: id -> plugin and default plugin options (:func:`make_plugin_env` keyword arguments)
PLUGIN_IDS: dict[str, dict[str, Any]] = {
    "hpctl/MagnitudePrune-v0": {"plugin": "magnitude_prune"},
    "hpctl/GraspLoraSmoke-v0": {"plugin": "grasp_lora", "preset": "smoke"},
    "hpctl/GraspLora-v0": {"plugin": "grasp_lora"},
    "hpctl/BackbonePruneSmoke-v0": {"plugin": "backbone_prune", "preset": "smoke"},
    "hpctl/BackbonePrune-v0": {"plugin": "backbone_prune"},
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


def make_plugin_env(plugin: str, *, seed: int = 0, budget: int | None = None, group_size: int | None = None,
                    commit_rule: str = "best", reward: str = "score", out_dir: str | Path | None = None,
                    **options: Any) -> ControlEnv:
    """The :class:`ControlEnv` that ``hpctl run PLUGIN`` would train its controller on.

    ``options`` are the plugin's options (its ``Config`` fields, e.g. ``total_steps=200``
    or ``preset="smoke"``); ``budget`` (default: the plugin's) only sets how many training
    steps a round spans, as in a run. ``out_dir`` receives what the task writes (cached
    adapters, final weights); by default a temporary folder removed with the env. Like
    ``hpctl run``, building seeds python, numpy and torch with ``seed``. Bad options raise
    :class:`hpctl.errors.ConfigError`.
    """
    from hpctl.config import RunOptions
    from hpctl.errors import ConfigError
    from hpctl.rundir import MARKER, RunSpec
    from hpctl.runner import build

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"hpctl-{plugin}-env-")
        path = Path(tmp.name)
    else:  # a working folder the caller chose: the task writes (and reuses) its own files there
        path = Path(out_dir)
        if (path / MARKER).exists():
            raise ConfigError(f"out_dir {str(path)!r} holds an hpctl run; give the env a folder of its own")
        path.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(plugin, RunOptions(seed=seed, budget=budget, group_size=group_size, commit_rule=commit_rule,
                                      reward=reward), plugin_config=dict(options))
    try:
        env = build(spec, path)[3]
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    if tmp is not None:
        weakref.finalize(env, tmp.cleanup)
    return env


def register_envs() -> None:
    """Register every id (idempotent; imports nothing beyond this module)."""
    for env_id, kwargs in LANDSCAPE_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="hpctl.envs:make_landscape_env", kwargs=kwargs,
                         disable_env_checker=False)
    for env_id, kwargs in PLUGIN_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="hpctl.envs:make_plugin_env", kwargs=kwargs,
                         disable_env_checker=False)


def env_ids() -> list[str]:
    return [*LANDSCAPE_IDS, *PLUGIN_IDS]


register_envs()

__all__ = ["LANDSCAPE_IDS", "PLUGIN_IDS", "SHAPES", "Landscape", "LandscapeTask", "env_ids", "make_landscape_env",
           "make_plugin_env", "register_envs"]
