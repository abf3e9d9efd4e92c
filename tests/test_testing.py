"""hpctl.testing.check_task: the shipped tasks keep the Task contract, and a task that breaks a
rule is caught with that rule's name. Also the checkpoint format's side of the contract
(hpctl.statefile): what it accepts comes back as it went in, what it cannot is refused in
one line naming the type and its place."""

from __future__ import annotations

import sys
from collections import OrderedDict, namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hpctl.config import build_dataclass
from hpctl.knob import Knob
from hpctl.registry import load_plugin
from hpctl.statefile import StateTypeError, dumps, loads
from hpctl.task import Task
from hpctl.testing import RULES, ContractError, check_task, state_difference

ROOT = Path(__file__).resolve().parents[1]


def _factory(name: str, tmp_path: Path, **config):
    plugin = load_plugin(name)
    cfg = build_dataclass(plugin.Config, config, what=name)
    return lambda: plugin.make_task(cfg, seed=0, out_dir=tmp_path)


def test_the_synthetic_task_keeps_the_contract(tmp_path):
    check_task(_factory("synthetic", tmp_path), steps=3)
    check_task(_factory("synthetic", tmp_path, env="hpctl/Landscape2D-v0")(), value=[0.3, 0.6])  # a vector knob


def test_magnitude_prune_keeps_the_contract(tmp_path):
    check_task(_factory("magnitude_prune", tmp_path), value=0.5, steps=3)


