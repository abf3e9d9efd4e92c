"""Resume after SIGKILL, failure records, numerical faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hpctl.config import RunOptions
from hpctl.envs.landscapes import Landscape, LandscapeTask
from hpctl.rundir import CHECKPOINT
from hpctl.task import Plugin

SYNTH = ["run", "synthetic", "--optimum", "0.3", "--noise", "0.02", "--budget", "64", "-c", "grpo", "--seed", "5"]


def _probe_ids(run_dir: Path) -> list[int]:
    hist = json.loads((run_dir / "history.json").read_text())
    return [e["probe"] for e in hist if e["event"] == "probe"]


def _kill_midway(args: list[str], run_dir: Path, env: dict, min_rounds: int = 2, timeout: float = 240) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / CHECKPOINT
    deadline = time.time() + timeout
    seen = 0
    last = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            m = ckpt.stat().st_mtime_ns
            if m != last:
                seen, last = seen + 1, m
            if seen >= min_rounds:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists()


def test_sigkill_then_resume_matches_uninterrupted_synthetic(tmp_path, tracking_uri, hpctl_main):
    # only the killed run needs a process of its own; the reference and the resume run in-process
    code, out, err = hpctl_main(*SYNTH, "--out", str(tmp_path / "full"), "--json")
    assert code == 0, err
    expected = json.loads(out.strip().splitlines()[-1])

    killed = tmp_path / "killed"
    _kill_midway([*SYNTH, "--probe-delay", "0.03"], killed, dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri))
    code, out, err = hpctl_main("run", "synthetic", "--resume", str(killed), "--json")
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["learned"] == expected["learned"]
    assert got["probes"] == expected["probes"]
    ids = _probe_ids(killed)
    assert ids == list(range(1, len(ids) + 1))  # no probe lost, none repeated
    assert ids == _probe_ids(tmp_path / "full")
    assert got["mlflow_run_id"] == json.loads((killed / "result.json").read_text())["mlflow_run_id"]


def test_resume_of_another_command_is_refused(tmp_path, hpctl_main):
    code, out, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")
    assert code == 0, err
    code, _, err = hpctl_main("run", "magnitude_prune", "--resume", "r")
    assert code != 0 and "belongs to" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- failure records --
class ExplodingTask(LandscapeTask):
    """Trains fine for a while, then its training loop crashes."""

    def train(self, steps, value):
        if self.steps >= 300:
            raise RuntimeError("simulated crash in the training loop")
        return super().train(steps, value)


@dataclass
class ExplodingConfig:
    optimum: float = 0.4


class ExplodingPlugin(Plugin):
    name = "exploding"
    Config = ExplodingConfig
    default_budget = 64

    def make_task(self, config, *, seed, out_dir):
        return ExplodingTask(Landscape(optimum=(config.optimum,)), noise=0.0, total_steps=1000)


def test_crash_marks_run_failed_and_keeps_metrics(tmp_path, tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    import hpctl.runner as runner

    monkeypatch.setattr(runner, "load_plugin", lambda name: ExplodingPlugin())
    spec = runner.RunSpec(plugin="exploding", options=RunOptions(controller="grpo", out=str(tmp_path / "x"),
                                                                 tracking_uri=tracking_uri))
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run(spec)
    client = MlflowClient(tracking_uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("hpctl-exploding").experiment_id])
            if "mlflow.parentRunId" not in r.data.tags]  # the run itself, not its nested phase runs
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "simulated crash" in runs[0].data.tags["error"]
    hist = MlflowClient(tracking_uri).get_metric_history(runs[0].info.run_id, "probe/x")
    assert len(hist) > 0  # what was measured before the crash is kept
    assert (tmp_path / "x" / "error.txt").read_text().count("Traceback") == 1
    assert (tmp_path / "x" / CHECKPOINT).exists()


class NaNTask(LandscapeTask):
    """Every third probe is NaN, one probe raises."""

    calls = 0

    def probe(self, value):
        NaNTask.calls += 1
        if NaNTask.calls % 3 == 0:
            return float("nan")
        if NaNTask.calls == 7:
            raise FloatingPointError("overflow in probe")
        return super().probe(value)


def test_nan_and_raising_probes_do_not_poison_the_controller(tmp_path):
    from hpctl.controllers.base import get_controller
    from hpctl.control_env import ControlEnv

    task = NaNTask(Landscape(optimum=(0.6,)), noise=0.0, total_steps=800)
    env = ControlEnv(task, group_size=8, steps_per_round=100)
    faults = []
    env.listeners.append(lambda e: faults.append(e) if e["event"] == "fault" else None)
    env.reset(seed=0)
    ctrl = get_controller("grpo")(env, seed=0)
    learned = ctrl.run(64)
    assert np.all(np.isfinite(learned))
    assert all(np.isfinite(v) for v in ctrl.state().values())
    assert len(faults) >= 10
    assert any("overflow" in f["error"] for f in faults)


def test_compare_keeps_going_when_one_run_crashes(tmp_path, tracking_uri, monkeypatch):
    import hpctl.controllers.search as search
    import hpctl.compare as cmp

    original = search.RandomSearch.run

    def crash_on_seed_1(self, budget, callback=None):
        if self.seed == 1:
            raise RuntimeError("simulated controller crash")
        return original(self, budget, callback)

    monkeypatch.setattr(search.RandomSearch, "run", crash_on_seed_1)
    res = cmp.compare("synthetic", ["random", "grid"], 2, RunOptions(budget=8, tracking_uri=tracking_uri), {},
                      out=str(tmp_path / "cmp"))
    assert [f["seed"] for f in res["failures"]] == [1]
    assert "simulated controller crash" in res["failures"][0]["error"]
    assert len(res["runs"]["random"]) == 1 and len(res["runs"]["grid"]) == 2
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["failures"]


# ---------------------------------------------------------------- hostile part --
def test_hostile_part_counts_cases_by_class_and_renders_them(tmp_path, monkeypatch):
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import hostile_cases, reliability

    def broken(work):
        raise RuntimeError("the case itself broke")

    monkeypatch.setitem(hostile_cases.CASES, "broken_case", hostile_cases.Case("broken_case", "raw", broken))
    monkeypatch.setattr(reliability, "RESULTS", tmp_path)
    data = reliability.part_hostile(["knob_with_fractional_dim", "broken_case"])
    rows = {c["name"]: c for c in data["cases"]}
    assert rows["broken_case"]["handled"] is False and "RuntimeError" in rows["broken_case"]["detail"]
    assert data["classes"]["raw"] == {"title": hostile_cases.CLASSES["raw"], "cases": 2,
                                      "handled": int(rows["knob_with_fractional_dim"]["handled"])}
    assert not data["ok"]  # a subset, and one case not handled
    reliability.write("hostile", data)
    md = (tmp_path / "reliability.md").read_text()
    assert "`broken_case`" in md and "`knob_with_fractional_dim`" in md
    assert f"{data['handled']} of 2 handled" in md


def test_a_sigterm_swallowed_by_a_finaliser_is_delivered_again():
    """A SIGTERM whose handler raised inside a garbage collector's weakref callback (as
    SQLAlchemy's registry has) was printed as "Exception ignored" and lost: the command went
    on and exited 0. The CLI's unraisable hook sends it again, after the finaliser."""
    code = textwrap.dedent("""
        import signal, sys, time, weakref
        from hpctl import cli
        from hpctl.errors import Terminated

        class Obj:
            pass

        def cb(ref):
            raise Terminated()  # what the SIGTERM handler raises when the signal lands here

        signal.signal(signal.SIGTERM, cli._on_sigterm)
        sys.unraisablehook = cli._redeliver_swallowed_interrupts
        o = Obj()
        r = weakref.ref(o, cb)
        try:
            del o  # the callback runs now; its exception cannot propagate
            time.sleep(10)
            print("lost")
        except Terminated:
            print("terminated")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "terminated", out.stderr
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr
