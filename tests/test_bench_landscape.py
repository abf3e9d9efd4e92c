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
    long_task, short_task = task_with(4, "long"), task_with(2, "short")
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


def test_the_readme_quotes_the_committed_landscape():
    """Every number the README gives for the default preset's landscape (with 48 target-train questions, the
    default until it showed them memorised, and with 192) is in its committed results."""
    results = ROOT / "benchmarks" / "results"
    doc = json.loads((results / "ratio_landscape_default_train48.json").read_text())
    assert doc["config"]["target_train"] == 48 and "--set target_train=48" in doc["command"]
    fine = json.loads((results / "ratio_landscape_default_fine12.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    section = readme[readme.index("python -m benchmarks.ratio_landscape --preset default --seeds 0"):]
    section = section[:section.index("only check the tool")]
    quoted = set()
    for r in doc["runs"]:
        quoted.add(f"{100 * r['fraction']:.1f} %")
    for s in doc["seeds"]:
        c = s["comparison"]
        quoted |= {f"{c['grid_argmin']:.3f}", f"{min(s['grid_dev_loss']):.3f}", f"range {c['grid_range']:.3f}",
                   f"{best_state(s):.3f}", f"{c['mean_spearman_micro_dev']:+.2f}".replace("+", "")}
    traj = next(s for s in doc["seeds"] if s.get("trajectory"))["trajectory"][0]
    quoted |= {f"{min(traj['dev_loss']):.3f}-{max(traj['dev_loss']):.3f}", f"{traj['argmin_dev']:.3f}",
               f"{max(fine['seeds'][0]['grid_dev_loss']):.3f}"}
    variant = json.loads((results / "ratio_landscape_default_train192.json").read_text())
    v = variant["seeds"][0]
    quoted |= {f"{min(v['grid_dev_loss']):.3f}-{max(v['grid_dev_loss']):.3f}", f"{v['comparison']['grid_argmin']:.1f}",
               *(f"{100 * r['fraction']:.1f} %" for r in variant["runs"]),
               *(f"learned {r['learned']:.3f}" for r in variant["runs"])}
    # bfloat16 (the default preset's dtype here) against float32 on the same seed
    bf16 = json.loads((results / "ratio_landscape_default_bf16.json").read_text())
    assert bf16["config"]["dtype"] == "bfloat16" and variant["config"]["dtype"] == "float32"
    b = bf16["seeds"][0]
    f = next(s for s in variant["seeds"] if s["seed"] == b["seed"])
    shift = [y - x for x, y in zip(f["grid_dev_loss"], b["grid_dev_loss"])]
    mean_shift = sum(shift) / len(shift)
    quoted |= {f"Spearman {L.spearman(f['grid_dev_loss'], b['grid_dev_loss']):.2f}",
               f"{b['comparison']['grid_argmin']:.1f} too ({min(b['grid_dev_loss']):.4f}, range "
               f"{b['comparison']['grid_range']:.3f})", f"mean {mean_shift:.3f}",
               f"{max(abs(d - mean_shift) for d in shift):.3f} off",
               *(f"{100 * r['fraction']:.1f} %" for r in bf16["runs"]), *(f"{r['learned']:.3f}" for r in bf16["runs"])}
    missing = sorted(q for q in quoted if q not in section)
    assert not missing, f"the README's landscape section should quote {missing}"


def best_state(seed: dict) -> float:
    best = L.best_state_dev(seed)
    assert best is not None
    return best["dev_loss"]


def test_the_readme_quotes_the_regret_scales_scatter():
    """The chaos of one 64-step fine-tune (a fine grid around GRPO's learned ratio; two ratios 1e-7 apart,
    the second GRPO's own) and every curve's scatter and trend regret the README quotes, recomputed from
    the committed results."""
    from benchmarks.grasp_vs_grid import analysis

    results = ROOT / "benchmarks" / "results"
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    near = json.loads((results / "ratio_landscape_default_regret_near.json").read_text())["seeds"][0]
    same = json.loads((results / "ratio_landscape_default_regret_same.json").read_text())["seeds"][0]
    grasp = json.loads((results / "grasp_vs_grid_regret_ar.json").read_text())["runs"]["0"]
    # the run and the grid train alike: GRPO's final fine-tune is the grid's fine-tune at its ratio, bit for bit
    assert same["ratios"][1] == grasp["grpo"]["learned"]["prune_ratio"]
    assert same["grid_dev_loss"][1] == grasp["grpo"]["metrics"]["dev_loss"]
    assert abs(same["ratios"][1] - same["ratios"][0]) < 1e-6
    r = analysis.regret(analysis.grid_loss_curve(grasp["grid"]), grasp["grpo"]["metrics"]["dev_loss"],
                        learned_ratio=grasp["grpo"]["learned"]["prune_ratio"])
    quoted = {", ".join(f"{v:.4f}" for v in near["grid_dev_loss"][:4]) + f" and {near['grid_dev_loss'][4]:.4f}",
              f"spread of {max(near['grid_dev_loss']) - min(near['grid_dev_loss']):.3f}",
              f"scored {same['grid_dev_loss'][0]:.4f} and {same['grid_dev_loss'][1]:.4f}",
              f"the {same['grid_dev_loss'][1] - same['grid_dev_loss'][0]:.3f} between them",
              f"seed 0: {r['roughness']:.4f}, {100 * r['roughness'] / r['grid_range']:.0f} % of the range",
              f"is {r['target_in_roughness']:.2f} of it", f"**{100 * r['smoothed_fraction']:.0f} %** for "
              f"{r['learned_ratio']:.3f}"}
    assert max(near["grid_dev_loss"]) - min(near["grid_dev_loss"]) > r["grid_range"]  # "more than the whole range"
    quoted |= {f"{100 * r['oracle_pass_rate']:.0f} % of draws at seed 0", f"(median raw regret "
               f"{100 * r['oracle_fraction_median']:.0f} %", f"would meet it in {100 * r['learned_pass_rate']:.0f} % "
               f"of draws at seed 0"}
    ar = json.loads((results / "grasp_vs_grid_regret_ar.json").read_text())
    every = ar["criteria"]["regret"].get("oracle_pass_every_seed")
    if every is not None:
        quoted.add(f"in all {['', 'one', 'two', 'three'][len(ar['seeds'])]} Arabic seeds with probability "
                   f"{100 * every:.1f} %")
    for arm, text in (("grpo", "GRPO"), ("target-only", "target-only")):  # pooled over every Arabic seed
        b = ar["summary"]["median"][arm]["score_diff_pooled"]
        quoted.add(f"{text} {b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}]")
    quoted.add(f"pooled over the {ar['summary']['median']['grpo']['score_diff_pooled']['n']} questions")
    lo, hi = ar["summary"]["median"]["grpo"]["time_ratio_range"]["without_reporting"]
    quoted.add(f"every arm pays is {lo:.2f}x-{hi:.2f}x")
    zh = json.loads((results / "grasp_vs_grid_regret_zh.json").read_text())  # Chinese, seeds 0-2
    med = zh["summary"]["median"]
    for s, part in sorted(zh["summary"]["per_seed"].items()):
        z = part["vs_grid"]
        rz = z["grpo"]["regret"]
        quoted |= {f"at {rz['best_grid_ratio']:.3f} (range {rz['grid_range']:.3f}, scatter "
                   f"{100 * rz['roughness'] / rz['grid_range']:.0f} % of it)", f"GRPO learned {rz['learned_ratio']:.3f}",
                   f"regret {100 * rz['fraction']:.1f} % raw and {100 * rz['smoothed_fraction']:.0f} % on the trend, "
                   f"{z['grpo']['time_ratio']['as_measured']:.2f}x as run",
                   f"{100 * rz['oracle_pass_rate']:.0f} % of draws at seed 0" if s == "0" else
                   f"{100 * rz['oracle_pass_rate']:.0f} % at seed {s}"}
    rates = [f"{100 * part['vs_grid']['grpo']['regret']['learned_pass_rate']:.0f} %"
             for _, part in sorted(zh["summary"]["per_seed"].items())]
    quoted.add("GRPO's ratios in " + ", ".join(rates[:-1]) + " and " + rates[-1])
    for lang, doc in (("Arabic", ar), ("Chinese", zh)):  # what the probes saw, per language
        pr = doc["summary"]["median"]["grpo"]["probe_rounds"]
        quoted.add(f"{pr['best_is_highest']} of the {pr['rounds']} {lang}")
    quoted.add(f"+{ar['summary']['median']['grpo']['probe_rounds']['spearman_median']:.2f} and "
               f"+{med['grpo']['probe_rounds']['spearman_median']:.2f}")
    parts = [(doc, s, part["vs_grid"]["grpo"]) for doc in (ar, zh) for s, part in sorted(doc["summary"]["per_seed"].items())]
    learned, minima = [c["regret"]["learned_ratio"] for *_, c in parts], [c["regret"]["oracle_ratio"] for *_, c in parts]
    low = min(range(len(parts)), key=learned.__getitem__)  # the one run that learned a low ratio: Chinese seed 2
    assert parts[low][0] is zh and parts[low][1] == "2"
    rest = [x for k, x in enumerate(learned) if k != low]
    quoted |= {f"mostly lands at {min(rest):.2f}-{max(rest):.2f} whatever",
               f"GRPO learned {learned[low]:.3f}, still {100 * parts[low][2]['regret']['smoothed_fraction']:.0f} % of the trend",
               "(correlations " + " and ".join(f"{r['spearman']:+.2f}" for r in parts[low][2]["probe_rounds"][1:]) + ")",
               f"minima lie anywhere from {min(minima):.2f} to {max(minima):.2f}"}
    # the other weak rounds the README names, and their scores within 0.01 of each other
    weak = [(doc, s, r) for k, (doc, s, c) in enumerate(parts) if k != low
            for r in c["probe_rounds"] if r["spearman"] < 0.7 and not r["best_is_highest"]]
    assert [(doc is zh, s, r["step"]) for doc, s, r in weak] == [(False, "0", 12), (True, "0", 12), (True, "1", 8)]
    for doc, s, r in weak:
        scores = [p["score"] for p in doc["runs"][s]["grpo"]["probe_trace"] if p["step"] == r["step"]]
        assert max(scores) - min(scores) < 0.01, (s, r)
    g = [zh["runs"][s]["grid"]["phases"]["train_s"] for s in ("0", "1", "2")]  # seed 2's grid shared the CPU
    pace = (zh["runs"]["2"]["grid"]["wall_s"] - g[2] + (g[0] + g[1]) / 2) / zh["runs"]["2"]["grpo"]["wall_s"]
    quoted |= {f"took {g[2]:.0f} s against {min(g[:2]):.0f}-{max(g[:2]):.0f} s", f"would be about {pace:.1f}x"}
    quoted |= {f"pooled over the {med['grpo']['score_diff_pooled']['n']} Chinese questions", "Chinese, seeds 0, 1 and 2"}
    for arm, text in (("grpo", "GRPO"), ("target-only", "target-only")):
        b = med[arm]["score_diff_pooled"]
        quoted.add(f"{text} {b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}]")
    runs = ar["runs"]
    if "1" in runs:  # the second part
        g1 = runs["1"]
        r1 = analysis.regret(analysis.grid_loss_curve(g1["grid"]), g1["grpo"]["metrics"]["dev_loss"],
                             learned_ratio=g1["grpo"]["learned"]["prune_ratio"])
        quoted |= {f"learned {r1['learned_ratio']:.3f}, regret {100 * r1['fraction']:.1f} %",
                   f"range {r1['grid_range']:.3f}", f"scatter {100 * r1['roughness'] / r1['grid_range']:.0f} % of the range",
                   f"the trend's low end: {100 * r1['smoothed_fraction']:.0f} %",
                   f"and {100 * r1['oracle_pass_rate']:.0f} % at seed 1", f"and {100 * r1['oracle_fraction_median']:.0f} %)",
                   f"in {100 * r1['learned_pass_rate']:.0f} % at seed 1"}
    if "2" in runs:  # the third part
        g2 = runs["2"]
        r2 = analysis.regret(analysis.grid_loss_curve(g2["grid"]), g2["grpo"]["metrics"]["dev_loss"],
                             learned_ratio=g2["grpo"]["learned"]["prune_ratio"])
        t2 = ar["summary"]["per_seed"]["2"]["vs_grid"]["grpo"]["time_ratio"]["as_measured"]
        quoted |= {f"seed 2 the grid's minimum is at {r2['best_grid_ratio']:.3f} again",
                   f"GRPO learned {r2['learned_ratio']:.3f}, regret {100 * r2['fraction']:.1f} % raw and "
                   f"{100 * r2['smoothed_fraction']:.0f} % on the trend, {t2:.2f}x as run",
                   f"and {100 * r2['oracle_pass_rate']:.0f} % at seed 2"}
    # the default preset's 24-step curves (train192 in float32, bf16) and their scored runs, on the trend
    ratios, trend = [], []
    for tag in ("train192", "bf16"):
        doc = json.loads((results / f"ratio_landscape_default_{tag}.json").read_text())
        seeds = {s["seed"]: s for s in doc["seeds"]}
        for s in seeds.values():
            ratios.append(analysis.regret(list(zip(s["ratios"], s["grid_dev_loss"])), min(s["grid_dev_loss"]))
                          ["target_in_roughness"])
        for run in doc["runs"]:
            s = seeds[run["seed"]]
            assert run.get("fine_tune_steps", 24) == s["fine_tune_steps"] == 24
            trend.append(analysis.regret(list(zip(s["ratios"], s["grid_dev_loss"])), run["learned_dev_loss"],
                                         learned_ratio=run["learned"])["smoothed_fraction"])
    quoted.add(f"{min(ratios):.2f}-{max(ratios):.2f} of their scatter")
    quoted |= {f"{100 * t:.1f} %" for t in trend}
    missing = sorted(q for q in quoted if q not in readme)
    assert not missing, f"the README should quote {missing}"


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


def test_the_readme_quotes_the_regret_scales_look_ahead():
    """The README's figures for the k-step look-ahead at the regret sizes (Arabic seed 1) are those of
    ratio_landscape_default_regret_traj.json, whose 64-step curve is the committed grid curve of that seed."""
    from benchmarks.grasp_vs_grid.analysis import curve_roughness, grid_loss_curve

    results = ROOT / "benchmarks" / "results"
    s = json.loads((results / "ratio_landscape_default_regret_traj.json").read_text())["seeds"][0]
    regret = json.loads((results / "grasp_vs_grid_regret_ar.json").read_text())
    committed = grid_loss_curve(regret["runs"][str(s["seed"])]["grid"])
    assert [y for _, y in committed] == s["grid_dev_loss"]  # bit for bit
    k16, k32 = s["trajectory"][0], s["trajectory"][1]
    assert (k16["steps"], k32["steps"]) == (16, 32)
    curve = list(zip(s["ratios"], s["grid_dev_loss"]))
    grpo = float(next(iter(regret["runs"][str(s["seed"])]["grpo"]["learned"].values())))
    span = max(s["grid_dev_loss"]) - min(s["grid_dev_loss"])
    quoted = [f"correlates {k16['spearman']:+.2f} with the 64-step grid (after 32: {k32['spearman']:+.2f})",
              f"minimum at {k16['argmin']:.3f}",
              f"{100 * curve_roughness(curve, k16['argmin'])['smoothed_fraction']:.0f} % up the trend",
              f"GRPO's {grpo:.3f} is {100 * curve_roughness(curve, grpo)['smoothed_fraction']:.0f} % up it",
              f"0.9 only {100 * curve_roughness(curve, 0.9)['smoothed_fraction']:.0f} %",
              f"({min(k32['dev_loss']):.3f}-{max(k32['dev_loss']):.3f}) is below that after 64 "
              f"({min(s['grid_dev_loss']):.3f}-{max(s['grid_dev_loss']):.3f})",
              f"whole range ({span:.3f})"]
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    missing = [q for q in quoted if q not in readme]
    assert not missing, f"README should quote: {missing}"
    assert all(a < b for a, b in zip(k32["dev_loss"], s["grid_dev_loss"]))  # "at every one of the 8 ratios"


@pytest.mark.parametrize("traj, grid, seed, lang", [
    ("ratio_landscape_default_regret32_traj_zh.json", "ratio_landscape_default_regret32_zh.json", 1, "Chinese"),
    ("ratio_landscape_default_regret32_traj.json", "ratio_landscape_default_regret32.json", 2, "Arabic")])
def test_the_readme_quotes_the_32_step_look_aheads(traj, grid, seed, lang):
    """A 32-step grid measured with --trajectory 8,16: its whole-fine-tune curve is the committed 32-step grid
    curve of that seed bit for bit, and the README quotes what the dev curve after 8 and 16 steps saw."""
    results = ROOT / "benchmarks" / "results"
    s = json.loads((results / traj).read_text())["seeds"][0]
    committed = {d["seed"]: d for d in json.loads((results / grid).read_text())["seeds"]}
    assert s["seed"] == seed and s["grid_dev_loss"] == committed[seed]["grid_dev_loss"]  # bit for bit
    k8, k16, whole = s["trajectory"]
    assert (k8["steps"], k16["steps"], whole["steps"]) == (8, 16, 32)
    quoted = [f"{lang} seed {seed}: after 8 steps it correlates {k8['spearman_dev']:+.2f} with the whole "
              f"fine-tune's (minimum at {k8['argmin_dev']:.3f}), after 16 steps {k16['spearman_dev']:+.2f} "
              f"(minimum at {k16['argmin_dev']:.3f}), against {whole['argmin_dev']:.3f}"]
    from benchmarks.grasp_vs_grid.analysis import on_trend

    up = on_trend(list(zip(s["ratios"], s["grid_dev_loss"])), k16["argmin_dev"])
    quoted.append(f"would pick a ratio {100 * up:.0f} %" if lang == "Chinese" else f"and {100 * up:.0f} % up the trend")
    quoted.append(f"{s['wall_s'] / 60:.0f} min run alone" if lang == "Chinese" else f"{s['wall_s'] / 60:.0f} min beside the test suite")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    missing = [q for q in quoted if q not in readme]
    assert not missing, f"README should quote: {missing}"
