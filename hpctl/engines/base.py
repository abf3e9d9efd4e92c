"""The executor interface: trials, grid points and probe groups are tasks an engine runs.

An :class:`Engine` does two things:

* :meth:`Engine.map` runs independent calls ``fn(*args)`` (``compare``'s trials) and
  returns one :class:`Outcome` per call, in order. A call never raises into the engine:
  :func:`call` turns its exception into an Outcome, so a crashed call costs only itself.
* :meth:`Engine.replica_pool` starts workers that each hold a :class:`Replica` of one
  run's task (built once per worker: for grasp_lora, the backbone is loaded once per
  worker) and run a group of probes or grid points (full fine-tunes) in parallel.

What a worker runs is built from the run's spec by the plugin (:func:`build_task`), the
same way :func:`hpctl.runner.build` builds the run's own task, so no task object ever
travels between processes: only the spec, the run folder's path, knob values and the
trainable state (:meth:`hpctl.task.Task.snapshot`, sent once per group) do.

Why parallel results equal sequential ones: call ``i`` of a group runs on a replica
restored from the group's start state after :meth:`~hpctl.task.Task.skip_probes` ``(i)``,
i.e. in the state the run's own task would be in after ``i`` sequential probes (probes
of one group are independent, but may draw noise). After the group the run's own task
skips the group's probes, or adopts the last grid point's final state, as if it had run
them itself. So the scores, the events and the checkpoints are the sequential run's.

:class:`RunWorkers` is what a :class:`~hpctl.control_env.ControlEnv` holds as
``env.workers`` while a run uses an engine.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from hpctl.errors import ConfigError, HpctlError

__all__ = ["Engine", "Outcome", "Replica", "ReplicaPool", "RunWorkers", "build_task", "call", "raise_user_error",
           "score_of"]


@dataclass
class Outcome:
    """What one call gave back.

    ``value`` on success; otherwise ``error`` (one line). ``user_error`` names the
    :class:`~hpctl.errors.HpctlError` subclass when the call failed on bad input (the
    caller re-raises it: the same input fails everywhere); ``died`` is set when the worker
    process itself was lost (after the engine's retries).
    """

    value: Any = None
    error: str | None = None
    user_error: str | None = None
    died: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Outcome:
    """``fn(*args, **kwargs)`` as an :class:`Outcome`: never raises an ordinary exception."""
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except HpctlError as exc:
        return Outcome(error=str(exc), user_error=type(exc).__name__, seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who decides
        return Outcome(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
    return Outcome(value=value, seconds=time.perf_counter() - t0)


def raise_user_error(outcome: Outcome) -> None:
    """Re-raise a worker's user error as the same :mod:`hpctl.errors` class, one line."""
    if outcome.user_error is None:
        return
    from hpctl import errors

    cls = getattr(errors, outcome.user_error, None)
    if not (isinstance(cls, type) and issubclass(cls, HpctlError)):
        cls = HpctlError
    raise cls(outcome.error)


# ----------------------------------------------------------------------- engines --
class Engine(ABC):
    """Where independent calls and probe replicas run."""

    name: ClassVar[str]
    #: whether calls may run at the same time (in other processes or machines)
    parallel: ClassVar[bool] = False

    @abstractmethod
    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], *,
            on_result: Callable[[int, Outcome], None] | None = None,
            in_process: Callable[[int], dict[str, Any]] | None = None) -> list[Outcome]:
        """``fn(*args)`` for each ``args`` in ``calls``; the outcomes in the order of ``calls``.

        ``fn`` must be a module-level function and its arguments picklable (they may go to
        another machine). ``on_result(i, outcome)`` is called as each call finishes; if it
        raises, the calls not finished yet are cancelled and the error propagates.
        ``in_process(i)`` gives extra keyword arguments for call ``i`` when it runs in this
        process (e.g. a progress bar, which cannot travel); engines that run calls
        elsewhere ignore it.
        """

    def capacity(self) -> int:
        """How many workers of the declared size can run at once."""
        return 1

    def replica_pool(self, spec_json: dict[str, Any], out_dir: Path, workers: int) -> "ReplicaPool":
        """``workers`` replicas of the run's task (see :class:`Replica`), started now."""
        raise ConfigError(f"--probe-workers needs --engine ray (engine {self.name!r} has no workers)")

    def close(self) -> None:
        """Release what the engine started (a no-op for engines shared by the process)."""


