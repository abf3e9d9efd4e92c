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
    # one spelling per concept (#34): the old ones say the new
    (["compare", "synthetic", "--seed", "3"], "hpctl compare takes no --seed: --seeds A..B names the seeds"),
    (["compare", "synthetic", "-c", "grpo"], "hpctl compare takes no --controller/-c: --controllers names"),
    (["compare", "synthetic", "--controller", "grpo"], "--controllers names the controllers"),
    (["compare", "synthetic", "--seeds", "5..2"], "the range runs backwards (write 2..5)"),
    (["compare", "synthetic", "--seeds", "three"], "--seeds must be a count N or a range A..B"),
    (["compare", "synthetic", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "synthetic", "--set", "lr=0.3"], "controller 'grpo' has no setting 'lr': it is now 'policy_lr'"),
    (["run", "synthetic", "--set", "lr_sigma=0.3"], "it is now 'policy_lr_sigma'"),
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


# ---------------------------------------------------------------- #34 item 6 ----
def _sections(help_text: str) -> dict[str, str]:
    """`--help` split at its headings ("Run options:" ...): heading -> the text under it."""
    out, current = {}, None
    for line in help_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def test_help_groups_the_options_and_shows_true_defaults(hpctl_main):
    from hpctl.registry import load_plugin

    plugin = load_plugin("grasp_lora")
    code, out, _ = hpctl_main("run", "grasp_lora", "--help")
    assert code == 0
    sections = _sections(out)
    assert list(sections) == ["Run options", "Controller options", "Output and tracking options",
                              "Engine options", "grasp_lora options"]
    assert "--seed " in sections["Run options"] and "--resume" in sections["Run options"]
    assert "--set KEY=VALUE" in sections["Controller options"] and "--lr " not in sections["Controller options"]
    assert "--lr " in sections["grasp_lora options"] and "--engine" in sections["Engine options"]
    assert "--tracking-uri" in sections["Output and tracking options"]
    flat = " ".join(out.split())
    assert f"[default: {plugin.default_budget}]" in flat and f"[default: {plugin.default_controller}]" in flat
    assert "[default: runs/grasp_lora-<controller>-s<seed>-<time>" in flat
    assert "--set policy_lr=0.3" in flat  # GRPO's step size, not the plugin's --lr

    code, out, _ = hpctl_main("compare", "synthetic", "--help")
    assert code == 0
    sections = _sections(out)
    flat = " ".join(out.split())
    assert "--out TEXT comparison directory, a folder per trial inside [default: runs/compare-synthetic-<time>]" in flat
    assert "--seeds N|A..B" in sections["Run options"] and "--controllers" in sections["Controller options"]
    assert "--seed " not in out and "--controller " not in out and "-c," not in out  # one spelling each


def test_list_json_names_every_plugin_and_controller(hpctl_main):
    from hpctl.controllers.base import controller_names
    from hpctl.envs import env_ids
    from hpctl.registry import plugin_entry_points

    code, out, err = hpctl_main("list", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [p["name"] for p in data["plugins"]] == sorted(plugin_entry_points())
    assert all(p["entry_point"] and (p["description"] or p["error"]) for p in data["plugins"])
    assert data["controllers"] == controller_names() and "grpo" in data["controllers"]
    assert data["gymnasium_ids"] == list(env_ids()) and isinstance(data["unavailable_controllers"], dict)


def test_the_run_folder_is_named_after_the_controller_that_ran(hpctl_main):
    code, out, err = hpctl_main("run", "synthetic", "--budget", "12", "--group-size", "4", "--json")  # no -c
    assert code == 0, err
    res = _last_json(out)
    assert res["controller"] == "grpo" and Path(res["out_dir"]).name.startswith("synthetic-grpo-s0-")
    code, out, err = hpctl_main("run", "synthetic", "-c", "random", "--budget", "4", "--seed", "2", "--json")
    assert code == 0, err
    assert Path(_last_json(out)["out_dir"]).name.startswith("synthetic-random-s2-")


def test_compare_seeds_range_and_a_plain_setting_for_the_one_controller(hpctl_main):
    code, out, err = hpctl_main("compare", "synthetic", "--controllers", "grid", "--seeds", "3..4", "--budget", "4",
                                "--set", "k=4", "--out", "c", "--json")
    assert code == 0, err
    res = _last_json(out)
    assert res["seeds"] == 2 and [r["seed"] for r in res["runs"]["grid"]] == [3, 4]
    assert sorted(p.name for p in Path("c").iterdir() if p.is_dir()) == ["grid-s3", "grid-s4"]
    spec = json.loads(Path("c/grid-s3/spec.json").read_text())
    assert spec["options"]["controller_config"] == {"k": 4}
