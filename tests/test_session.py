"""hpctl.Session: ask/tell gives what `hpctl run` gives, resumes after a crash, and refuses misuse in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import hpctl
from hpctl.config import RunOptions
from hpctl.controllers.base import Controller
from hpctl.errors import ConfigError, HpctlError, ResumeError
from hpctl.plugins.synthetic import SyntheticConfig, SyntheticPlugin
from hpctl.rundir import CHECKPOINT, RunSpec
from hpctl.runner import run, steps_per_round
from hpctl.session import ControllerError, SessionError

LANDSCAPE = {"optimum": 0.3, "noise": 0.02, "total_steps": 200}


def _task(seed: int, **over):
    return SyntheticPlugin().make_task(SyntheticConfig(**{**LANDSCAPE, **over}), seed=seed, out_dir=Path("."))


def _events(history):
    """Everything a run decided, event by event (values and scores exactly)."""
    out = []
    for e in history:
        row = [e["event"], e.get("kind"), e.get("round"), e.get("step"), e.get("probe")]
        row += [np.asarray(e["value"]).tolist() if "value" in e else None, e.get("score"), e.get("loss")]
        out.append(["nan" if isinstance(x, float) and x != x else x for x in row])  # nan == nan here
    return out


def _loop(s, task, spr, *, stop_after: int | None = None, snapshots: list | None = None, save: bool = False):
    """The user's loop of the module docstring, on a synthetic task; stops after ``stop_after`` tells."""
    told = 0
    while not s.done:
        for v in s.ask():
            s.tell(v, task.probe(np.atleast_1d(v)))
            told += 1
            if stop_after is not None and told >= stop_after:
                return False
        loss = task.train(spr, np.atleast_1d(s.value))
        s.report_loss(loss)
        if snapshots is not None:  # the user's own checkpoint, after training
            snapshots.append((s.value, loss, task.snapshot()))
            if save:
                s.save()  # ... with the session's beside it
    return True


@pytest.mark.parametrize("controller", ["grpo", "random", "grid", "fixed"])
def test_session_asks_and_learns_what_hpctl_run_does(controller, tmp_path, tracking_uri):
    budget, group, seed, total = 40, 4, 3, LANDSCAPE["total_steps"]
    res = run(RunSpec("synthetic", RunOptions(controller=controller, seed=seed, budget=budget, group_size=group,
                                              out=str(tmp_path / "run"), tracking_uri=tracking_uri), dict(LANDSCAPE)))
    expected = json.loads((tmp_path / "run" / "history.json").read_text())

    task = _task(seed)
    spr = steps_per_round(total, budget, group)
    s = hpctl.Session(task.knob, controller, budget=budget, group_size=group, seed=seed, total_steps=total,
                      steps_per_round=spr, out_dir=tmp_path / "session", tracking_uri=tracking_uri)
    assert _loop(s, task, spr)
    assert _events(s.history) == _events(expected)  # the same probes, scores, commits and losses, in order
    assert s.learned == res["learned"]["x"] and s.value == s.learned
    assert s.probes == res["probes"] <= budget
    assert sum(e["event"] == "probe" for e in expected) == res["probes"]
    saved = json.loads((tmp_path / "session" / "result.json").read_text())
    assert saved["learned"] == res["learned"] and saved["mode"] == "session"
    assert _events(json.loads((tmp_path / "session" / "history.json").read_text())) == _events(expected)