def test_the_guides_example_task_keeps_the_contract():
    """examples/custom_knob.py (docs/add_your_own_knob.md's task) runs check_task itself; here too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_knob", ROOT / "examples" / "custom_knob.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    plugin, config = mod.RegressionPlugin(), mod.RegressionConfig(total_steps=40)
    check_task(lambda: plugin.make_task(config, seed=1, out_dir=ROOT), value=0.05, steps=5)


# --------------------------------------------------------------------- broken tasks
Point = namedtuple("Point", "x y")


class Toy(Task):
    """A tiny momentum-SGD loop on numpy weights; each flag breaks one rule."""

    knob = Knob("lr", 0.0, 1.0, default=0.5)
    total_steps = 10

    def __init__(self, *, mutating_probe=False, namedtuple_state=False, forgets_momentum=False,
                 shared_snapshot=False, keeps_step=False, noisy=True) -> None:
        self.flags = dict(mutating_probe=mutating_probe, namedtuple_state=namedtuple_state,
                          forgets_momentum=forgets_momentum, shared_snapshot=shared_snapshot, keeps_step=keeps_step)
        self.noisy = noisy
        self.reset(0)

    def reset(self, seed=None):
        self.w = np.linspace(-1, 1, 6)
        self.m = np.zeros(6)
        self.step = 0
        self.noise = np.random.default_rng(1)

    def train(self, steps, value):
        for _ in range(steps):
            grad = self.w - 0.3 + 0.01 * self.step
            self.m = 0.9 * self.m + grad
            self.w -= 0.1 * float(value[0]) * self.m  # in place, as torch optimizers do
            self.step += 1
        return float(np.mean(self.w ** 2))

    def probe(self, value):
        if self.flags["mutating_probe"]:
            self.w[0] += 1e-12  # a "mask" applied in place and not undone
        noise = float(self.noise.normal(0, 0.01)) if self.noisy else 0.0
        return -float(np.mean((self.w * (1 - float(value[0])) - 0.3) ** 2)) + noise

    def skip_probes(self, n):
        if self.noisy:
            self.noise.normal(0, 0.01, size=n)

    def snapshot(self):
        w = self.w if self.flags["shared_snapshot"] else self.w.copy()
        state = {"w": w, "m": self.m.copy(), "step": self.step, "noise": self.noise.bit_generator.state}
        if self.flags["namedtuple_state"]:
            state["where"] = Point(self.step, 0)
        if self.flags["forgets_momentum"]:
            del state["m"]  # momentum is part of training but not of the snapshot
        return state

    def restore(self, state):
        self.w = np.array(state["w"])
        if not self.flags["forgets_momentum"]:
            self.m = np.array(state["m"])
        if not self.flags["keeps_step"]:
            self.step = int(state["step"])
        self.noise = np.random.default_rng(1)
        self.noise.bit_generator.state = state["noise"]


def test_a_correct_toy_passes():
    check_task(Toy())
    check_task(lambda: Toy(noisy=False), probes=[0.0, 1.0])


@pytest.mark.parametrize("flag, rule, words", [
    ("shared_snapshot", RULES[0], "changed a snapshot taken before it (state['w']"),
    ("namedtuple_state", RULES[1], "namedtuple"),
    ("keeps_step", RULES[2], "state['step']"),
    ("mutating_probe", RULES[3], "state['w']: array values differ"),
    ("forgets_momentum", RULES[4], "restore() misses part of the state"),
])
def test_a_broken_task_fails_naming_the_rule(flag, rule, words):
    with pytest.raises(ContractError) as info:
        check_task(lambda: Toy(**{flag: True}))
    assert info.value.rule == rule and words in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).startswith(f"task contract broken: {rule}: ")


def test_a_namedtuple_snapshot_names_the_type_and_its_place():
    with pytest.raises(ContractError, match=r"namedtuple .*Point at state\['where'\] \(it would come back as a "
                                            r"plain tuple"):
        check_task(Toy(namedtuple_state=True))


def test_check_task_refuses_bad_arguments():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        check_task(Toy(), steps=0)
    with pytest.raises(TypeError, match="needs an hpctl.task.Task"):
        check_task(lambda: object())


# ------------------------------------------------------------------ the checkpoint format
def test_statefile_round_trips_what_it_accepts():
    import torch

    state = {"f": 1.5, "nan": float("nan"), "i": 2 ** 70, "b": True, "n": None, "s": "x", "t": (1, [2, (3,)]),
             (1, "k"): {"__dunder": 1}, 3: np.float32(0.1), "u": np.uint64(2 ** 63 + 1), "a": np.arange(100.0),
             "small": np.array([[1, 2], [3, 4]], dtype=np.int16), "h": np.ones(3, np.float16),
             "tensor": torch.randn(4, 5), "bf16": torch.randn(70).to(torch.bfloat16), "empty": torch.zeros(0, 3)}
    back = loads(dumps(state))
    assert state_difference(state, back) is None
    assert back["a"].flags.writeable and back["tensor"].is_contiguous()  # a restore may write into them
    # the two documented conversions: a Parameter comes back a plain tensor, an OrderedDict a dict
    od = OrderedDict([("z", torch.nn.Parameter(torch.ones(2))), ("a", 1)])
    back = loads(dumps({"sd": od}))["sd"]
    assert type(back) is dict and list(back) == ["z", "a"] and type(back["z"]) is torch.Tensor


@dataclass
class Config:
    lr: float = 0.1


@pytest.mark.parametrize("value, words", [
    ({"task": {"params": [1, Point(1, 2)]}}, "namedtuple test_testing.Point at state['task']['params'][1]"),
    ({"cfg": Config()}, "test_testing.Config at state['cfg']"),
    ({"d": {frozenset([1]): 1}}, "frozenset as a dict key at state['d']"),
    ({"a": np.array(["text"])}, "an array of dtype <U4"),
    ({"b": b"raw"}, "bytes at state['b']"),
    ({"e": np.longdouble(1)}, "numpy dtype float128"),
])
def test_statefile_refuses_what_would_not_come_back(value, words):
    with pytest.raises(StateTypeError) as info:
        dumps(value)
    assert words in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_state_difference_is_bitwise():
    assert state_difference({"x": np.float64(0.0)}, {"x": np.float64(-0.0)}) == "state['x']: np.float64(0.0) vs np.float64(-0.0)"
    assert state_difference([1.0], (1.0,)) == "state is a list on one side and a tuple on the other"
    assert state_difference({"a": np.zeros(2)}, {"a": np.zeros(2, np.float32)}).startswith("state['a']: float64")
    assert state_difference(float("nan"), float("nan")) is None
