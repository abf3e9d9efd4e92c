"""tpe / cmaes / gp: Optuna's samplers as controllers (hpctl.controllers.optuna).

A round's group is asked together, the same seed asks the same values, a resumed run asks
what an uninterrupted one asks, the knob's bounds and scale reach Optuna (a 1-d, a 2-d and
a log landscape are learned at small budgets), and a missing extra, a budget the sampler
cannot use or a bad setting is a one-line error before anything runs. GP budgets stay tiny:
each of its asks fits a Gaussian process.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import hpctl
from hpctl import statefile
from hpctl.config import RunOptions
from hpctl.controllers.base import BUILTIN_CONTROLLERS, get_controller
from hpctl.controllers.optuna import CmaEs, GP, OptunaController, TPE
from hpctl.control_env import ControlEnv
from hpctl.envs import make_landscape_env
from hpctl.envs.landscapes import Landscape, LandscapeTask
from hpctl.errors import ConfigError, ResumeError
from hpctl.knob import Knob
from hpctl.plugins.synthetic import SyntheticConfig, SyntheticPlugin
from hpctl.rundir import RunSpec
from hpctl.runner import run, steps_per_round
from hpctl.task import Task

HAVE_OPTUNA = TPE.unavailable() is None
needs_optuna = pytest.mark.skipif(not HAVE_OPTUNA, reason="the optuna extra is not installed")
needs_cmaes = pytest.mark.skipif(CmaEs.unavailable() is not None, reason="cmaes is not installed")
needs_gp = pytest.mark.skipif(GP.unavailable() is not None, reason="GPSampler's scipy/torch are not installed")

#: per sampler: the settings that keep a test small (GP: a tiny budget, its start-up inside it)
SMALL = {"tpe": {}, "cmaes": {}, "gp": {"n_startup_trials": 4}}
BUDGET = {"tpe": 24, "cmaes": 24, "gp": 12}
SAMPLERS = [pytest.param("tpe", marks=needs_optuna), pytest.param("cmaes", marks=needs_cmaes),
            pytest.param("gp", marks=needs_gp)]


def _env(optimum=0.37, noise=0.01, group_size=4, seed=0, **kw) -> ControlEnv:
    env = make_landscape_env(optimum=optimum, noise=noise, group_size=group_size, **kw)
    env.reset(seed=seed)
    return env


def _ctrl(name: str, env: ControlEnv, seed: int = 0, **settings):
    cls = get_controller(name)
    return cls(env, cls.make_config({**SMALL[name], **settings}), seed=seed)


class _Groups:
    """Wraps ``env.probe_group``: the values of every group, and the study's trials when it was called."""

    def __init__(self, env: ControlEnv, ctrl: OptunaController) -> None:
        self.calls: list[np.ndarray] = []
        self.running: list[int] = []
        self.told: list[int] = []
        inner = env.probe_group

        def probe_group(values):
            states = [t.state.name for t in ctrl._study.trials]
            self.running.append(states.count("RUNNING"))
            self.told.append(len(states) - states.count("RUNNING"))
            self.calls.append(np.asarray(values, dtype=np.float64).copy())
            return inner(values)

        env.probe_group = probe_group


# ------------------------------------------------------------------ registry ----
def test_registered_builtin_search_controllers():
    assert {"tpe", "cmaes", "gp"} <= set(BUILTIN_CONTROLLERS)
    from hpctl.controllers.search import SearchController

    for name, cls in (("tpe", TPE), ("cmaes", CmaEs), ("gp", GP)):
        assert issubclass(cls, SearchController)  # they probe, never train; the answer is the best candidate
        if cls.unavailable() is None:
            assert get_controller(name) is cls


