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

Rollouts sized to the budget (SB3's defaults assume ~10^5 steps; at tens of probes they
never update): one rollout per probe group (``n_steps = group size``; SAC/TD3 train after
every group, ``train_freq = group size``, and their first group is uniform random,
``learning_starts = group size``), ``gamma = 0`` (a probe's reward is immediate: nothing
to assign to later steps). :meth:`SB3Controller.plan` computes how many steps the budget
pays for - a round costs ``group size`` probes plus the baseline probe when the commit
rule or the reward needs one - rounded down to whole rollouts, and ``learn`` runs exactly
that many: no partly collected rollout is dropped and the budget is never exceeded. A
budget that allows no gradient update is a :class:`ConfigError` before the run
(:meth:`SB3Controller.check_budget`). ``updates`` (in :meth:`state`) counts the optimizer
steps on the policy (the actor for SAC/TD3).

The learned value is the env's committed value at the end (``env.current``), as for GRPO:
what training used last and what the final phase uses. ``state()["policy"]`` is the
policy's deterministic action (its mean; SAC/TD3: the actor's output) for reference.

Seeding: ``seed`` goes to the SB3 model (python, numpy, torch and the action space);
the same seed gives the same probes on CPU. Threads (``torch.set_num_threads``) are the
caller's choice. Resume: the learner's buffers are not checkpointed, so ``--resume`` of
an SB3 run is refused. Warm starts load the policy's weights saved by a finished run
(``controller_policy.pt``, a plain tensor ``state_dict`` read with ``weights_only=True``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hpctl import extras
from hpctl.controllers.base import Controller, register
from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, ResumeError

POLICY_FILE = "controller_policy.pt"


class UnitActionWrapper(gym.ActionWrapper):
    """Actions in ``[-1, 1]^dim`` for a :class:`ControlEnv` whose actions are knob values.

    ``env`` is a :class:`ControlEnv`, bare or wrapped (``gymnasium.make("hpctl/MagnitudePrune-v0")``).
    ``a -> knob.from_unit((a + 1) / 2)``. ``reset`` does not start a new training run
    when the wrapped env is already mid-run on the first call (the runner reset it, or
    the run is resumed), nor once ``budget`` probes are spent or ``max_steps`` steps taken
    (so SB3's automatic reset after the last step leaves the trained state alone).
    """

    def __init__(self, env: gym.Env, budget: int | None = None, max_steps: int | None = None) -> None:
        super().__init__(env)
        self.control: ControlEnv = env.unwrapped  # also under gymnasium.make's wrappers
        self.budget = budget
        self.max_steps = max_steps
        self.steps = 0
        dim = self.control.knob.dim
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(dim,), dtype=np.float32)
        self._attached = False

    def action(self, action: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        return self.control.knob.from_unit((a + 1.0) / 2.0)

    def reverse_action(self, action: np.ndarray) -> np.ndarray:
        u = self.control.knob.to_unit(self.control.knob.clip(action))
        return (2.0 * u - 1.0).astype(np.float32)

    def step(self, action):
        self.steps += 1
        return super().step(action)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        env = self.control
        first, self._attached = not self._attached, True
        if first and env.episodes > 0 and not env.done:
            return env.observe()
        if self.budget is not None and env.probes >= self.budget:
            return env.observe()
        if self.max_steps is not None and self.steps >= self.max_steps:
            return env.observe()
        return self.env.reset(seed=seed, options=options)


# ------------------------------------------------------------------ configs --------
def _check_config(cfg: Any) -> None:
    """One-line errors for settings SB3 would reject deep inside (or accept and never learn)."""
    for name in ("n_steps", "batch_size", "learning_starts", "train_freq"):
        v = getattr(cfg, name, None)
        least = 0 if name == "learning_starts" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'learning_starts' else 'positive'} "
                             f"integer or empty, got {v!r}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {cfg.learning_rate}")
    if not 0 <= cfg.gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {cfg.gamma}")
    if getattr(cfg, "ent_coef", 0) < 0:
        raise ValueError(f"ent_coef must be >= 0, got {cfg.ent_coef}")
    if getattr(cfg, "n_epochs", 1) < 1:
        raise ValueError(f"n_epochs must be >= 1, got {cfg.n_epochs}")
    if getattr(cfg, "action_noise", 0) < 0:
        raise ValueError(f"action_noise must be >= 0, got {cfg.action_noise}")
    gs = getattr(cfg, "gradient_steps", -1)
    if gs == 0 or gs < -1:
        raise ValueError(f"gradient_steps must be -1 (one per collected step) or >= 1, got {gs}")
    for name in ("policy_kwargs", "kwargs"):
        if not isinstance(getattr(cfg, name), dict):
            raise ValueError(f"{name} must be a mapping, got {getattr(cfg, name)!r}")


