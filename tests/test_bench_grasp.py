"""benchmarks/grasp_vs_grid: the cheap pieces (tiny backbone throughput, tables from fake results)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.grasp_vs_grid import analysis, arms, cli, report, throughput  # noqa: E402


# ----------------------------------------------------------------------------- fake results
def _rec(arm, wall, phases, metrics, passes, out_dir, learned=0.4, grid_points=(), trajectory=()):
    probes = [{"probe": i + 1, "step": 0, "value": [p], "score": s, "kind": "candidate"}
              for i, (p, s) in enumerate(grid_points)]
    return {
        "arm": arm, "label": arms.ARM_LABELS[arm], "seed": 0, "controller": arm, "learned": {"prune_ratio": learned},
        "wall_s": wall, "phases": phases, "phase_passes": {}, "metrics": {**metrics, **passes},
        "passes": passes, "probes": len(probes), "budget": 8, "faults": 0,
        "controller_state": {"updates": 6.0} if arm in arms.GRASP_ARMS else {},
        "mlflow_run_id": "x", "out_dir": str(out_dir), "backbone": "fake",
        "notes": {"split_sizes": {"test": 4, "dev": 2}}, "probe_trace": probes,
        "trajectory": [{"probe": i, "step": s, "value": [v], "loss": 1.0} for i, (s, v) in enumerate(trajectory)],
        "grid_points": [{"value": [p], "dev_score": s} for p, s in grid_points] if arm == "grid" else [],
    }


def _predictions(folder: Path, preds: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    refs = ["the red car", "blue", "green house", "seven"]
    with open(folder / "test_predictions.jsonl", "w", encoding="utf-8") as fh:
        for i, (p, r) in enumerate(zip(preds, refs)):
            fh.write(json.dumps({"id": f"q{i}", "prediction": p, "references": [r]}) + "\n")


def _fake(tmp_path, grpo_score=50.0):
    passes = lambda f, b: {"forward_passes": f, "backward_passes": b, "generation_steps": 10, "tokens": 1000}  # noqa: E731
    grid_phases = {"controller_s": 700.0, "final_s": 110.0, "load_s": 10.0, "train_s": 640.0, "grid_dev_eval_s": 60.0,
                   "final_train_s": 80.0, "export_s": 5.0, "eval_test_s": 25.0}
    grasp_phases = {"controller_s": 100.0, "final_s": 110.0, "load_s": 10.0, "train_s": 80.0, "probe_s": 20.0,
                    "final_train_s": 80.0, "export_s": 5.0, "eval_test_s": 25.0}
    _predictions(tmp_path / "grid", ["the red car", "blue", "x", "y"])
    _predictions(tmp_path / "grpo", ["the red car", "blue", "green house", "y"])
    _predictions(tmp_path / "ppo", ["the red car", "x", "x", "y"])
    _predictions(tmp_path / "target-only", ["x", "x", "x", "x"])
    recs = {
        "grid": _rec("grid", 830.0, grid_phases, {"score": 50.0, "f1": 50.0, "exact_match": 50.0, "loss": 2.0},
                     passes(900, 800), tmp_path / "grid", learned=0.3,
                     grid_points=[(0.0, -2.2), (0.3, -2.0), (0.6, -2.1), (0.9, -2.5)]),
        "grpo": _rec("grpo", 220.0, grasp_phases, {"score": grpo_score, "f1": grpo_score, "exact_match": 75.0,
                                                          "loss": 1.9}, passes(300, 200), tmp_path / "grpo",
                     learned=0.37, trajectory=[(2, 0.45), (4, 0.4), (6, 0.37)]),
        "ppo": _rec("ppo", 240.0, grasp_phases, {"score": 25.0, "f1": 25.0, "exact_match": 25.0, "loss": 2.1},
                    passes(300, 200), tmp_path / "ppo", learned=0.5, trajectory=[(2, 0.5)]),
        "target-only": _rec("target-only", 120.0, {"controller_s": 1.0, "final_s": 110.0, "load_s": 9.0,
                                                           "final_train_s": 80.0},
                            {"score": 0.0, "f1": 0.0, "exact_match": 0.0, "loss": 2.4}, passes(100, 100),
                            tmp_path / "target-only", learned=0.0),
    }
    adapters = {0: {"train_s": 30.0, "passes": passes(20, 20)}}
    return {0: recs}, adapters


def test_tables_ratios_and_checks_from_fake_results(tmp_path):
    records, adapters = _fake(tmp_path)
    summary = analysis.summarise(records, adapters, "xquad", "en", steps=16)
    s = summary["per_seed"][0]
    c = s["vs_grid"]["grpo"]
    # time ratios: grid / arm in every accounting
    assert c["time_ratio"]["as_measured"] == pytest.approx(830 / 220)
    assert c["time_ratio"]["with_shared_adapters"] == pytest.approx(860 / 250)
    assert c["time_ratio"]["grid_without_rerun"] == pytest.approx(750 / 220)
    assert c["time_ratio"]["grid_without_rerun_with_shared_adapters"] == pytest.approx(780 / 250)
    assert c["time_ratio"]["without_reporting"] == pytest.approx((830 - 25) / (220 - 25))  # test scoring out
    assert c["pass_ratio"]["forward_passes"] == pytest.approx(3.0)
    assert c["metric_diff"]["score"] == pytest.approx(0.0)
    # per-example F1 from the prediction files: grpo gets q2 right where the grid does not
    b = c["score_diff_bootstrap"]
    assert b["n"] == 4 and b["mean"] == pytest.approx(25.0) and b["lo"] <= 25.0 <= b["hi"]
    # cost model: what grows with the fine-tune length is the grid's 8 runs + re-run (720 s) and GRASP's
    # final fine-tune (80 s); GRASP's controller run (80 s of training), its probes and the rest stay fixed
    cm = c["cost_model"]
    assert cm["scaled"] == pytest.approx({"grid_fine_tunes_s": 640.0, "grid_rerun_s": 80.0, "grasp_final_s": 80.0})
    assert cm["fixed"]["grasp_controller_train_s"] == 80.0 and cm["fixed"]["grasp_probes_s"] == 20.0
    assert cm["fixed"]["grid_rest_s"] == pytest.approx(110.0) and cm["fixed"]["grasp_rest_s"] == pytest.approx(40.0)
    a = cm["as_measured"]
    assert (a["scaled_grid_s"], a["fixed_grid_s"], a["scaled_grasp_s"], a["fixed_grasp_s"]) == pytest.approx(
        (720.0, 110.0, 80.0, 140.0))
    assert a["ratio"] == pytest.approx(830 / 220) and a["limit"] == pytest.approx(720 / 80)
    assert cm["grid_without_rerun"]["limit"] == pytest.approx(640 / 80)
    m = a["train_multiplier_needed"]
    assert (m * 720 + 110) / (m * 80 + 140) == pytest.approx(4.0)
    assert a["steps_needed"] == math.ceil(m * 16)
    # with the adapters' 30 s on both sides (fixed)
    w = cm["with_shared_adapters"]
    m = w["train_multiplier_needed"]
    assert w["fixed_grid_s"] == pytest.approx(140.0) and (m * 720 + 140) / (m * 80 + 170) == pytest.approx(4.0)
    # the controller run growing with the fine-tunes: GRASP's scaled part is 160 s, limit 4.5x / 4.0x
    cs = cm["controller_scaled"]
    assert cs["as_measured"]["scaled_grasp_s"] == pytest.approx(160.0)
    assert cs["as_measured"]["limit"] == pytest.approx(720 / 160)
    m = cs["as_measured"]["train_multiplier_needed"]
    assert (m * 720 + 110) / (m * 160 + 60) == pytest.approx(4.0)
    assert cs["as_measured"]["controller_steps_needed"] == math.ceil(m * 16)
    assert cs["grid_without_rerun"]["steps_needed"] is None  # limit 4.0 is not above 4: out of reach
    assert cm["grid_generation_dev"]["per_point_s"] == pytest.approx(25.0 * 2 / 4)
    # 20 s of probes at 80 s / 16 controller-run steps = 4 steps' worth
    assert cm["probes"]["train_step_equivalents"] == pytest.approx(4.0)
    assert cm["fine_tunes"]["grid"] == pytest.approx(9.0) and cm["fine_tunes"]["grasp_controller_run"] == 1.0
    # the breakdown puts each measured phase in its column; the untimed rest is "other"
    t = s["rows"]["grid"]["times"]
    assert (t["setup_s"], t["search_s"], t["final_train_s"], t["export_test_s"]) == pytest.approx((10.0, 700.0, 80.0, 30.0))
    assert t["other_s"] == pytest.approx(10.0)
    assert t["total_with_adapters_s"] == pytest.approx(860.0)

    # a controller run a quarter of the fine-tune length: step counts follow, the seconds are as measured
    s4 = analysis.summarise(records, adapters, "xquad", "en", steps=64, controller_steps=16)
    cm4 = s4["per_seed"][0]["vs_grid"]["grpo"]["cost_model"]
    assert cm4["steps"] == 64 and cm4["controller_steps"] == 16
    assert cm4["as_measured"]["train_multiplier_needed"] == pytest.approx(cm["as_measured"]["train_multiplier_needed"])
    assert cm4["per_step"]["controller_step_s"] == pytest.approx(80 / 16)
    assert cm4["per_step"]["fine_tune_step_s"] == pytest.approx(80 / 64)
    text = "\n".join(report.explanation(cm4, "GRASP (GRPO)"))
    assert "controller run kept at 16 steps" in text and "instead of 64" in text and "out of reach" in text
    # a ratio above the target: the explanation says how short the fine-tunes could get
    short = analysis.cost_model({**records[0]["grid"], "wall_s": 900.0}, records[0]["grpo"], 0.0, 64, 16)
    assert short["as_measured"]["ratio"] > 4 and 0 < short["as_measured"]["train_multiplier_needed"] < 1
    assert "holds down to fine-tunes" in "\n".join(report.explanation(short, "x"))

    crit = analysis.criteria(summary, None)
    assert crit["speedup_headline"]["value"] == pytest.approx(860 / 250) and not crit["speedup_headline"]["pass"]
    assert crit["speedup_as_run_every_seed"]["value"] == pytest.approx(830 / 220)
    assert not crit["speedup_as_run_every_seed"]["pass"] and crit["speedup_as_run_every_seed"]["target"] == 4.5
    assert crit["score_gap"]["pass"]
    # a GRASP score 0.6 points below the grid fails the score check
    records2, _ = _fake(tmp_path / "b", grpo_score=49.4)
    crit2 = analysis.criteria(analysis.summarise(records2, adapters, "xquad", "en", steps=16), None)
    assert not crit2["score_gap"]["pass"]

    tp = {"alternations": 1, "batch_size": 2, "max_len": 8, "rounds": 1, "steps_per_round": 1, "backbone": "fake",
          "ratio": 0.4, "mask_every": 1, "lora_rank_plain": 8, "group_size": 4,
          "ratio_vs_plain_hf_loss": analysis._stats([1.5]), "ratio_vs_plain_label_only": analysis._stats([0.9]),
          "probe_cost": {k: analysis._stats([v]) for k, v in (("cold_fraction", 0.02), ("warm_fraction", 0.001),
                                                            ("amortised_fraction", 0.005))}}
    crit3 = analysis.criteria(summary, tp)
    assert not crit3["throughput_like_for_like"]["pass"] and crit3["throughput_vs_hf_loss"]["pass"]
    assert crit3["prune_restore_fraction"]["pass"]
    # with the scaling figures: the check stays on the run's micro-dev, the text says where 1 % is reached
    frac = lambda v: {"cold_fraction": analysis._stats([v]), "warm_fraction": analysis._stats([v]),  # noqa: E731
                      "amortised_fraction": analysis._stats([v])}
    tp["probe_cost"].update(micro_dev_examples=16, large={"split": "test", "batches": 6, "examples": 48, "runs": [],
                                                         **frac(0.004)},
                            scaling={"large_split": "test", "large_examples": 48, "micro_dev_examples": 16,
                                     "forward_per_example_s": 0.2, "forward_per_example_micro_dev_s": 0.21,
                                     "prune_restore_cold_s": 0.135, "prune_restore_warm_s": 0.065,
                                     "prune_restore_amortised_s": 0.079, "prune_restore_cold_s_micro_dev": 0.13,
                                     "prune_restore_cold_s_large": 0.14, "prune_restore_warm_s_micro_dev": 0.065,
                                     "prune_restore_warm_s_large": 0.065, "target": 0.01,
                                     "min_examples_for_target": 40, "min_examples_for_target_cold": 68,
                                     "min_examples_for_target_warm": 33, "predicted_fraction_at_micro_dev": 0.0247})
    crit3 = analysis.criteria(summary, tp)
    pr = crit3["prune_restore_fraction"]
    assert pr["value"] == 0.005 and pr["min_examples_for_target"] == 40
    assert "16 micro-dev examples" in pr["accounting"] and "from 40 micro-dev examples" in pr["accounting"]

    meta = {"k": 8, "scale": "smoke", "command": "python -m benchmarks.grasp_vs_grid --scale smoke",
            "scale_note": "fake", "plugin_config": {"backbone": "tiny"}, "task": "xquad", "lang": "en", "seeds": [0],
            "steps": 16, "controller_steps": 16, "steps_per_round": 1, "budget": 20, "group_size": 4,
            "adapters": {"0": adapters[0]},
            "grid_points": {"0": records[0]["grid"]["grid_points"]}, "tracking_uri": "sqlite:///x.db",
            "mlflow_parent_run_id": "p", "runs_dir": "runs/x", "versions": {"python": "3"}}
    png = report.plot_seed(tmp_path / "p.png", records[0], "fake")
    md = report.markdown(meta, summary, tp, crit3, [str(png)])
    assert f"{830 / 220:.2f}x" in md and "shared by every arm" in md and "![p](p.png)" in md
    assert f"| {805 / 195:.2f}x |" in md  # the comparison's column without test scoring
    assert "| grid (full runs) | 0.3000 | - |" in md and "FAIL" in md  # updates: none for the grid
    assert "| updates |" in md and "| GRASP (GRPO) | 0.3700 | 6 |" in md
    assert "a controller run of 16 steps (1 per round)" in md and "(= the controller run's steps per round)" in md
    assert "| 40 examples (68; 33) |" in md and "from 40 micro-dev examples" in md
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = report._jsonable({"summary": summary, "criteria": crit3, "nan": float("nan")})
    back = json.loads(json.dumps(doc))
    assert back["nan"] is None and back["summary"]["per_seed"]["0"]["vs_grid"]["grpo"]["metric_diff"]["score"] == 0.0


def test_parts_merge_seeds_of_the_same_configuration_and_pool_the_test_scores(tmp_path):
    """A long benchmark runs a seed per part: a part keeps the earlier parts' seeds of the same
    configuration (their per-question test scores travel in the JSON, the run folders may be gone)."""
    import shutil

    records, adapters = {}, {}
    for seed in (0, 1):
        fake_records, ad = _fake(tmp_path / f"s{seed}")
        recs = fake_records[0]
        for rec in recs.values():
            rec["test_scores"] = analysis.per_example_scores("xquad", "en", rec["out_dir"])
        records[seed], adapters[seed] = recs, ad[0]
    shutil.rmtree(tmp_path / "s0")  # seed 0's run folders are gone: its record must carry its scores
    meta = {"scale": "cpu", "k": 8, "budget": 20, "group_size": 4, "steps": 16, "controller_steps": 4,
            "task": "xquad", "lang": "en", "resolved_plugin_config": {"lang": "en", "steps": 16}}
    path = tmp_path / "grasp_vs_grid_cpu.json"
    path.write_text(json.dumps(report._jsonable({**meta, "seeds": [0], "command": "part 0", "runs": {0: records[0]},
                                                 "adapters": {0: adapters[0]}, "throughput": {"x": 1}})))
    kept = cli.earlier_parts(path, meta, [1])
    assert list(kept["runs"]) == [0] and kept["commands"] == ["part 0"] and kept["throughput"] == {"x": 1}
    assert kept["runs"][0]["grpo"]["test_scores"] == records[0]["grpo"]["test_scores"]
    assert cli.earlier_parts(path, meta, [0]) is None  # re-running seed 0 replaces it
    assert cli.earlier_parts(path, {**meta, "lang": "zh"}, [1]) is None  # another configuration
    assert cli.earlier_parts(path, {**meta, "resolved_plugin_config": {"lang": "en", "steps": 8}}, [1]) is None
    assert cli.earlier_parts(tmp_path / "missing.json", meta, [1]) is None

    merged = {**kept["runs"], 1: records[1]}
    summary = analysis.summarise(merged, {0: kept["adapters"][0], 1: adapters[1]}, "xquad", "en", steps=16)
    pooled = summary["median"]["grpo"]["score_diff_pooled"]
    assert pooled["n"] == 8 and pooled["mean"] == pytest.approx(25.0)  # 4 questions x 2 seeds
    assert summary["per_seed"][0]["vs_grid"]["grpo"]["score_diff_bootstrap"]["n"] == 4  # from the record alone
    assert summary["median"]["grpo"]["time_ratio_range"]["as_measured"] == pytest.approx([830 / 220, 830 / 220])
    lines = "\n".join(report.over_seeds(summary))
    assert "## Over seeds 0, 1" in lines
    assert "| GRASP (GRPO) | 0.3700, 0.3700 | 0.3000, 0.3000 |" in lines and "+25.00 [" in lines and "(8) |" in lines
    assert f"| {830 / 220:.2f}x [{830 / 220:.2f}, {830 / 220:.2f}] | {805 / 195:.2f}x [" in lines


def test_options_are_checked_before_anything_runs(capsys):
    assert cli.parse_seeds("3") == [0, 1, 2] and cli.parse_seeds("0,5") == [0, 5]
    assert cli.parse_seeds("1-2") == [1, 2] and cli.parse_seeds("1-1") == [1]
    for bad in ("x", "0", "2-1"):
        with pytest.raises(Exception, match="--seeds"):
            cli.parse_seeds(bad)
    assert cli.parse_sets(["steps=3", "lora-r=2"]) == {"steps": "3", "lora_r": "2"}
    assert cli.main(["--scale", "smoke", "--arms", "grid,nope"]) == 2
    assert "unknown arm" in capsys.readouterr().err
    assert cli.main(["--scale", "smoke", "--tag", "../ar"]) == 2
    assert "--tag may hold" in capsys.readouterr().err
    assert cli.main(["--scale", "smoke", "--set", "no_such_option=1"]) == 2
    assert "no option 'no_such_option'" in capsys.readouterr().err
    assert cli.main(["--scale", "smoke", "--set", "lora_r=many"]) == 2
    assert "lora_r" in capsys.readouterr().err


def test_hf_labels_mark_exactly_the_target_tokens():
    from hpctl.plugins.grasp_lora.lm import Encoded, collate

    batch = collate([Encoded((2, 5, 6, 7, 1), 3), Encoded((2, 9, 8, 1), 2)], pad_id=0)
    labels = throughput.hf_labels(batch)
    assert labels[labels != -100].tolist() == batch.labels.tolist() == [7, 1, 8, 1]
    assert labels.tolist() == [[-100, -100, -100, 7, 1], [-100, -100, 8, 1, -100]]


@pytest.mark.llm
@pytest.mark.slow
def test_throughput_one_alternation_on_the_tiny_backbone(tmp_path, tracking_uri):
    base = {"preset": "smoke", "steps": 2}
    adapters = arms.train_shared_adapters(base, 0, tmp_path / "adapters", tracking_uri, None)
    assert adapters["train_s"] > 0 and Path(adapters["source_adapter"], "adapter_config.json").is_file()
    # 2 rounds x 4 steps: more than the controller run the plugin would give steps=8 by default (8 // 4 -> 4)
    tp = throughput.measure_throughput(base, adapters, 0, rounds=2, steps=4, reps=1, probe_reps=1,
                                  out_dir=tmp_path / "tp", tracking_uri=tracking_uri)
    (run,) = tp["runs"]
    assert run["tokens"] > 0 and set(run["seconds"]) == {"A", "B1", "B2"}
    for key in ("ratio_vs_plain_hf_loss", "ratio_vs_plain_label_only"):
        assert math.isfinite(tp[key]["median"]) and tp[key]["median"] > 0
    pc = tp["probe_cost"]
    for key in ("cold_fraction", "warm_fraction", "amortised_fraction"):
        assert 0 < pc[key]["median"] < 10
    assert pc["runs"][0]["cold_forward_s"] > 0 and tp["lora_rank_plain"] == 2 * 4
    assert np.isfinite(tp["ratio"])
    # the same prune+restore against a forward over the test split: per-example cost, fixed cost, 1 % size
    sc = pc["scaling"]
    assert sc["large_split"] == "test" and sc["large_examples"] == pc["large"]["examples"] > 0
    assert sc["forward_per_example_s"] > 0 and sc["prune_restore_amortised_s"] > 0
    n = sc["min_examples_for_target"]
    assert isinstance(n, int) and n > 0
    assert sc["prune_restore_amortised_s"] / (n * sc["forward_per_example_s"]) < 0.01
    assert n == 1 or sc["prune_restore_amortised_s"] / ((n - 1) * sc["forward_per_example_s"]) >= 0.01



@pytest.mark.parametrize("lang", ["ar", "zh"])
def test_the_regret_scale_fits_the_shipped_xquad(lang):
    """The regret scale's 300-question dev and test sets and 192 training questions come out of the 36
    shipped XQuAD articles for both target languages, with the English source split still filled."""
    from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

    cfg = arms.resolved({**arms.SCALES["regret"].plugin_config, "lang": lang})
    sizes = SplitSizes(**{k: int(getattr(cfg, k)) for k in ("source_train", "target_train", "micro_dev", "dev", "test")})
    td = load_task_data("xquad", lang, sizes=sizes, max_context_chars=cfg.max_context_chars)
    assert td.sizes() == {"source_train": 48, "target_train": 192, "micro_dev": 16, "dev": 300, "test": 300}
    assert td.articles()["target_train"] >= 8 and td.articles()["test"] >= 10


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").rglob("grasp_vs_grid_*.json")),
                         ids=lambda p: str(p.relative_to(ROOT / "benchmarks" / "results")))
def test_every_committed_report_is_what_this_code_reports_from_its_measurements(path, tmp_path, capsys):
    """``--report-only`` re-summarises a results file with the current analysis: the committed reports
    must be its fixed point, so a change to the analysis cannot leave their figures behind."""
    doc = json.loads(path.read_text())
    stem = f"grasp_vs_grid_{doc['scale']}" + (f"_{doc['tag']}" if doc.get("tag") else "")
    assert path.name == f"{stem}.json"
    (tmp_path / path.name).write_text(path.read_text())
    argv = ["--scale", doc["scale"], "--out", str(tmp_path), "--report-only"] + (["--tag", doc["tag"]] if doc.get("tag") else [])
    assert cli.main(argv) == 0
    # floats to 1e-9: least-squares fits differ in their last digits between numpy builds
    _assert_same(json.loads((tmp_path / path.name).read_text()), doc)
    assert (tmp_path / f"{stem}.md").read_text() == path.with_suffix(".md").read_text()


def _assert_same(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(set(got) ^ set(want))}"
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert got == want, where


def test_report_only_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--scale", "regret", "--tag", "xx", "--out", str(tmp_path), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results file" in err and "grasp_vs_grid_regret_xx.json" in err
    (tmp_path / "grasp_vs_grid_regret_xx.json").write_text('{"runs": {}}')
    assert cli.main(["--scale", "regret", "--tag", "xx", "--out", str(tmp_path), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a grasp_vs_grid results file" in err


# ----------------------------------------------------------------------------- issue 36
def test_search_arms_run_at_grasps_budget_and_the_regret32_scale_halves_only_the_fine_tunes(tmp_path):
    scale = arms.SCALES["regret32"]
    ad = {"source_adapter": "/s", "target_adapter": "/t"}
    specs = {a: arms.arm_spec(a, scale.plugin_config, ad, 3, scale, tmp_path / a, "sqlite:///x.db")
             for a in ("grpo", "tpe", "random")}
    for a, spec in specs.items():
        assert spec.options.controller == a and spec.options.seed == 3
        assert (spec.options.budget, spec.options.group_size) == (specs["grpo"].options.budget, scale.group_size)
        assert spec.plugin_config == specs["grpo"].plugin_config  # same data, adapters, steps
    assert set(arms.CONTROLLER_ARMS) == {"grpo", "ppo", "tpe", "gp", "random"} and set(arms.CONTROLLER_ARMS) < set(arms.ARMS)
    new, old = arms.resolved(scale.plugin_config), arms.resolved(arms.SCALES["regret"].plugin_config)
    assert (new.steps, new.controller_steps, old.steps) == (32, 16, 64)
    diff = {k for k, v in vars(new).items() if vars(old)[k] != v}
    assert diff == {"steps"}


def _doc_with_yardstick(tmp_path):
    """A results file as the cli writes it now (two seeds, every arm), from the fake records."""
    runs, adapters = {}, {}
    for seed in (0, 1):
        recs, ad = _fake(tmp_path / f"s{seed}")
        recs = recs[0]
        recs["grid"]["metrics"]["dev_loss"] = 2.0  # its best point's loss: the grid was scored by the dev loss
        for arm, learned in (("tpe", 0.1 + 0.5 * seed), ("random", 0.9)):
            recs[arm] = {**recs["ppo"], "arm": arm, "label": arms.ARM_LABELS[arm], "learned": {"prune_ratio": learned}}
        recs["grpo"]["learned"] = {"prune_ratio": 0.37 + 0.1 * seed}
        for rec in recs.values():
            rec["test_scores"] = analysis.per_example_scores("xquad", "en", rec["out_dir"])
            rec["phases"] = {**rec["phases"], "eval_dev_s": 5.0}
        runs[str(seed)], adapters[str(seed)] = recs, ad[0]
    return {"benchmark": "grasp_vs_grid", "scale": "smoke", "scale_note": "fake", "command": "c", "commands": ["c"],
            "seeds": [0, 1], "k": 4, "budget": 20, "group_size": 4, "steps": 16, "controller_steps": 4,
            "steps_per_round": 1, "task": "xquad", "lang": "en", "plugin_config": {}, "backbone_name": "fake",
            "adapters": adapters, "grid_points": {s: r["grid"]["grid_points"] for s, r in runs.items()},
            "tag": "t", "tracking_uri": "sqlite:///x", "mlflow_parent_run_id": "p", "runs_dir": "r",
            "versions": {}, "yardstick": analysis.YARDSTICK, "runs": runs}


def test_a_results_file_with_the_yardstick_reports_the_seed_averaged_reading(tmp_path):
    doc = _doc_with_yardstick(tmp_path)
    summary, crit = cli.summarise_doc(doc)
    sa = summary["seed_averaged"]
    curve = [(x, v) for x, v in sa["curve"]["points"]]
    assert curve == [(0.0, 2.2), (0.3, 2.0), (0.6, 2.1), (0.9, 2.5)]  # both seeds drew the same fake grid
    tpe = sa["arms"]["tpe"]["trend"]
    assert [r["fraction"] for r in tpe] == [analysis.on_trend(curve, 0.1), analysis.on_trend(curve, 0.6)]
    # every arm pays 25 s of test generation and 5 s of dev loss: grid 830 - 30 against grpo 220 - 30
    assert sa["arms"]["grpo"]["time"][0]["ratio"] == pytest.approx(800 / 190)
    assert sa["arms"]["grpo"]["vs_grid"]["mean"] == pytest.approx(25.0) and sa["arms"]["grpo"]["vs_grid"]["n"] == 8
    # grpo answers q0, q1, q2 right, target-only none: 3 x 100 / 4 questions
    assert sa["arms"]["grpo"]["vs_target_only"]["mean"] == pytest.approx(75.0)
    assert crit["adapter_speedup_every_seed"]["value"] == pytest.approx(800 / 190) and "regret" not in crit
    md = cli.render(doc)
    assert "## Language en: seeds 0, 1 on their seed-averaged landscape" in md
    fr = ", ".join(f"{100 * r['fraction']:.1f} %" for r in tpe)
    assert f"| TPE search | 0.1000, 0.6000 | {fr} | {sum(r['pass'] for r in tpe)} of 2 |" in md
    assert f"| GRASP (GRPO) | 190, 190 | {800 / 190:.2f}x, {800 / 190:.2f}x |" in md
    assert "| GRASP (GRPO) | +25.00 [" in md and "| target-only | " in md
    # --report-only keeps such a file a fixed point, and renders what render() renders
    path = tmp_path / "grasp_vs_grid_smoke_t.json"
    path.write_text(json.dumps(report._jsonable(doc)))
    argv = ["--scale", "smoke", "--tag", "t", "--out", str(tmp_path), "--report-only"]
    assert cli.main(argv) == 0
    first = path.read_text()
    assert cli.main(argv) == 0 and path.read_text() == first
    assert (tmp_path / "grasp_vs_grid_smoke_t.md").read_text() == cli.render(json.loads(first)) == md
