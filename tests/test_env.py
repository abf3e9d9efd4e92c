"""ControlEnv: Gymnasium compliance, group probing, commit rules, reproducibility."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import hpctl.envs as henvs
from hpctl.control_env import ControlEnv
from hpctl.envs.landscapes import Landscape, LandscapeTask
from hpctl.errors import ConfigError
from hpctl.knob import Knob


@pytest.mark.parametrize("env_id", sorted(henvs.LANDSCAPE_IDS))
def test_check_env_on_every_landscape_id(env_id):  # the plugins' ids: tests/test_gym_ids.py
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


def test_ids_make_without_prior_import():
    env = gym.make("hpctl.envs:hpctl/Landscape2D-v0")
    assert env.unwrapped.knob.dim == 2


def _env(**kw) -> ControlEnv:
    return henvs.make_landscape_env(**kw)


def _probe_sequence(seed: int) -> list[tuple[float, float]]:
    env = _env(noise=0.05, group_size=4, steps_per_round=50)
    env.reset(seed=seed)
    seq = []
    rng = np.random.default_rng(123)
    while not env.done:
        _, r, term, _, info = env.step(rng.uniform(0, 1, 1))
        seq.append((float(info["value"][0]), r))
        if term:
            break
    return seq


def test_same_seed_same_probe_sequence_and_other_seed_differs():
    a, b, c = _probe_sequence(7), _probe_sequence(7), _probe_sequence(8)
    assert a == b
    assert a != c


def test_group_probing_leaves_training_state_bitwise_untouched():
    env = _env(noise=0.05)
    env.reset(seed=0)
    env.advance(np.array([0.4]))
    before = env.task.snapshot()
    env.probe_group(np.linspace(0, 1, 8))
    env.baseline()
    after = env.task.snapshot()
    assert after["steps"] == before["steps"]
    assert after["weights"].tobytes() == before["weights"].tobytes()
    assert np.array_equal(env.current, [0.4])


def test_step_commits_after_group_size_probes_and_trains():
    env = _env(group_size=3, steps_per_round=10, commit_rule="last")
    env.reset(seed=0)
    for v in (0.1, 0.2):
        env.step(np.array([v], dtype=np.float32))
        assert env.steps_done == 0
    env.step(np.array([0.3], dtype=np.float32))
    assert env.steps_done == 10
    assert env.current[0] == pytest.approx(0.3, abs=1e-6)


def test_best_rule_moves_to_best_probe_and_guard_refuses_worse():
    env = _env(group_size=2, steps_per_round=10, commit_rule="best", noise=0.0, optimum=0.37)
    env.reset(seed=0)  # current = 0.5 (knob default: the middle)
    env.step(np.array([0.9], dtype=np.float32))
    env.step(np.array([0.38], dtype=np.float32))
    assert env.current[0] == pytest.approx(0.38, abs=1e-6)
    env.step(np.array([0.9], dtype=np.float32))
    env.step(np.array([0.0], dtype=np.float32))
    assert env.current[0] == pytest.approx(0.38, abs=1e-6)  # both worse than the baseline: stay


def test_max_move_bounds_the_commit():
    task = LandscapeTask(Landscape(optimum=(0.37,)), noise=0.0, total_steps=100)
    env = ControlEnv(task, group_size=2, steps_per_round=10, commit_rule="last", max_move=0.1)
    env.reset(seed=0)
    env.advance(np.array([1.0]))
    assert env.current[0] == pytest.approx(0.6)


def test_fault_probe_returns_nan_and_step_reward_is_finite():
    class Faulty(LandscapeTask):
        def probe(self, value):
            if value[0] > 0.8:
                raise RuntimeError("boom")
            return super().probe(value)

    env = ControlEnv(Faulty(Landscape(), noise=0.0, total_steps=100), group_size=2, steps_per_round=10)
    events = []
    env.listeners.append(events.append)
    env.reset(seed=0)
    _, r1, *_ = env.step(np.array([0.3], dtype=np.float32))
    _, r2, *_ = env.step(np.array([0.9], dtype=np.float32))
    assert np.isfinite(r2) and r2 == pytest.approx(r1)  # worst finite reward so far
    assert any(e["event"] == "fault" and "boom" in e["error"] for e in events)
    assert np.isnan(env.probe(np.array([0.95])))


def test_probe_rejects_value_outside_bounds():
    env = _env()
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="outside its bounds"):
        env.probe(np.array([1.5]))


def test_warmup_trains_at_the_start_value_before_the_first_round():
    task = LandscapeTask(Landscape(optimum=(0.37,)), noise=0.0, total_steps=100)
    env = ControlEnv(task, group_size=2, steps_per_round=10, warmup_steps=40)
    events = []
    env.listeners.append(events.append)
    env.reset(seed=0)
    assert env.steps_done == 40 and task.snapshot()["steps"] == 40 and env.progress == pytest.approx(0.4)
    warm = [e for e in events if e["event"] == "warmup"]
    assert len(warm) == 1 and warm[0]["step"] == 40 and warm[0]["value"][0] == pytest.approx(0.5)
    env.probe(np.array([0.3]))
    assert events[-1]["event"] == "probe" and events[-1]["step"] == 40  # the first probe sees the trained state
    env.reset(seed=0)  # every episode warms up again
    assert env.steps_done == 40 and sum(e["event"] == "warmup" for e in events) == 2
    for bad in (-1, 100):
        with pytest.raises(ConfigError, match="warm-up"):
            ControlEnv(LandscapeTask(Landscape(), total_steps=100), warmup_steps=bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"group_size": 1}, "group size"),
    ({"commit_rule": "worst"}, "commit rule"),
    ({"reward": "money"}, "reward"),
])
def test_env_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _env(**kwargs)


def test_state_dict_round_trip_continues_identically():
    def play(env, n):
        out = []
        for i in range(n):
            _, r, *_ = env.step(np.array([0.1 + 0.07 * i], dtype=np.float32))
            out.append(r)
        return out

    env = _env(noise=0.05, group_size=3, steps_per_round=20)
    env.reset(seed=3)
    play(env, 4)
    state = env.state_dict()
    first = play(env, 7)
    env2 = _env(noise=0.05, group_size=3, steps_per_round=20)
    env2.reset(seed=99)
    env2.load_state_dict(state)
    assert play(env2, 7) == first


def test_knob_validation_and_unit_transform():
    with pytest.raises(ConfigError, match="out of order"):
        Knob("r", 0.9, 0.1, default=0.5)
    k = Knob("lr", 1e-5, 1e-1, default=1e-3, log=True)
    assert k.to_unit(1e-3)[0] == pytest.approx(0.5)
    assert k.from_unit(0.25)[0] == pytest.approx(1e-4)
    v = Knob("r", 0.0, 0.95, default=(0.1, 0.2), dim=2, labels=("attn", "mlp"))
    assert v.to_dict([0.3, 0.4]) == {"attn": 0.3, "mlp": 0.4}
    with pytest.raises(ConfigError, match="outside its bounds"):
        v.validate([0.3, 0.99])


def test_cliff_rises_gently_to_its_edge_and_falls_steeply_past_it():
    ls = Landscape(optimum=(0.6,), shape="cliff", width=0.15)
    below = [ls(np.array([0.6 - s])) for s in (0.0, 0.05, 0.1, 0.3)]
    above = [ls(np.array([0.6 + s])) for s in (0.0, 0.05, 0.1)]
    assert below[0] == pytest.approx(1.0) and np.all(np.diff(below) < 0)  # the edge is the best value
    assert 1.0 - below[1] < 0.1 and below[3] > 0.6  # the plateau side: a gentle slope
    assert above[1] < 0.3 and above[2] < 0.01  # the cliff side: a steep fall
    assert ls.distance(np.array([0.5])) == pytest.approx(0.1)  # distance is to the edge
    two = Landscape(optimum=(0.6, 0.3), shape="cliff", width=0.15)
    assert two(np.array([0.6, 0.3])) == pytest.approx(1.0)
    assert two(np.array([0.5, 0.3])) == pytest.approx(ls(np.array([0.5])))  # each coordinate its own edge
    assert two(np.array([0.6, 0.4])) < 0.01