class ReplicaPool(ABC):
    """Replicas of one run's task; each group of calls starts from one training state."""

    @abstractmethod
    def group(self, kind: str, state: Any, values: np.ndarray, on_fault: Callable[[np.ndarray, str], None],
              want_state: bool = False) -> list[Outcome]:
        """``Replica.<kind>`` (``"probe"`` or ``"full_run"``) for each row of ``values``,
        call ``i`` from ``state`` advanced by ``i`` probes; the outcomes in order.

        A replica that dies is restarted and its calls repeated; each death is reported
        through ``on_fault(value, message)``. ``want_state``: the last full run returns
        its final state.
        """

    @abstractmethod
    def close(self) -> None:
        """Stop the replicas."""


# ------------------------------------------------------------- worker-side code --
def build_task(spec_json: dict[str, Any], out_dir: str | Path):
    """The run's task, built by its plugin from the spec, as :func:`hpctl.runner.build` does."""
    from hpctl.config import build_dataclass
    from hpctl.registry import load_plugin
    from hpctl.rundir import RunSpec
    from hpctl.seeding import seed_everything

    spec = RunSpec.from_json(spec_json)
    plugin = load_plugin(spec.plugin)
    config = build_dataclass(plugin.Config, spec.plugin_config, what=f"plugin {spec.plugin!r}")
    seed_everything(spec.options.seed)
    return plugin.make_task(config, seed=spec.options.seed, out_dir=Path(out_dir))


def _phase_delta(before: dict[str, float], after: Any) -> dict[str, float]:
    return {k: float(v) - before.get(k, 0.0) for k, v in dict(after).items() if float(v) != before.get(k, 0.0)}


