"""Stable-Baselines3 baselines (``ppo``, ``a2c``, ``sac``, ``td3``) on the same ControlEnv.

The agent drives the env through plain ``step()``: each step probes one value and its
reward is the probe's (``env.reward_mode``); after ``env.group_size`` steps the env
commits by its ``commit_rule`` and trains one round; an episode is one training run and
SB3 resets the env when it ends (a new training run; the probe counter keeps counting).

:class:`UnitActionWrapper` rescales the action space to ``[-1, 1]^dim``: a Gaussian
policy on ``Box(0, 1)`` collapses to the clip bound (seen with PPO on a 1-d toy with
optimum 0.37: it answered 0.0), so the baselines would be unfair without it. Actions
map affinely to the knob's unit cube and then to knob units with ``knob.from_unit``
(log-scale knobs are searched in log space, as GRPO does).

Budget: learning stops once ``env.probes >= budget`` (checked after every step; a step
can cost two probes when it also probes the baseline, so the budget can be exceeded by
one probe). The learned value is the policy's deterministic action at the final
observation (the policy mean; SAC/TD3: the actor's output), mapped to knob units.

Defaults are for budgets of tens to hundreds of probes (SB3's own defaults assume
~10^5 steps): rollouts of 8-16 steps, ``learning_starts=16`` for the off-policy agents,
``gamma=0.5`` (a probe's reward depends on its own action; little credit to assign
forward), and an initial policy std of ``exp(-1) = 0.37`` in ``[-1, 1]`` (0.18 in unit
coordinates, close to GRPO's ``sigma_init=0.2``; SB3's std of 1.0 clips most samples at
the bounds, and PPO's mean then runs into a bound on optima near the edges).
Anything SB3 accepts can be set with ``kwargs`` and ``policy_kwargs``.

Seeding: ``seed`` goes to the SB3 model (python, numpy, torch and the action space);
the same seed gives the same probes on CPU. Threads (``torch.set_num_threads``) are the
caller's choice. Resume: the learner's weights and buffers are not checkpointed, so
``--resume`` of an SB3 run is refused (a fresh learner would not end where the
interrupted run would have).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hpctl.errors import ResumeError
from hpctl.controllers.base import Controller, register
from hpctl.control_env import ControlEnv


class UnitActionWrapper(gym.ActionWrapper):
    """Actions in ``[-1, 1]^dim`` for a :class:`ControlEnv` whose actions are knob values.

    ``env`` is a :class:`ControlEnv`, bare or wrapped (``gymnasium.make("hpctl/MagnitudePrune-v0")``).
    ``a -> knob.from_unit((a + 1) / 2)``. ``reset`` does not start a new training run
    when the wrapped env is already mid-run on the first call (the runner reset it, or
    the run is resumed), nor once ``budget`` probes are spent (so SB3's automatic reset
    after the last step leaves the trained state alone).
    """

    def __init__(self, env: gym.Env, budget: int | None = None) -> None:
        super().__init__(env)
        self.control: ControlEnv = env.unwrapped  # also under gymnasium.make's wrappers
        self.budget = budget
        dim = self.control.knob.dim
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(dim,), dtype=np.float32)
        self._attached = False

    def action(self, action: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        return self.control.knob.from_unit((a + 1.0) / 2.0)

    def reverse_action(self, action: np.ndarray) -> np.ndarray:
        u = self.control.knob.to_unit(self.control.knob.clip(action))
        return (2.0 * u - 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        env = self.control
        first, self._attached = not self._attached, True
        if first and env.episodes > 0 and not env.done:
            return env.observe()
        if self.budget is not None and env.probes >= self.budget:
            return env.observe()
        return self.env.reset(seed=seed, options=options)


# ------------------------------------------------------------------ configs --------
@dataclass
class PPOConfig:
    """PPO settings (SB3 names); ``kwargs``/``policy_kwargs`` pass anything else."""

    learning_rate: float = 1e-3
    n_steps: int = 16
    batch_size: int = 16
    n_epochs: int = 10
    gamma: float = 0.5
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class A2CConfig:
    """A2C settings (SB3 names); ``kwargs``/``policy_kwargs`` pass anything else."""

    learning_rate: float = 1e-3
    n_steps: int = 8
    gamma: float = 0.5
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SACConfig:
    """SAC settings (SB3 names); ``kwargs``/``policy_kwargs`` pass anything else."""

    learning_rate: float = 3e-4
    learning_starts: int = 16
    batch_size: int = 16
    buffer_size: int = 10_000
    train_freq: int = 1
    gradient_steps: int = 1
    gamma: float = 0.5
    tau: float = 0.005
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TD3Config:
    """TD3 settings (SB3 names); ``action_noise`` is the std of Gaussian exploration noise in [-1, 1]."""

    learning_rate: float = 3e-4
    learning_starts: int = 16
    batch_size: int = 16
    buffer_size: int = 10_000
    train_freq: int = 1
    gradient_steps: int = 1
    gamma: float = 0.5
    tau: float = 0.005
    action_noise: float = 0.2
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------- controller --------
class SB3Controller(Controller):
    """Runs an SB3 algorithm on a :class:`ControlEnv` wrapped by :class:`UnitActionWrapper`."""

    algo: ClassVar[str]

    def __init__(self, env: ControlEnv, config: Any = None, seed: int = 0) -> None:
        super().__init__(env, config, seed)
        self.model: Any = None
        self.wrapped: UnitActionWrapper | None = None

    def algo_kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments for the SB3 algorithm, from the config."""
        cfg = asdict(self.config)
        policy_kwargs = dict(cfg.pop("policy_kwargs"))
        extra = dict(cfg.pop("kwargs"))
        if "log_std_init" in cfg:
            policy_kwargs.setdefault("log_std_init", cfg.pop("log_std_init"))
        if "action_noise" in cfg:
            from stable_baselines3.common.noise import NormalActionNoise

            sd = float(cfg.pop("action_noise"))
            dim = self.knob.dim
            cfg["action_noise"] = NormalActionNoise(np.zeros(dim), np.full(dim, sd)) if sd > 0 else None
        cfg.update(extra)
        cfg["policy_kwargs"] = policy_kwargs or None
        return cfg

    def build(self, budget: int) -> Any:
        import stable_baselines3 as sb3

        self.wrapped = UnitActionWrapper(self.env, budget=budget)
        cls = getattr(sb3, self.algo)
        kwargs = self.algo_kwargs()
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("verbose", 0)
        return cls("MlpPolicy", self.wrapped, seed=self.seed, **kwargs)

    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        from stable_baselines3.common.callbacks import BaseCallback

        ctrl, env = self, self.env

        class _Budget(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self.mark = (env.episodes, env.round)

            def _on_step(self) -> bool:
                mark = (env.episodes, env.round)
                if mark != self.mark:
                    self.mark = mark
                    if callback is not None:
                        callback(ctrl)
                return env.probes < budget

        if env.probes < budget:
            self.model = self.build(budget)
            self.model.learn(total_timesteps=max(1, budget - env.probes), callback=_Budget())
        return self.policy_value()

    def policy_value(self) -> np.ndarray:
        """The deterministic action at the current observation, in knob units."""
        if self.model is None or self.wrapped is None:
            return self.env.current.copy()
        obs, _ = self.env.observe()
        action, _ = self.model.predict(obs, deterministic=True)
        return self.knob.clip(self.wrapped.action(action))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The SB3 learner (network, optimizer, rollout/replay buffers, its position inside
        # learn()) is not checkpointed, so a resumed run could not end where an
        # uninterrupted one would: refuse rather than resume inexactly.
        raise ResumeError(f"controller {self.name!r} cannot resume a run (SB3 learners are not checkpointed); "
                          "start the run again")

    def state(self) -> dict[str, float]:
        """The policy's deterministic value and the committed value per component."""
        policy = self.policy_value()
        out: dict[str, float] = {}
        for i, n in enumerate(self.knob.component_names):
            sfx = "" if self.knob.dim == 1 else f"/{n}"
            out[f"policy{sfx}"] = float(policy[i])
            out[f"value{sfx}"] = float(self.env.current[i])
        return out


@register
class PPOController(SB3Controller):
    """SB3 PPO on the knob (actions rescaled to [-1, 1])."""

    name = "ppo"
    algo = "PPO"
    Config = PPOConfig


@register
class A2CController(SB3Controller):
    """SB3 A2C on the knob (actions rescaled to [-1, 1])."""

    name = "a2c"
    algo = "A2C"
    Config = A2CConfig


@register
class SACController(SB3Controller):
    """SB3 SAC on the knob (actions rescaled to [-1, 1])."""

    name = "sac"
    algo = "SAC"
    Config = SACConfig


@register
class TD3Controller(SB3Controller):
    """SB3 TD3 on the knob (actions rescaled to [-1, 1])."""

    name = "td3"
    algo = "TD3"
    Config = TD3Config
