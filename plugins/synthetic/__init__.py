"""The ``synthetic`` plugin: a probe landscape with a known optimum, as a run target.

``hpctl run synthetic --optimum 0.37 --noise 0.01 --controller grpo`` learns the knob of a
:class:`hpctl.envs.landscapes.LandscapeTask` in seconds; the result reports the
distance to the optimum.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpctl.envs.landscapes import SHAPES, Landscape, LandscapeTask
from hpctl.errors import ConfigError
from hpctl.task import Plugin


@dataclass
class SyntheticConfig:
    env: str | None = field(default=None, metadata={
        "help": "start from a registered Gymnasium id's landscape (see `hpctl list`), e.g. hpctl/LandscapeDrift-v0; "
                "options you set explicitly still win"})
    optimum: float = field(default=0.37, metadata={"help": "location of the best value (1-d)"})
    optimum2: float | None = field(default=None, metadata={"help": "second coordinate of the optimum: makes the knob 2-d"})
    noise: float = field(default=0.01, metadata={"help": "std of the Gaussian probe noise"})
    shape: str = field(default="peaked", metadata={"help": "landscape shape", "choices": list(SHAPES)})
    width: float = field(default=0.15, metadata={"help": "width of the peak (knob units)"})
    drift: float = field(default=0.0, metadata={"help": "how far the optimum moves over training"})
    start: float | None = field(default=None, metadata={
        "help": "value training starts at, every coordinate (default: the middle of [low, high])"})
    decoy: float | None = field(default=None, metadata={
        "help": "two-peaked: where the lower peak sits, every coordinate (default: the optimum's mirror image)"})
    decoy_height: float = field(default=0.7, metadata={
        "help": "two-peaked: height of the lower peak (the optimum's is 1), in (0, 1)"})
    low: float = field(default=0.0, metadata={"help": "lower bound of the knob"})
    high: float = field(default=1.0, metadata={"help": "upper bound of the knob"})
    total_steps: int = field(default=1000, metadata={"help": "simulated training steps in one run"})
    probe_delay: float = field(default=0.0, metadata={"help": "seconds each probe sleeps (simulates an expensive probe)"})


def with_env_defaults(config: SyntheticConfig) -> SyntheticConfig:
    """Fill the options still at their defaults from the registered id ``config.env``."""
    from hpctl.envs import LANDSCAPE_IDS

    if config.env not in LANDSCAPE_IDS:
        raise ConfigError(f"unknown env id {config.env!r} (registered: {', '.join(LANDSCAPE_IDS)})")
    preset = dict(LANDSCAPE_IDS[config.env])
    opt = preset.pop("optimum", None)
    if isinstance(opt, (tuple, list)):
        preset["optimum"], preset["optimum2"] = float(opt[0]), float(opt[1])
    elif opt is not None:
        preset["optimum"] = float(opt)
    defaults = SyntheticConfig()
    changes = {k: v for k, v in preset.items() if getattr(config, k) == getattr(defaults, k)}
    return dataclasses.replace(config, **changes)


class SyntheticPlugin(Plugin):
    name = "synthetic"
    description = "noisy synthetic probe landscape with a known optimum (microseconds per probe)"
    Config = SyntheticConfig
    default_controller = "grpo"
    default_budget = 64
    default_group_size = 8
    primary_metric = "true_reward"

    def make_task(self, config: SyntheticConfig, *, seed: int, out_dir: Path) -> LandscapeTask:
        if config.env is not None:
            config = with_env_defaults(config)
        if not config.low < config.high:
            raise ConfigError(f"bounds out of order: low={config.low} must be < high={config.high}")
        optimum: tuple[float, ...] = (config.optimum,)
        if config.optimum2 is not None:
            optimum = (config.optimum, config.optimum2)
        decoy = None if config.decoy is None else (float(config.decoy),) * len(optimum)
        landscape = Landscape(optimum=optimum, shape=config.shape, width=config.width, drift=config.drift,
                              low=config.low, high=config.high, decoy=decoy, decoy_height=config.decoy_height)
        if config.probe_delay < 0:
            raise ConfigError(f"probe delay must be >= 0, got {config.probe_delay}")
        if config.start is not None and not config.low <= config.start <= config.high:
            raise ConfigError(f"start {config.start} is outside the knob's bounds [{config.low}, {config.high}]")
        task = LandscapeTask(landscape, noise=config.noise, total_steps=config.total_steps,
                             low=config.low, high=config.high, default=config.start, probe_delay=config.probe_delay)
        task.reset(seed)
        return task

    def env_kwargs(self, config: Any) -> dict[str, Any]:
        return {}