class _Checked:
    def __post_init__(self) -> None:
        _check_config(self)


@dataclass
class PPOConfig(_Checked):
    """PPO settings (SB3 names); ``kwargs``/``policy_kwargs`` pass anything else.

    ``n_steps``/``batch_size`` None: the env's group size (one rollout, one minibatch per
    probe group).
    """

    learning_rate: float = 1e-3
    n_steps: int | None = None
    batch_size: int | None = None
    n_epochs: int = 10
    gamma: float = 0.0
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class A2CConfig(_Checked):
    """A2C settings (SB3 names); ``n_steps`` None: the env's group size."""

    learning_rate: float = 1e-3
    n_steps: int | None = None
    gamma: float = 0.0
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SACConfig(_Checked):
    """SAC settings (SB3 names); ``learning_starts``/``train_freq`` None: the env's group size."""

    learning_rate: float = 1e-3
    learning_starts: int | None = None
    batch_size: int = 32
    buffer_size: int = 10_000
    train_freq: int | None = None
    gradient_steps: int = -1  # -1: one gradient step per collected step
    gamma: float = 0.0
    tau: float = 0.005
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TD3Config(_Checked):
    """TD3 settings (SB3 names); ``action_noise`` is the std of Gaussian exploration noise in [-1, 1]."""

    learning_rate: float = 1e-3
    learning_starts: int | None = None
    batch_size: int = 32
    buffer_size: int = 10_000
    train_freq: int | None = None
    gradient_steps: int = -1
    gamma: float = 0.0
    tau: float = 0.005
    action_noise: float = 0.2
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------- controller --------
class SB3Controller(Controller):
    """Runs an SB3 algorithm on a :class:`ControlEnv` wrapped by :class:`UnitActionWrapper`."""

    algo: ClassVar[str]
    on_policy: ClassVar[bool] = True

    @classmethod
    def unavailable(cls) -> str | None:
        """Why SB3 controllers cannot run here (the ``sb3`` extra is missing), in one line; None if they can."""
        module = extras.missing_module("sb3")
        return None if module is None else str(extras.MissingExtraError(f"controller {cls.name!r}", "sb3",
                                                                        missing=module))

    def __init__(self, env: ControlEnv, config: Any = None, seed: int = 0) -> None:
        extras.require(f"controller {self.name!r}", "sb3")  # before anything is set up: one line naming [sb3]
        super().__init__(env, config, seed)
        self.model: Any = None
        self.wrapped: UnitActionWrapper | None = None
        self.updates = 0  # optimizer steps on the policy (the actor for SAC/TD3)
        self.steps = 0  # env steps taken inside learn()
        self.planned = 0  # steps the budget paid for
        self._warm_weights: dict[str, Any] | None = None

    # -- sizing ---------------------------------------------------------------------
    def group(self) -> int:
        return int(self.env.group_size)

    def rollout_steps(self) -> int:
        """Steps between two trainings: the rollout (on-policy) or ``train_freq`` (off-policy)."""
        name = "n_steps" if self.on_policy else "train_freq"
        return int(getattr(self.config, name) or self.group())

    def plan(self, budget: int) -> int:
        """Steps the remaining budget pays for, in whole rollouts (baseline probes included)."""
        g = self.group()
        base = 1 if (self.env.commit_rule == "best" or self.env.reward_mode == "improvement") else 0
        left = max(0, int(budget) - self.env.probes)
        rounds, rest = divmod(left, g + base)  # whole rounds, then a partial one (baseline counted)
        steps = rounds * g + min(max(0, rest - base), g - 1)
        unit = self.rollout_steps()
        return steps - steps % unit

    def expected_updates(self, steps: int) -> int:
        """Policy optimizer steps ``learn(steps)`` makes (no early stopping)."""
        raise NotImplementedError

    def check_budget(self, budget: int) -> None:
        steps = self.plan(budget)
        if self.expected_updates(steps) < 1:
            raise ConfigError(self._too_small(budget, steps))

    def _too_small(self, budget: int, steps: int) -> str:
        g = self.group()
        base = 1 if (self.env.commit_rule == "best" or self.env.reward_mode == "improvement") else 0
        return (f"controller {self.name!r} makes no update with a budget of {budget} probes in groups of {g} "
                f"({steps} steps fit; a round costs {g + base} probes and it trains after "
                f"{self._first_update_steps()} steps): raise --budget or lower "
                f"{'n_steps' if self.on_policy else 'learning_starts/train_freq'}")

    def _first_update_steps(self) -> int:
        return self.rollout_steps()

    # -- building and learning ---------------------------------------------------
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
        g = self.group()
        for name in ("n_steps", "batch_size", "learning_starts", "train_freq"):
            if name in cfg and cfg[name] is None:
                cfg[name] = cfg.get("n_steps") or g if name == "batch_size" else g
        cfg.update(extra)
        cfg["policy_kwargs"] = policy_kwargs or None
        return cfg

    def build(self, budget: int, max_steps: int | None = None) -> Any:
        import stable_baselines3 as sb3

        self.wrapped = UnitActionWrapper(self.env, budget=budget, max_steps=max_steps)
        cls = getattr(sb3, self.algo)
        kwargs = self.algo_kwargs()
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("verbose", 0)
        try:
            model = cls("MlpPolicy", self.wrapped, seed=self.seed, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"controller {self.name!r}: SB3 rejected the settings: {exc}") from None
        if self._warm_weights is not None:
            model.policy.load_state_dict(self._warm_weights)
        if not kwargs.get("tensorboard_log") and not kwargs.get("verbose"):
            # a silent SB3 model otherwise makes an empty $TMPDIR/SB3-<time> folder per learn()
            from stable_baselines3.common.logger import Logger

            model.set_logger(Logger(folder=None, output_formats=[]))
        self._count_updates(model)
        return model

    def policy_optimizer(self, model: Any) -> Any:
        return model.policy.optimizer

    def _count_updates(self, model: Any) -> None:
        def hook(opt, args, kwargs) -> None:
            self.updates += 1

        self.policy_optimizer(model).register_step_post_hook(hook)

    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        ctrl, env = self, self.env

        if env.probes >= budget:
            return env.current.copy()
        self.check_budget(budget)
        steps = self.planned = self.plan(budget)
        from stable_baselines3.common.callbacks import BaseCallback

        class _Rounds(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self.mark = (env.episodes, env.round)

            def _on_step(self) -> bool:
                ctrl.steps += 1
                mark = (env.episodes, env.round)
                if mark != self.mark:
                    self.mark = mark
                    if callback is not None:
                        callback(ctrl)
                return True  # the plan fits the budget: never cut a rollout short

        self.model = self.build(budget, max_steps=steps)
        self.model.learn(total_timesteps=steps, callback=_Rounds())
        return env.current.copy()

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
        """The policy's deterministic value, the committed value per component, and the updates made."""
        policy = self.policy_value()
        out: dict[str, float] = {}
        for i, n in enumerate(self.knob.component_names):
            sfx = "" if self.knob.dim == 1 else f"/{n}"
            out[f"policy{sfx}"] = float(policy[i])
            out[f"value{sfx}"] = float(self.env.current[i])
        out["updates"] = float(self.updates)
        out["steps"] = float(self.steps)
        return out

    # -- warm starts --------------------------------------------------------------
    def export_state(self, out_dir: Path) -> dict[str, Any]:
        """Save the policy's weights next to the JSON state (a tensor state_dict, no pickle of objects)."""
        if self.model is None:
            return {"algo": self.algo, "policy_file": None}
        import torch

        torch.save({k: v.detach().cpu().clone() for k, v in self.model.policy.state_dict().items()},
                   Path(out_dir) / POLICY_FILE)
        return {"algo": self.algo, "policy_file": POLICY_FILE, "updates": self.updates}

    def warm_start(self, state: dict[str, Any], folder: Path) -> None:
        import torch

        name = state.get("policy_file")
        if not name:
            raise ConfigError(f"warm start: the {self.name} run in {str(folder)!r} never built a policy")
        path = Path(folder) / str(name)
        if not path.is_file():
            raise ConfigError(f"warm start: {str(path)!r} is missing")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
            raise ConfigError(f"warm start: {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None
        # check the shapes now, so a mismatch is an error before the run, not inside learn()
        probe = self.build(budget=0, max_steps=0).policy.state_dict()
        bad = [k for k in probe if k not in weights or tuple(weights[k].shape) != tuple(probe[k].shape)]
        if bad or set(weights) - set(probe):
            raise ConfigError(f"warm start: the policy in {str(path)!r} does not fit this {self.name} policy "
                              f"(first mismatch: {(bad or sorted(set(weights) - set(probe)))[0]!r}); "
                              "were net_arch or the knob different?")
        self._warm_weights = weights
        self.model, self.wrapped, self.updates = None, None, 0


class OnPolicy(SB3Controller):
    def expected_updates(self, steps: int) -> int:
        n = self.rollout_steps()
        rollouts = steps // n
        if self.algo == "PPO":
            batch = int(self.config.batch_size or n)
            return rollouts * self.config.n_epochs * math.ceil(n / batch)
        return rollouts


class OffPolicy(SB3Controller):
    on_policy = False

    def learning_starts(self) -> int:
        v = self.config.learning_starts
        return self.group() if v is None else int(v)

    def expected_updates(self, steps: int) -> int:
        freq = self.rollout_steps()
        gs = self.config.gradient_steps
        grad = 0
        for k in range(1, steps // freq + 1):
            if k * freq > self.learning_starts():
                grad += freq if gs == -1 else gs
        return grad // int(self.config.kwargs.get("policy_delay", 2)) if self.algo == "TD3" else grad

    def _first_update_steps(self) -> int:
        freq = self.rollout_steps()
        k = self.learning_starts() // freq + 1
        need = k * freq
        if self.algo == "TD3" and self.config.gradient_steps != -1:
            delay = int(self.config.kwargs.get("policy_delay", 2))
            while (need // freq - self.learning_starts() // freq) * self.config.gradient_steps < delay:
                need += freq
        return need

    def policy_optimizer(self, model: Any) -> Any:
        return model.actor.optimizer


@register
class PPOController(OnPolicy):
    """SB3 PPO on the knob (actions rescaled to [-1, 1])."""

    name = "ppo"
    algo = "PPO"
    Config = PPOConfig


@register
class A2CController(OnPolicy):
    """SB3 A2C on the knob (actions rescaled to [-1, 1])."""

    name = "a2c"
    algo = "A2C"
    Config = A2CConfig


@register
class SACController(OffPolicy):
    """SB3 SAC on the knob (actions rescaled to [-1, 1])."""

    name = "sac"
    algo = "SAC"
    Config = SACConfig


@register
class TD3Controller(OffPolicy):
    """SB3 TD3 on the knob (actions rescaled to [-1, 1])."""

    name = "td3"
    algo = "TD3"
    Config = TD3Config
