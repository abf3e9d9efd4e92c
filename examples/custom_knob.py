"""Learn a knob of your own training loop: the learning rate of SGD on a tiny regression.

Run:  python examples/custom_knob.py        (seconds; prints the learned learning rate)

A Task is your training loop: ``train`` (k steps at a value), ``probe`` (score a value at
the current state without changing it), ``snapshot``/``restore``. A Plugin makes Tasks
from a Config dataclass; registered under the ``hpctl.plugins`` entry point it becomes
``hpctl run regression_lr`` (see docs/add_your_own_knob.md). Here it is used directly,
after :func:`hpctl.testing.check_task` has checked that the task keeps the contract (it
raises, naming the broken rule, if not).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpctl.controllers.base import get_controller
from hpctl.control_env import ControlEnv
from hpctl.knob import Knob
from hpctl.task import Plugin, Task
from hpctl.testing import check_task


class RegressionLR(Task):
    """Mini-batch SGD on least squares; the knob is the learning rate (searched on a log scale)."""

    knob = Knob("lr", 1e-3, 0.5, default=1e-2, log=True)

    def __init__(self, seed: int = 0, total_steps: int = 200, lookahead: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(512, 8)) * np.linspace(0.5, 2.0, 8)  # ill-conditioned: lr matters
        self.y = self.x @ rng.normal(size=8) + 0.1 * rng.normal(size=512)
        self.total_steps, self.lookahead, self.seed = total_steps, lookahead, seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        self.w = np.zeros(8)
        self.rng = np.random.default_rng(self.seed if seed is None else seed)

    def _sgd(self, w: np.ndarray, lr: float, rows: np.ndarray) -> np.ndarray:
        xb, yb = self.x[rows], self.y[rows]
        return w - lr * 2 * xb.T @ (xb @ w - yb) / len(rows)

    def train(self, steps: int, value: np.ndarray) -> float:
        for _ in range(steps):
            self.w = self._sgd(self.w, float(value[0]), self.rng.integers(0, 448, 32))
        return float(np.mean((self.x[:448] @ self.w - self.y[:448]) ** 2))

    def probe(self, value: np.ndarray) -> float:
        w = self.w.copy()  # look ahead on a copy: the training state is never touched
        for _ in range(self.lookahead):
            w = self._sgd(w, float(value[0]), np.arange(448))
        mse = float(np.mean((self.x[448:] @ w - self.y[448:]) ** 2))  # micro-dev: the last 64 rows
        return -float(np.log(mse))  # log scale: a diverging lr scores low, not -1e60

    def snapshot(self) -> dict:
        return {"w": self.w.copy(), "rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.w = state["w"].copy()
        self.rng.bit_generator.state = state["rng"]


@dataclass
class RegressionConfig:  # each field is a flag of `hpctl run regression_lr` once registered
    total_steps: int = field(default=200, metadata={"help": "SGD steps in one run"})
    lookahead: int = field(default=5, metadata={"help": "steps a probe looks ahead"})


class RegressionPlugin(Plugin):
    name = "regression_lr"
    description = "learning rate of SGD on a least-squares problem"
    Config = RegressionConfig

    def make_task(self, config: RegressionConfig, *, seed: int, out_dir: Path) -> RegressionLR:
        return RegressionLR(seed, config.total_steps, config.lookahead)


if __name__ == "__main__":
    out_dir = Path(tempfile.mkdtemp())
    # snapshots round-trip through checkpoints, probes leave the state alone, restore reproduces training
    check_task(lambda: RegressionPlugin().make_task(RegressionConfig(), seed=0, out_dir=out_dir), steps=5)
    task = RegressionPlugin().make_task(RegressionConfig(), seed=0, out_dir=out_dir)
    env = ControlEnv(task, group_size=8, steps_per_round=20)  # 10 rounds of 8 probes + a baseline
    env.reset(seed=0)
    learned = get_controller("grpo")(env, seed=0).run(90)  # spend at most ~90 probes
    print(f"learned lr = {task.knob.format(learned)} after {env.probes} probes")
    for name, lr in (("default", task.knob.default_value), ("learned", learned)):
        print(f"{name} lr {task.knob.format(lr)}: micro-dev score after a full run {task.full_run(lr):+.4f}")