# ------------------------------------------------------------- group and seed ----
@pytest.mark.parametrize("name", SAMPLERS)
def test_a_round_is_one_group_asked_together_and_the_whole_budget_is_spent(name):
    env = _env(group_size=4)
    ctrl = _ctrl(name, env, seed=1)
    groups = _Groups(env, ctrl)
    budget = BUDGET[name] + 2  # not a multiple of the group: the last round is what is left
    learned = ctrl.run(budget)
    assert [len(g) for g in groups.calls] == [4] * (BUDGET[name] // 4) + [2]
    assert groups.running == [len(g) for g in groups.calls]  # every value of a round asked before any told
    assert groups.told == list(np.cumsum([0] + [len(g) for g in groups.calls[:-1]]))
    assert env.probes == budget and env.steps_done == 0  # a search controller never trains
    for g in groups.calls:
        assert len(np.unique(g[:, 0])) == len(g)  # a group spreads out (TPE's constant liar, GP's q-batch)
    # the answer is the best candidate (first of ties), as for random search
    values = np.concatenate(groups.calls)
    scores = np.array([t.value if t.value is not None else -np.inf for t in ctrl._study.trials])
    assert learned[0] == values[int(np.argmax(scores))][0]
    assert np.array_equal(ctrl.answer(), learned)
    state = ctrl.state()
    assert state["best"] == learned[0] and state["evaluated"] == budget and state["best_score"] == scores.max()


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_seed_fixes_every_value_asked(name):
    def asked(seed):
        env = _env(seed=0)
        ctrl = _ctrl(name, env, seed=seed)
        groups = _Groups(env, ctrl)
        ctrl.run(8 if name == "gp" else 12)  # GP: one round of its own after the random one
        return np.concatenate(groups.calls)

    first = asked(5)
    assert np.array_equal(first, asked(5))
    assert not np.array_equal(first, asked(6))


# ----------------------------------------------------------------------- resume ----
@pytest.mark.parametrize("name", SAMPLERS)
def test_resume_from_the_saved_state_asks_what_the_uninterrupted_run_asks(name):
    def make():
        env = _env(optimum=0.62, noise=0.02, seed=4)
        return env, _ctrl(name, env, seed=4)

    env, ctrl = make()
    saved = {}
    whole = _Groups(env, ctrl)

    def cb(c):
        if c.evaluated == 8:  # after the second round: the model has started
            # through the checkpoint format, which loads without running code (no pickle of the study)
            saved["blob"] = statefile.dumps({"env": env.state_dict(), "ctrl": c.state_dict()})

    full = ctrl.run(BUDGET[name], cb)
    env2, ctrl2 = make()
    ctrl2 = type(ctrl2)(env2, ctrl2.config, seed=99)  # the seed comes from the state
    state = statefile.loads(saved["blob"])
    env2.load_state_dict(state["env"])
    ctrl2.load_state_dict(state["ctrl"])
    resumed = _Groups(env2, ctrl2)
    assert np.array_equal(ctrl2.run(BUDGET[name]), full)
    assert np.array_equal(np.concatenate(resumed.calls), np.concatenate(whole.calls[2:]))
    assert env2.probes == env.probes and ctrl2.state() == ctrl.state()
    assert len(ctrl2._study.trials) == BUDGET[name]  # the replayed rounds are in the rebuilt study


@needs_optuna
def test_a_replay_that_asks_other_values_is_refused_in_one_line():
    env = _env()
    ctrl = _ctrl("tpe", env, seed=2)
    saved = {}
    ctrl.run(16, lambda c: saved.setdefault("s", c.state_dict()) if c.evaluated == 8 else None)
    state = dict(saved["s"])
    state["asked"] = state["asked"].copy()
    state["asked"][5, 0] = 0.123  # not what this seed asks
    again = TPE(_env(), seed=2)
    again.load_state_dict(state)
    with pytest.raises(ResumeError, match=r"cannot resume: replaying its saved trials .* asked .* where the run "
                                          r"asked 0\.123 \(trial 6\)"):
        again.run(16)
    bad = dict(saved["s"], groups=[4])
    with pytest.raises(ResumeError, match="inconsistent"):
        TPE(_env()).load_state_dict(bad)


@needs_optuna
def test_failed_probes_are_failed_trials_and_survive_a_checkpoint():
    class Flaky(LandscapeTask):
        def probe(self, value):
            if 0.45 < value[0] < 0.55:
                raise RuntimeError("diverged")
            return super().probe(value)

    def make():
        env = ControlEnv(Flaky(Landscape(optimum=(0.5,)), noise=0.0), group_size=4)
        env.reset(seed=0)
        return env, TPE(env, TPE.make_config({"n_startup_trials": 4}), seed=0)

    env, ctrl = make()
    saved = {}

    def cb(c):
        if c.evaluated == 16:
            saved["s"] = statefile.dumps({"env": env.state_dict(), "ctrl": c.state_dict()})

    full = ctrl.run(24, cb)
    failed = [t for t in ctrl._study.trials if t.state.name == "FAIL"]
    assert failed and all(0.45 < t.params["x0"] < 0.55 for t in failed)
    assert np.isnan(ctrl.scores).sum() == len(failed) and not 0.45 < full[0] < 0.55
    env2, ctrl2 = make()
    state = statefile.loads(saved["s"])
    assert np.isnan(state["ctrl"]["scores"]).any()  # NaN scores come back through the checkpoint format
    env2.load_state_dict(state["env"])
    ctrl2.load_state_dict(state["ctrl"])
    assert np.array_equal(ctrl2.run(24), full)


# ------------------------------------------------------------ what they learn ----
@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("optimum", [0.18, (0.3, 0.75)], ids=["1d", "2d"])
def test_learns_a_landscape_at_a_small_budget(name, optimum):
    errors = []
    for seed in range(3):
        env = _env(optimum=optimum, noise=0.01, seed=seed)
        budget = 32 if name != "gp" else (12 if np.ndim(optimum) == 0 else 16)
        learned = _ctrl(name, env, seed=seed).run(budget)
        errors.append(float(np.max(np.abs(learned - np.atleast_1d(optimum)))))
    # the peak is 0.15 wide: a swapped axis, a wrong bound or a wrong scale lands far off it
    assert np.median(errors) < 0.06, errors


class LogTask(Task):
    """Score peaks at lr = 3e-3 in log space: -(log10 lr - log10 3e-3)^2."""

    def __init__(self) -> None:
        self.knob = Knob("lr", 1e-5, 1.0, default=1e-3, log=True)
        self.total_steps = 100

    def reset(self, seed=None):
        pass

    def train(self, steps, value):
        return 0.0

    def probe(self, value):
        return -float((math.log10(value[0]) - math.log10(3e-3)) ** 2)

    def snapshot(self):
        return None

    def restore(self, state):
        pass


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_log_knob_is_searched_in_log_space(name):
    env = ControlEnv(LogTask(), group_size=4)
    env.reset(seed=0)
    ctrl = _ctrl(name, env, seed=0)
    groups = _Groups(env, ctrl)
    learned = ctrl.run(BUDGET[name])
    assert all(d.log and d.low == 1e-5 and d.high == 1.0 for d in ctrl.distributions.values())
    first = groups.calls[0][:, 0]  # the random first round: uniform in log10, not in lr
    assert np.all((first >= 1e-5) & (first <= 1.0)) and np.median(first) < 0.05
    assert abs(math.log10(learned[0]) - math.log10(3e-3)) < 0.5


@needs_cmaes
def test_cmaes_on_a_1d_knob_is_cmaes_one_generation_per_round():
    env = _env(optimum=0.3)
    ctrl = _ctrl("cmaes", env, seed=0)
    ctrl.run(24)
    gens = [t.system_attrs.get("cma:generation") for t in ctrl._study.trials]
    assert gens[:4] == [None] * 4  # the first round: no finished trial yet, so Optuna samples it at random
    assert gens[4:] == [g for g in range(5) for _ in range(4)]  # then one CMA-ES generation per round


# ------------------------------------------------------------ Session, Trainer ----
LANDSCAPE = {"optimum": 0.3, "noise": 0.02, "total_steps": 200}


def _task(seed: int):
    return SyntheticPlugin().make_task(SyntheticConfig(**LANDSCAPE), seed=seed, out_dir=Path("."))


def _loop(s, task, spr, *, stop_after=None, snapshots=None):
    told = 0
    while not s.done:
        for v in s.ask():
            s.tell(v, task.probe(np.atleast_1d(v)))
            told += 1
            if stop_after is not None and told >= stop_after:
                return False
        loss = task.train(spr, np.atleast_1d(s.value))
        s.report_loss(loss)
        if snapshots is not None:
            snapshots.append((s.value, loss, task.snapshot()))
    return True


def _events(history):
    return [[e["event"], e.get("kind"), e.get("probe"), np.asarray(e.get("value", [])).tolist(), e.get("score")]
            for e in history]


@pytest.mark.parametrize("name", SAMPLERS)
def test_session_asks_what_hpctl_run_probes(name, tmp_path, tracking_uri):
    budget, group, seed = BUDGET[name], 4, 3
    res = run(RunSpec("synthetic", RunOptions(controller=name, seed=seed, budget=budget, group_size=group,
                                              controller_config=SMALL[name], out=str(tmp_path / "run"),
                                              tracking_uri=tracking_uri), dict(LANDSCAPE)))
    expected = json.loads((tmp_path / "run" / "history.json").read_text())
    task = _task(seed)
    spr = steps_per_round(LANDSCAPE["total_steps"], budget, group)
    s = hpctl.Session(task.knob, name, budget=budget, group_size=group, seed=seed, controller_config=SMALL[name],
                      total_steps=LANDSCAPE["total_steps"], steps_per_round=spr, out_dir=tmp_path / "session",
                      tracking_uri=tracking_uri)
    assert _loop(s, task, spr)
    assert _events(s.history) == _events(expected)
    assert s.learned == res["learned"]["x"] and s.probes == res["probes"] == budget
    assert abs(s.learned - LANDSCAPE["optimum"]) < 0.1


@needs_optuna
@pytest.mark.slow
def test_a_crashed_session_resumes_identically(tmp_path, tracking_uri):
    budget, group, seed = 24, 4, 5
    spr = steps_per_round(LANDSCAPE["total_steps"], budget, group)
    kw = dict(budget=budget, group_size=group, seed=seed, total_steps=LANDSCAPE["total_steps"], steps_per_round=spr,
              tracking_uri=tracking_uri)
    task = _task(seed)
    whole = hpctl.Session(task.knob, "tpe", out_dir=tmp_path / "whole", **kw)
    assert _loop(whole, task, spr)

    task = _task(seed)
    snaps: list = []
    first = hpctl.Session(task.knob, "tpe", out_dir=tmp_path / "crash", **kw)
    assert not _loop(first, task, spr, stop_after=14, snapshots=snaps)  # killed in the 4th round
    del first
    task = _task(seed)
    trained_at, loss, snap = snaps[-1]
    task.restore(snap)
    again = hpctl.Session(task.knob, "tpe", out_dir=tmp_path / "crash", resume=True, **kw)  # a fresh study, replayed
    assert 0 < again.probes < 14
    again.report_loss(loss)
    assert _loop(again, task, spr)
    assert _events(again.history) == _events(whole.history)
    assert again.learned == whole.learned


@needs_optuna
@pytest.mark.llm
def test_trainer_callback_runs_tpe(tmp_path, tracking_uri):
    pytest.importorskip("transformers")
    import torch
    from transformers import Trainer, TrainingArguments

    from hpctl.integrations.transformers import FunctionKnob, KnobCallback

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def forward(self, x, labels=None):
            out = self.w(x).squeeze(-1)
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    current = {"v": None}
    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5), apply=lambda v: current.update(v=v),
                        probe=lambda v: -abs(v - 0.8))
    cb = KnobCallback(knob, every_steps=2, controller="tpe", budget=12, group_size=3, seed=0,
                      controller_config={"n_startup_trials": 3}, tracking_uri=tracking_uri,
                      out_dir=tmp_path / "session")
    torch.manual_seed(0)
    data = [{"x": torch.randn(2), "labels": torch.tensor(0.5)} for _ in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, max_steps=10,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                             remove_unused_columns=False)
    Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=[cb]).train()
    s = cb.session
    assert s.done and s.probes == 12 and s.result["controller"] == "tpe"
    assert abs(s.learned - 0.8) < 0.1 and current["v"] == pytest.approx(s.learned)  # training ended at the answer