def test_grpo_session_moves_the_training_value_and_logs_to_mlflow(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    task = _task(0, optimum=0.75, noise=0.01, total_steps=400)
    s = hpctl.Session(task.knob, "grpo", budget=60, group_size=4, seed=0, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    trained_at = []
    while not s.done:
        for v in s.ask():
            assert isinstance(v, float) and 0.0 <= v <= 1.0
            s.tell(v, task.probe(np.array([v])))
        trained_at.append(s.value)
        task.train(10, np.array([s.value]))
    assert trained_at[0] != trained_at[-1]  # the loop trained at the values GRPO committed
    assert abs(s.learned - 0.75) < 0.1 and trained_at[-1] == s.learned
    client = MlflowClient(tracking_uri)
    r = client.get_run(s.tracker.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["controller"] == "grpo" and r.data.params["budget"] == "60"
    assert len(client.get_metric_history(r.info.run_id, "probe/x")) == s.probes
    assert [m.value for m in client.get_metric_history(r.info.run_id, "train/x")][-1] == pytest.approx(s.learned)
    assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"run.png", "result.json", "history.json"}
    assert (tmp_path / "s" / "run.png").stat().st_size > 0


@pytest.mark.parametrize("save", [True, False], ids=["saved-with-user-checkpoint", "round-end-checkpoint"])
def test_resume_after_a_crash_continues_identically(save, tmp_path, tracking_uri):
    budget, group, seed, total = 48, 4, 5, LANDSCAPE["total_steps"]
    spr = steps_per_round(total, budget, group)
    kw = dict(budget=budget, group_size=group, seed=seed, total_steps=total, steps_per_round=spr,
              tracking_uri=tracking_uri)

    task = _task(seed)
    whole = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "whole", **kw)
    assert _loop(whole, task, spr)

    task = _task(seed)
    snaps: list = []
    first = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "crash", **kw)
    assert not _loop(first, task, spr, stop_after=17, snapshots=snaps, save=save)  # killed in the 4th round
    del first  # no close(): the process is gone

    task = _task(seed)
    trained_at, loss, snap = snaps[-1]
    task.restore(snap)  # the user's loop restarts from its own checkpoint, taken after training
    again = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "crash", resume=True, **kw)
    assert again.value == trained_at and 0 < again.probes < 17  # the tells after the checkpoint are asked again
    if not save:
        again.report_loss(loss)  # the round-end checkpoint predates the loss report
    assert _loop(again, task, spr)
    assert _events(again.history) == _events(whole.history)
    assert again.learned == whole.learned and again.probes == whole.probes
    assert again.tracker.run_id == json.loads((tmp_path / "crash" / "result.json").read_text())["mlflow_run_id"]


