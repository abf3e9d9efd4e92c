"""Ask/tell: a controller steering a knob inside a training loop you already have.

::

    import hpctl

    s = hpctl.Session(knob=hpctl.Knob("prune_ratio", 0.0, 0.9), controller="grpo",
                      budget=40, group_size=4, seed=0, out_dir="runs/mine")
    while not s.done:
        for value in s.ask():            # the values to probe at this training state
            s.tell(value, my_probe(value))
        train_some_steps(s.value)        # the committed value
    final_training(s.value)              # = s.learned once s.done

A whole group at once, scored in parallel, as :class:`Trial` handles told in any order::

    while not s.done:
        for trials in s.ask_groups():    # each list: every value the controller needs now
            for trial, score in zip(trials, pool.map(my_probe, [t.value for t in trials])):
                s.tell(trial, score)
        train_some_steps(s.value)

``direction="minimize"`` takes losses as they come (negated inside, reported with your
sign); :attr:`Session.trials` and :meth:`Session.trials_dataframe` are the table of every
probe.

The controllers are the ones ``hpctl run`` uses (``grpo``, ``random``, ``grid``, ``fixed``,
``tpe``, ``cmaes``, ``gp``, and third-party ones), on the same :class:`~hpctl.control_env.ControlEnv`: the same group
probing, commit rules, guard and budget accounting, the same MLflow run (parameters, every
probe, the committed value over training, ``run.png``) and a run folder with ``spec.json``,
``checkpoint.safetensors``, ``history.json`` and ``result.json``. With the same knob, seed, budget,
group size and rounds, a Session asks for exactly the values ``hpctl run`` probes and
learns the same value (tested on the synthetic landscape).

What one round is
-----------------
``ask()`` returns an iterator over the values the controller wants scored at the current
training state, one at a time: each is produced once the previous one has its score
(``tell``), because a controller may choose later probes from earlier scores (GRPO's guard
probe does). The iteration ends when the controller has committed: ``s.value`` is then
the value to train with until the next ``ask()``. Calling ``ask()`` again says "I have
trained"; :meth:`Session.report_loss` optionally passes the mean training loss of those
steps (logged, and part of the controller's observation). The last ``ask()`` may give no
value at all: the controller stopped (budget spent, or ``total_steps`` trained) and
``s.done`` turns true; ``s.value`` is then the learned value. The search controllers
(``random``, ``grid``, ``fixed``, and Optuna's ``tpe``, ``cmaes``, ``gp``) never commit: a round is ``group_size`` of their
candidates, training continues at the knob's default, and their answer is the best
candidate.

``ask_groups()`` is the same round one *request* at a time: each item is the list of
every value the controller needs before it can go on (GRPO: the baseline, then the whole
candidate group, then maybe a guard probe; Optuna's samplers: their group), as
:class:`Trial` handles. Tell them in any order (``tell(trial, score)``); the next list
comes once all of the last one are told. Why an iterator of groups rather than
``ask(n=...)``: the controller, not the caller, decides how many values it can use at
once, and the loop reads the same as the one-at-a-time loop.

``steps_done`` counts the training the controller has committed to: during a round the
steps trained before it, and once the round has committed also the round you are about to
train at ``s.value``. It is the step your loop stands at when it next calls ``ask()``, and
it reads the same after a resume as in an uninterrupted run, so a loop can be rebuilt from
it.

How the controller loop is turned inside out (the design choice)
-----------------------------------------------------------------
A controller is written as a loop that calls the environment synchronously
(``controller.run(budget, callback)`` calling ``env.baseline()``, ``env.probe_group()``,
``env.advance()``). A Session does not rewrite it. It runs the loop *restartably*:

* At every round boundary (the controller's ``callback``) the Session takes the
  controller's and the environment's ``state_dict()`` - the same state ``hpctl run
  --resume`` restarts from - and stops the loop.
* The environment's task is a stand-in for your loop (:class:`LoopTask`). When the
  controller asks it for a score it has not been told, it raises a control-flow signal
  (a ``BaseException``, so the environment's fault handling does not swallow it) and the
  Session hands that value to you.
* After each ``tell`` the Session restores the round's start state and runs the
  controller again from there, answering every request of the round from what you told,
  until it asks for something new. Each replay costs the controller's own arithmetic for
  one round (microseconds: a few Gaussian samples and a gradient step), never a probe.
  Events of replayed requests are not logged twice.

Why this rather than a worker thread whose ``probe()`` blocks on a queue fed by ``tell()``:

* **Deterministic by construction.** The controller's state at every request is a pure
  function of (round start state, answers so far); a replay that asks for a different
  value than the first time is detected and reported as a non-deterministic controller.
* **Errors on your thread, as one line.** The controller runs inside your ``ask()``
  call; nothing to marshal across threads, no worker left blocked when your loop stops
  or is interrupted.
* **Resume is the normal path.** The checkpoint is exactly (round start state, answers
  of the round); ``Session(..., resume=True)`` loads it and carries on with the same code
  that runs every round. Nothing of the controller's in-flight call stack needs saving.

The price: a controller must restart exactly from its ``state_dict()`` at a callback,
which is the contract ``hpctl run --resume`` already relies on. The Stable-Baselines3
agents do not (their learners are not checkpointed, and they reseed the process-wide
random generators, which would reach into your training loop), so ``ppo``, ``a2c``,
``sac`` and ``td3`` are refused with a one-line error. Grid search with
``full_runs=True`` is refused too: a grid point would be a whole training run of your
loop.

Checkpoints and resume
----------------------
``checkpoint.safetensors`` (a :mod:`hpctl.statefile`: reading it cannot run code) is
written at the end of every round and by :meth:`Session.save`. It records the round's
start state, the scores told in it, whether the round has committed, and the history. ``Session(..., resume=True)`` with the same arguments continues from it:
values told after it are asked again (the same values, deterministically). ``ask()``
always means "I have trained at ``s.value`` since the round ended", so restore your own
training state from a checkpoint taken after that round, or call ``s.save()`` whenever
you checkpoint your loop; the transformers callback saves the session into every
Trainer checkpoint.

Why one module: the driver, the round's record, the checkpoint and the recording of the
result are one state machine over the same fields (round start, answers, pending values,
event gate); spread over files its invariants would be harder to check.

Misuse (``tell`` without a pending ``ask``, a value other than the one asked, a value
outside the knob's bounds, a score that is not an int or float - ``"0.5"`` and ``True``
included -, a trial told twice, a trial of an earlier request or of another session,
``tell`` after the session is done, resuming with different arguments, a bad argument)
raises :class:`SessionError` or :class:`~hpctl.errors.ConfigError`, both
:class:`~hpctl.errors.HpctlError`, with a one-line message. A failure inside the
controller raises :class:`ControllerError` (traceback in ``error.txt`` of the run folder).
A session whose every probe failed (non-finite scores) ends FAILED with "all N probes
failed", as ``hpctl run`` does, rather than answering its starting value. A checkpoint
that is not one (truncated, edited, another format or version, a field missing or of the
wrong type) is a :class:`~hpctl.errors.ResumeError` naming the file and the field.

A session that is neither finished nor closed when the process exits (a loop that raised
without ``with``, a script that forgot :meth:`Session.finish`) or whose object is dropped
ends its MLflow run too: FAILED with the exception's line when the process dies of one,
KILLED otherwise; at exit the checkpoint is saved first, so ``resume=True`` continues.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import pickle
import sys
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hpctl.config import MAX_SEED
from hpctl.control_env import ControlEnv
from hpctl.controllers.base import Controller, get_controller
from hpctl.errors import ConfigError, HpctlError, ResumeError, one_line, shorten
from hpctl.knob import Knob
from hpctl.rundir import (CHECKPOINT, RESULT, SPEC, atomic_write_bytes, atomic_write_json, lock_run_dir,
                          mark_legacy, note_files, open_run_dir, to_jsonable)
from hpctl.task import Task
from hpctl.tracking import RunRecorder, Tracker, end_quietly, warn

__all__ = ["DIRECTIONS", "ControllerError", "LoopTask", "Session", "SessionError", "Trial"]

FORMAT = "hpctl.session/1"
#: ``total_steps`` when none is given: the controller stops on its budget only. Progress
#: (steps done / total) then stays ~0, so nothing may extrapolate over this horizon: GRPO's
#: drift rule caps its extrapolation at the progress its own rounds span
UNBOUNDED_STEPS = 2**62
#: what ``direction`` may be: a maximized score (the default) or a minimized loss
DIRECTIONS = ("maximize", "minimize")
#: spec keys a checkpoint of an older hpctl lacks, with the value they had then
_SPEC_DEFAULTS = {"direction": "maximize"}
#: MLflow run id -> the token of the live Session that owns it (a resume in the same
#: process takes the run over; the dropped session's finaliser then leaves it alone)
_RUN_OWNERS: dict[str, object] = {}
#: run folder (resolved) -> the Session writing it in this process: ``resume=True`` there takes
#: the folder over (the old object, e.g. one a traceback or a notebook variable still holds,
#: writes nothing more); another process is refused by the folder's lock
_FOLDER_WRITERS: "weakref.WeakValueDictionary[str, Session]" = weakref.WeakValueDictionary()


class SessionError(HpctlError):
    """The session was used out of order (tell without ask, a value not asked, tell after done)."""


class ControllerError(HpctlError):
    """The controller failed inside the session (a bug or an unsupported controller)."""


# ------------------------------------------------------------------ control flow ----
class _Need(BaseException):
    """The controller asked for something the user has not told yet (``kind``: "probe" or "train")."""

    def __init__(self, kind: str, value: np.ndarray, first: int | None = None) -> None:
        super().__init__(kind)
        self.kind, self.value = kind, value
        self.first = first  # the probe count before the first value asked (None: the env's count)


class _Boundary(BaseException):
    """The controller finished a round; its state was saved; stop until the next ``ask()``."""


class _Diverged(BaseException):
    """A replay asked for another value than the first run did: the controller is not deterministic."""


class LoopTask(Task):
    """The user's training loop as the controller's environment sees it.

    ``probe`` and ``train`` answer from the round's record (``answers``, in request
    order); a request beyond it raises the session's signal to hand the value to the user.
    It holds no training state: that lives in the user's loop.
    """

    def __init__(self, knob: Knob, total_steps: int) -> None:
        self.knob = knob
        self.total_steps = int(total_steps)
        self.answers: list[dict[str, Any]] = []
        self.cursor = 0

    def _answer(self, kind: str, value: np.ndarray) -> float:
        if self.cursor < len(self.answers):
            rec = self.answers[self.cursor]
            if rec["kind"] != kind or not np.array_equal(rec["value"], value):
                raise _Diverged(f"replay asked to {kind} {value.tolist()} where the first run asked to "
                                f"{rec['kind']} {np.asarray(rec['value']).tolist()}")
            self.cursor += 1
            return float(rec["result"])
        raise _Need(kind, np.asarray(value, dtype=np.float64).copy())

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset: the training state is the user's."""

    def train(self, steps: int, value: np.ndarray) -> float:
        return self._answer("train", value)

    def probe(self, value: np.ndarray) -> float:
        return self._answer("probe", value)

    def snapshot(self) -> None:
        return None

    def restore(self, state: Any) -> None:
        """Nothing to restore (see :meth:`reset`)."""

    def full_run(self, value: np.ndarray) -> float:
        raise ConfigError("a Session cannot run whole training runs (grid full_runs); probe at the current state")