# ------------------------------------------------------------------- errors ----
@needs_optuna
def test_they_learn_no_policy_to_warm_start_from(tmp_path):
    from hpctl.controllers.base import load_warm_start, save_controller_state

    ctrl = _ctrl("tpe", _env())
    ctrl.run(8)
    assert ctrl.state().get("updates", 0) == 0
    assert [p.name for p in save_controller_state(ctrl, tmp_path)] == ["controller_state.json"]
    with pytest.raises(ConfigError, match="'tpe' learns no policy, so it cannot be warm-started"):
        load_warm_start(tmp_path, _ctrl("tpe", _env()))



@pytest.mark.parametrize("name", SAMPLERS)
def test_bad_settings_are_config_errors(name):
    cls = get_controller(name)
    for bad, message in (({"nosuch": 1}, f"controller {name!r} has no setting 'nosuch'"),
                         ({"n_startup_trials": -1}, f"controller {name!r}: bad setting: n_startup_trials must be"),
                         ({"n_startup_trials": 1.5}, "option 'n_startup_trials' must be an integer, got 1.5")):
        with pytest.raises(ConfigError, match=message):
            cls.make_config(bad)
    if name == "cmaes":
        with pytest.raises(ConfigError, match="popsize must be an integer >= 2"):
            cls.make_config({"popsize": 1})


