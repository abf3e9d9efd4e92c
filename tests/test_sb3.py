"""Stable-Baselines3 baselines on the same ControlEnv (actions rescaled to [-1, 1])."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from hpctl.controllers.base import get_controller, load_warm_start, save_controller_state  # noqa: E402
from hpctl.controllers.sb3 import UnitActionWrapper  # noqa: E402
from hpctl.control_env import ControlEnv  # noqa: E402
from hpctl.envs import make_landscape_env  # noqa: E402
from hpctl.envs.landscapes import Landscape, LandscapeTask  # noqa: E402
from hpctl.errors import ConfigError  # noqa: E402
from hpctl.knob import Knob  # noqa: E402
from hpctl.runner import steps_per_round  # noqa: E402

AGENTS = ["ppo", "a2c", "sac", "td3"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny MLPs: one thread is faster than two contended ones (the controllers leave threads to the caller)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(name: str, seed: int, budget: int = 32, optimum=0.37, G: int = 8, config=None):
    env = make_landscape_env(optimum=optimum, noise=0.01, group_size=G, steps_per_round=steps_per_round(1000, budget, G))
    events: list[dict] = []
    env.listeners.append(events.append)
    cls = get_controller(name)
    ctrl = cls(env, cls.make_config(config), seed=seed)
    env.reset(seed=seed)
    rounds_seen: list[int] = []
    learned = ctrl.run(budget, lambda c: rounds_seen.append(env.probes))
    return env, ctrl, learned, events, rounds_seen


@pytest.mark.parametrize("name", AGENTS)
def test_runs_within_budget_deterministic_and_in_bounds(name, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's default logger makes its folder
    env, ctrl, learned, events, rounds = _run(name, seed=5)
    assert not list(tmp_path.glob("SB3-*"))  # a silent controller leaves no log folder behind
    # 32 probes pay for 3 rounds of 8 steps + 1 baseline; the rest cannot pay for a rollout
    assert env.probes == 27 and ctrl.steps == 24 == ctrl.planned
    assert learned.shape == (1,) and 0.0 <= learned[0] <= 1.0
    assert np.array_equal(learned, env.current)  # the learned value is the committed one
    assert ctrl.updates == ctrl.expected_updates(24) > 0 and ctrl.state()["updates"] == ctrl.updates
    assert sum(e["event"] == "reset" for e in events) == 1  # SB3 attached to the runner's episode
    assert len(rounds) == env.round >= 3  # the run callback fires after every round
    assert all(math.isfinite(v) for v in ctrl.state().values())
    env2, _, learned2, events2, _ = _run(name, seed=5)
    assert np.array_equal(learned, learned2)
    probes = [(e["value"].tolist(), e["score"]) for e in events if e["event"] == "probe"]
    assert probes == [(e["value"].tolist(), e["score"]) for e in events2 if e["event"] == "probe"]
    _, _, _, events3, _ = _run(name, seed=6)
    assert probes != [(e["value"].tolist(), e["score"]) for e in events3 if e["event"] == "probe"]


def test_ppo_with_rescaled_actions_does_not_collapse_to_a_bound():
    # Without the [-1, 1] rescaling PPO answered 0.0 on this landscape; with it (and a
    # policy std comparable to GRPO's), a few hundred probes get close.
    for seed in (0, 1):
        env, _, learned, _, _ = _run("ppo", seed, budget=256)
        assert abs(learned[0] - 0.37) < 0.1, learned


def test_episodes_restart_when_training_ends_and_budget_is_exact():
    env, _, learned, events, _ = _run("a2c", seed=0, budget=40, G=4, config={"n_steps": 4})
    # rounds of 4 steps + 1 baseline = 5 probes; 40 // 5 = 8 rounds per training run, so one run
    assert env.probes == 40 and sum(e["event"] == "reset" for e in events) == 1
    env = make_landscape_env(optimum=0.37, group_size=4, steps_per_round=250)  # 4 rounds per run
    events = []
    env.listeners.append(events.append)
    env.reset(seed=0)
    get_controller("ppo")(env, seed=0).run(50)
    assert env.probes == 50
    assert sum(e["event"] == "reset" for e in events) == 3  # the runner's + 2 new training runs by SB3
    assert env.steps_done > 0  # no reset after the budget was spent


def test_wrapper_maps_minus_one_one_onto_the_knob():
    env = make_landscape_env()
    w = UnitActionWrapper(env)
    assert w.action_space.low.tolist() == [-1.0] and w.action_space.high.tolist() == [1.0]
    np.testing.assert_allclose([w.action(np.array([a]))[0] for a in (-1, 0, 1, 3)], [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(w.reverse_action(np.array([0.25])), [-0.5])
    task = LandscapeTask(Landscape(optimum=(0.01,)), low=1e-4, high=1.0, default=0.01)
    task.knob = Knob("lr", 1e-4, 1.0, default=0.01, log=True)
    wl = UnitActionWrapper(ControlEnv(task))
    assert wl.action(np.array([0.0]))[0] == pytest.approx(1e-2)  # geometric middle of a log knob


def test_wrapper_reset_keeps_a_run_in_progress_and_a_spent_budget():
    env = make_landscape_env(group_size=2, steps_per_round=10)
    env.reset(seed=0)
    env.advance(np.array([0.4]))
    w = UnitActionWrapper(env, budget=3)
    obs, info = w.reset(seed=123)
    assert info["steps_done"] == 10 and env.episodes == 1  # attached, not reset
    w.step(np.array([0.0], dtype=np.float32))
    obs, info = w.reset()
    assert env.episodes == 2 and info["steps_done"] == 0  # a later reset starts a new run
    w.step(np.array([0.0], dtype=np.float32))
    w.step(np.array([0.0], dtype=np.float32))  # 3 probes (+ baseline): the budget is spent
    w.reset()
    assert env.episodes == 2 and env.steps_done == 10


def test_two_dimensional_knob_and_config_passthrough():
    env, _, learned, _, _ = _run("ppo", seed=0, optimum=(0.3, 0.7), config={
        "n_steps": 8, "batch_size": 8, "policy_kwargs": {"net_arch": [16]}, "kwargs": {"clip_range": 0.1}})
    assert learned.shape == (2,) and np.all((0 <= learned) & (learned <= 1))
    ctrl = get_controller("ppo")(env, get_controller("ppo").make_config({"policy_kwargs": {"net_arch": [16]}}))
    model = ctrl.build(32)
    assert model.policy.net_arch == [16] and model.n_steps == 8 == model.batch_size  # one rollout per group
    assert math.exp(model.policy.log_std.detach().numpy()[0]) == pytest.approx(math.exp(-1.0))
    td3 = get_controller("td3")
    kw = td3(env, td3.make_config({"action_noise": 0.0})).algo_kwargs()
    assert kw["action_noise"] is None and kw["learning_starts"] == 8 == kw["train_freq"] and kw["gamma"] == 0.0


# ------------------------------------------------------------ learning at small budgets -----
def test_ppo_learns_at_the_grasp_lora_budget():
    # 20 probes in groups of 4: one rollout per group, 4 rollouts x 10 epochs = 40 updates
    # (the old rollouts of 16 steps made none and answered the start value 0.5)
    errs, policies = [], []
    for seed in range(4):
        env, ctrl, learned, _, _ = _run("ppo", seed, budget=20, optimum=0.2, G=4)
        assert env.probes == 20 and ctrl.updates == 40
        errs.append(abs(learned[0] - 0.2))
        policies.append(ctrl.policy_value()[0])
    assert np.median(errs) < 0.03, errs
    assert max(policies) < 0.4, policies  # the policy itself moved from 0.5 towards 0.2


@pytest.mark.parametrize("name", AGENTS)
def test_updates_match_the_plan_and_no_transition_is_dropped(name):
    env, ctrl, _, events, _ = _run(name, seed=1, budget=20, G=4)
    steps = ctrl.planned
    assert steps == 16 and ctrl.steps == steps  # every planned step was taken
    assert ctrl.updates == ctrl.expected_updates(steps) > 0
    assert env.probes == 20 and sum(e["event"] == "commit" for e in events) == 4


@pytest.mark.parametrize("name, budget", [("ppo", 4), ("a2c", 4), ("sac", 5), ("td3", 9)])
def test_a_budget_that_allows_no_update_is_an_error_before_the_run(name, budget):
    env = make_landscape_env(group_size=4, steps_per_round=100)
    env.reset(seed=0)
    cls = get_controller(name)
    ctrl = cls(env, seed=0)
    with pytest.raises(ConfigError, match=f"{name}.*makes no update with a budget of {budget} probes"):
        ctrl.check_budget(budget)
    with pytest.raises(ConfigError):
        ctrl.run(budget)
    assert env.probes == 0


def test_bad_sb3_settings_are_config_errors():
    for name, bad in (("ppo", {"ent_coef": -0.1}), ("ppo", {"n_steps": 0}), ("a2c", {"gamma": 2.0}),
                      ("sac", {"gradient_steps": 0}), ("td3", {"action_noise": -1}), ("ppo", {"learning_rate": 0})):
        with pytest.raises(ConfigError, match=name):
            get_controller(name).make_config(bad)


def test_warm_start_loads_the_saved_policy_weights(tmp_path):
    import torch

    env, ctrl, _, _, _ = _run("ppo", seed=0, budget=20, optimum=0.2, G=4)
    files = save_controller_state(ctrl, tmp_path)
    assert [f.name for f in files] == ["controller_state.json", "controller_policy.pt"]
    saved = torch.load(tmp_path / "controller_policy.pt", weights_only=True)
    env2 = make_landscape_env(optimum=0.25, group_size=4, steps_per_round=250)
    cls = get_controller("ppo")
    warm = cls(env2, seed=3)
    load_warm_start(tmp_path, warm)
    model = warm.model = warm.build(20)
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, saved[k]), k
    env2.reset(seed=3)
    cold = cls(env2, seed=3)
    cold.model = cold.build(20)
    assert abs(cold.policy_value()[0] - 0.5) < 0.05  # an untrained policy answers the middle
    assert warm.policy_value()[0] < 0.4  # the warm one starts near where the old policy ended (0.2)
    other = cls(env2, cls.make_config({"policy_kwargs": {"net_arch": [8]}}))
    with pytest.raises(ConfigError, match="does not fit"):
        load_warm_start(tmp_path, other)
    (tmp_path / "controller_policy.pt").write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_warm_start(tmp_path, cls(env2))