class _LoopEnv(ControlEnv):
    """The ControlEnv of a session: a group probe hands all its values not told yet to the
    user at once, so a round is replayed once per group rather than once per value.

    ``asking`` is the kind of the probe being asked (``baseline``, ``candidate``, ``guard``,
    ...): what a :class:`Trial` reports before its event exists.
    """

    asking = "candidate"

    def probe(self, value: Any, kind: str = "candidate") -> float:
        self.asking = kind
        return super().probe(value, kind)

    def probe_group(self, values: Any) -> np.ndarray:
        vals = np.asarray(values, dtype=np.float64).reshape(-1, self.knob.dim)
        told = len(self.task.answers) - self.task.cursor  # answers left in the record: this group's first ones
        if told < len(vals):
            self.asking = "candidate"
            raise _Need("probe", np.stack([self.knob.validate(v) for v in vals[told:]]), first=self.probes + told)
        return super().probe_group(vals)


class _Gate:
    """Env listener in front of the recorder: drops the events a replay emits a second time,
    and gives probe scores the user's sign back (``sign`` -1: a minimizing session)."""

    def __init__(self, sink, sign: float = 1.0) -> None:
        self.sink = sink
        self.sign = sign
        self.seen = 0  # events emitted so far in this drive
        self.emitted = 0  # events of the current round already passed on
        self.loss_reported = True

    def __call__(self, event: dict[str, Any]) -> None:
        self.seen += 1
        if self.seen <= self.emitted:
            return
        self.emitted += 1
        if event["event"] == "fault" and event.get("kind") == "train" and not self.loss_reported:
            return  # no loss was reported for that round: not a fault
        if self.sign < 0 and "score" in event:
            event = {**event, "score": -event["score"]}
        self.sink(event)


class _Asks:
    """The values of one round, produced one at a time (see :meth:`Session.ask`); with
    ``groups``, the round's requests as lists of :class:`Trial` (:meth:`Session.ask_groups`)."""

    def __init__(self, session: "Session | None", groups: bool = False) -> None:
        self._session = session
        self._groups = groups

    def __iter__(self) -> "_Asks":
        return self

    def __next__(self) -> Any:
        if self._session is None:
            raise StopIteration
        return self._session._next_group() if self._groups else self._session._next_value()