def test_resume_checks_its_arguments_and_the_folder(tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    s = hpctl.Session(knob, "grpo", budget=20, group_size=4, out_dir=tmp_path / "s", tracking_uri=tracking_uri)
    next(iter(s.ask()))
    with pytest.raises(ConfigError, match="already holds a run: pass resume=True"):
        hpctl.Session(knob, "grpo", budget=20, group_size=4, out_dir=tmp_path / "s", tracking_uri=tracking_uri)
    with pytest.raises(ResumeError, match="started with budget=20, this session has budget=30"):
        hpctl.Session(knob, "grpo", budget=30, group_size=4, out_dir=tmp_path / "s", resume=True,
                      tracking_uri=tracking_uri)
    with pytest.raises(ResumeError, match="no session checkpoint"):
        hpctl.Session(knob, "grpo", budget=20, group_size=4, resume=tmp_path / "nowhere", tracking_uri=tracking_uri)
    (tmp_path / "junk.safetensors").write_bytes(b"not a state file")
    with pytest.raises(ResumeError, match="cannot be used"):
        hpctl.Session(knob, "grpo", budget=20, group_size=4, resume=tmp_path / "junk.safetensors", tracking_uri=tracking_uri)
    # resume=True where nothing was saved yet starts a fresh session (the same script runs first and after a crash)
    fresh = hpctl.Session(knob, "grpo", budget=20, group_size=4, out_dir=tmp_path / "new", resume=True,
                          tracking_uri=tracking_uri)
    assert fresh.probes == 0 and (tmp_path / "new" / CHECKPOINT).is_file()
    while not fresh.done:
        for v in fresh.ask():
            fresh.tell(v, -abs(v - 0.2))
    with pytest.raises(ResumeError, match="has finished"):
        hpctl.Session(knob, "grpo", budget=20, group_size=4, out_dir=tmp_path / "new", resume=True,
                      tracking_uri=tracking_uri)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_misuse_is_a_one_line_error(tmp_path, tracking_uri):
    knob = hpctl.Knob("prune_ratio", 0.0, 0.9, default=0.45)
    s = hpctl.Session(knob, "grpo", budget=12, group_size=4, seed=0, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    with pytest.raises(SessionError, match=r"tell\(0.3\) without ask\(\)") as e:
        s.tell(0.3, 1.0)
    _one_line(e.value)
    asks = s.ask()
    first = next(asks)
    assert first == pytest.approx(0.45) and s.pending == first  # the baseline: the current value
    with pytest.raises(SessionError, match="has no score for it yet") as e:
        next(asks)
    _one_line(e.value)
    with pytest.raises(ConfigError, match=r"value 1.5 is outside its bounds \[0.0, 0.9\]") as e:
        s.tell(1.5, 0.0)
    _one_line(e.value)
    with pytest.raises(SessionError, match=r"tell\(0.1\) but the value waiting for a score is 0.45") as e:
        s.tell(0.1, 0.0)
    _one_line(e.value)
    with pytest.raises(SessionError, match="must be a number, got 'good'") as e:
        s.tell(first, "good")
    _one_line(e.value)
    s.tell(first, 0.5)
    for v in asks:
        s.tell(v, -abs(v - 0.3))
    with pytest.raises(SessionError, match="the round is over: train at s.value, then call ask") as e:
        s.tell(s.value, 0.0)
    _one_line(e.value)
    with pytest.raises(SessionError, match="training loss must be a number"):
        s.report_loss(None)
    while not s.done:
        for v in s.ask():
            s.tell(v, -abs(v - 0.3))
    assert list(s.ask()) == []
    with pytest.raises(SessionError, match=r"the session is done \(\d+ of 12 probes spent") as e:
        s.tell(0.3, 1.0)
    _one_line(e.value)


def test_bad_arguments_are_one_line_errors(tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0)
    kw = dict(out_dir=tmp_path / "s", tracking_uri=tracking_uri)
    cases = [
        (dict(knob=("x", 0, 1)), ConfigError, "knob must be an hpctl.Knob"),
        (dict(knob=knob, controller="nope"), ConfigError, "unknown controller 'nope'"),
        (dict(knob=knob, controller="ppo"), ConfigError, "controller 'ppo' cannot run in a Session"),
        (dict(knob=knob, controller="grid", controller_config={"full_runs": True}), ConfigError, "full_runs=True"),
        (dict(knob=knob, controller_config={"sigma": 1}), ConfigError, "has no setting 'sigma'"),
        (dict(knob=knob, budget=0), ConfigError, "budget must be >= 1"),
        (dict(knob=knob, budget=2.5), ConfigError, "budget must be an integer"),
        (dict(knob=knob, group_size=1), ConfigError, "group size must be >= 2"),
        (dict(knob=knob, commit_rule="sometimes"), ConfigError, "unknown commit rule"),
        (dict(knob=knob, resume=True, out_dir=None), ConfigError, "resume=True needs the out_dir"),
        (dict(knob=knob, seed=-1), ConfigError, "seed must be between 0 and 4294967295, got -1"),
        (dict(knob=knob, max_move="x"), ConfigError, "max_move must be a number, got 'x'"),
        (dict(knob=knob, controller_config="notadict"), ConfigError, "controller_config must be a dict"),
        (dict(knob=knob, tags=["a"]), ConfigError, "tags must be a dict"),
        (dict(knob=knob, direction="up"), ConfigError, "direction must be 'maximize' or 'minimize'"),
    ]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg) as e:
            hpctl.Session(**{**kw, **args})
        _one_line(e.value)
        assert isinstance(e.value, HpctlError)
    assert not (tmp_path / "s" / CHECKPOINT).exists()  # nothing was started


@dataclass
class _BrokenConfig:
    fail_at: int = 3
    nondeterministic: bool = False


class _Broken(Controller):
    """A controller with a bug after a few probes (or one that is not deterministic given its state)."""

    name = "test-broken"
    Config = _BrokenConfig

    def run(self, budget, callback=None):
        import random

        while self.env.probes < budget:
            if self.config.nondeterministic:
                self.env.probe(random.random())
            elif self.env.probes >= self.config.fail_at:
                raise ValueError("index out of range\nsecond line")
            else:
                self.env.probe(0.5)
        return self.env.current.copy()


def test_a_failing_controller_surfaces_in_one_line(tmp_path, tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from hpctl.controllers import base

    base.controller_names()  # the built-in controllers first, then this test's, for this test only
    monkeypatch.setitem(base._REGISTRY, _Broken.name, _Broken)

    s = hpctl.Session(hpctl.Knob("x", 0.0, 1.0), "test-broken", budget=10, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    with pytest.raises(ControllerError, match=r"controller 'test-broken' failed: ValueError: index out of range "
                                              r"\(traceback in .*error.txt\)$") as e:
        for v in s.ask():
            s.tell(v, 0.0)
    _one_line(e.value)
    assert "second line" in (tmp_path / "s" / "error.txt").read_text()
    assert MlflowClient(tracking_uri).get_run(s.tracker.run_id).info.status == "FAILED"
    with pytest.raises(SessionError, match="the session failed earlier"):
        s.ask()

    s = hpctl.Session(hpctl.Knob("x", 0.0, 1.0), "test-broken", controller_config={"nondeterministic": True},
                      budget=10, out_dir=tmp_path / "nd", tracking_uri=tracking_uri)
    with pytest.raises(ControllerError, match="is not deterministic given its state") as e:
        for v in s.ask():
            s.tell(v, 0.0)
    _one_line(e.value)


def test_close_keeps_an_unfinished_session_resumable(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    with hpctl.Session(knob, "random", budget=8, group_size=4, out_dir=tmp_path / "s", tracking_uri=tracking_uri) as s:
        for v in s.ask():
            s.tell(v, -abs(v - 0.2))
    assert s.probes == 4 and not s.done
    assert MlflowClient(tracking_uri).get_run(s.tracker.run_id).info.status == "KILLED"
    with pytest.raises(SessionError, match="the session is closed"):
        s.ask()
    again = hpctl.Session(knob, "random", budget=8, group_size=4, out_dir=tmp_path / "s", resume=True,
                          tracking_uri=tracking_uri)
    assert again.probes == 4 and again.tracker.run_id == s.tracker.run_id
    while not again.done:
        for v in again.ask():
            again.tell(v, -abs(v - 0.2))
    assert again.probes == 8 and again.learned == max((e for e in again.history if e["event"] == "probe"),
                                                      key=lambda e: e["score"])["value"][0]
    assert MlflowClient(tracking_uri).get_run(again.tracker.run_id).info.status == "FINISHED"


def test_vector_knob_and_faulting_probes(tmp_path, tracking_uri):
    knob = hpctl.Knob("xy", 0.0, 1.0, default=0.5, dim=2, labels=("x", "y"))
    s = hpctl.Session(knob, "grpo", budget=30, group_size=4, seed=1, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    n = 0
    while not s.done:
        for v in s.ask():
            assert isinstance(v, np.ndarray) and v.shape == (2,)
            n += 1
            s.tell(v, float("nan") if n == 3 else -float(np.sum((v - [0.3, 0.7]) ** 2)))
    assert s.result["faults"] == 1 and s.learned.shape == (2,)
    assert sum(e["event"] == "fault" for e in s.history) == 1  # unreported training losses are not faults


@pytest.mark.parametrize("controller", ["grpo", "random"])
def test_finish_before_the_budget_is_spent(controller, tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    s = hpctl.Session(knob, controller, budget=100, group_size=4, seed=2, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    for _ in range(3):
        for v in s.ask():
            s.tell(v, -abs(v - 0.7))
    asks = s.ask()
    s.tell(next(asks), 0.0)  # a round half done
    committed = s.value
    learned = s.finish()
    assert s.done and s.result["stopped_early"] and s.probes < 100
    probes = [e for e in s.history if e["event"] == "probe"]
    if controller == "grpo":
        assert learned == committed != 0.5  # training's value: GRPO moved it towards 0.7
    else:
        assert learned == max(probes, key=lambda e: e["score"])["value"][0]  # the best candidate scored
    assert json.loads((tmp_path / "s" / "result.json").read_text())["learned"] == {"x": learned}
    with pytest.raises(SessionError, match="the session is done"):
        s.tell(learned, 0.0)


def test_the_core_imports_no_transformers():
    import subprocess
    import sys

    code = ("import sys, hpctl, hpctl.session, hpctl.runner, hpctl.cli, hpctl.integrations, "
            "hpctl.integrations.base, hpctl.integrations.lora_prune, hpctl.integrations.learning_rate; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft')); "
            "assert not bad, bad; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ------------------------------------------------------------- Optuna's habits (#34) ----
def _loss(v):
    return float(np.sum((np.atleast_1d(v) - 0.3) ** 2))


def test_minimize_takes_losses_and_reports_them_with_their_sign(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    knob = hpctl.Knob("x", 0.0, 1.0, default=0.8)
    kw = dict(budget=40, group_size=4, seed=4, tracking_uri=tracking_uri)
    up = hpctl.Session(knob, "grpo", out_dir=tmp_path / "max", **kw)
    down = hpctl.Session(knob, "grpo", direction="minimize", out_dir=tmp_path / "min", **kw)
    for s, score in ((up, lambda v: -_loss(v)), (down, _loss)):
        while not s.done:
            for v in s.ask():
                s.tell(v, score(v))
    # the same decisions: the controller maximizes minus the loss
    assert down.learned == up.learned and abs(down.learned - 0.3) < 0.15
    probes_up = [e for e in up.history if e["event"] == "probe"]
    probes_down = [e for e in down.history if e["event"] == "probe"]
    assert [e["value"].tolist() for e in probes_down] == [e["value"].tolist() for e in probes_up]
    assert [e["score"] for e in probes_down] == [-e["score"] for e in probes_up]  # the losses as told
    assert all(e["score"] >= 0 for e in probes_down)
    saved = json.loads((tmp_path / "min" / "result.json").read_text())
    assert saved["direction"] == "minimize" and up.result["direction"] == "maximize"
    best = min(probes_down, key=lambda e: e["score"])
    assert saved["best_probe"]["score"] == best["score"] == -up.result["best_probe"]["score"]
    assert saved["best_probe"]["value"] == up.result["best_probe"]["value"]
    assert [e["score"] for e in json.loads((tmp_path / "min" / "history.json").read_text())
            if e["event"] == "probe"] == [e["score"] for e in probes_down]
    client = MlflowClient(tracking_uri)
    run = client.get_run(down.tracker.run_id)
    assert run.data.params["direction"] == "minimize" and run.data.tags["hpctl.direction"] == "minimize"
    logged = sorted(m.value for key in ("probe/candidate_score", "probe/baseline_score", "probe/guard_score")
                    for m in client.get_metric_history(run.info.run_id, key))
    assert logged == pytest.approx(sorted(e["score"] for e in probes_down))
    df = down.trials_dataframe()
    assert df.attrs["direction"] == "minimize" and len(df) == down.probes
    assert df["score"].tolist() == [e["score"] for e in probes_down]
    with pytest.raises(ConfigError, match="direction must be 'maximize' or 'minimize', got 'min'") as e:
        hpctl.Session(knob, "grpo", direction="min", out_dir=tmp_path / "bad", **kw)
    _one_line(e.value)


@pytest.mark.parametrize("controller", ["grpo", pytest.param("tpe", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("optuna") is None, reason="the optuna extra is not installed"))])
def test_groups_scored_in_parallel_and_told_in_any_order_decide_the_same(controller, tmp_path, tracking_uri):
    from concurrent.futures import ThreadPoolExecutor

    task = _task(2, noise=0.0)  # a pure score: the order it is computed in cannot matter
    kw = dict(budget=36, group_size=4, seed=2, total_steps=200, steps_per_round=10, tracking_uri=tracking_uri)
    one = hpctl.Session(task.knob, controller, out_dir=tmp_path / "one", **kw)
    while not one.done:
        for v in one.ask():
            one.tell(v, task.true_reward(np.atleast_1d(v)))
        one.report_loss(task.train(10, np.atleast_1d(one.value)))

    task = _task(2, noise=0.0)
    s = hpctl.Session(task.knob, controller, out_dir=tmp_path / "groups", **kw)
    sizes, kinds = [], set()
    with ThreadPoolExecutor(4) as pool:
        while not s.done:
            for trials in s.ask_groups():
                assert all(isinstance(t, hpctl.Trial) and t.state == "pending" and t.score is None for t in trials)
                sizes.append(len(trials))
                kinds |= {t.kind for t in trials}
                scores = list(pool.map(lambda t: task.true_reward(np.atleast_1d(t.value)), trials))
                for t, y in reversed(list(zip(trials, scores))):  # any order
                    s.tell(t, y)
                assert [t.state for t in trials] == ["complete"] * len(trials)
            s.report_loss(task.train(10, np.atleast_1d(s.value)))
    assert max(sizes) == 4  # a whole candidate group at once
    assert _events(s.history) == _events(one.history) and s.learned == one.learned
    if controller == "grpo":
        assert {"baseline", "candidate"} <= kinds and 1 in sizes  # the baseline is a request of its own
    rows = s.trials
    assert [t.number for t in rows] == list(range(s.probes))
    assert [t.value for t in rows] == [e["value"][0] for e in s.history if e["event"] == "probe"]
    assert [r.as_dict()["params"] for r in rows[:2]] == [{"x": rows[0].value}, {"x": rows[1].value}]


def test_trial_misuse_is_a_one_line_error(tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    kw = dict(budget=40, group_size=4, seed=0, tracking_uri=tracking_uri)
    s = hpctl.Session(knob, "grpo", out_dir=tmp_path / "s", **kw)
    groups = s.ask_groups()
    (base,) = next(groups)
    assert base.kind == "baseline" and base.value == 0.5 and base.number == 0 and base.round == 0
    for bad, shown in (("0.5", "'0.5'"), (True, "True"), (None, "None"), ([0.5], r"\[0.5\]")):
        with pytest.raises(SessionError, match=f"score of 0.5 must be a number, got {shown}") as e:
            s.tell(base, bad)
        _one_line(e.value)
    s.tell(base, np.float32(-0.25))  # numpy numbers are numbers
    assert base.score == -0.25 and base.state == "complete"
    with pytest.raises(SessionError, match=r"trial 0 \(0.5\) was already told \(score -0.25\)") as e:
        s.tell(base, 0.0)
    _one_line(e.value)
    cands = next(groups)
    assert len(cands) == 4 and [t.number for t in cands] == [1, 2, 3, 4] and s.pending == cands[0].value
    s.tell(cands[2].value, -_loss(cands[2].value))  # a value told by value finds its trial
    assert cands[2].state == "complete"
    with pytest.raises(SessionError, match=r"trial\(s\) 1, 2, 4 of the last group have no score yet") as e:
        next(groups)
    _one_line(e.value)
    other = hpctl.Session(knob, "grpo", out_dir=tmp_path / "other", **kw)
    (foreign,) = next(other.ask_groups())
    with pytest.raises(SessionError, match="trial 0 belongs to another Session") as e:
        s.tell(foreign, 0.0)
    _one_line(e.value)
    with pytest.raises(SessionError, match=r"tell\(0.999\) but the values waiting for a score are ") as e:
        s.tell(0.999, 0.0)
    _one_line(e.value)
    for t in cands:
        if t.state == "pending":
            s.tell(t, -_loss(t.value))
    for rest in groups:  # a guard probe may follow; then the round ends
        for t in rest:
            s.tell(t, -_loss(t.value))
    with pytest.raises(SessionError, match="trial 1 .* was already told") as e:
        s.tell(cands[0], 0.0)  # a trial of an earlier round
    _one_line(e.value)
    # after a resume, the old handles are stale: the same values are asked again as new trials
    (again_base,) = next(s.ask_groups())
    s.save()
    del s
    resumed = hpctl.Session(knob, "grpo", out_dir=tmp_path / "s", resume=True, **kw)
    with pytest.raises(SessionError, match="belongs to another Session .*resume") as e:
        resumed.tell(again_base, 0.0)
    _one_line(e.value)
    (fresh,) = next(resumed.ask_groups())
    assert fresh.value == again_base.value and fresh.number == again_base.number
    resumed.close()
    other.close()


def test_trials_table(tmp_path, tracking_uri):
    knob = hpctl.Knob("xy", 0.0, 1.0, default=0.5, dim=2, labels=("a", "b"))
    s = hpctl.Session(knob, "random", budget=8, group_size=4, seed=1, out_dir=tmp_path / "s", tracking_uri=tracking_uri)
    assert s.trials == [] and list(s.trials_dataframe().columns) == [
        "number", "round", "step", "kind", "params_a", "params_b", "score", "state"]
    n = 0
    for v in s.ask():
        n += 1
        s.tell(v, float("nan") if n == 2 else -_loss(v))
    pending = next(s.ask_groups())[0]
    rows = s.trials
    assert [t.number for t in rows] == [0, 1, 2, 3, 4] and rows[-1] is pending
    assert [t.state for t in rows] == ["complete", "fail", "complete", "complete", "pending"]
    df = s.trials_dataframe()
    assert df["state"].tolist() == ["complete", "fail", "complete", "complete", "pending"]
    assert df["params_a"].tolist() == [float(t.value[0]) for t in rows]
    assert np.isnan(df["score"][1]) and np.isnan(df["score"][4]) and df["score"][0] == rows[0].score
    assert rows[0].as_dict()["value"] == rows[0].value.tolist() and set(rows[0].params) == {"a", "b"}
    s.close()


def test_steps_done_rebuilds_a_killed_loop(tmp_path, tracking_uri):
    """An uninterrupted loop vs one killed mid-round whose training is rebuilt from
    ``steps_done`` alone: the same probes, the same learned value (a drifting optimum makes
    a loop one round off probe another landscape)."""
    from mlflow.tracking import MlflowClient

    over = dict(noise=0.0, drift=0.4, optimum=0.3)
    budget, group, seed, total = 48, 4, 5, 200
    spr = steps_per_round(total, budget, group)
    kw = dict(budget=budget, group_size=group, seed=seed, total_steps=total, steps_per_round=spr,
              tracking_uri=tracking_uri)

    def loop(s, task, stop_after=None):
        told = 0
        while not s.done:
            for v in s.ask():
                s.tell(v, task.probe(np.atleast_1d(v)))
                told += 1
                if stop_after is not None and told >= stop_after:
                    return
            if s.done:  # the budget is spent: the answer is in, no round to train for the controller
                break
            assert s.steps_done == task.steps + spr  # the round it has committed to: train it now
            task.train(spr, np.atleast_1d(s.value))
            assert s.steps_done == task.steps

    task = _task(seed, **over)
    whole = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "whole", **kw)
    loop(whole, task)

    task = _task(seed, **over)
    first = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "crash", **kw)
    loop(first, task, stop_after=17)  # killed in the 4th round: no finish, no close
    at_kill = first.steps_done
    del first

    again = hpctl.Session(task.knob, "grpo", out_dir=tmp_path / "crash", resume=True, **kw)
    assert again.steps_done == at_kill == task.steps
    import gc

    gc.collect()  # the dropped session's finaliser runs: the resumed session owns the run now
    assert MlflowClient(tracking_uri).get_run(again.tracker.run_id).info.status == "RUNNING"
    task = _task(seed, **over)
    task.train(again.steps_done, np.atleast_1d(again.value))  # the loop rebuilt from steps_done alone
    loop(again, task)
    assert _events(again.history) == _events(whole.history)
    assert again.learned == whole.learned and again.steps_done == whole.steps_done == task.steps
    assert MlflowClient(tracking_uri).get_run(again.tracker.run_id).info.status == "FINISHED"


_RAISES = """
import sys, hpctl
s = hpctl.Session(hpctl.Knob("x", 0.0, 1.0), "grpo", budget=20, group_size=4, out_dir=sys.argv[1],
                  tracking_uri=sys.argv[2])
print(s.tracker.run_id, flush=True)
for v in s.ask():
    s.tell(v, -abs(v - 0.3))
    if sys.argv[3] == "raise":
        raise RuntimeError("my loop broke")
    break
"""


@pytest.mark.parametrize("how", ["raise", "return"])
def test_a_session_left_unfinished_ends_its_mlflow_run_at_exit(how, tmp_path, tracking_uri):
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    proc = subprocess.run([sys.executable, "-c", _RAISES, str(tmp_path / "s"), tracking_uri, how],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == (1 if how == "raise" else 0), proc.stderr
    run = MlflowClient(tracking_uri).get_run(proc.stdout.split()[0])
    if how == "raise":
        assert "RuntimeError: my loop broke" in proc.stderr
        assert run.info.status == "FAILED"
        assert "the process died of RuntimeError: my loop broke" in run.data.tags["error"]
    else:
        assert run.info.status == "KILLED" and "unfinished" in run.data.tags["error"]
    # the checkpoint saved at exit holds the told value: resuming asks the next one
    knob = hpctl.Knob("x", 0.0, 1.0)
    again = hpctl.Session(knob, "grpo", budget=20, group_size=4, out_dir=tmp_path / "s", resume=True,
                          tracking_uri=tracking_uri)
    assert again.tracker.run_id == run.info.run_id
    assert len(again._answers) == 1 and next(iter(again.ask_groups()))[0].number == 1
    again.close()


@pytest.mark.parametrize("make, message", [
    (lambda: hpctl.Knob("x", "a", "b"), "knob 'x': low must be a number, got 'a'"),
    (lambda: hpctl.Knob("x", 0.0, None), "knob 'x': high must be a number, got None"),
    (lambda: hpctl.Knob("x", True, 2.0), "knob 'x': low must be a number, got True"),
    (lambda: hpctl.Knob("x", 0.0, 1.0, dim=2.5), "knob 'x': dim must be a whole number, got 2.5"),
    (lambda: hpctl.Knob("x", 0.0, 1.0, dim="2"), "knob 'x': dim must be a whole number, got '2'"),
    (lambda: hpctl.Knob("x", 0.1, 1.0, log="yes"), "knob 'x': log must be True or False, got 'yes'"),
    (lambda: hpctl.Knob("x", 0.0, 1.0, dim=2, labels="ab"), "knob 'x': labels must be a tuple of names"),
    (lambda: hpctl.Knob(3, 0.0, 1.0), "a knob's name must be a non-empty string, got 3"),
    (lambda: hpctl.Knob("x", 0.0, 1.0, default="half"), "knob 'x': 'half' is not a number"),
])
def test_a_bad_knob_is_a_one_line_error_naming_the_value(make, message):
    with pytest.raises(ConfigError, match=message) as e:
        make()
    _one_line(e.value)


def test_numpy_numbers_and_a_list_of_labels_make_a_knob():
    knob = hpctl.Knob("x", np.float32(0.0), np.int64(2), dim=np.int64(2), labels=["a", "b"])
    assert knob.labels == ("a", "b") and knob.dim == 2 and hash(knob)


@pytest.mark.parametrize("score", ["0.5", True, np.bool_(False), None, [0.5]])
def test_tell_takes_numbers_only(score, tmp_path, tracking_uri):
    s = hpctl.Session(hpctl.Knob("x", 0.0, 1.0, default=0.5), "grpo", budget=8, group_size=4, out_dir=tmp_path / "s",
                      tracking_uri=tracking_uri)
    value = next(s.ask())
    with pytest.raises(SessionError, match="must be a number, got ") as e:
        s.tell(value, score)
    _one_line(e.value)
    s.tell(value, 0.25)  # the value still waits for its score
    s.close()


def test_a_session_whose_every_probe_fails_refuses_to_learn(tmp_path, tracking_uri):
    """As `hpctl run` does: no result at the default value from no scores, whether the budget
    runs out or the loop calls finish()."""
    from mlflow.tracking import MlflowClient

    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    for name, early in (("spent", False), ("early", True)):
        s = hpctl.Session(knob, "grpo", budget=12, group_size=4, out_dir=tmp_path / name, tracking_uri=tracking_uri)
        with pytest.raises(SessionError, match=r"all \d+ probes failed, so nothing was learned; the first: "
                                               r"non-finite score nan") as e:
            while not s.done:
                for v in s.ask():
                    s.tell(v, float("nan"))
                if early:
                    s.finish()
        _one_line(e.value)
        assert not (tmp_path / name / "result.json").exists()
        assert MlflowClient(tracking_uri).get_run(s.tracker.run_id).info.status == "FAILED"
    s = hpctl.Session(knob, "grpo", budget=12, group_size=4, out_dir=tmp_path / "one", tracking_uri=tracking_uri)
    for i, v in enumerate(s.ask()):
        s.tell(v, float("nan") if i else 1.0)  # one score is enough to learn from
    assert s.finish() is not None and (tmp_path / "one" / "result.json").is_file()


def _tampered(state: dict, how: str) -> dict:
    """A copy of the checkpoint's state edited as ``how`` says: ``KEY=missing`` or ``KEY=<JSON value>``."""
    import copy

    state = copy.deepcopy(state)
    key, _, change = how.partition("=")
    if change == "missing":
        del state[key]
    elif change:
        state[key] = json.loads(change)
    return state


@pytest.mark.parametrize("how, message", [
    # the file itself: truncated, empty, garbage, JSON, a pickle
    ("truncated", "cannot be used: not a state file"),
    ("empty", "cannot be used: not a state file"),
    ("garbage", "cannot be used: not a state file"),
    ("json", "cannot be used: not a state file"),
    ("pickle", "cannot be used: not a state file"),
    # a well-formed state file with the wrong content: another version, a missing field, a wrong type
    ('format="hpctl.session/99"', "is not a session checkpoint"),
    ("spec=missing", "'spec' is missing"),
    ("start=missing", "'start' is missing"),
    ("answers=missing", "'answers' is missing"),
    ("value=missing", "'value' is missing"),
    ('answers="x"', "'answers' must be a list, got 'x'"),
    ("answers=[1, 2]", "'answers' holds 1, not a told score"),
    ('round_events="abc"', "'round_events' must be a whole number >= 0, got 'abc'"),
    ("round_events=-3", "'round_events' must be a whole number >= 0, got -3"),
    ('value="x"', "'value' must be the knob's value, got 'x'"),
    ("value=[5.0]", "'value' is not a value of the knob: .* outside its bounds"),
    ("value=[0.1, 0.2]", "'value' is not a value of the knob"),
    ("start=5", "'start' must be a \\(controller, environment\\) pair, got 5"),
    ("start=[{}, {}]", "'start' does not restore"),
    ("history=5", "'history' must be a JSON string, got 5"),
    ('history="[1]"', "'history' is not a list of events"),
    ('spec="x"', "'spec' must be a mapping, got 'x'"),
    ('loss="x"', "'loss' must be a number or None, got 'x'"),
    ('awaiting_train="x"', "'awaiting_train' must be True or False, got 'x'"),
    ("mlflow_run_id=5", "'mlflow_run_id' must be a string, got 5"),
    ('logged="x"', "'logged' must be a whole number >= 0, got 'x'"),
])
def test_a_tampered_session_checkpoint_is_a_one_line_error_naming_the_file(how, message, tmp_path, tracking_uri):
    import pickle

    from mlflow.tracking import MlflowClient

    from hpctl import statefile

    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    kw = dict(budget=20, group_size=4, seed=0, tracking_uri=tracking_uri)
    s = hpctl.Session(knob, "grpo", out_dir=tmp_path / "s", **kw)
    for v in s.ask():
        s.tell(v, -abs(v - 0.3))
    s.close()
    path = tmp_path / "s" / CHECKPOINT
    good = path.read_bytes()
    state = statefile.loads(good)
    data = {"truncated": good[:len(good) // 2], "empty": b"", "garbage": bytes(range(256)) * 4,
            "json": json.dumps({"format": "hpctl.session/1"}).encode(), "pickle": pickle.dumps(state)}.get(how)
    path.write_bytes(data if data is not None else statefile.dumps(_tampered(state, how)))
    with pytest.raises(ResumeError, match=message) as e:
        hpctl.Session(knob, "grpo", out_dir=tmp_path / "s", resume=True, **kw)
    assert str(path) in _one_line(e.value)
    assert MlflowClient(tracking_uri).get_run(s.tracker.run_id).info.status == "KILLED"  # left as it was
    path.write_bytes(good)  # the folder was let go: the good checkpoint resumes
    hpctl.Session(knob, "grpo", out_dir=tmp_path / "s", resume=True, **kw).close()
