"""benchmarks/ratio_landscape.py: rank correlation, minima, and one tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import ratio_landscape as L

ROOT = L.ROOT


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=9).astype(float)  # ties on purpose
        b = rng.normal(size=9)
        want = spearmanr(a, b).statistic
        got = L.spearman(a, b)
        assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want)
    assert L.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert L.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(L.spearman([1, 1, 1], [1, 2, 3]))  # a flat curve has no order
    with pytest.raises(ValueError):
        L.spearman([1, 2], [1, 2, 3])
    assert np.isnan(L.spearman([1, float("nan"), 3], [1, 2, 3]))  # a curve not measured has no order
    assert np.isnan(L.argmin_ratio([0.0, 0.5], [float("nan")] * 2)) and L._f(float("nan"), ".3f") == "-"


def test_compare_states_with_the_grid():
    ratios = [0.0, 0.3, 0.6, 0.9]
    grid = [2.0, 1.5, 1.0, 1.8]  # interior minimum at 0.6
    states = [{"steps_done": 0, "micro_dev_loss": [3.0, 2.9, 2.8, 2.7], "dev_loss": [3.0, 2.5, 2.0, 2.8]},
              {"steps_done": 4, "micro_dev_loss": [2.0, 1.5, 1.0, 1.8], "dev_loss": [2.0, 1.5, 1.0, 1.8]}]
    c = L.compare(ratios, grid, states)
    first, second = c["states"]
    assert first["argmin_micro_dev"] == 0.9 and first["argmin_dev"] == 0.6  # monotone micro-dev: pinned at p_max
    assert first["spearman_micro_dev"] == pytest.approx(L.spearman([3.0, 2.9, 2.8, 2.7], grid))
    assert second["spearman_micro_dev"] == pytest.approx(1.0) and second["argmin_micro_dev"] == 0.6
    assert c["grid_argmin"] == 0.6 and c["grid_range"] == pytest.approx(1.0)
    assert c["mean_spearman_micro_dev"] == pytest.approx((first["spearman_micro_dev"] + 1.0) / 2)


def test_a_tiny_run_records_every_curve(tmp_path, capsys):
    code = L.main(["--preset", "smoke", "--seeds", "0", "--points", "3", "--dev", "6", "--budget", "10",
                   "--group-size", "4", "--set", "steps=4", "--set", "controller_steps=2", "--set", "mask_every=2",
                   "--trajectory", "2", "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "ratio_landscape_smoke.json").read_text())
    seed = doc["seeds"][0]
    assert seed["ratios"] == pytest.approx([0.0, 0.45, 0.9])  # the grid controller's points
    assert seed["split_sizes"]["dev"] == 6
    measured = seed.pop("split_articles")
    assert 1 <= measured["dev"] <= 6 and measured["micro_dev"] >= 1
    L.backfill_articles(doc)  # a seed measured before articles were recorded: recomputed from the config
    assert seed["split_articles"] == measured
    # 10 probes in rounds of 4 + 1 -> 2 rounds of 1 step; states at 0 and 1 steps, and the end (2)
    assert [s["steps_done"] for s in seed["states"]] == [0, 1, 2]
    for s in seed["states"]:
        assert len(s["micro_dev_loss"]) == len(s["dev_loss"]) == 3 and all(np.isfinite(s["micro_dev_loss"]))
    assert len(seed["grid_dev_loss"]) == 3 and all(np.isfinite(seed["grid_dev_loss"]))
    assert len(seed["comparison"]["states"]) == 3
    # --trajectory 2: the micro-dev curve 2 steps into every grid point's fine-tune, and at its end (4)
    assert [t["steps"] for t in seed["trajectory"]] == [2, 4]
    assert all(len(t["micro_dev_loss"]) == len(t["dev_loss"]) == 3 and all(np.isfinite(t["micro_dev_loss"]))
               for t in seed["trajectory"])
    assert seed["trajectory"][-1]["dev_loss"] == seed["grid_dev_loss"]  # the whole fine-tune's dev: the grid
    # the large dev set is scored at the first and last probe state only (--state-dev ends)
    assert [bool(np.isfinite(s["dev_loss"]).all()) for s in seed["states"]] == [True, False, True]
    middle = seed["comparison"]["states"][1]
    assert middle["spearman_dev"] is None or not np.isfinite(middle["spearman_dev"])
    md = (tmp_path / "ratio_landscape_smoke.md").read_text()
    assert "Spearman micro-dev vs grid" in md and "tiny random model" in md and "Along the grid's own" in md
    assert f"dev set 6 examples ({measured['dev']} articles)" in md and "lowest dev loss at a probe state" in md
    assert (tmp_path / "ratio_landscape_smoke.png").stat().st_size > 10_000 and "ratio_landscape_smoke.png" in md


def test_a_grid_point_with_its_trajectory_is_the_whole_fine_tune_bit_for_bit(tmp_path):
    """--trajectory evaluates the micro-dev on the way through a grid point's fine-tune; with the
    stops at multiples of mask_every the fine-tune, and so the grid point, is unchanged."""
    from hpctl.config import build_dataclass
    from hpctl.errors import ConfigError
    from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspTask, resolve_config

    cfg = resolve_config(build_dataclass(GraspLoraConfig, {"preset": "smoke", "dev": 6, "steps": 8, "mask_every": 2,
                                                            "probe_metric": "loss", "baseline": "none"}, what="x"))
    task = GraspTask(cfg, seed=0, out_dir=tmp_path)
    task.reset(0)
    value = np.array([0.6])
    whole = -task.full_run(value)
    loss, micro, large = L.grid_point(task, value, [2, 6])
    assert loss == whole == large[-1] and len(micro) == len(large) == 3 and micro[0] != micro[1]
    assert all(np.isfinite(micro + large)) and large[0] != large[1]
    assert micro[2] == task.loss_at("micro_dev", value)  # the last: after the whole fine-tune
    for bad in ([3], [8], [6, 2]):
        with pytest.raises(ConfigError, match="multiples of mask_every=2"):
            L.grid_point(task, value, bad)
    task.close()


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert L.main(["--seeds", "x", "--out", str(tmp_path)]) == 2
    assert L.main(["--set", "probe_metric=f1", "--out", str(tmp_path)]) == 2
    assert L.main(["--trajectory", "3", "--out", str(tmp_path)]) == 2  # before any measuring: not a multiple of 4
    assert L.main(["--tag", "../x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("ratio_landscape: error:") for line in err)
    assert "--tag" in err[3] and not any(tmp_path.iterdir())


def test_seeds_run_in_parts_accumulate_in_one_results_file(tmp_path):
    """A long landscape runs one seed per session: each part keeps the others' seeds of the same
    configuration, replaces its own, and a different configuration starts the file afresh."""
    path = tmp_path / "ratio_landscape_default.json"
    base = {"preset": "default", "points": 8, "budget": 20, "group_size": 4, "config": {"lang": "ar", "dev": 300}}
    path.write_text(json.dumps({**base, "seeds": [{"seed": 0, "v": "old"}, {"seed": 2, "v": "kept"}],
                                "runs": [{"seed": 0, "run": "a"}, {"seed": 2, "run": "b"}]}))
    got, runs = L.merged_seeds(path, {**base, "seeds": [{"seed": 1, "v": "new"}, {"seed": 0, "v": "new"}]})
    assert [(s["seed"], s["v"]) for s in got] == [(0, "new"), (1, "new"), (2, "kept")]
    assert got[2]["command"] is None  # a kept seed carries the command that measured it
    assert runs == [{"seed": 2, "run": "b"}]  # seed 0's run was scored on the curve just replaced
    # an option added to grasp_lora after the file was measured, left at its default: the same curves
    newer = {**base, "config": {"lang": "ar", "dev": 300, "probe_steps": 0}, "seeds": [{"seed": 3, "v": "new"}]}
    assert [s["seed"] for s in L.merged_seeds(path, newer)[0]] == [0, 2, 3]
    changed = {**newer, "config": {"lang": "ar", "dev": 300, "probe_steps": 4}}
    assert L.merged_seeds(path, changed) == (changed["seeds"], [])
    other = {**base, "config": {"lang": "zh", "dev": 300}, "seeds": [{"seed": 1, "v": "zh"}]}
    assert L.merged_seeds(path, other) == (other["seeds"], [])
    assert L.merged_seeds(tmp_path / "missing.json", other) == (other["seeds"], [])


@pytest.mark.llm
def test_a_real_run_is_scored_on_the_curve_of_its_seed(tmp_path, hpctl_main, capsys):
    """--score-runs: a finished grasp_lora run with the curve's settings gets its regret; a run
    whose fine-tunes differ (another steps) is refused in one line, and so is a missing run."""
    out = tmp_path / "res"
    sets = ["--set", "steps=2", "--set", "controller_steps=2"]
    assert L.main(["--preset", "smoke", "--seeds", "0", "--points", "3", "--dev", "6", "--budget", "10",
                   "--group-size", "4", *sets, "--out", str(out), "--runs-dir", str(tmp_path / "lr")]) == 0
    code, _, err = hpctl_main("run", "grasp_lora", "--preset", "smoke", "--dev", "6", "--steps", "2",
                              "--controller-steps", "2", "--budget", "10", "--seed", "0", "--out", str(tmp_path / "r0"))
    assert code == 0, err
    assert L.main(["--preset", "smoke", "--score-runs", str(tmp_path / "r0"), "--out", str(out)]) == 0
    doc = json.loads((out / "ratio_landscape_smoke.json").read_text())
    (row,) = doc["runs"]
    result = json.loads((tmp_path / "r0" / "result.json").read_text())
    grid = doc["seeds"][0]["grid_dev_loss"]
    assert row["learned"] == pytest.approx(result["learned"]["prune_ratio"])
    assert row["fraction"] == pytest.approx((result["metrics"]["dev_loss"] - min(grid)) / (max(grid) - min(grid)))
    assert "--steps 2" in row["command"] and "regret (% of range)" in (out / "ratio_landscape_smoke.md").read_text()
    spec = json.loads((tmp_path / "r0" / "spec.json").read_text())
    spec["plugin_config"]["steps"] = 3
    (tmp_path / "r0" / "spec.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert L.main(["--preset", "smoke", "--score-runs", str(tmp_path / "r0"), "--out", str(out)]) == 2
    assert L.main(["--preset", "smoke", "--score-runs", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "steps=3" in err[0] and "not a finished run" in err[1]


@pytest.mark.llm
@pytest.mark.slow
def test_a_shorter_fine_tune_is_scored_on_the_trajectory_curve_of_its_length(tmp_path, hpctl_main, capsys):
    """The dev curve after K steps of the grid's fine-tunes is the grid of K-step fine-tunes (constant
    learning rate, same data order and mask steps): a K-step fine-tune from the merged start ends at
    the same dev loss bit for bit, and a run with --steps K is scored on that curve."""
    from hpctl.config import build_dataclass
    from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspTask, resolve_config

    def task_with(steps: int, where: str):
        cfg = resolve_config(build_dataclass(GraspLoraConfig, {"preset": "smoke", "dev": 6, "steps": steps,
                                                                "mask_every": 2, "probe_metric": "loss",
                                                                "baseline": "none"}, what="x"))
        task = GraspTask(cfg, seed=0, out_dir=tmp_path / where)
        task.reset(0)
        return task

    value = np.array([0.6])
    long_task, short_task = task_with(4, "long"), task_with(2, "short_task")
    _, _, along = L.grid_point(long_task, value, [2])
    assert along[0] == -short_task.full_run(value) and along[0] != along[1]
    long_task.close()
    short_task.close()

    out = tmp_path / "res"
    sets = ["--set", "steps=4", "--set", "controller_steps=2", "--set", "mask_every=2"]
    assert L.main(["--preset", "smoke", "--seeds", "0", "--points", "3", "--dev", "6", "--budget", "10",
                   "--group-size", "4", *sets, "--trajectory", "2", "--out", str(out), "--tag", "mask2",
                   "--runs-dir", str(tmp_path / "lr")]) == 0
    assert not (out / "ratio_landscape_smoke.json").exists()  # a variant keeps its own file
    code, _, err = hpctl_main("run", "grasp_lora", "--preset", "smoke", "--dev", "6", "--steps", "2",
                              "--mask-every", "2", "--controller-steps", "2", "--budget", "10", "--seed", "0",
                              "--out", str(tmp_path / "short"))
    assert code == 0, err
    assert L.main(["--preset", "smoke", "--tag", "mask2", "--score-runs", str(tmp_path / "short"), "--out", str(out)]) == 0
    doc = json.loads((out / "ratio_landscape_smoke_mask2.json").read_text())
    (row,) = doc["runs"]
    curve = doc["seeds"][0]["trajectory"][0]["dev_loss"]  # after 2 of the 4 steps
    assert row["fine_tune_steps"] == 2 and row["best_grid_dev_loss"] == min(curve)
    dev_loss = json.loads((tmp_path / "short" / "result.json").read_text())["metrics"]["dev_loss"]
    assert row["fraction"] == pytest.approx((dev_loss - min(curve)) / (max(curve) - min(curve)))
    md = (out / "ratio_landscape_smoke_mask2.md").read_text()
    assert "| fine-tune steps |" in md and md.startswith("# Ratio landscape: smoke preset, variant mask2")
    spec = json.loads((tmp_path / "short" / "spec.json").read_text())
    spec["plugin_config"]["steps"] = 3  # a length no curve was measured for
    (tmp_path / "short" / "spec.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert L.main(["--preset", "smoke", "--tag", "mask2", "--score-runs", str(tmp_path / "short"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps=3" in err[0] and "--trajectory 3" in err[0]


def test_grid_only_measures_the_fine_tunes_and_no_probe_state(tmp_path):
    """--grid-only: a fine grid of close ratios (how rugged is the curve between grid points?)."""
    assert L.main(["--preset", "smoke", "--seeds", "0", "--points", "3", "--dev", "6", "--grid-only",
                   "--set", "steps=2", "--set", "p_min=0.8", "--set", "p_max=0.9", "--tag", "fine",
                   "--out", str(tmp_path), "--runs-dir", str(tmp_path / "lr")]) == 0
    doc = json.loads((tmp_path / "ratio_landscape_smoke_fine.json").read_text())
    (seed,) = doc["seeds"]
    assert doc["grid_only"] and seed["states"] == [] and seed["ratios"] == pytest.approx([0.8, 0.85, 0.9])
    assert len(seed["grid_dev_loss"]) == 3 and all(np.isfinite(seed["grid_dev_loss"]))
    assert "| 0 | - | - |" in (tmp_path / "ratio_landscape_smoke_fine.md").read_text()


def test_every_committed_landscape_report_is_what_the_code_reports():
    """Each committed ``ratio_landscape_*.md`` is :func:`markdown` of its JSON plus the plot's link, so a
    change to the report's analysis (a new column) is regenerated in every committed report, not left
    to drift."""
    results = ROOT / "benchmarks" / "results"
    docs = sorted(results.glob("ratio_landscape_*.json"))
    assert len(docs) >= 8
    for path in docs:
        want = L.markdown(json.loads(path.read_text())) + f"\n![curves]({path.stem}.png)\n"
        assert path.with_suffix(".md").read_text() == want, f"{path.name}: regenerate its report"


def test_the_look_ahead_column_places_the_k_step_minimum_on_the_grid_trend():
    """The trajectory table's "on the grid's trend": the micro-dev argmin at k steps, read off the quadratic
    fitted to the whole fine-tunes' dev losses (0 % at the trend's minimum, 100 % at its maximum)."""
    ratios = [0.0, 0.2, 0.4, 0.6, 0.8]
    grid = [(r - 0.4) ** 2 for r in ratios]  # an exact quadratic: minimum at 0.4, maximum 0.16 at 0.0 and 0.8
    seed = {"seed": 0, "ratios": ratios, "grid_dev_loss": grid, "fine_tune_steps": 8,
            "comparison": {"grid_argmin": 0.4},
            "trajectory": [{"steps": 4, "spearman": 0.5, "argmin": 0.8, "spearman_dev": 0.5, "argmin_dev": 0.8},
                           {"steps": 8, "spearman": 1.0, "argmin": 0.4, "spearman_dev": 1.0, "argmin_dev": 0.4}]}
    from benchmarks.grasp_vs_grid.analysis import curve_roughness

    assert curve_roughness(list(zip(ratios, grid)), 0.8)["smoothed_fraction"] == pytest.approx(1.0)
    assert curve_roughness(list(zip(ratios, grid)), 0.4)["smoothed_fraction"] == pytest.approx(0.0, abs=1e-9)
    rows = L.trajectory_rows(seed)
    assert rows == ["| 0 | 4 | +0.50 | 0.800 | 100 % | +0.50 | 0.800 | 0.400 |",
                    "| 0 | 8 | +1.00 | 0.400 | 0 % | +1.00 | 0.400 | 0.400 |"]




def test_the_committed_trajectories_and_grids_are_the_same_fine_tunes():
    """The results the docs read side by side measure the same fine-tunes: a grid re-run with
    ``--trajectory`` reproduces the committed grid curve of its seed bit for bit, and GRPO's final
    fine-tune is the grid's fine-tune at its ratio (the run and the grid train alike)."""
    from benchmarks.grasp_vs_grid.analysis import grid_loss_curve

    results = ROOT / "benchmarks" / "results"
    regret = json.loads((results / "grasp_vs_grid_regret_ar.json").read_text())
    s = json.loads((results / "ratio_landscape_default_regret_traj.json").read_text())["seeds"][0]
    assert [y for _, y in grid_loss_curve(regret["runs"][str(s["seed"])]["grid"])] == s["grid_dev_loss"]
    same = json.loads((results / "ratio_landscape_default_regret_same.json").read_text())["seeds"][0]
    grpo = regret["runs"]["0"]["grpo"]
    assert same["ratios"][1] == grpo["learned"]["prune_ratio"] and same["grid_dev_loss"][1] == grpo["metrics"]["dev_loss"]
    for traj, grid, seed in (("regret32_traj_zh", "regret32_zh", 1), ("regret32_traj", "regret32", 2)):
        t = json.loads((results / f"ratio_landscape_default_{traj}.json").read_text())["seeds"][0]
        committed = {d["seed"]: d for d in json.loads((results / f"ratio_landscape_default_{grid}.json").read_text())["seeds"]}
        assert t["seed"] == seed and t["grid_dev_loss"] == committed[seed]["grid_dev_loss"]
        assert [k["steps"] for k in t["trajectory"]] == [8, 16, 32]
