"""The CLI: runs, JSON output, config composition, MLflow records, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_run_synthetic_random_json(hpctl_main, tracking_uri):
    code, out, err = hpctl_main("run", "synthetic", "--optimum", "0.37", "--noise", "0.01",
                                "--controller", "random", "--json", "--out", "r1")
    assert code == 0, err
    res = _last_json(out)
    for key in ("plugin", "controller", "seed", "learned", "probes", "wall_s", "metrics", "mlflow_run_id"):
        assert key in res
    assert res["plugin"] == "synthetic" and res["controller"] == "random"
    assert 0.0 <= res["learned"]["x"] <= 1.0
    assert res["probes"] <= 64
    assert Path("r1/result.json").is_file() and Path("r1/run.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(res["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["controller"] == "random"
    hist = client.get_metric_history(res["mlflow_run_id"], "probe/x")
    assert len(hist) == res["probes"]  # every probe (candidates and baselines) is logged
    arts = {a.path for a in client.list_artifacts(res["mlflow_run_id"])}
    assert {"run.png", "result.json", "history.json"} <= arts


def test_same_seed_same_result(hpctl_main):
    a = _last_json(hpctl_main("run", "synthetic", "-c", "grpo", "--seed", "3", "--noise", "0.05", "--json")[1])
    b = _last_json(hpctl_main("run", "synthetic", "-c", "grpo", "--seed", "3", "--noise", "0.05", "--json")[1])
    c = _last_json(hpctl_main("run", "synthetic", "-c", "grpo", "--seed", "4", "--noise", "0.05", "--json")[1])
    assert a["learned"] == b["learned"]
    assert a["learned"] != c["learned"]
    ha = json.loads(Path(a["out_dir"], "history.json").read_text())
    hb = json.loads(Path(b["out_dir"], "history.json").read_text())
    assert [e.get("value") for e in ha] == [e.get("value") for e in hb]


def test_config_file_and_flags_compose(hpctl_main, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("controller: grid\nbudget: 16\noptimum: 0.8\nnoise: 0.0\ncontroller_config: {k: 8}\n")
    code, out, err = hpctl_main("run", "synthetic", "--config", str(cfg), "--budget", "8", "--json")
    assert code == 0, err
    res = _last_json(out)
    assert res["controller"] == "grid"
    assert res["budget"] == 8  # the flag wins over the file
    assert res["optimum"]["x"] == pytest.approx(0.8)  # the file fills what no flag set


def test_env_id_sets_the_landscape_and_flags_still_win(hpctl_main):
    code, out, err = hpctl_main("run", "synthetic", "--env", "hpctl/Landscape2D-v0", "--optimum", "0.6",
                                "-c", "random", "--budget", "16", "--json")
    assert code == 0, err
    res = _last_json(out)
    assert res["optimum"] == {"x": pytest.approx(0.6), "y": pytest.approx(0.7)}


def test_two_dimensional_knob_runs(hpctl_main):
    code, out, err = hpctl_main("run", "synthetic", "--optimum", "0.3", "--optimum2", "0.7", "-c", "random",
                                "--budget", "32", "--json")
    assert code == 0, err
    assert set(_last_json(out)["learned"]) == {"x", "y"}


BAD_INPUTS = [
    (["run", "nosuchplugin"], "unknown plugin 'nosuchplugin'"),
    (["run", "synthetic", "--controller", "nosuch"], "'nosuch' is not one of"),
    (["run", "synthetic", "--low", "0.9", "--high", "0.1"], "bounds out of order"),
    (["run", "synthetic", "--optimum", "1.5"], "outside the knob's bounds"),
    (["run", "synthetic", "-c", "fixed", "--set", "value=1.7"], "outside its bounds"),
    (["run", "synthetic", "--shape", "round"], "round"),
    (["run", "synthetic", "--env", "hpctl/Nope-v0"], "unknown env id 'hpctl/Nope-v0'"),
    (["run", "synthetic", "--budget", "0"], "budget must be > 0"),
    (["run", "synthetic", "--group-size", "1"], "group size must be >= 2"),
    (["run", "synthetic", "--config", "missing.yaml"], "does not exist"),
    (["run", "synthetic", "-c", "grpo", "--set", "nosuch=1"], "no setting 'nosuch'"),
    (["run", "synthetic", "--tracking-uri", "sqlite:////proc/nope/x.db"], "MLflow store '/proc/nope/x.db' is not writable"),
    (["run", "synthetic", "--out", "/proc/nope"], "not writable"),
    (["run", "synthetic", "--resume", "."], "not an hpctl run directory"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a[1:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_nonzero(hpctl_main, args, message):
    code, out, err = hpctl_main(*args)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err + out


def test_malformed_config_file(hpctl_main, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller: [grpo\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(bad))
    assert code != 0 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    bad.write_text("- a\n- b\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(bad))
    assert code != 0 and "must hold a mapping" in err
    bad.write_text("optimun: 0.3\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(bad))
    assert code != 0 and "unknown key 'optimun'" in err


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = run_cli("run", "synthetic", "--controller", "nosuch", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr


def test_list_shows_plugins_controllers_and_ids(hpctl_main):
    code, out, _ = hpctl_main("list")
    assert code == 0
    for word in ("synthetic", "grasp_lora", "grpo", "ppo", "grid", "hpctl/Landscape-v0"):
        assert word in out


def test_resume_refuses_finished_runs_and_extra_flags(hpctl_main):
    code, _, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "8", "--out", "done")
    assert code == 0, err
    code, _, err = hpctl_main("run", "synthetic", "--resume", "done")
    assert code != 0 and "has finished" in err and len(err.strip().splitlines()) == 1
    code, _, err = hpctl_main("run", "synthetic", "--resume", "done", "--budget", "9")
    assert code != 0 and "drop --budget" in err


def test_compare_rejects_a_setting_that_names_no_controller(hpctl_main):
    code, _, err = hpctl_main("compare", "synthetic", "--controllers", "grpo,grid", "--set", "k=4")
    assert code != 0 and "names no controller" in err and len(err.strip().splitlines()) == 1


def test_config_values_are_type_checked(hpctl_main, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: 5\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(cfg))
    assert code == 2 and "out must be a string" in err
    cfg.write_text("controller: [grpo]\n")
    code, _, err = hpctl_main("run", "synthetic", "--config", str(cfg))
    assert code == 2 and "controller must be a string" in err


def test_the_cli_offers_exactly_the_registered_controllers():
    from hpctl.controllers.base import BUILTIN_CONTROLLERS, controller_names

    assert sorted(BUILTIN_CONTROLLERS) == controller_names()


def test_preset_filled_options_show_the_default_presets_value(hpctl_main):
    code, out, _ = hpctl_main("run", "grasp_lora", "--help")
    assert code == 0 and "[default: 8 (the default preset's)]" in " ".join(out.split())
