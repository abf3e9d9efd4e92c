"""What a plugin implements: a training loop with a knob, probes, and state.

A :class:`Task` is one training run whose knob a controller sets. The environment
(:mod:`hpctl.control_env`) drives it in rounds: a few probes of candidate values at the *same*
training state, then ``train(steps, value)`` at the committed value.

A :class:`Plugin` is the factory the CLI finds through the ``hpctl.plugins`` entry-point
group: it names its options (a config dataclass, turned into CLI flags) and builds a
Task from them. A third-party package registers one in its own ``pyproject.toml``::

    [project.entry-points."hpctl.plugins"]
    my_knob = "my_package.plugin:MyPlugin"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from hpctl.knob import Knob


class Task(ABC):
    """One training loop whose knob is learned online.

    Contract (:func:`hpctl.testing.check_task` checks it on your task):
      * ``probe`` never changes the training state: after it returns (or raises) the
        trainable state is bit-for-bit what it was before. Only its own randomness (probe
        noise) may advance, exactly as :meth:`skip_probes` advances it.
      * ``snapshot``/``restore`` capture *all* of the trainable state (weights,
        optimizer, RNGs of the training loop): training on after ``restore(s)`` does what
        training on after ``snapshot()`` did. A snapshot is a copy (later training must not
        change it). Snapshots are used for resets, probe replicas, forks and checkpoints.
      * A snapshot goes into checkpoints through :mod:`hpctl.statefile` (no pickle: reading a
        checkpoint never runs code), so it may hold only: ``None``, ``bool``, ``int``,
        ``float``, ``str``; numpy scalars and arrays of bool, (u)int8-64, float16-64 (and
        complex64 arrays); torch tensors; and lists, tuples and dicts of these (dict keys:
        str, int, float, bool, None or tuples of them). A tensor comes back detached,
        contiguous and on the CPU (``restore`` moves it where it belongs, e.g. with
        ``param.copy_(t)``), an ``OrderedDict`` such as ``model.state_dict()`` as a plain dict.
        Anything else (a namedtuple, a dataclass, a custom object, bytes) is refused with a
        one-line :class:`hpctl.statefile.StateTypeError` naming it and its place
        (``state['task']['params'][1]``); turn it into a dict first.
      * Scores are "higher is better" (e.g. minus a loss, an F1).
    """

    #: the knob the controller sets
    knob: Knob
    #: optimizer steps in one full training run
    total_steps: int = 100
    #: set by the runner; a plugin calls ``phase_listener(name, "start", {"params": {...}})``,
    #: ``phase_listener(name, "log", {"step": i, "train_loss": ...})`` for every step and
    #: ``phase_listener(name, "end", {"seconds": ..., "status": "FINISHED"|"FAILED"|"KILLED", ...})``
    #: around its long phases (e.g. training an adapter), and each becomes a nested MLflow
    #: run with those params and per-step metrics
    phase_listener: Callable[[str, str, dict[str, Any]], None] | None = None
    #: wall seconds of the plugin's own phases (e.g. ``{"adapters_s": 41.2}``); the runner
    #: adds them to ``result.json``'s ``phases`` beside ``controller_s`` and ``final_s``.
    #: A task that records any assigns its own dict (this shared default is read-only).
    phase_seconds: Mapping[str, float] = MappingProxyType({})

    @abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Go back to the start of training (the initial trainable state)."""

    @abstractmethod
    def train(self, steps: int, value: np.ndarray) -> float:
        """Run ``steps`` optimizer steps with the knob at ``value``; return the mean loss."""

    @abstractmethod
    def probe(self, value: np.ndarray) -> float:
        """Score ``value`` on the micro-dev set at the current state (higher is better)."""

    @abstractmethod
    def snapshot(self) -> Any:
        """The trainable state, to be given back to :meth:`restore` (a copy; see the contract
        above for what it may hold)."""

    @abstractmethod
    def restore(self, state: Any) -> None:
        """Restore a state taken by :meth:`snapshot`."""

    def prepare(self) -> None:
        """Load now what every training state shares (a backbone, data), nothing else.

        An engine's worker calls it on its replica of the task as the run starts, so the
        loading overlaps the run's own setup instead of delaying the first probe group or
        grid point. It must not write to the run folder. The default does nothing (a task
        loads lazily on first use anyway).
        """

    def skip_probes(self, n: int) -> None:
        """Advance per-probe randomness as ``n`` probes at this state would.

        Parallel probing (:mod:`hpctl.engines`) runs probe ``i`` of a group on a replica
        restored from the group's snapshot after ``skip_probes(i)``, and the run's own task
        skips the whole group afterwards, so scores and state equal sequential probing.
        A task whose probes draw no random numbers (most) needs nothing here; one that
        draws (e.g. probe noise) draws and discards what ``n`` probes would.
        """

    def evaluate(self, split: str, value: np.ndarray) -> dict[str, float]:
        """Metrics of the current state with the knob at ``value`` on ``split``."""
        return {"score": float(self.probe(value))}

    def full_run(self, value: np.ndarray) -> float:
        """A whole training run from scratch at a fixed ``value``; return its dev score.

        This is what one point of a grid search costs. The default resets, trains
        ``total_steps`` steps and probes; plugins override it when the dev set differs
        from the micro-dev set.
        """
        self.reset()
        self.train(self.total_steps, value)
        return float(self.probe(value))

    def finish(self, value: np.ndarray) -> dict[str, float]:
        """The final phase once a value is learned; return test metrics."""
        return self.evaluate("test", value)

    def optimum(self, progress: float = 1.0) -> np.ndarray | None:
        """The known best value (synthetic tasks only), else None."""
        return None

    def artifacts(self) -> list[Path]:
        """Files or folders the run produced (e.g. adapters); logged as MLflow artifacts."""
        return []

    def describe(self) -> dict[str, Any]:
        """Parameters worth logging."""
        return {}

    def close(self) -> None:
        """Release resources."""


class Plugin(ABC):
    """A factory of Tasks with its own options.

    ``Config`` is a dataclass whose fields become ``--flag`` options of
    ``hpctl run NAME`` (underscores become dashes; ``metadata={"help": ...}`` is the help
    text; ``metadata={"choices": [...]}`` restricts the values) and keys of the YAML
    config file.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    #: per-plugin defaults for the controller run
    default_controller: ClassVar[str] = "grpo"
    default_budget: ClassVar[int] = 64
    default_group_size: ClassVar[int] = 8
    #: the test metric `hpctl compare` ranks controllers by (higher is better)
    primary_metric: ClassVar[str] = "score"
    #: controller settings this plugin needs by default, e.g. ``{"grid": {"full_runs": True}}``
    #: (a grid point is a whole fine-tune, as in the paper); the user's settings win
    controller_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: what the default preset gives options the user leaves unset (None), shown in ``--help``
    preset_defaults: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def make_task(self, config: Any, *, seed: int, out_dir: Path) -> Task:
        """Build a task. Raise :class:`hpctl.errors.HpctlError` for bad user input."""

    def env_kwargs(self, config: Any) -> dict[str, Any]:
        """Extra :class:`hpctl.control_env.ControlEnv` keyword arguments for this plugin."""
        return {}

    def eval_run(self, run_dir: Path, config: Any, *, data: str, lang: str | None = None) -> dict[str, float]:
        """Score a finished run's final artifact on a data file (``hpctl eval``)."""
        from hpctl.errors import ConfigError

        raise ConfigError(f"plugin {self.name!r} does not support `hpctl eval`")
