"""A plugin author's contract check: :func:`check_task` runs a task through the rules hpctl relies on.

hpctl probes a task at one training state, trains it on, checkpoints it, resumes it and
forks it (engines restore replicas from its snapshots). That works only if the task keeps
the :class:`hpctl.task.Task` contract. Run the check in your plugin's tests::

    from hpctl.testing import check_task

    def test_my_task_keeps_the_contract(tmp_path):
        check_task(lambda: MyPlugin().make_task(MyConfig(), seed=0, out_dir=tmp_path), steps=2)

Each broken rule raises :class:`ContractError`, one line naming the rule and where the
states differ (e.g. ``state['optimizer']['step']``):

* ``snapshot is a copy``: training after ``snapshot()`` leaves that snapshot unchanged (it
  shares no array, tensor or list with the live state).
* ``snapshot round-trips through the checkpoint format``: :mod:`hpctl.statefile` (what
  checkpoints and ``--resume`` use) writes the snapshot and reads back an equal one (what it
  accepts: :data:`hpctl.statefile.ACCEPTED`; a namedtuple, a dataclass or any other object is
  refused).
* ``restore gives back the snapshot``: after training on, ``restore(s)`` then ``snapshot()``
  gives ``s`` again.
* ``a probe leaves the state as it was``: the snapshot after probing equals the snapshot after
  ``restore`` and ``skip_probes`` of as many probes (a probe may advance only its own
  randomness, exactly as :meth:`~hpctl.task.Task.skip_probes` does).
* ``restore reproduces training``: training ``steps`` steps from a restored, round-tripped
  snapshot gives the state and probe score that training from the live state gave; with a
  factory, also in a freshly built task (what ``--resume`` and the engines' replicas do).

States are compared bit for bit (NaN equals NaN; a tensor on any device equals its CPU copy;
a ``nn.Parameter`` equals a plain tensor with its values; an ``OrderedDict`` equals a dict).
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any, Callable, Sequence, Union

import numpy as np

from hpctl import statefile
from hpctl.errors import HpctlError
from hpctl.task import Task

__all__ = ["ContractError", "check_task", "state_difference"]

TaskOrFactory = Union[Task, Callable[[], Task]]

#: the rules, in the order :func:`check_task` checks them
RULES = ("snapshot is a copy", "snapshot round-trips through the checkpoint format", "restore gives back the snapshot",
         "a probe leaves the state as it was", "restore reproduces training")


class ContractError(HpctlError, AssertionError):
    """A task breaks a rule of the :class:`hpctl.task.Task` contract (``rule`` names it)."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule, self.detail = rule, detail
        super().__init__(f"task contract broken: {rule}: {detail}")


# ----------------------------------------------------------------------------- comparing
def _tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _float_bits(x: float) -> bytes:
    return b"nan" if math.isnan(x) else struct.pack("<d", x)


def state_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """Where and how two states differ, bit for bit (``None`` if they are equal).

    Containers must have the same kind (a tuple is not a list); arrays and tensors the same
    dtype, shape and bytes; floats the same bits (NaN equals NaN). A tensor is compared on the
    CPU, a ``nn.Parameter`` as a tensor, an ``OrderedDict`` as a dict.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            only = sorted(map(repr, set(a) ^ set(b)))[:3]
            return f"{path} has different keys (only on one side: {', '.join(only)})"
        for k in a:
            d = state_difference(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if _tensor(a) or _tensor(b):
        if not (_tensor(a) and _tensor(b)):
            return f"{path} is a {type(a).__name__} on one side and a {type(b).__name__} on the other"
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return f"{path}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        import torch

        x, y = a.detach().to("cpu").contiguous(), b.detach().to("cpu").contiguous()
        if x.numel() and not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            return f"{path}: tensor values differ"
        return None
    if type(a) is not type(b) and not (isinstance(a, dict) and isinstance(b, dict)):
        return f"{path} is a {type(a).__name__} on one side and a {type(b).__name__} on the other"
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        if a.dtype == object:
            for i, (u, v) in enumerate(zip(a.reshape(-1), b.reshape(-1))):
                d = state_difference(u, v, f"{path}.flat[{i}]")
                if d:
                    return d
            return None
        return None if np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes() \
            else f"{path}: array values differ"
    if isinstance(a, np.generic):
        return None if a.dtype == b.dtype and a.tobytes() == b.tobytes() else f"{path}: {a!r} vs {b!r}"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (u, v) in enumerate(zip(a, b)):
            d = state_difference(u, v, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float):
        return None if _float_bits(a) == _float_bits(b) else f"{path}: {a!r} vs {b!r}"
    try:
        equal = bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==
        equal = a is b
    return None if equal else f"{path}: {a!r} vs {b!r}"


# ------------------------------------------------------------------------------- the check
def _frozen(state: Any, rule: str) -> bytes:
    """``state`` in the checkpoint format (a deep, independent copy), or the rule's error."""
    try:
        return statefile.dumps(state)
    except statefile.StateTypeError as exc:
        raise ContractError(rule, str(exc)) from None


