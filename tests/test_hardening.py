"""Concurrency, signals and hostile inputs (issue 17): every case fails in one line or works."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpctl.rundir import CHECKPOINT, HISTORY_LOG, RESULT, HistoryLog

SYNTH = ["run", "synthetic", "--optimum", "0.3", "--noise", "0.02", "--budget", "64", "-c", "grpo", "--seed", "5"]


def _cli(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "hpctl.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _runs(uri: str, experiment: str = "hpctl-synthetic"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "seed must be between 0 and"),
    (["--seed", str(2**70)], "seed must be between 0 and"),
    (["-c", "fixed", "--set", "value=abc"], "'abc' is not a number"),
    (["--set", "policy_lr=nan"], "option 'policy_lr' must be a finite number"),
    (["--set", "epochs=2.5"], "option 'epochs' must be an integer"),
    (["--noise", "nan"], "option 'noise' must be a finite number"),
    (["--probe-delay", "inf"], "option 'probe_delay' must be a finite number"),
    (["--out", ""], "--out is empty"),
])
def test_values_that_used_to_crash_or_mean_nothing_are_one_line_errors(hpctl_main, args, message, tmp_path):
    code, _, err = hpctl_main("run", "synthetic", "--budget", "8", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no folder left behind


def test_user_error_leaves_no_run_folder(hpctl_main, tmp_path):
    code, _, err = hpctl_main("run", "synthetic", "-c", "nope")
    assert code == 2 and "'nope' is not one of" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_yaml_alias_bomb_and_huge_and_unreadable_configs(hpctl_main, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                    "c: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(bomb))
    assert code == 2 and "aliases are not allowed" in err and len(err) < 300
    huge = tmp_path / "huge.yaml"
    huge.write_text("budget: 8\n" + "#" * (2 << 20))
    code, _, err = hpctl_main("run", "synthetic", "--config", str(huge))
    assert code == 2 and "over 1 MiB" in err
    ok = tmp_path / "ok.yaml"
    ok.write_text("budget: 8\n")
    real_open = open

    def deny(path, *a, **k):
        if str(path) == str(ok):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    code, _, err = hpctl_main("run", "synthetic", "--config", str(ok))
    assert code == 2 and "cannot be read: Permission denied" in err


def test_long_user_input_is_cut_in_the_error(hpctl_main):
    code, _, err = hpctl_main("run", "synthetic", "--set", "epochs=" + "9" * 100_000 + ".5")
    assert code == 2 and len(err) < 700


def test_out_holding_a_run_is_refused_unless_overwrite(hpctl_main, tmp_path):
    assert hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")[0] == 0
    before = (tmp_path / "r" / RESULT).read_text()
    code, _, err = hpctl_main("run", "synthetic", "-c", "grid", "--budget", "8", "--out", "r")
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert (tmp_path / "r" / RESULT).read_text() == before  # the finished run is untouched
    code, _, err = hpctl_main("run", "synthetic", "-c", "grid", "--budget", "8", "--out", "r", "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / RESULT).read_text())["controller"] == "grid"


def test_all_probes_faulting_is_a_failure_not_a_result(hpctl_main, monkeypatch):
    from hpctl.envs.landscapes import LandscapeTask

    monkeypatch.setattr(LandscapeTask, "probe", lambda self, value: float("nan"))
    code, _, err = hpctl_main("run", "synthetic", "--budget", "8", "--out", "nanrun")
    assert code == 2 and "all" in err and "probes failed" in err, err


def test_a_pickled_or_edited_checkpoint_is_never_executed(hpctl_main, tmp_path):
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")
    assert code == 0, err
    (tmp_path / "r" / RESULT).unlink()  # make it look unfinished
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "r" / CHECKPOINT).write_bytes(pickle.dumps({"env": Evil()}))
    code, _, err = hpctl_main("run", "synthetic", "--resume", "r")
    assert code == 2 and "cannot be used" in err and not marker.exists()
    # a valid file with one flipped byte fails its checksum
    hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "s")
    (tmp_path / "s" / RESULT).unlink()
    from safetensors.torch import load, save

    from hpctl.statefile import _metadata

    raw = (tmp_path / "s" / CHECKPOINT).read_bytes()
    meta = _metadata(raw)
    state = json.loads(meta["state"])
    state["env"]["probes"] += 1  # an edit that keeps the file well-formed: only the checksum can tell
    meta["state"] = json.dumps(state)
    (tmp_path / "s" / CHECKPOINT).write_bytes(save(load(raw), metadata=meta))
    code, _, err = hpctl_main("run", "synthetic", "--resume", "s")
    assert code == 2 and "checksum" in err


def test_history_log_keeps_exactly_what_the_checkpoint_counted(tmp_path):
    log = HistoryLog(tmp_path)
    events = [{"event": "probe", "probe": i} for i in range(5)]
    log.append(events[:3])
    log.append(events)  # appends only the two new ones
    with open(tmp_path / HISTORY_LOG, "a") as fh:
        fh.write('{"event": "probe", "probe": 5}\n{"event": "pro')  # written after the checkpoint, then torn
    again = HistoryLog(tmp_path)
    assert again.restore(4) == events[:4]
    assert (tmp_path / HISTORY_LOG).read_text().count("\n") == 4
    with pytest.raises(Exception, match="holds 4 events, the checkpoint needs 9"):
        HistoryLog(tmp_path).restore(9)


def _start_and_wait_for_checkpoints(args, run_dir, env, rounds=3):
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, last, deadline = 0, None, time.time() + 240
    while time.time() < deadline and proc.poll() is None and seen < rounds:
        ck = run_dir / CHECKPOINT
        if ck.exists() and ck.stat().st_mtime_ns != last:
            seen, last = seen + 1, ck.stat().st_mtime_ns
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    return proc


def test_sigterm_ends_the_run_killed_and_resume_finishes_it(tmp_path, hpctl_main, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    proc = _start_and_wait_for_checkpoints([*SYNTH, "--probe-delay", "0.03"], tmp_path / "t", env)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert [line for line in err.splitlines() if line.strip()][-1].startswith("hpctl: terminated (SIGTERM)")
    client, runs = _runs(uri)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in top] == ["KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the resume needs no process of its own
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(tmp_path / "t"), "--json")
    assert code == 0, err
    client, runs = _runs(uri)
    assert sorted({r.info.status for r in runs}) in (["FINISHED"], ["FINISHED", "KILLED"])
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_kill_after_the_result_is_written_is_repaired_by_resume(tmp_path, hpctl_main, monkeypatch):
    """The process died between result.json and closing its MLflow runs (the worst moment):
    the record is reopened by hand, a nested run is left RUNNING and the outputs are gone.
    (The damage is done by hand, so the runs need no processes of their own.)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "16", "--out", str(tmp_path / "k"))
    assert code == 0, err
    run_id = json.loads((tmp_path / "k" / RESULT).read_text())["mlflow_run_id"]
    client, _ = _runs(uri)
    client.update_run(run_id, status="RUNNING")
    exp_id = client.get_run(run_id).info.experiment_id
    ghost = client.create_run(exp_id, run_name="controller", tags={"mlflow.parentRunId": run_id}).info.run_id
    (tmp_path / "k" / "history.json").unlink()
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(tmp_path / "k"), "--json")
    assert code == 0, err
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(ghost).info.status == "KILLED"
    assert "learned/x" in client.get_run(run_id).data.metrics
    events = json.loads((tmp_path / "k" / "history.json").read_text())
    assert [e["probe"] for e in events if e["event"] == "probe"] == list(range(1, 17))
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(tmp_path / "k"))
    assert code == 2 and "nothing to resume" in err


