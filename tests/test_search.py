"""grid / random / fixed baselines."""

from __future__ import annotations

import numpy as np
import pytest

from hpctl.controllers.base import get_controller
from hpctl.controllers.search import Fixed, Grid, RandomSearch, grid_points
from hpctl.control_env import ControlEnv
from hpctl.envs import make_landscape_env
from hpctl.envs.landscapes import Landscape, LandscapeTask
from hpctl.errors import ConfigError
from hpctl.knob import Knob


def _env(**kw) -> ControlEnv:
    kw.setdefault("noise", 0.0)
    env = make_landscape_env(**kw)
    env.reset(seed=0)
    return env


def _probes(env: ControlEnv) -> list[dict]:
    events: list[dict] = []
    env.listeners.append(lambda e: events.append(e) if e["event"] == "probe" else None)
    return events


def test_grid_points_layout():
    np.testing.assert_allclose(grid_points(8, 1, 64)[:, 0], np.linspace(0, 1, 8))
    np.testing.assert_allclose(grid_points(8, 1, 5)[:, 0], np.linspace(0, 1, 5))  # the budget caps k
    np.testing.assert_allclose(grid_points(8, 1, 1)[:, 0], [0.5])
    assert grid_points(8, 2, 64).shape == (64, 2)
    assert grid_points(8, 2, 30).shape == (25, 2)  # 5 per dimension fit in 30
    assert grid_points(8, 2, 81).shape == (64, 2)


def test_grid_probes_k_points_and_the_best_wins():
    env = _env(optimum=0.37)
    events = _probes(env)
    ctrl = get_controller("grid")(env, seed=0)
    learned = ctrl.run(64)
    assert env.probes == 8 and len(events) == 8
    np.testing.assert_allclose([e["value"][0] for e in events], np.linspace(0, 1, 8))
    assert learned[0] == pytest.approx(3 / 7)  # the grid point nearest 0.37
    assert env.steps_done == 0  # search never trains; the runner's finish() does the final run
    assert ctrl.state()["best"] == pytest.approx(3 / 7) and ctrl.state()["evaluated"] == 8


def test_grid_ties_go_to_the_first_point():
    env = _env(shape="flat", optimum=0.5, width=0.3)  # plateau [0.2, 0.8]: several grid points score 1
    learned = Grid(env, seed=0).run(64)
    assert learned[0] == pytest.approx(2 / 7)


def test_grid_two_dimensional_and_within_budget():
    env = _env(optimum=(0.35, 0.75))
    learned = Grid(env, Grid.make_config({"k": 8}), seed=0).run(40)
    assert env.probes == 36  # 6 x 6
    np.testing.assert_allclose(learned, [0.4, 0.8])


def test_grid_on_a_log_knob_is_even_in_log_space():
    task = LandscapeTask(Landscape(optimum=(0.01,)), noise=0.0, low=1e-4, high=1.0, default=0.01)
    task.knob = Knob("lr", 1e-4, 1.0, default=0.01, log=True)
    env = ControlEnv(task)
    env.reset(seed=0)
    events = _probes(env)
    Grid(env, Grid.make_config({"k": 5})).run(64)
    np.testing.assert_allclose([e["value"][0] for e in events], [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-9)


class CountingTask(LandscapeTask):
    full_runs = 0

    def full_run(self, value):
        CountingTask.full_runs += 1
        if value[0] > 0.9:
            raise RuntimeError("diverged")
        return super().full_run(value)


def test_grid_full_runs_count_as_probes_and_emit_probe_events():
    CountingTask.full_runs = 0
    env = ControlEnv(CountingTask(Landscape(optimum=(0.6,)), noise=0.0), group_size=4)
    env.reset(seed=0)
    events = _probes(env)
    faults: list[dict] = []
    env.listeners.append(lambda e: faults.append(e) if e["event"] == "fault" else None)
    calls = []
    learned = Grid(env, Grid.make_config({"full_runs": True})).run(64, lambda c: calls.append(env.probes))
    assert CountingTask.full_runs == 8 and env.probes == 8 and len(events) == 8
    assert calls == [4, 8]  # after every group of env.group_size points
    assert all(e["kind"] == "candidate" for e in events)
    assert np.isnan(events[-1]["score"]) and len(faults) == 1 and "diverged" in faults[0]["error"]
    assert learned[0] == pytest.approx(4 / 7)


def test_random_uses_the_budget_is_seeded_and_best_wins():
    def go(seed):
        env = _env(optimum=0.37, noise=0.01)
        events = _probes(env)
        learned = get_controller("random")(env, seed=seed).run(20)
        return env, events, learned

    env, events, learned = go(1)
    assert env.probes == 20
    scores = [e["score"] for e in events]
    assert learned[0] == events[int(np.argmax(scores))]["value"][0]
    assert all(0 <= e["value"][0] <= 1 for e in events)
    assert [e["value"][0] for e in go(1)[1]] == [e["value"][0] for e in events]
    assert [e["value"][0] for e in go(2)[1]] != [e["value"][0] for e in events]
    env = _env(optimum=0.37)
    RandomSearch(env, RandomSearch.make_config({"n": 5})).run(20)
    assert env.probes == 5


def test_search_resumes_where_it_stopped():
    env = _env(optimum=0.37, noise=0.01, group_size=4)
    saved = {}
    full = RandomSearch(env, seed=3).run(16, lambda c: saved.setdefault("s", (env.state_dict(), c.state_dict())))
    env2 = _env(optimum=0.37, noise=0.01, group_size=4)
    env2.load_state_dict(saved["s"][0])
    ctrl = RandomSearch(env2, seed=99)
    ctrl.load_state_dict(saved["s"][1])
    assert np.array_equal(ctrl.run(16), full) and env2.probes == 16


def test_fixed_probes_once_and_returns_its_value():
    env = _env(optimum=0.37)
    events = _probes(env)
    learned = get_controller("fixed")(env, Fixed.make_config({"value": 0.3})).run(64)
    assert learned[0] == 0.3 and env.probes == 1 and events[0]["value"][0] == 0.3
    env = _env(optimum=0.37)
    assert Fixed(env).run(64)[0] == 0.5  # no value: the knob's default
    env = _env(optimum=(0.3, 0.7))
    np.testing.assert_array_equal(Fixed(env, Fixed.make_config({"value": [0.1, 0.2]})).run(8), [0.1, 0.2])


def test_fixed_rejects_a_value_outside_the_bounds():
    with pytest.raises(ConfigError, match="outside its bounds"):
        Fixed(_env(), Fixed.make_config({"value": 1.7}))


def test_bad_search_configs():
    for name, bad in (("grid", {"k": 0}), ("random", {"n": -1}), ("grid", {"nosuch": 1})):
        with pytest.raises(ConfigError):
            get_controller(name).make_config(bad)


def test_search_controllers_learn_no_policy(tmp_path):
    from hpctl.controllers.base import load_warm_start, save_controller_state

    env = _env(optimum=0.37, noise=0.01)
    ctrl = get_controller("random")(env, seed=0)
    ctrl.check_budget(1)  # no update to pay for: any budget is fine
    ctrl.run(8)
    assert ctrl.state().get("updates", 0) == 0
    assert [p.name for p in save_controller_state(ctrl, tmp_path)] == ["controller_state.json"]
    for name in ("random", "grid", "fixed"):
        with pytest.raises(ConfigError, match=f"{name}.*cannot be warm-started"):
            load_warm_start(tmp_path, get_controller(name)(_env()))