class Replica:
    """One copy of a run's task (the body of a worker): scores probes, runs grid points.

    The task is built from the spec on the first call (or :meth:`warm`). A call carries
    the key of its group and a way to get the group's start state; the state is fetched
    and restored once per group, and between two probes of the same group the replica
    only skips the probes other replicas run. A grid point changes the training state, so
    it always starts from the restored state.
    """

    def __init__(self, spec_json: dict[str, Any], out_dir: str) -> None:
        self.spec_json, self.out_dir = spec_json, out_dir
        self.task: Any = None
        self.key: Any = None
        self.position: int | None = None  # probes' worth of randomness used since the restore

    def warm(self) -> None:
        """Build the task and let it load what every state shares (:meth:`~hpctl.task.Task.prepare`)
        now, rather than on the first call."""
        if self.task is None:
            self.task = build_task(self.spec_json, self.out_dir)
            self.task.prepare()

    def _at(self, key: Any, get_state: Callable[[], Any], index: int) -> None:
        """Put the task in the group's start state advanced by ``index`` probes."""
        self.warm()
        if key != self.key or self.position is None or index < self.position:
            self.key, self.position = None, None
            self.task.restore(get_state())
            self.key, self.position = key, 0
        self.task.skip_probes(index - self.position)
        self.position = None  # unknown until the call returns

    def probe(self, key: Any, get_state: Callable[[], Any], index: int, value: np.ndarray) -> Outcome:
        """Probe ``index`` of group ``key``; ``Outcome.value`` is the score."""
        t0 = time.perf_counter()
        try:
            self._at(key, get_state, int(index))
            score = float(self.task.probe(np.asarray(value, dtype=np.float64)))
            self.position = int(index) + 1
            return Outcome(value=score, seconds=time.perf_counter() - t0)
        except ConfigError as exc:  # raised by the run, as ControlEnv.probe does
            return Outcome(error=str(exc), user_error=type(exc).__name__, seconds=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a probe fault, recorded as ControlEnv.probe does
            return Outcome(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)

    def full_run(self, key: Any, get_state: Callable[[], Any], index: int, value: np.ndarray,
                 want_state: bool = False) -> Outcome:
        """Grid point ``index`` of group ``key``: ``task.full_run(value)`` from the group's
        start state advanced by ``index`` probes. ``Outcome.value``: ``{"score", "error",
        "phases", "state"}`` (``state`` after the run if ``want_state``); a failed run is a
        NaN score with its error, as in the grid."""
        t0 = time.perf_counter()
        try:
            self.key = None  # a full run changes the training state: the next call restores
            self._at(key, get_state, int(index))
            self.key = None
            before = {k: float(v) for k, v in dict(self.task.phase_seconds).items()}
            error = None
            try:
                score = float(self.task.full_run(np.asarray(value, dtype=np.float64)))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed point is a fault, as in the grid
                score, error = float("nan"), f"{type(exc).__name__}: {exc}"
            return Outcome(value={"score": score, "error": error, "phases": _phase_delta(before, self.task.phase_seconds),
                                  "state": self.task.snapshot() if want_state else None},
                           seconds=time.perf_counter() - t0)
        except ConfigError as exc:
            return Outcome(error=str(exc), user_error=type(exc).__name__, seconds=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - restoring or snapshotting failed: the point failed
            return Outcome(error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


# --------------------------------------------------------------- a run's workers --
class RunWorkers:
    """The parallel parts of one run (``env.workers``): probe groups and grid points.

    ``spec_json`` is the run's spec for the workers (engine ``local``: a worker does
    everything itself); ``out_dir`` the run folder, which workers read (e.g. grasp_lora's
    saved source and target adapters). The replicas are started by :meth:`start` (the
    runner calls it as the run starts when ``--probe-workers`` is given, so their setup
    overlaps the run's own) or on first use; there are ``probe_workers`` of them, or as
    many as the engine can run at once (at most one per grid point) when not given.
    """

    def __init__(self, engine: Engine, spec_json: dict[str, Any], out_dir: Path, *,
                 probe_workers: int | None = None) -> None:
        self.engine = engine
        self.spec_json = spec_json
        self.out_dir = Path(out_dir).resolve()
        self.probe_workers = probe_workers
        self._pool: ReplicaPool | None = None
        #: seconds the grid points' tasks spent per phase, summed over points (compute, not wall)
        self.phase_seconds: dict[str, float] = {}

    @property
    def probes(self) -> bool:
        """Whether probe groups go to the workers (only with ``--probe-workers``)."""
        return bool(self.probe_workers)

    def start(self, wanted: int | None = None) -> ReplicaPool:
        if self._pool is None:
            n = self.probe_workers or max(1, min(self.engine.capacity(), wanted or self.engine.capacity()))
            self._pool = self.engine.replica_pool(self.spec_json, self.out_dir, int(n))
        return self._pool

    def probe_group(self, state: Any, values: np.ndarray, on_fault: Callable[[np.ndarray, str], None]) -> list[Outcome]:
        return self.start(len(values)).group("probe", state, values, on_fault)

    def full_runs(self, state: Any, values: Sequence[np.ndarray],
                  on_fault: Callable[[np.ndarray, str], None]) -> tuple[list[Outcome], Any]:
        """Each value's ``task.full_run``, in parallel; the outcomes (``value``: the dev
        score) and the last point's final state (None if it failed)."""
        vals = np.asarray(values, dtype=np.float64)
        outcomes = self.start(len(vals)).group("full_run", state, vals, on_fault, want_state=True)
        final = None
        scores = []
        for o in outcomes:
            if o.ok:
                for k, sec in o.value["phases"].items():
                    self.phase_seconds[k] = self.phase_seconds.get(k, 0.0) + sec
                final = o.value["state"]
                scores.append(Outcome(value=o.value["score"], error=o.value["error"], seconds=o.seconds))
            else:
                scores.append(Outcome(error=o.error, user_error=o.user_error, died=o.died, seconds=o.seconds))
                final = None
        return scores, final

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def score_of(outcome: Outcome) -> tuple[float, str | None]:
    """``(score, error)`` to record: NaN and the error for a failed call."""
    if outcome.ok:
        return float(outcome.value), None  # ControlEnv.record names a non-finite score itself
    return float("nan"), outcome.error
