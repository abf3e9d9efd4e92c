"""One meaning of `learned`, the best probe beside it, updates, and warm starts through `hpctl run`;
what a run and a comparison record in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _run(hpctl_main, *args: str) -> dict:
    code, out, err = hpctl_main("run", "synthetic", *args, "--json")
    assert code == 0, err
    return _last_json(out)


def test_a_drifting_optimum_is_scored_where_the_value_is_used(hpctl_main):
    # random search never trains: it probes at progress 0, where the optimum is 0.3; the final
    # phase uses its value at the end of training, where the optimum has drifted to 0.7
    res = _run(hpctl_main, "--env", "hpctl/LandscapeDrift-v0", "-c", "random", "--noise", "0.01", "--out", "d")
    assert res["optimum"]["x"] == pytest.approx(0.7)
    assert res["metrics"]["distance"] == pytest.approx(abs(res["learned"]["x"] - 0.7))
    assert res["learned"]["x"] < 0.45 and res["metrics"]["distance"] > 0.25


def test_learned_is_the_final_committed_value_and_the_best_probe_is_reported_beside_it(hpctl_main):
    res = _run(hpctl_main, "-c", "grpo", "--optimum", "0.3", "--noise", "0.05", "--seed", "2", "--out", "g")
    hist = json.loads(Path("g/history.json").read_text())
    commits = [e for e in hist if e["event"] == "commit"]
    assert res["learned"]["x"] == pytest.approx(commits[-1]["value"][0])
    probes = [e for e in hist if e["event"] == "probe"]
    best = max(probes, key=lambda e: e["score"])
    assert res["best_probe"]["value"]["x"] == pytest.approx(best["value"][0])
    assert res["best_probe"]["score"] == pytest.approx(best["score"]) and res["best_probe"]["probe"] == best["probe"]
    assert res["updates"] == res["controller_state"]["updates"] > 0
    # search controllers: the learned value is their best candidate; they make no updates
    res = _run(hpctl_main, "-c", "random", "--budget", "12", "--out", "r")
    assert res["learned"] == res["best_probe"]["value"] and res["updates"] == 0


def test_ppo_at_the_grasp_lora_budget_learns_and_says_how(hpctl_main, tracking_uri):
    res = _run(hpctl_main, "--optimum", "0.2", "--noise", "0.01", "-c", "ppo", "--budget", "20",
               "--group-size", "4", "--out", "p")
    assert abs(res["learned"]["x"] - 0.2) < 0.05  # the untrained policy answered 0.50
    assert res["updates"] == 40 and res["probes"] == 20  # 4 rollouts of one group, 10 epochs each
    assert sorted(res["controller_files"]) == ["controller_policy.pt", "controller_state.json"]
    from mlflow.tracking import MlflowClient

    arts = {a.path for a in MlflowClient(tracking_uri).list_artifacts(res["mlflow_run_id"])}
    assert {"controller_state.json", "controller_policy.pt"} <= arts


def test_warm_start_from_a_finished_run(hpctl_main, tracking_uri):
    src = _run(hpctl_main, "-c", "grpo", "--optimum", "0.3", "--budget", "40", "--out", "src")
    state = json.loads(Path("src/controller_state.json").read_text())
    assert state["controller"] == "grpo" and state["knob"]["dim"] == 1
    from mlflow.tracking import MlflowClient

    assert "controller_state.json" in {a.path for a in MlflowClient(tracking_uri).list_artifacts(src["mlflow_run_id"])}
    warm = _run(hpctl_main, "-c", "grpo", "--optimum", "0.35", "--budget", "40", "--warm-start", "src", "--out", "w")
    hist = json.loads(Path("w/history.json").read_text())
    first = [e["value"][0] for e in hist if e["event"] == "probe" and e["kind"] == "candidate"][:4]
    assert all(abs(v - 0.3) < 0.15 for v in first)  # the first group is sampled around the saved policy
    assert abs(warm["learned"]["x"] - 0.35) < 0.03


@pytest.mark.parametrize("args, message", [
    (["-c", "grpo", "--warm-start", "nowhere"], "--warm-start 'nowhere' is not a folder"),
    (["-c", "grpo", "--warm-start", "."], "holds no controller_state.json"),
    (["-c", "ppo", "--warm-start", "src1"], "holds a 'grpo' controller; this run uses 'ppo'"),
    (["-c", "grpo", "--optimum2", "0.5", "--warm-start", "src1"], "is for a 1-d knob"),
    (["-c", "random", "--warm-start", "src1"], "cannot be warm-started"),
    (["-c", "ppo", "--budget", "4", "--group-size", "4"], "makes no update with a budget of 4 probes"),
    (["-c", "grpo", "--budget", "2"], "needs a budget of at least 3 probes"),
    (["-c", "grpo", "--set", "commit_check=maybe"], "unknown commit_check 'maybe'"),
    (["-c", "grpo", "--set", "entropy_coef=-0.1"], "entropy_coef must be >= 0"),
    (["-c", "ppo", "--set", "ent_coef=-1"], "ent_coef must be >= 0"),
])
def test_bad_warm_starts_and_budgets_are_one_line_errors(hpctl_main, args, message):
    if "src1" in args:
        _run(hpctl_main, "-c", "grpo", "--budget", "12", "--out", "src1")
    code, out, err = hpctl_main("run", "synthetic", *args, "--out", "bad")
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("hpctl: error")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not Path("bad/result.json").exists()


def test_warm_start_state_of_a_two_dimensional_knob(hpctl_main):
    _run(hpctl_main, "-c", "grpo", "--optimum", "0.3", "--optimum2", "0.7", "--budget", "30", "--out", "two")
    state = json.loads(Path("two/controller_state.json").read_text())
    assert state["knob"]["dim"] == 2 and np.asarray(state["state"]["mu"]).shape == (2,)
    code, _, err = hpctl_main("run", "synthetic", "-c", "grpo", "--warm-start", "two", "--out", "one")
    assert code == 2 and "is for a 2-d knob" in err


def _children(client, run_id: str) -> list:
    exp = client.get_run(run_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")


def test_a_comparison_records_each_trial_once_and_whole(hpctl_main, tracking_uri):
    from mlflow.tracking import MlflowClient

    code, out, err = hpctl_main("compare", "synthetic", "--controllers", "grpo,random", "--seeds", "2",
                                "--budget", "18", "--group-size", "5", "--out", "cmp", "--json")
    assert code == 0, err
    result = _last_json(out)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["controllers"] == "grpo,random"
    assert {"grpo/true_reward", "random/true_reward"} <= set(parent.data.metrics)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"compare.json", "compare.png"}
    trials = {r.info.run_id: r for r in _children(client, parent.info.run_id)}
    recorded = [r for rs in result["runs"].values() for r in rs]
    assert sorted(trials) == sorted(r["mlflow_run_id"] for r in recorded)  # one MLflow run per trial
    for r in recorded:
        run = trials[r["mlflow_run_id"]]
        ctrl = run.data.tags["hpctl.controller"]
        assert run.info.status == "FINISHED" and run.info.run_name == f"synthetic/{ctrl}/seed{r['seed']}"
        assert run.data.params["seed"] == str(r["seed"]) and run.data.params["budget"] == "18"
        assert run.data.params["controller"] == ctrl and run.data.params["plugin"] == "synthetic"
        assert run.data.metrics["learned/x"] == pytest.approx(r["learned"]["x"])
        assert len(client.get_metric_history(run.info.run_id, "probe/x")) == r["probes"]
        assert run.data.tags["learned"].startswith("x=")
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "history.json"} <= arts and "run.png" not in arts  # compare.png draws them all
        assert not _children(client, run.info.run_id)  # the controller phase repeats the trial: no nested run
        folder = Path("cmp") / f"{ctrl}-s{r['seed']}"
        assert (folder / "history.json").is_file() and not (folder / "run.png").exists()


def test_a_run_keeps_its_plot_and_no_empty_child_run(hpctl_main, tracking_uri):
    from mlflow.tracking import MlflowClient

    result = _run(hpctl_main, "-c", "random", "--budget", "8", "--out", "one")
    client = MlflowClient(tracking_uri)
    assert not _children(client, result["mlflow_run_id"])  # the controller's seconds are the run's own metric
    assert client.get_run(result["mlflow_run_id"]).data.metrics["time/controller_s"] >= 0
    assert "run.png" in {a.path for a in client.list_artifacts(result["mlflow_run_id"])}
    assert Path("one/run.png").stat().st_size > 0