class AttachedTracker(Tracker):
    """A :class:`~hpctl.tracking.Tracker` inside an MLflow run someone else owns (a Trainer's).

    Metric keys get the prefix ``hpctl/``, parameters and tags ``hpctl.``, so nothing
    collides with the owner's; :meth:`end` sends what is queued and leaves the run's
    status to its owner.
    """

    owns_run = False

    def metric(self, key: str, value: float, step: int = 0) -> None:
        super().metric(f"hpctl/{key}", value, step)

    def log_params(self, params: dict[str, Any]) -> None:
        super().log_params({"hpctl": params})

    def set_tags(self, tags: dict[str, Any]) -> None:
        super().set_tags({f"hpctl.{k}": v for k, v in tags.items()})



def _as_user_value(knob: Knob, value: np.ndarray) -> float | np.ndarray:
    return float(value[0]) if knob.dim == 1 else np.asarray(value, dtype=np.float64).copy()


class Trial:
    """One value to score: the handle :meth:`Session.tell` takes, and a row of :attr:`Session.trials`.

    Attributes:
        number: the probe's index in the session, from 0 (``history.json``'s ``probe`` - 1).
        value: the knob value to score (a float; an array for a vector knob).
        params: ``{component name: value}`` (e.g. ``{"prune_ratio": 0.37}``).
        round: the controller round it belongs to.
        step: the training steps done when it was asked.
        kind: ``baseline`` (the value training is at), ``candidate``, ``guard`` or
            ``revisit`` (GRPO's checks of a move).
        score: the score told, in your direction's sign; ``None`` while pending.
        state: ``"pending"`` (asked, not told), ``"complete"``, or ``"fail"`` (a non-finite
            score: recorded as a fault, as a failing probe is in ``hpctl run``).
    """

    __slots__ = ("number", "value", "params", "round", "step", "kind", "score", "state", "_owner", "_array",
                 "_result")

    def __init__(self, number: int, value: np.ndarray, knob: Knob, *, round: int, step: int, kind: str,  # noqa: A002
                 score: float | None = None, owner: object = None) -> None:
        self._array = np.asarray(value, dtype=np.float64).copy()
        self.number, self.round, self.step, self.kind = int(number), int(round), int(step), str(kind)
        self.value = _as_user_value(knob, self._array)
        self.params = knob.to_dict(self._array)
        self.score = None if score is None else float(score)
        self.state = "pending" if score is None else ("complete" if math.isfinite(score) else "fail")
        self._owner = owner
        self._result: float | None = None  # the score as the controller sees it (maximized)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain values (``value`` a float or a list)."""
        value = self.value.tolist() if isinstance(self.value, np.ndarray) else self.value
        return {"number": self.number, "value": value, "params": dict(self.params), "round": self.round,
                "step": self.step, "kind": self.kind, "score": self.score, "state": self.state}

    def __repr__(self) -> str:
        value = self.value.tolist() if isinstance(self.value, np.ndarray) else self.value
        return (f"Trial(number={self.number}, value={value!r}, round={self.round}, kind={self.kind!r}, "
                f"score={self.score!r}, state={self.state!r})")


def _score(score: Any, what: str) -> float:
    """``score`` as a float if it is an int or a float (numpy's too, or a 0-d array or tensor
    holding one); anything else - text, a bool, None - is a one-line SessionError."""
    item = score
    if getattr(score, "ndim", None) == 0 and hasattr(score, "item"):
        item = score.item()  # a numpy scalar array, a torch scalar tensor
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real):
        raise SessionError(f"{what} must be a number, got {_shown(score)} (a {type(score).__name__}; "
                           "give an int or a float)")
    return float(item)