@pytest.mark.parametrize("name, settings, budget, message", [
    pytest.param("tpe", {"n_startup_trials": 10}, 12, r"'tpe': a budget of 12 probes in groups of 4 is all random "
                 r"start-up .*raise --budget above 12 or lower n_startup_trials", marks=needs_optuna),
    pytest.param("tpe", {}, 4, r"'tpe': a budget of 4 .* all random start-up", marks=needs_optuna),
    pytest.param("gp", {"n_startup_trials": 9}, 12, r"'gp': a budget of 12 .*all random start-up", marks=needs_gp),
    pytest.param("cmaes", {}, 8, r"'cmaes': a budget of 8 probes in groups of 4 never updates CMA-ES .*needs 9",
                 marks=needs_cmaes),
    pytest.param("cmaes", {"popsize": 8}, 12, r"never updates CMA-ES .*needs 13", marks=needs_cmaes),
])
def test_a_budget_the_sampler_cannot_use_is_refused(name, settings, budget, message):
    env = _env()
    ctrl = _ctrl(name, env, **settings)
    with pytest.raises(ConfigError, match=message):
        ctrl.check_budget(budget)
    with pytest.raises(ConfigError, match=message):
        ctrl.run(budget)
    assert env.probes == 0


@pytest.mark.parametrize("blocked, names, why", [
    ("optuna", ("tpe", "cmaes", "gp"), "no module named 'optuna'"),
    ("cmaes", ("cmaes",), "no module named 'cmaes', which CmaEsSampler needs"),
    ("scipy", ("gp",), "no module named 'scipy', which GPSampler needs"),
])
def test_a_missing_extra_is_a_one_line_error(blocked, names, why, monkeypatch, tmp_path, tracking_uri):
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` raises ImportError
    for name in ("tpe", "cmaes", "gp"):
        if name not in names:
            continue
        message = rf"controller '{name}' needs the 'optuna' extra: pip install 'hpctl\[optuna\]' \({why}"
        with pytest.raises(ConfigError, match=message):
            get_controller(name)
        with pytest.raises(ConfigError, match=message):
            hpctl.Session(hpctl.Knob("x", 0.0, 1.0), name, out_dir=tmp_path / name, tracking_uri=tracking_uri)
        assert not (tmp_path / name).exists()
    if blocked != "optuna" and HAVE_OPTUNA:
        assert get_controller("tpe") is TPE  # the other samplers still run


def test_an_old_optuna_is_a_one_line_error(monkeypatch):
    fake = type(sys)("optuna")
    fake.__version__ = "4.4.0"
    monkeypatch.setitem(sys.modules, "optuna", fake)
    with pytest.raises(ConfigError, match=r"controller 'tpe' needs the 'optuna' extra: .*\(optuna 4\.4\.0 is older "
                                          r"than 5\.0: pip install -U optuna\)"):
        get_controller("tpe")


def test_cli_errors_are_one_line_and_leave_no_run_folder(hpctl_main, monkeypatch, tmp_path):
    cases = []
    if HAVE_OPTUNA:
        cases += [
            (["-c", "tpe", "--set", "n_startup_trials=-1"], "controller 'tpe': bad setting: n_startup_trials must be"),
            (["-c", "tpe", "--set", "popsize=4"], "controller 'tpe' has no setting 'popsize'"),
            (["-c", "tpe", "--budget", "4", "--group-size", "4"], "is all random start-up"),
        ]
    if CmaEs.unavailable() is None:
        cases.append((["-c", "cmaes", "--budget", "8", "--group-size", "4"], "never updates CMA-ES"))
    for args, message in cases:
        code, out, err = hpctl_main("run", "synthetic", *args, "--out", "r")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "r").exists()
    monkeypatch.setitem(sys.modules, "optuna", None)
    code, out, err = hpctl_main("run", "synthetic", "-c", "gp", "--out", "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "controller 'gp' needs the 'optuna' extra: pip install 'hpctl[optuna]'" in err
    assert not (tmp_path / "r").exists()
    code, out, err = hpctl_main("compare", "synthetic", "--controllers", "random,tpe", "--seeds", "1", "--out", "c")
    assert code == 2 and "controller 'tpe' needs the 'optuna' extra" in err and not (tmp_path / "c").exists()
    code, out, err = hpctl_main("list")
    assert code == 0
    for name in ("tpe", "cmaes", "gp"):
        assert f"controller '{name}' needs the 'optuna' extra: pip install 'hpctl[optuna]'" in out


@pytest.mark.skipif(GP.unavailable() is not None or CmaEs.unavailable() is not None,
                    reason="needs the whole optuna extra")
def test_cli_run_and_compare(hpctl_main):
    code, out, err = hpctl_main("run", "synthetic", "-c", "tpe", "--budget", "24", "--group-size", "4", "--seed", "1",
                                "--out", "tpe", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["controller"] == "tpe" and res["probes"] == 24 and abs(res["learned"]["x"] - 0.37) < 0.06
    code, out, err = hpctl_main("list")
    assert code == 0 and "needs the 'optuna' extra" not in out
    assert all(n in out.split("controllers: ")[1].splitlines()[0] for n in ("tpe", "cmaes", "gp"))
    code, out, err = hpctl_main("compare", "synthetic", "--controllers", "grpo,tpe,cmaes,gp,random", "--seeds", "1",
                                "--budget", "16", "--group-size", "4", "--set", "gp.n_startup_trials=4",
                                "--out", "cmp", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["summary"]) == {"grpo", "tpe", "cmaes", "gp", "random"} and not result.get("failures")
    for name in ("tpe", "cmaes", "gp"):
        assert result["summary"][name]["probes"]["median"] == 16
