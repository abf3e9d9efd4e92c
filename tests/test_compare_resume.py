"""`hpctl compare` killed (SIGTERM, SIGKILL) leaves nothing RUNNING in MLflow for long:
SIGTERM ends every run it opened, `hpctl compare --resume DIR` finishes what SIGKILL left (issue 37 item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpctl.rundir import CHECKPOINT, RESULT

#: two trials (random, then grid), each of 8 probes that take 0.15 s: a kill lands inside the second
ARGS = ["--controllers", "random,grid", "--seeds", "1", "--budget", "8", "--optimum", "0.3", "--noise", "0.02"]


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hpctl-synthetic")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


def _kill_in_second_trial(tmp_path: Path, sig: int) -> tuple[Path, str, subprocess.CompletedProcess]:
    """Start the comparison in its own process; once the second trial has checkpointed, send ``sig``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cmp"
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", "compare", "synthetic", *ARGS, "--probe-delay", "0.15",
                             "--out", str(out)], env=dict(os.environ, MLFLOW_TRACKING_URI=uri),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / "grid-s0" / CHECKPOINT).exists():
        time.sleep(0.02)
    assert proc.poll() is None, f"the comparison ended before it could be stopped: {proc.stderr.read()}"
    assert (out / "random-s0" / RESULT).is_file()  # the first trial finished
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return out, uri, subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def _uninterrupted(tmp_path: Path, uri: str) -> dict:
    from hpctl.compare import compare
    from hpctl.config import RunOptions

    return compare("synthetic", ["random", "grid"], 1, RunOptions(budget=8, tracking_uri=uri),
                   {"optimum": 0.3, "noise": 0.02}, out=str(tmp_path / "reference"))


@pytest.mark.slow
def test_sigterm_ends_the_trial_and_the_comparison_killed_and_resume_finishes_it(tmp_path, hpctl_main, monkeypatch):
    out, uri, proc = _kill_in_second_trial(tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr
    client, runs = _runs(uri)
    status = {r.info.run_name: r.info.status for r in runs}
    assert status == {"compare synthetic": "KILLED", "synthetic/random/seed0": "FINISHED",
                      "synthetic/grid/seed0": "KILLED"}
    parent = next(r for r in runs if r.info.run_name == "compare synthetic")
    assert f"hpctl compare --resume {out}" in parent.data.tags["error"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, stdout, err = hpctl_main("compare", "--resume", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["resumed"] and result["mlflow_run_id"] == parent.info.run_id
    client, runs = _runs(uri)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3  # the same runs, all closed
    code, _, err = hpctl_main("compare", "--resume", str(out))
    assert code == 2 and "has finished" in err, err


def test_sigkill_then_resume_finishes_the_comparison_as_if_uninterrupted(tmp_path, hpctl_main, monkeypatch):
    out, uri, proc = _kill_in_second_trial(tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    client, runs = _runs(uri)
    assert {r.info.run_name: r.info.status for r in runs} == {
        "compare synthetic": "RUNNING", "synthetic/random/seed0": "FINISHED", "synthetic/grid/seed0": "RUNNING"}
    parent = next(r for r in runs if r.info.run_name == "compare synthetic")
    first = next(r for r in runs if r.info.run_name == "synthetic/random/seed0")
    # the worst moments, made by hand: a trial killed after its result was written but before its
    # run was closed, and a trial run opened by the killed process before its first checkpoint
    client.update_run(first.info.run_id, status="RUNNING")
    orphan = client.create_run(parent.info.experiment_id, run_name="synthetic/orphan",
                               tags={"mlflow.parentRunId": parent.info.run_id}).info.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, stdout, err = hpctl_main("compare", "synthetic", "--resume", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    client, runs = _runs(uri)
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(orphan) == "KILLED"
    assert set(status.values()) == {"FINISHED"} and parent.info.run_id in status
    assert result["mlflow_run_id"] == parent.info.run_id
    assert [r["mlflow_run_id"] for r in result["runs"]["random"]] == [first.info.run_id]  # reused, not rerun
    assert (out / "compare.json").is_file() and (out / "compare.png").is_file()
    reference = _uninterrupted(tmp_path, uri)
    for ctrl in ("random", "grid"):
        assert [r["learned"] for r in result["runs"][ctrl]] == [r["learned"] for r in reference["runs"][ctrl]]
        assert [r["probes"] for r in result["runs"][ctrl]] == [r["probes"] for r in reference["runs"][ctrl]]


def test_compare_resume_refuses_what_it_cannot_resume(tmp_path, hpctl_main):
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "4", "--out", "one")
    assert code == 0, err
    code, _, err = hpctl_main("compare", "--resume", "one")
    assert code == 2 and "belongs to `run synthetic`, not `compare`" in err and "hpctl run synthetic --resume" in err
    code, _, err = hpctl_main("compare", "synthetic", "--controllers", "random", "--seeds", "1", "--budget", "4",
                              "--out", "cmp")
    assert code == 0, err
    code, _, err = hpctl_main("compare", "synthetic", "--resume", "cmp", "--budget", "9")
    assert code == 2 and "drop --budget" in err, err
    code, _, err = hpctl_main("compare", "magnitude_prune", "--resume", "cmp")
    assert code == 2 and "belongs to `compare synthetic`" in err, err
    code, _, err = hpctl_main("run", "synthetic", "--resume", "cmp")
    assert code == 2 and "belongs to `compare synthetic`" in err, err
    code, _, err = hpctl_main("compare", "--resume", "cmp")
    assert code == 2 and "has finished" in err, err
    Path("cmp/spec.json").write_text("[1, 2]")
    code, _, err = hpctl_main("compare", "--resume", "cmp")
    assert code == 2 and "spec.json" in err and "\n" not in err.strip(), err
    os.mkdir("empty")
    code, _, err = hpctl_main("compare", "--resume", "empty")
    assert code == 2 and "not an hpctl run directory" in err, err


def test_a_comparison_killed_before_it_recorded_its_parent_run_resumes(tmp_path, hpctl_main, tracking_uri):
    """SIGKILL between writing the spec and recording the parent run's id in it: the parent run it
    had opened (found by the comparison's token) is closed, a new one carries the comparison."""
    from hpctl.compare import COMPARE_SPEC, _parent_tracker
    from hpctl.config import RunOptions
    from hpctl.rundir import RunSpec

    out = tmp_path / "cmp"
    out.mkdir()
    spec = RunSpec(plugin="synthetic", options=RunOptions(budget=4, tracking_uri=tracking_uri),
                   plugin_config={"optimum": 0.3}, command="compare").to_json()
    (out / COMPARE_SPEC).write_text(json.dumps({**spec, "compare": {
        "controllers": ["random"], "seeds": 1, "token": "t0k3n", "mlflow_run_id": None, "tracking_uri": None}}))
    orphan = _parent_tracker(tracking_uri, "synthetic", "local", "t0k3n").run_id
    code, stdout, err = hpctl_main("compare", "--resume", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    client, runs = _runs(tracking_uri)
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[orphan] == "KILLED" and status[result["mlflow_run_id"]] == "FINISHED"
    assert status[result["runs"]["random"][0]["mlflow_run_id"]] == "FINISHED"
    assert json.loads((out / COMPARE_SPEC).read_text())["compare"]["mlflow_run_id"] == result["mlflow_run_id"]