# ---------------------------------------------------------------------- session ----
class Session:
    """A controller learning ``knob`` inside your own training loop (module docstring).

    Args:
        knob: the :class:`~hpctl.knob.Knob` to learn (its ``default`` is where training starts).
        controller: a controller name (``grpo``, ``random``, ``grid``, ``fixed``, ``tpe``,
            ``cmaes``, ``gp``, or a registered third-party one).
        budget: probes the controller may spend (baseline and guard probes included).
        group_size: candidates per round.
        seed: the controller's seed (the same seed gives the same asks).
        out_dir: the run folder (default ``runs/session-<controller>-s<seed>-<time>``).
        controller_config: the controller's hyperparameters (e.g. ``{"sigma_init": 0.25}``).
        steps_per_round: training steps you run between two rounds (progress and the
            MLflow step axis; 1 if you do not count).
        total_steps: steps of the whole training run; the controller stops once they are
            trained (default: only the budget stops it). It is also the horizon GRPO follows a
            measured drift of the optimum to; without it the horizon is unknown (training
            progress stays ~0), and a drift is followed no further ahead than the rounds that
            measured it reach back.
        commit_rule, reward, max_move: as for ``hpctl run`` (:class:`~hpctl.control_env.ControlEnv`).
        direction: ``"maximize"`` (default: a score, higher is better) or ``"minimize"`` (a
            loss, told as it is). A minimized score is negated for the controller; everything
            reported (:attr:`history`, :attr:`trials`, ``result.json`` with its
            ``best_probe``, the MLflow metrics) keeps your sign and names the direction.
        resume: ``True`` continues the session saved in ``out_dir`` (a fresh one starts if
            there is none yet); a path continues the checkpoint file (or folder) there.
        tracking_uri, experiment, run_name: where the MLflow run goes (default store:
            ``MLFLOW_TRACKING_URI`` or ``./mlruns``).
        mlflow_run_id: log into this existing MLflow run instead of creating one (keys
            prefixed ``hpctl/``; the run's status is left to its owner).
        tags: extra MLflow tags of a run the session creates.
        autosave: write ``checkpoint.safetensors`` at the end of every round (``False``: only
            :meth:`save` writes it; the Trainer callback saves into the Trainer's checkpoints).
    """

    def __init__(self, knob: Knob, controller: str = "grpo", *, direction: str = "maximize", budget: int = 64,
                 group_size: int = 8, seed: int = 0, out_dir: str | Path | None = None,
                 controller_config: dict[str, Any] | None = None, steps_per_round: int = 1,
                 total_steps: int | None = None, commit_rule: str = "best", reward: str = "score",
                 max_move: float = 1.0, resume: bool | str | Path = False, tracking_uri: str | None = None,
                 experiment: str = "hpctl-session", run_name: str | None = None, mlflow_run_id: str | None = None,
                 tags: dict[str, str] | None = None, autosave: bool = True) -> None:
        if not isinstance(knob, Knob):
            raise ConfigError(f"knob must be an hpctl.Knob, got {type(knob).__name__}")
        self.knob = knob
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be 'maximize' or 'minimize', got {_shown(direction)}")
        self.direction = str(direction)
        self._sign = 1.0 if self.direction == "maximize" else -1.0
        if not isinstance(autosave, (bool, np.bool_)):
            raise ConfigError(f"autosave must be True or False, got {_shown(autosave)}")
        self.autosave = bool(autosave)
        self.budget = _positive_int("budget", budget)
        self.seed = _int("seed", seed)
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        steps_per_round = _positive_int("steps_per_round", steps_per_round)
        if total_steps is not None:
            total_steps = _positive_int("total_steps", total_steps)
        max_move = _real("max_move", max_move)
        for name, val, example in (("controller_config", controller_config, "{'sigma_init': 0.25}"),
                                   ("tags", tags, "{'team': 'nlp'}")):
            if val is not None and not isinstance(val, dict):
                raise ConfigError(f"{name} must be a dict (e.g. {example}), got {_shown(val)}")
        for name, val in (("experiment", experiment), ("run_name", run_name), ("tracking_uri", tracking_uri),
                          ("mlflow_run_id", mlflow_run_id)):
            if val is not None and not isinstance(val, str):
                raise ConfigError(f"{name} must be a string, got {_shown(val)}")
        ctrl_cls = get_controller(str(controller))
        ctrl_config = ctrl_cls.make_config(controller_config)
        self.spec = {
            "command": "session",
            "knob": {"name": knob.name, "low": knob.low, "high": knob.high, "default": knob.default_value.tolist(),
                     "dim": knob.dim, "log": knob.log, "units": knob.units, "labels": list(knob.labels)},
            "controller": ctrl_cls.name, "controller_config": to_jsonable(dataclasses.asdict(ctrl_config)),
            "budget": self.budget, "group_size": _int("group_size", group_size), "seed": self.seed,
            "steps_per_round": steps_per_round, "total_steps": total_steps, "commit_rule": commit_rule,
            "reward": reward, "max_move": max_move, "direction": self.direction,
        }

        # the environment over the stand-in task, and the controller (refused if it cannot restart from its state)
        self._task = LoopTask(knob, total_steps or UNBOUNDED_STEPS)
        self.env = _LoopEnv(self._task, group_size=group_size, steps_per_round=steps_per_round,
                            commit_rule=commit_rule, reward=reward, max_move=max_move)
        self.controller: Controller = ctrl_cls(self.env, config=ctrl_config, seed=self.seed)
        if getattr(ctrl_config, "full_runs", False):
            raise ConfigError(f"controller {ctrl_cls.name!r} with full_runs=True cannot run in a Session "
                              "(a grid point would be a whole training run of your loop)")
        try:
            self.controller.load_state_dict(copy.deepcopy(self.controller.state_dict()))
        except ResumeError:
            raise ConfigError(f"controller {ctrl_cls.name!r} cannot run in a Session: it cannot restart from its "
                              "saved state between rounds (choose grpo, random, grid, fixed, tpe, cmaes or gp)") from None

        # run folder (locked: one writer; a resume in this process takes it over) and checkpoint
        self._superseded = False
        checkpoint = self._find_checkpoint(out_dir, resume)
        if checkpoint is not None:
            self.out_dir = Path(checkpoint["out_dir"]) if out_dir is None else Path(out_dir)
            previous = _FOLDER_WRITERS.get(str(self.out_dir.resolve()))
            if previous is not None and not (previous._closed or previous._failed or previous.done):
                previous._supersede()  # one that was closed or finished writes nothing more anyway
            self._lock = lock_run_dir(self.out_dir, what="session")
            try:  # read again under the lock: a writer that just ended may have saved since
                checkpoint = self._find_checkpoint(out_dir, resume) or checkpoint
                mark_legacy(self.out_dir, "session")
            except BaseException:
                self._lock.release()
                raise
        else:
            if out_dir is not None and any((Path(out_dir) / f).exists() for f in (SPEC, CHECKPOINT, RESULT)):
                raise ConfigError(f"{str(out_dir)!r} already holds a run: pass resume=True to continue its session "
                                  "or choose another out_dir")
            self.out_dir, self._lock = open_run_dir(None if out_dir is None else str(out_dir), "session",
                                                    ctrl_cls.name, self.seed, command="session",
                                                    tracking_uri=tracking_uri)

        _FOLDER_WRITERS[str(self.out_dir.resolve())] = self
        # MLflow
        names = knob.component_names
        self.attached = mlflow_run_id is not None
        if self.attached:
            run_id = mlflow_run_id
            uri = tracking_uri
        elif checkpoint is not None:
            run_id, uri = checkpoint["mlflow_run_id"], checkpoint["tracking_uri"] or tracking_uri
        else:
            run_id, uri = None, tracking_uri
        tracker_cls = AttachedTracker if self.attached else Tracker
        try:
            self.tracker = tracker_cls(uri, experiment, run_id=run_id,
                                       run_name=run_name or f"session/{knob.name}/{ctrl_cls.name}/seed{self.seed}",
                                       tags={"hpctl.mode": "session", "hpctl.controller": ctrl_cls.name,
                                             "hpctl.direction": self.direction, **(tags or {})})
        except BaseException:
            self._lock.release()
            raise
        # the run ends with the process (or the dropped object) if nothing else ends it first
        self._token = object()
        _RUN_OWNERS[self.tracker.run_id] = self._token
        self._finalizer = weakref.finalize(self, _abandoned, self._token, self.tracker, weakref.ref(self))
        self.recorder = RunRecorder(names, self.tracker)
        self._gate = _Gate(self.recorder, self._sign)
        self.env.listeners.append(self._gate)

        # round state
        self._answers: list[dict[str, Any]] = self._task.answers
        self._group: list[Trial] = []  # the trials of the controller's current request
        self._handed = 0  # how many of them the user has been given
        self._base = 0  # the round record's length when the request came: where its scores go
        self._round_open = False  # ask() was called and the round has not ended
        self._awaiting_train = False  # the round committed; the user trains before the next ask()
        self._asked_in_round = 0
        self._loss: float | None = None
        self.done = False
        self.learned: float | np.ndarray | None = None
        self.result: dict[str, Any] | None = None
        self.finish_seconds = 0.0  # wall time of recording the result (result.json, plot, uploads)
        self._failed: str | None = None
        self._closed = False
        try:
            if checkpoint is None:
                atomic_write_json(self.out_dir / SPEC, self.spec)
                self.tracker.log_params({**{k: v for k, v in self.spec.items() if k != "command"},
                                         "mode": "session"})
                self.env.reset(seed=self.seed)  # the "reset" event, as in `hpctl run`
                self._gate.emitted = self._gate.seen = 0  # round 0 starts after it
                self._start = self._state()
                self._value = self.env.current.copy()
                self.save()
            else:
                new_run = self.attached and checkpoint.get("mlflow_run_id") != mlflow_run_id
                if new_run:  # resumed into another run (a resumed Trainer opens a new one): it gets everything
                    self.tracker.log_params({**{k: v for k, v in self.spec.items() if k != "command"},
                                             "mode": "session"})
                self._load(checkpoint, resend_all=new_run)
        except BaseException:
            self._release()
            end_quietly(self.tracker, "FAILED", "session setup failed")
            raise

    # ------------------------------------------------------------------ public API ----
    @property
    def value(self) -> float | np.ndarray:
        """The value to train with now: the committed one (the learned one once :attr:`done`)."""
        return _as_user_value(self.knob, self._value)

    @property
    def pending(self) -> float | np.ndarray | None:
        """The first value given out and waiting for a score (``None`` if none)."""
        waiting = self._waiting()
        return waiting[0].value if waiting else None

    @property
    def probes(self) -> int:
        """Probes spent so far (the budget counter)."""
        return int(self.env.probes)

    @property
    def steps_done(self) -> int:
        """Training steps the controller has committed to (``steps_per_round`` per round).

        During a round: the steps trained before it. Once the round has committed (its
        asks are exhausted), also the round you now train at :attr:`value`: the step your
        loop stands at when it calls :meth:`ask` next. The same after a resume as in an
        uninterrupted run, so a loop can restart its own training from it.
        """
        done = int(self.env.steps_done)
        if self._awaiting_train:
            done += min(int(self.env.steps_per_round), max(0, int(self.env.task.total_steps) - done))
        return done

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every event so far (``reset``, ``probe``, ``commit``, ``fault``), as in ``history.json``.

        Probe scores carry your sign (a minimizing session's losses stay losses).
        """
        return self.recorder.history

    @property
    def trials(self) -> list[Trial]:
        """Every probe so far as a :class:`Trial`, by number: the ones the controller has
        taken in (``complete``, or ``fail`` for a non-finite score), then the current request's
        (told, or ``pending``). The pending ones are the live handles ``tell`` takes."""
        out = [Trial(e["probe"] - 1, e["value"], self.knob, round=e["round"], step=e["step"], kind=e["kind"],
                     score=e["score"], owner=self._token)
               for e in self.recorder.history if e["event"] == "probe"]
        seen = len(out)
        out += [t for t in self._group if t.number >= seen]
        return out

    def trials_dataframe(self):
        """:attr:`trials` as a pandas DataFrame, one row per probe: ``number``, ``round``,
        ``step``, ``kind``, ``params_<component>`` (the knob value, as Optuna names its
        parameters), ``score`` (your sign) and ``state``; ``df.attrs["direction"]`` names the
        direction. pandas comes with MLflow; without it this is a one-line error."""
        try:
            import pandas as pd
        except ImportError:
            raise HpctlError("trials_dataframe() needs pandas (pip install pandas); Session.trials gives the same "
                             "rows as Trial records") from None
        names = self.knob.component_names
        columns = ["number", "round", "step", "kind", *[f"params_{n}" for n in names], "score", "state"]
        rows = [[t.number, t.round, t.step, t.kind, *[t.params[n] for n in names],
                 float("nan") if t.score is None else t.score, t.state] for t in self.trials]
        df = pd.DataFrame(rows, columns=columns)
        df.attrs["direction"] = self.direction
        return df

    def ask(self) -> Iterator[float | np.ndarray]:
        """The values to score at the current training state, one at a time (module docstring).

        Each value must get its score with :meth:`tell` before the iterator gives the next.
        A new round begins when the previous one has ended; calling ``ask()`` then means
        you have trained at :attr:`value` since.
        """
        return self._open_round(groups=False)

    def ask_groups(self) -> Iterator[list[Trial]]:
        """The round's requests, each a list of :class:`Trial` handles to score together.

        Each list holds every value the controller needs before it can go on (GRPO: the
        baseline, the candidate group, a guard probe; Optuna's samplers: their group); score
        them in parallel if you like and ``tell(trial, score)`` each, in any order. The next
        list comes once the last one is fully told. Like :meth:`ask`, the iteration ends
        when the round has committed, and calling it again means you have trained at
        :attr:`value` since.
        """
        return self._open_round(groups=True)

    def tell(self, trial: "Trial | float | Sequence[float] | np.ndarray", score: float) -> None:
        """The score of a trial (a :class:`Trial` from :meth:`ask_groups`, or the value
        :meth:`ask` gave), in the session's direction (higher is better when maximizing,
        lower when minimizing).

        Trials of one request may be told in any order; a value is matched to the first
        waiting trial with that value. A non-finite score is recorded as a fault, as a
        failing probe is in ``hpctl run``.
        """
        self._check_usable()
        if self.done:
            raise SessionError(f"the session is done ({self.probes} of {self.budget} probes spent, learned "
                               f"{self.knob.format(self._value)}): nothing to tell")
        if isinstance(trial, Trial):
            target = self._own_trial(trial)
        else:
            target = self._trial_of_value(trial)
        result = _score(score, f"the score of {self.knob.format(target._array)}")
        target.score = result
        target.state = "complete" if math.isfinite(result) else "fail"
        target._result = self._sign * result
        # the record holds the request's told prefix, in the controller's order
        while self._group and len(self._answers) - self._base < len(self._group):
            nxt = self._group[len(self._answers) - self._base]
            if nxt._result is None:
                break
            self._answers.append({"kind": "probe", "value": nxt._array.copy(), "result": nxt._result})

    def _own_trial(self, trial: Trial) -> Trial:
        if trial._owner is not self._token:
            raise SessionError(f"trial {trial.number} belongs to another Session (after a resume, ask again: "
                               "handles from before it are stale)")
        if trial.state != "pending":
            raise SessionError(f"trial {trial.number} ({self.knob.format(trial._array)}) was already told "
                               f"(score {trial.score!r}); each trial takes one score")
        if not any(t is trial for t in self._group):
            raise SessionError(f"trial {trial.number} is stale: it was asked in round {trial.round}, and the "
                               f"session has moved on (round {self.env.round}); tell only the latest group's trials")
        return trial

    def _trial_of_value(self, value: Any) -> Trial:
        arr = self.knob.validate(value)  # ConfigError when outside the bounds
        waiting = self._waiting()
        if not waiting:
            if self._awaiting_train:
                raise SessionError(f"tell({self.knob.format(arr)}): no value is waiting for a score; the round is "
                                   "over: train at s.value, then call ask()")
            raise SessionError(f"tell({self.knob.format(arr)}) without ask(): iterate s.ask() for the values to score")
        tol = 1e-9 * (self.knob.high - self.knob.low)
        for t in waiting:
            if arr.shape == t._array.shape and np.all(np.abs(arr - t._array) <= tol):
                return t
        if len(waiting) == 1:
            raise SessionError(f"tell({self.knob.format(arr)}) but the value waiting for a score is "
                               f"{self.knob.format(waiting[0]._array)}: tell each value ask() gives before the next")
        shown = ", ".join(self.knob.format(t._array) for t in waiting[:6]) + (", ..." if len(waiting) > 6 else "")
        raise SessionError(f"tell({self.knob.format(arr)}) but the values waiting for a score are {shown}")

    def _waiting(self) -> list[Trial]:
        """The trials given out that have no score yet."""
        return [t for t in self._group[:self._handed] if t._result is None]

    def report_loss(self, loss: float) -> None:
        """The mean training loss since the round ended (optional; logged and seen by the controller)."""
        self._check_usable()
        self._loss = _score(loss, "the training loss")

    def save(self, path: str | Path | None = None) -> Path:
        """Write the checkpoint (default ``out_dir/checkpoint.safetensors``); return its path.

        Call it whenever you checkpoint your own loop: ``Session(..., resume=path)`` then
        continues from the same point.
        """
        if self._superseded:
            self._check_usable()
        target = Path(path) if path is not None else self.out_dir / CHECKPOINT
        if target.is_dir():
            target = target / CHECKPOINT
        if path is None:
            self.recorder.checkpoint_flush()
        state = {
            "format": FORMAT, "spec": self.spec, "out_dir": str(self.out_dir), "start": self._start_state(),
            "answers": copy.deepcopy(self._answers), "round_events": self._gate.emitted,
            "loss_reported": self._gate.loss_reported, "awaiting_train": self._awaiting_train,
            "round_open": self._round_open, "asked_in_round": self._asked_in_round,
            "value": self._value.copy(), "loss": self._loss,
            # one JSON string: the history grows with the run, and a string is stored as is
            "history": json.dumps([_plain_event(e) for e in self.recorder.history]), "logged": self.recorder.logged,
            "mlflow_run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri,
        }
        from hpctl import statefile

        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, statefile.dumps(state))
        return target

    def finish(self) -> float | np.ndarray:
        """Stop before the budget is spent (training is over) and record the result.

        The learned value is what training uses now: the committed value (GRPO's answer
        extrapolates a drift to the end of the planned training, which this one never
        reaches); for the search controllers, the best candidate scored so far. Scores of the unfinished round count. Returns the learned value.
        """
        self._check_usable()
        if not self.done:
            from hpctl.controllers.search import SearchController

            learned = self.controller.best() if isinstance(self.controller, SearchController) else self._value
            self._finish(np.asarray(learned, dtype=np.float64), early=True)
        return self.value

    def close(self) -> None:
        """End the session: a finished one is already recorded; an unfinished one keeps its
        checkpoint (``resume=True`` continues it) and its MLflow run is marked KILLED."""
        if self._closed:
            return
        self._closed = True
        if self.done or self._failed:
            return
        try:
            self.save()
        finally:
            self._release()
            end_quietly(self.tracker, "KILLED", f"closed after {self.probes} of {self.budget} probes; "
                                                f"resume with resume=True in {self.out_dir}")

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not self.done and not self._failed and not self._closed:
            self._closed = True
            try:
                self.save()
            finally:
                self._release()
                end_quietly(self.tracker, "FAILED", one_line(exc))
            return
        self.close()

    def _release(self) -> None:
        """The run is ended here: nothing is left for the exit-time finaliser, and the run
        folder is free for another writer (``resume=True``)."""
        try:
            note_files(self.out_dir)
        finally:
            self._lock.release()
        self._finalizer.detach()
        if _RUN_OWNERS.get(self.tracker.run_id) is self._token:
            del _RUN_OWNERS[self.tracker.run_id]

    def __repr__(self) -> str:
        state = "done" if self.done else f"{self.probes}/{self.budget} probes"
        return f"Session({self.knob.name}, {self.controller.name}, value={self.knob.format(self._value)}, {state})"

    # ------------------------------------------------------------------ the driver ----
    def _open_round(self, groups: bool) -> _Asks:
        """:meth:`ask` and :meth:`ask_groups`: a new round starts once the last one has ended."""
        self._check_usable()
        if self.done:
            return _Asks(None)
        if not self._round_open:
            if self._awaiting_train:  # the user trained at the committed value: that is the round's last answer
                loss = float("nan") if self._loss is None else self._loss
                self._answers.append({"kind": "train", "value": self._value.copy(), "result": loss})
                self._gate.loss_reported = self._loss is not None
                self._awaiting_train = False
                self._loss = None
            self._round_open = True
            self._asked_in_round = 0
        return _Asks(self, groups)

    def _next_value(self) -> float | np.ndarray:
        self._check_usable()
        if self.done or not self._round_open:
            raise StopIteration
        waiting = self._waiting()
        if waiting:
            raise SessionError(f"ask() gave {self.knob.format(waiting[0]._array)} and has no score for it yet: "
                               "tell(value, score) before taking the next value")
        if self._handed == len(self._group):
            self._request()  # StopIteration once the round has ended
        trial = self._group[self._handed]  # the rest of a group the controller asked at once: no replay needed
        self._handed += 1
        return trial.value

    def _next_group(self) -> list[Trial]:
        self._check_usable()
        if self.done or not self._round_open:
            raise StopIteration
        waiting = self._waiting()
        if waiting:
            numbers = ", ".join(str(t.number) for t in waiting[:6]) + (", ..." if len(waiting) > 6 else "")
            raise SessionError(f"trial(s) {numbers} of the last group have no score yet: tell every trial of a "
                               "group before asking for the next")
        if self._handed == len(self._group):
            self._request()  # StopIteration once the round has ended
        rest = self._group[self._handed:]
        self._handed = len(self._group)
        return list(rest)

    def _request(self) -> None:
        """Run the controller until it asks for values (they become :attr:`_group`, none handed
        out yet) or the round ends (``StopIteration``)."""
        while True:
            outcome = self._drive()
            if isinstance(outcome, _Need):
                if outcome.kind == "probe":
                    values = np.asarray(outcome.value, dtype=np.float64).reshape(-1, self.knob.dim)
                    first = self.env.probes if outcome.first is None else outcome.first
                    self._base = len(self._answers)  # where the group's scores go in the round's record
                    self._group = [Trial(first + i, v, self.knob, round=self.env.round, step=self.env.steps_done,
                                         kind=self.env.asking, owner=self._token) for i, v in enumerate(values)]
                    self._handed = 0
                    self._asked_in_round += len(values)
                    return
                # "train": the controller committed; the round ends and the user trains at that value
                self._value = outcome.value.copy()
                self._awaiting_train = True
                self._end_round()
                raise StopIteration
            if outcome == "boundary":
                if self._asked_in_round == 0:
                    continue  # the previous round closed (its commit event is out): go on to this round's asks
                self._end_round()
                raise StopIteration
            # "done"
            self._end_round()
            raise StopIteration

    def _drive(self) -> _Need | str:
        """Run the controller from the round's start state, answering from the round's record."""
        ctrl_state, env_state = self._start_state()
        self.controller.load_state_dict(ctrl_state)
        self.env.load_state_dict(env_state)
        self._task.cursor = 0
        self._gate.seen = 0
        try:
            learned = self.controller.run(self.budget, self._boundary)
        except _Need as need:
            return need
        except _Boundary:
            return "boundary"
        except _Diverged as exc:
            self._fail(ControllerError(f"controller {self.controller.name!r} is not deterministic given its state "
                                       f"({exc}); a Session replays rounds and needs it to be"))
        except HpctlError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - shown in one line, the traceback goes to error.txt
            self._fail(ControllerError(f"controller {self.controller.name!r} failed: {one_line(exc)} "
                                       f"(traceback in {self.out_dir / 'error.txt'})"), tb=traceback.format_exc())
        self._finish(learned)
        return "done"

    def _boundary(self, ctrl: Controller) -> None:
        """The controller's per-round callback: log its state, keep the new round start, stop."""
        self.tracker.metrics({f"controller/{k}": v for k, v in self._user_state(ctrl.state()).items()},
                             self.env.probes)
        self._start = self._state()
        self._answers.clear()
        self._gate.emitted = 0
        self._gate.seen = 0
        self._gate.loss_reported = True
        raise _Boundary()

    def _state(self) -> bytes:
        """The controller's and the environment's state now, frozen (an in-memory pickle: every
        replay gets its own copy, faster than a deep copy; nothing is read back from a file)."""
        return pickle.dumps((self.controller.state_dict(), self.env.state_dict()), protocol=pickle.HIGHEST_PROTOCOL)

    def _start_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A fresh copy of the round's start state."""
        return pickle.loads(self._start)

    def _end_round(self) -> None:
        self._round_open = False
        if self.autosave and not self.done:
            self.save()

    def _supersede(self) -> None:
        """A Session resumed on this one's folder in this process takes it over: this one
        writes nothing more (its checkpoint stays what it last saved) and leaves the MLflow
        run to the new one."""
        self._superseded = self._closed = True
        self._finalizer.detach()
        self._lock.release()

    def _check_usable(self) -> None:
        if self._superseded:
            raise SessionError(f"this Session no longer writes {str(self.out_dir)!r}: a Session resumed there in this "
                               "process took it over; use that one")
        if self._failed:
            raise SessionError(f"the session failed earlier: {self._failed}")
        if self._closed and not self.done:
            raise SessionError("the session is closed; Session(..., resume=True) continues it")

    def _fail(self, exc: HpctlError, tb: str | None = None) -> None:
        self._failed = str(exc)
        if tb is not None:
            try:
                (self.out_dir / "error.txt").write_text(tb)
            except OSError:
                pass
        self._release()
        end_quietly(self.tracker, "FAILED", str(exc))
        raise exc from None

    # ------------------------------------------------------------------ finishing ----
    def _finish(self, learned: np.ndarray, early: bool = False) -> None:
        if self.env.probes and self.recorder.faults >= self.env.probes:  # as `hpctl run`: no result from no scores
            first = next(e for e in self.recorder.history if e["event"] == "fault")
            self._fail(SessionError(f"all {self.env.probes} probes failed, so nothing was learned; the first: "
                                    f"{shorten(str(first.get('error')), 200)}"))
        t0 = time.perf_counter()
        try:
            self._record_result(learned, early)
        finally:
            self.finish_seconds += time.perf_counter() - t0

    def _record_result(self, learned: np.ndarray, early: bool) -> None:
        learned = self.knob.validate(learned)
        self.done = True
        self._value = learned.copy()
        self.learned = _as_user_value(self.knob, learned)
        self._group, self._handed = [], 0
        names = self.knob.component_names
        self.result = {
            "mode": "session", "controller": self.controller.name, "seed": self.seed, "direction": self.direction,
            "learned": self.knob.to_dict(learned), "best_probe": self._best_probe(), "probes": self.probes,
            "budget": self.budget, "rounds": int(self.env.round), "steps_done": self.steps_done,
            "faults": self.recorder.faults, "stopped_early": early,
            "controller_state": self._user_state(self.controller.state()), "mlflow_run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.uri, "out_dir": str(self.out_dir),
        }
        atomic_write_json(self.out_dir / RESULT, self.result)
        try:
            self.tracker.metrics({f"learned/{k}": v for k, v in self.result["learned"].items()}, self.probes)
            atomic_write_json(self.out_dir / "history.json", self.recorder.history)
            try:
                from hpctl.plots import plot_run

                png = plot_run(self.recorder.history, names, self.out_dir / "run.png",
                               title=f"session / {self.controller.name} / seed {self.seed}", learned=learned)
                self.tracker.artifact(png)
            except Exception as exc:  # noqa: BLE001 - a plot never costs a finished result
                warn(self.tracker, f"plot failed: {exc}")
            self.tracker.artifact(self.out_dir / RESULT)
            self.tracker.artifact(self.out_dir / "history.json")
        except Exception as exc:  # noqa: BLE001 - the result is on disk; an upload failure is a warning
            warn(self.tracker, f"outputs not fully recorded: {type(exc).__name__}: {exc}")
        finally:
            self._release()
            end_quietly(self.tracker, "FINISHED", None)

    def _best_probe(self) -> dict[str, Any] | None:
        """The best-scoring probe in the session's direction (first of ties), as ``hpctl run``
        reports it: one noisy measurement at the training state it was taken in."""
        best = None
        for e in self.recorder.history:
            if e["event"] == "probe" and math.isfinite(e["score"]) and (
                    best is None or self._sign * e["score"] > self._sign * best["score"]):
                best = e
        if best is None:
            return None
        return {"value": self.knob.to_dict(best["value"]), "score": float(best["score"]), "kind": best["kind"],
                "probe": int(best["probe"]), "step": int(best["step"])}

    def _user_state(self, state: dict[str, float]) -> dict[str, float]:
        """The controller's state with its scores (``best_score``, ...) in the user's sign; its
        rewards stay the controller's (higher is better)."""
        if self._sign > 0:
            return state
        return {k: (-v if k.endswith("score") else v) for k, v in state.items()}

    # ------------------------------------------------------------------ resume ----
    def _find_checkpoint(self, out_dir: str | Path | None, resume: bool | str | Path) -> dict[str, Any] | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            if out_dir is None:
                raise ConfigError("resume=True needs the out_dir of the session to continue")
            folder = Path(out_dir)
            if (folder / RESULT).is_file():
                raise ResumeError(f"the session in {str(folder)!r} has finished ({RESULT} exists); nothing to resume")
            path = folder / CHECKPOINT
            if not path.is_file():
                return None  # nothing saved yet: a fresh session starts there
        else:
            path = Path(resume)
            if path.is_dir():
                path = path / CHECKPOINT
            if not path.is_file():
                raise ResumeError(f"no session checkpoint at {str(path)!r}")
        from hpctl import statefile

        try:
            state = statefile.loads(path.read_bytes())
        except (statefile.StateFileError, OSError) as exc:
            raise ResumeError(f"session checkpoint {str(path)!r} cannot be used: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ResumeError(f"{str(path)!r} is not a session checkpoint")
        self._check_checkpoint(state, path)
        saved = state["spec"]
        for key, now in self.spec.items():
            was = saved.get(key, _SPEC_DEFAULTS.get(key))
            if was != now:
                raise ResumeError(f"cannot resume {str(path)!r}: it was started with {key}={was!r}, "
                                  f"this session has {key}={now!r}")
        return state

    def _check_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        """A ResumeError naming ``path`` and the field unless ``state`` has every field of a
        session checkpoint with its type (a checkpoint edited, or written by another tool, is
        refused before anything is resumed from it), and its round start restores."""
        def bad(key: str, why: str) -> ResumeError:
            return ResumeError(f"session checkpoint {str(path)!r} cannot be used: {key!r} {why}")

        def whole(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 0

        def real(v: Any) -> bool:
            return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))

        kinds = {"spec": (dict, "a mapping"), "start": ((tuple, list), "a (controller, environment) pair"),
                 "answers": (list, "a list"), "history": (str, "a JSON string"), "out_dir": (str, "a string"),
                 "mlflow_run_id": (str, "a string"), "round_events": (whole, "a whole number >= 0"),
                 "asked_in_round": (whole, "a whole number >= 0"), "loss_reported": ((bool, np.bool_), "True or False"),
                 "awaiting_train": ((bool, np.bool_), "True or False"),
                 "round_open": ((bool, np.bool_), "True or False"),
                 "value": ((np.ndarray, list, tuple), "the knob's value"),
                 "tracking_uri": ((str, type(None)), "a string"),
                 "loss": (lambda v: v is None or real(v), "a number or None")}
        for key, (kind, what) in kinds.items():
            if key not in state:
                raise bad(key, "is missing")
            value = state[key]
            if not (kind(value) if callable(kind) and not isinstance(kind, type) else isinstance(value, kind)):
                raise bad(key, f"must be {what}, got {_shown(value)}")
        if "logged" in state and not whole(state["logged"]):
            raise bad("logged", f"must be a whole number >= 0, got {_shown(state['logged'])}")
        try:
            self.knob.validate(np.asarray(state["value"], dtype=np.float64))
        except (ConfigError, TypeError, ValueError) as exc:
            raise bad("value", f"is not a value of the knob: {exc}") from None
        for answer in state["answers"]:
            if not (isinstance(answer, dict) and isinstance(answer.get("kind"), str) and real(answer.get("result"))
                    and np.asarray(answer.get("value"), dtype=object).size == self.knob.dim):
                raise bad("answers", f"holds {_shown(answer)}, not a told score (kind, value, result)")
        try:
            history = json.loads(state["history"])
        except ValueError as exc:
            raise bad("history", f"is not JSON: {exc}") from None
        if not isinstance(history, list) or not all(isinstance(e, dict) and isinstance(e.get("event"), str)
                                                    for e in history):
            raise bad("history", "is not a list of events")
        start = state["start"]
        if len(start) != 2 or not all(isinstance(part, dict) for part in start):
            raise bad("start", "is not a (controller, environment) pair of states")
        ctrl_state, env_state = pickle.dumps(self.controller.state_dict()), pickle.dumps(self.env.state_dict())
        try:  # the round start must restore (on copies: this session is put back as it was)
            self.controller.load_state_dict(copy.deepcopy(start[0]))
            self.env.load_state_dict(copy.deepcopy(start[1]))
        except HpctlError as exc:
            raise bad("start", f"does not restore: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a state another tool wrote fails in any way
            raise bad("start", f"does not restore this controller and knob: {one_line(exc)}") from None
        finally:
            self.controller.load_state_dict(pickle.loads(ctrl_state))
            self.env.load_state_dict(pickle.loads(env_state))

    def _load(self, state: dict[str, Any], *, resend_all: bool) -> None:
        start = state["start"]
        self._start = pickle.dumps((start[0], start[1]), protocol=pickle.HIGHEST_PROTOCOL)
        self._answers.extend(state["answers"])
        self._gate.emitted = int(state["round_events"])
        self._gate.loss_reported = bool(state["loss_reported"])
        self._awaiting_train = bool(state["awaiting_train"])
        self._round_open = bool(state["round_open"])
        self._asked_in_round = int(state["asked_in_round"])
        self._value = np.asarray(state["value"], dtype=np.float64)
        self._loss = state["loss"]
        try:
            history = json.loads(state["history"])
        except (TypeError, ValueError) as exc:
            raise ResumeError(f"the session checkpoint's history is malformed: {exc}") from None
        self.recorder.history = [_array_event(e) for e in history]
        self.recorder.faults = sum(1 for e in self.recorder.history if e["event"] == "fault")
        ctrl_state, env_state = self._start_state()
        self.controller.load_state_dict(ctrl_state)
        self.env.load_state_dict(env_state)
        # events the interrupted process had not flushed to MLflow (all of them into a new run) are logged now
        start = 0 if resend_all else int(state.get("logged", 0))
        for event in self.recorder.history[start:]:
            self.tracker.on_event(event, self.knob.component_names)
        self.recorder.checkpoint_flush(min_interval=0.0)


def _abandoned(token: object, tracker: Tracker, ref: "weakref.ref[Session]") -> None:
    """A session's finaliser: its object was dropped, or the process exits, and nothing ended
    its MLflow run. At exit the checkpoint is saved first (``resume=True`` continues); the run
    ends FAILED when the process dies of an exception, KILLED otherwise. A run another session
    took over (a resume in this process) is left alone."""
    if _RUN_OWNERS.get(tracker.run_id) is not token:
        return
    del _RUN_OWNERS[tracker.run_id]
    session = ref()  # alive only at exit: a dropped object is gone when this runs
    if session is None:
        end_quietly(tracker, "KILLED", "the Session object was dropped unfinished (no finish(), close() or with); "
                                       "resume with resume=True in its out_dir")
        return
    if not (session.done or session._failed or session._closed):
        try:
            session.save()
        except Exception:  # noqa: BLE001 - the last checkpoint stays
            pass
    where = f"; resume with resume=True in {session.out_dir}"
    exc = getattr(sys, "last_value", None)  # set when the process dies of an uncaught exception
    if exc is not None and not isinstance(exc, KeyboardInterrupt):
        end_quietly(tracker, "FAILED", f"the process died of {one_line(exc)} before the session ended{where}")
    else:
        end_quietly(tracker, "KILLED", f"the process ended with the session unfinished (no finish(), close() or "
                                       f"with){where}")


_ARRAY_KEYS = ("value", "current")


def _plain_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event with its arrays as lists (the checkpoint keeps the history as plain JSON)."""
    return {k: (np.asarray(v).tolist() if k in _ARRAY_KEYS else v) for k, v in event.items()}


def _array_event(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.asarray(v, dtype=np.float64) if k in _ARRAY_KEYS else v) for k, v in event.items()}


def _shown(value: Any) -> str:
    """``repr(value)`` short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {_shown(value)}")
    return float(value)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _positive_int(name: str, value: Any) -> int:
    v = _int(name, value)
    if v < 1:
        raise ConfigError(f"{name} must be >= 1, got {v}")
    return v