def check_task(task_or_factory: TaskOrFactory, *, value: Any = None, probes: Sequence[Any] | None = None,
               steps: int = 2) -> None:
    """Check that a task keeps the :class:`~hpctl.task.Task` contract; raise :class:`ContractError` if not.

    ``task_or_factory``: a task, or a function building a fresh one (then also checked: a
    snapshot restored into a new task trains on as the original does, as on ``--resume``).
    ``value``: the knob value to train at (default: the knob's default); ``probes``: values to
    probe (default: the knob's range at 20 % and 80 %, and ``value``); ``steps``: optimizer
    steps per training stretch (keep it small: the check trains four to six stretches).
    The task is used as it is (not reset first) and is left in some state of the check.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    factory = None if isinstance(task_or_factory, Task) else task_or_factory
    task = factory() if factory is not None else task_or_factory
    if not isinstance(task, Task):
        raise TypeError(f"check_task needs an hpctl.task.Task or a function returning one, got {type(task).__name__}")
    knob = task.knob
    value = knob.default_value if value is None else knob.validate(value)
    probe_values = [knob.validate(v) for v in probes] if probes is not None else \
        [knob.from_unit(0.2), value, knob.from_unit(0.8)]
    fresh = []
    try:
        # 1. a snapshot is a copy: training on leaves it as it was
        rule = RULES[0]
        s0 = task.snapshot()
        frozen0 = _frozen(s0, RULES[1])
        task.train(steps, value)
        d = state_difference(statefile.loads(frozen0), s0)
        if d:
            raise ContractError(rule, f"training changed a snapshot taken before it ({d}): copy arrays, tensors "
                                      "and lists in snapshot()")
        # 2. the snapshot round-trips through the checkpoint format unchanged
        rule = RULES[1]
        d = state_difference(s0, statefile.loads(frozen0))
        if d:
            raise ContractError(rule, f"what hpctl.statefile read back differs ({d})")
        # 3. restore gives back the snapshot (from a round-tripped copy, as --resume does)
        rule = RULES[2]
        task.restore(statefile.loads(frozen0))
        d = state_difference(s0, task.snapshot())
        if d:
            raise ContractError(rule, f"snapshot() after restore(s) differs from s ({d})")
        # 4. probes leave the state as it was, but for their randomness (= skip_probes)
        rule = RULES[3]
        for v in probe_values:
            score = task.probe(v)
            if not isinstance(score, (int, float, np.floating, np.integer)) or isinstance(score, bool):
                raise ContractError(rule, f"probe({knob.format(v)}) returned a {type(score).__name__}, not a number")
        after = task.snapshot()
        task.restore(statefile.loads(frozen0))
        task.skip_probes(len(probe_values))
        d = state_difference(task.snapshot(), after)
        if d:
            raise ContractError(rule, f"after {len(probe_values)} probes the snapshot differs from the one after "
                                      f"restore and skip_probes({len(probe_values)}) ({d})")
        # 5. restore reproduces training: from the live state, and from a restored snapshot
        rule = RULES[4]
        frozen1 = _frozen(task.snapshot(), RULES[1])
        task.train(steps, value)  # from the live state
        live, live_score = task.snapshot(), float(task.probe(value))
        runs = [("this task", task)]
        if factory is not None:
            other = factory()
            fresh.append(other)
            runs.append(("a freshly built task", other))
        for where, t in runs:
            t.restore(statefile.loads(frozen1))
            t.train(steps, value)
            again, score = t.snapshot(), float(t.probe(value))
            d = state_difference(live, again)
            if d:
                raise ContractError(rule, f"training {steps} steps after restore in {where} ended in another state "
                                          f"than the first time ({d}): restore() misses part of the state")
            if _float_bits(score) != _float_bits(live_score):
                raise ContractError(rule, f"the probe after training from a restored snapshot in {where} scored "
                                          f"{score!r}, the first time {live_score!r}")
    finally:
        for t in fresh:
            t.close()
        if factory is not None:
            task.close()
