"""ControlEnv: "set a training knob" as a Gymnasium environment.

One episode is one training run of ``task.total_steps`` optimizer steps, cut into
rounds of ``steps_per_round`` steps; with ``warmup_steps`` the first of those steps are
trained at the starting value before the first round, so that no probe scores the
untrained start (an episode's ``reset`` runs them and emits a ``warmup`` event). Within a
round the training state is frozen and up to ``group_size`` candidate values are probed
there; then the round is *committed*: training continues at one value for
``steps_per_round`` steps and the next round starts.

Two ways to drive it, with the same probe accounting:

* **Group agents** (GRPO, search) call :meth:`probe_group` to score G candidates at the
  same state, :meth:`baseline` for the score at the current value, and
  :meth:`advance` with the value they choose to continue with.
* **Step agents** (Stable-Baselines3) call :meth:`step`: each step probes one value and
  returns its reward; after ``group_size`` steps the env commits by ``commit_rule``:

  ``"best"``  the best-scoring value of the round, only if its score is not below the
              baseline (the score at the current value) - the paper's guard;
  ``"last"``  the last action (the agent sets the knob directly);
  ``"mean"``  the mean of the round's actions;
  ``"stay"``  keep the current value (pure probing).

  In every rule the move is bounded by ``max_move`` (a fraction of the knob's range).

Reward of a probe: ``"score"`` (the raw probe score) or ``"improvement"`` (score minus
the baseline score at the current value, the paper's L_0 - L_i).

Faults: a probe that raises or returns NaN/inf is recorded as a ``fault`` event; the
state is restored by the task's contract, :meth:`probe` returns NaN, and :meth:`step`
turns it into ``fault_reward`` (the worst finite reward seen so far, 0 before any) so an
SB3 agent's update is not poisoned. Group agents drop NaN candidates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hpctl.engines.base import raise_user_error, score_of
from hpctl.errors import ConfigError
from hpctl.task import Task

COMMIT_RULES = ("best", "last", "mean", "stay")
#: reward and loss features are clipped to +-OBS_LIMIT so the observation space is finite
OBS_LIMIT = 1e6
REWARDS = ("score", "improvement")

Event = dict[str, Any]


class ControlEnv(gym.Env):
    """A Gymnasium environment over any :class:`~hpctl.task.Task`.

    Observation (float32): ``[progress, current value in unit coordinates (dim),
    last round's mean reward, last round's best reward, last training loss,
    fraction of the current round used]``.
    Action: the knob value(s) in the knob's own units, ``Box(low, high, (dim,))``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: Task,
        *,
        group_size: int = 8,
        steps_per_round: int | None = None,
        commit_rule: str = "best",
        reward: str = "score",
        max_move: float = 1.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if group_size < 2:
            raise ConfigError(f"group size must be >= 2, got {group_size}")
        if commit_rule not in COMMIT_RULES:
            raise ConfigError(f"unknown commit rule {commit_rule!r} (choose from {', '.join(COMMIT_RULES)})")
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r} (choose from {', '.join(REWARDS)})")
        if not 0 < max_move <= 1:
            raise ConfigError(f"max_move must be in (0, 1], got {max_move}")
        self.task = task
        self.knob = task.knob
        self.group_size = int(group_size)
        total = int(task.total_steps)
        if total < 1:
            raise ConfigError(f"task has {total} training steps; need >= 1")
        if not 0 <= int(warmup_steps) < total:
            raise ConfigError(f"warm-up must be >= 0 and below the run's {total} training steps, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.steps_per_round = int(steps_per_round or max(1, (total - self.warmup_steps) // 8))
        if self.steps_per_round < 1:
            raise ConfigError(f"steps per round must be >= 1, got {steps_per_round}")
        self.commit_rule = commit_rule
        self.reward_mode = reward
        self.max_move = float(max_move)
        dim = self.knob.dim
        self.action_space = spaces.Box(
            low=np.full(dim, self.knob.low, dtype=np.float32),
            high=np.full(dim, self.knob.high, dtype=np.float32),
            dtype=np.float32,
        )
        inf = OBS_LIMIT
        self.observation_space = spaces.Box(
            low=np.array([0.0] + [0.0] * dim + [-inf, -inf, -inf, 0.0], dtype=np.float32),
            high=np.array([1.0] + [1.0] * dim + [inf, inf, inf, 1.0], dtype=np.float32),
            dtype=np.float32,
        )
        self.listeners: list[Callable[[Event], None]] = []
        #: a :class:`hpctl.engines.RunWorkers` when an engine runs probe groups and grid points
        #: elsewhere (the runner sets it); None: everything runs here, in order
        self.workers: Any = None
        self.probes = 0  # every probe this env ever ran, across episodes (the budget counter)
        self.episodes = 0
        self._init_counters()

    # ------------------------------------------------------------------ state ----
    def _init_counters(self) -> None:
        self.current = self.knob.default_value.copy()
        self.steps_done = 0
        self.round = 0
        self.last_loss = 0.0
        self._round_values: list[np.ndarray] = []
        self._round_scores: list[float] = []
        self._baseline: float | None = None
        self._last_rewards: list[float] = []
        self._worst_reward: float | None = None
        self._episode_start_probes = getattr(self, "probes", 0)

    @property
    def progress(self) -> float:
        return min(1.0, self.steps_done / max(1, self.task.total_steps))

    @property
    def done(self) -> bool:
        return self.steps_done >= self.task.total_steps

    def _obs(self) -> np.ndarray:
        r = [x for x in self._last_rewards if math.isfinite(x)]
        mean_r = float(np.mean(r)) if r else 0.0
        best_r = float(np.max(r)) if r else 0.0
        loss = self.last_loss if math.isfinite(self.last_loss) else 0.0
        obs = np.concatenate(
            [
                [self.progress],
                np.clip(self.knob.to_unit(self.current), 0.0, 1.0),
                np.clip([mean_r, best_r, loss], -OBS_LIMIT, OBS_LIMIT),
                [len(self._round_scores) / self.group_size],
            ]
        ).astype(np.float32)
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "value": self.current.copy(),
            "steps_done": self.steps_done,
            "round": self.round,
            "episode_probes": self.probes - self._episode_start_probes,
            "loss": self.last_loss,
        }

    def _emit(self, event: Event) -> None:
        for fn in self.listeners:
            fn(event)

    # ------------------------------------------------------------- gym API -------
    def observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The current observation and info, without resetting (for agents attaching mid-run)."""
        return self._obs(), self._info()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task.reset(seed)
        self._init_counters()
        self.episodes += 1
        self._emit({"event": "reset", "episode": self.episodes, "probes": self.probes})
        if self.warmup_steps:  # trained at the starting value before the first round: no probe sees step 0
            self.last_loss = float(self.task.train(self.warmup_steps, self.current.copy()))
            self.steps_done = self.warmup_steps
            self._emit({"event": "warmup", "step": self.steps_done, "episode": self.episodes, "probe": self.probes,
                        "value": self.current.copy(), "loss": self.last_loss})
        return self._obs(), self._info()

    def step(self, action):
        value = self.knob.clip(np.asarray(action, dtype=np.float64))
        score = self.probe(value)
        if self.reward_mode == "improvement" and math.isfinite(score):
            reward = score - self.baseline()
        else:
            reward = score
        if not math.isfinite(reward):
            reward = self._worst_reward if self._worst_reward is not None else 0.0
        else:
            self._worst_reward = reward if self._worst_reward is None else min(self._worst_reward, reward)
        if len(self._round_scores) >= self.group_size:
            self.advance()
        terminated = self.done
        return self._obs(), float(reward), terminated, False, self._info()

    def close(self) -> None:
        """Release the task's resources (:meth:`hpctl.task.Task.close`; the runner calls that itself)."""
        self.task.close()
        super().close()

    # --------------------------------------------------------- group API ---------
    def probe(self, value: Any, kind: str = "candidate") -> float:
        """Score one value at the current training state; counts against the budget.

        Returns NaN when the probe raised or returned a non-finite number (recorded as a
        ``fault`` event); the task guarantees the state is unchanged either way.
        """
        value = self.knob.validate(value)
        error = None
        try:
            score = float(self.task.probe(value))
        except Exception as exc:  # noqa: BLE001 - a fault is recorded, not raised
            if isinstance(exc, (KeyboardInterrupt, ConfigError)):
                raise
            score, error = float("nan"), f"{type(exc).__name__}: {exc}"
        return self.record(value, score, kind=kind, error=error)

    def record(self, value: Any, score: float, kind: str = "candidate", error: str | None = None) -> float:
        """Account for a score measured outside :meth:`probe` (e.g. a grid point's full run).

        Counts one probe against the budget and emits the same ``probe`` (and ``fault``)
        events as :meth:`probe`; returns the score, NaN if it is not finite.
        """
        value = self.knob.validate(value)
        score = float(score)
        self.probes += 1
        if not math.isfinite(score):
            self._emit(
                {
                    "event": "fault", "kind": kind, "round": self.round, "step": self.steps_done,
                    "probe": self.probes, "value": value.copy(), "error": error or f"non-finite score {score}",
                }
            )
            score = float("nan")
        if kind == "candidate":
            self._round_values.append(value.copy())
            self._round_scores.append(score)
        self._emit(
            {
                "event": "probe", "kind": kind, "round": self.round, "step": self.steps_done,
                "episode": self.episodes, "probe": self.probes, "value": value.copy(), "score": score,
                "current": self.current.copy(),
            }
        )
        return score

    def probe_group(self, values: Any) -> np.ndarray:
        """Probe each row of ``values`` at the same training state.

        With probe workers (``env.workers``) the rows are scored in parallel on replicas of
        the task; the scores, events and the task's state afterwards are the sequential ones.
        """
        vals = np.asarray(values, dtype=np.float64).reshape(-1, self.knob.dim)
        if self.workers is None or not self.workers.probes or len(vals) < 2:
            return np.array([self.probe(v) for v in vals], dtype=np.float64)
        vals = np.stack([self.knob.validate(v) for v in vals])
        outcomes = self.workers.probe_group(self.task.snapshot(), vals, self.worker_fault)
        self.task.skip_probes(len(vals))  # as if this task had run them
        scores = []
        for v, outcome in zip(vals, outcomes):
            raise_user_error(outcome)
            score, error = score_of(outcome)
            scores.append(self.record(v, score, kind="candidate", error=error))
        return np.array(scores, dtype=np.float64)

    def full_runs(self, values: Any) -> list[tuple[float, str | None]]:
        """``task.full_run`` of each row of ``values`` on the workers, in parallel, recording
        nothing; ``(score, error)`` per row (NaN and the error for a failed one). The task
        ends in the state of the last row's run, as if it had run them in order."""
        vals = [self.knob.validate(v) for v in np.asarray(values, dtype=np.float64).reshape(-1, self.knob.dim)]
        outcomes, final = self.workers.full_runs(self.task.snapshot(), vals, self.worker_fault)
        if final is not None:
            self.task.restore(final)
        for outcome in outcomes:
            raise_user_error(outcome)
        return [score_of(o) for o in outcomes]

    def worker_fault(self, value: Any, error: str) -> None:
        """Record a worker lost mid-probe (its probe is repeated, so nothing is lost); no probe is counted."""
        self._emit({"event": "fault", "kind": "worker", "round": self.round, "step": self.steps_done,
                    "probe": self.probes, "value": np.asarray(value, dtype=np.float64).copy(), "error": error})

    def baseline(self) -> float:
        """Score at the current value, probed once per training state (cached)."""
        if self._baseline is None:
            self._baseline = self.probe(self.current, kind="baseline")
        return self._baseline

    def bounded(self, target: Any) -> np.ndarray:
        """``target`` moved towards from the current value by at most ``max_move``."""
        target = self.knob.clip(target)
        u_cur, u_tgt = self.knob.to_unit(self.current), self.knob.to_unit(target)
        u_new = u_cur + np.clip(u_tgt - u_cur, -self.max_move, self.max_move)
        return self.knob.clip(self.knob.from_unit(u_new))

    def _rule_target(self) -> np.ndarray:
        vals, scores = self._round_values, np.array(self._round_scores, dtype=np.float64)
        finite = np.isfinite(scores)
        if self.commit_rule == "stay" or not vals or not finite.any():
            return self.current
        if self.commit_rule == "last":
            return vals[-1]
        if self.commit_rule == "mean":
            return np.mean([v for v, ok in zip(vals, finite) if ok], axis=0)
        best = int(np.nanargmax(np.where(finite, scores, -np.inf)))
        base = self.baseline()
        if math.isfinite(base) and scores[best] < base:
            return self.current  # guard: never move to a value that probes worse
        return vals[best]

    def advance(self, value: Any | None = None) -> float:
        """Commit a value (or the commit rule's choice), then train one round.

        Returns the mean training loss of the round.
        """
        if self.done:
            raise RuntimeError("the training run is over; call reset()")
        target = self._rule_target() if value is None else value
        self.current = self.bounded(target)
        steps = min(self.steps_per_round, self.task.total_steps - self.steps_done)
        loss = float(self.task.train(steps, self.current.copy()))
        self.steps_done += steps
        self.last_loss = loss
        self._last_rewards = list(self._round_scores)
        if not math.isfinite(loss):
            self._emit({"event": "fault", "kind": "train", "round": self.round, "step": self.steps_done,
                        "probe": self.probes, "value": self.current.copy(), "error": f"training loss {loss}"})
        self._emit(
            {"event": "commit", "round": self.round, "step": self.steps_done, "episode": self.episodes,
             "probe": self.probes, "value": self.current.copy(), "loss": loss}
        )
        self.round += 1
        self._round_values, self._round_scores, self._baseline = [], [], None
        return loss

    # ------------------------------------------------------------ checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        return {
            "current": self.current.copy(), "steps_done": self.steps_done, "round": self.round,
            "last_loss": self.last_loss,
            # one array each (a search controller's whole budget can be a single round)
            "round_values": np.array(self._round_values, dtype=np.float64).reshape(-1, self.knob.dim),
            "round_scores": np.array(self._round_scores, dtype=np.float64), "baseline": self._baseline,
            "last_rewards": list(self._last_rewards), "worst_reward": self._worst_reward,
            "probes": self.probes, "episodes": self.episodes, "task": self.task.snapshot(),
            "np_random": self.np_random.bit_generator.state if self._np_random is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task.restore(state["task"])
        self.current = np.asarray(state["current"], dtype=np.float64)
        self.steps_done, self.round = int(state["steps_done"]), int(state["round"])
        self.last_loss = float(state["last_loss"])
        self._round_values = [np.asarray(v) for v in state["round_values"]]
        self._round_scores = [float(x) for x in state["round_scores"]]
        self._baseline = state["baseline"]
        self._last_rewards = list(state["last_rewards"])
        self._worst_reward = state["worst_reward"]
        self.probes, self.episodes = int(state["probes"]), int(state["episodes"])
        if state.get("np_random") is not None:
            self.np_random.bit_generator.state = state["np_random"]