@pytest.mark.slow
def test_concurrent_first_use_of_a_fresh_store(tmp_path, hpctl_main, monkeypatch):
    """Four runs start at once in a folder without an MLflow store: all finish, the store works."""
    procs = [subprocess.Popen([sys.executable, "-m", "hpctl.cli", "run", "synthetic", "-c", "random", "--budget", "8",
                               "--seed", str(i), "--out", f"r{i}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items()
                                                                         if k != "MLFLOW_TRACKING_URI"})
             for i in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store the four made (./mlruns); hpctl_main runs in tmp_path
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r9")
    assert code == 0, err
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 5


def test_unreachable_tracking_server_fails_without_retrying(hpctl_main, monkeypatch):
    """No wall-time assertion: the first request must go out with retries off and a short timeout."""
    from mlflow.utils import rest_utils

    seen = []
    real = rest_utils.http_request

    def spy(*args, **kwargs):
        seen.append((os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"), os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")))
        return real(*args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", spy)
    code, _, err = hpctl_main("run", "synthetic", "--budget", "8", "--tracking-uri", "http://127.0.0.1:9")
    assert code == 2 and "cannot open MLflow tracking URI" in err and len(err.strip().splitlines()) == 1
    assert seen and seen[0] == ("0", "5")


def test_to_jsonable_makes_numpy_paths_and_non_finite_numbers_plain_json():
    """One helper for the session's spec (non-finite kept as text) and the benchmarks' results (null)."""
    import numpy as np

    from hpctl.rundir import to_jsonable

    obj = {1: (np.float32(0.5), np.int64(3)), "a": np.array([1.0, np.inf]), "p": Path("x/y"), "n": float("nan")}
    assert to_jsonable(obj) == {"1": [0.5, 3], "a": [1.0, "inf"], "p": "x/y", "n": "nan"}
    assert to_jsonable(obj, nonfinite=lambda x: None)["a"] == [1.0, None]
    json.dumps(to_jsonable(obj, nonfinite=lambda x: None), allow_nan=False)  # strict JSON


# ------------------------------------------------- issue 37, item 6: refused in one line naming it --
def test_total_steps_and_seeds_are_bounded_before_anything_starts(hpctl_main, tmp_path):
    code, _, err = hpctl_main("run", "synthetic", "--total-steps", str(10**20), "--out", "big")
    assert code == 2 and "total_steps (--total-steps) must be between 1 and 100,000,000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "big").exists()
    code, _, err = hpctl_main("compare", "synthetic", "--total-steps", str(10**20), "--controllers", "random",
                              "--seeds", "1", "--out", "cmp")
    assert code == 2 and "must be between 1 and 100,000,000" in err and not (tmp_path / "cmp").exists()
    code, _, err = hpctl_main("compare", "synthetic", "--seeds", "1000000000", "--controllers", "random",
                              "--out", "cmp")
    assert code == 2 and "--seeds runs at most 10,000 seeds per controller, got 1,000,000,000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_resume_with_config_names_the_flag_as_typed(hpctl_main, tmp_path):
    assert hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")[0] == 0
    (tmp_path / "c.yaml").write_text("budget: 8\n")
    code, _, err = hpctl_main("run", "synthetic", "--resume", "r", "--config", "c.yaml")
    assert code == 2 and err.strip().endswith("drop --config") and "--config-file" not in err


def test_eval_advice_names_eval_s_own_option(hpctl_main, tmp_path, monkeypatch):
    """A plugin's error advises `hpctl run`'s --device cpu; eval takes it as -o device=cpu."""
    import dataclasses

    from hpctl.cli import _as_eval_options
    from hpctl.errors import ConfigError
    from hpctl.registry import load_plugin

    assert hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")[0] == 0
    (tmp_path / "data.jsonl").write_text("{}\n")
    plugin = load_plugin("synthetic")

    def eval_run(self, run_dir, config, **kw):
        raise ConfigError("device 'cuda' is not available: no CUDA GPU is visible; use --device cpu or --noise 0")

    monkeypatch.setattr(type(plugin), "eval_run", eval_run)  # load_plugin makes a new instance each time
    code, _, err = hpctl_main("eval", "r", "--data", "data.jsonl")
    # synthetic has a noise option and no device one: only the option eval can take is rewritten
    assert code == 2 and err.strip().endswith("use --device cpu or -o noise=0"), err

    @dataclasses.dataclass
    class WithDevice:
        device: str = "cpu"

    assert _as_eval_options("no GPU; use --device cpu", WithDevice) == "no GPU; use -o device=cpu"


def test_damaged_run_files_are_one_line_errors_naming_the_file(hpctl_main, tmp_path):
    from hpctl import statefile

    assert hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "r")[0] == 0
    (tmp_path / "r" / RESULT).write_text("[1, 2]")
    code, _, err = hpctl_main("run", "synthetic", "--resume", "r")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'r/result.json' cannot be read: it holds a JSON list" in err, err
    (tmp_path / "r" / RESULT).unlink()
    (tmp_path / "r" / CHECKPOINT).write_bytes(statefile.dumps({"env": {}, "history_len": 3}))  # valid, no controller
    code, _, err = hpctl_main("run", "synthetic", "--resume", "r")
    assert code == 2 and "'r/checkpoint.safetensors' is not a run checkpoint (no 'controller' in it)" in err
    assert "KeyError" not in err and len(err.strip().splitlines()) == 1


def test_a_folder_that_cannot_be_written_is_not_hidden_behind_error_txt(hpctl_main, tmp_path, monkeypatch):
    """A run folder turned read-only (simulated: the tests may run as root, whom modes do not stop):
    the error names the file that could not be written, not error.txt."""
    import hpctl.runner

    def refuse(out_dir, state):
        raise PermissionError(13, "Permission denied", str(out_dir / (CHECKPOINT + ".tmp")))

    real_write_text = Path.write_text

    def write_text(self, *a, **k):
        if self.name == "error.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(hpctl.runner, "save_checkpoint", refuse)
    monkeypatch.setattr(Path, "write_text", write_text)
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "ro")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "Permission denied" in lines[0] and "checkpoint.safetensors.tmp" in lines[0] and "error.txt" not in err
