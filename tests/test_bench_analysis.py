"""benchmarks/grasp_vs_grid/analysis.py: the pure functions on small hand-made records, answers worked by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.grasp_vs_grid import analysis  # noqa: E402


def record(arm: str, wall: float, phases: dict, score: float, *, learned: float = 0.5, fwd: int = 100,
           bwd: int = 50, out_dir: str = "/nonexistent", **extra) -> dict:
    """The fields of an arm record the analysis reads (no predictions file: no bootstrap)."""
    passes = {"forward_passes": fwd, "backward_passes": bwd, "generation_steps": 0, "tokens": 0}
    return {"arm": arm, "label": arm, "learned": {"prune_ratio": learned}, "wall_s": wall, "phases": phases,
            "metrics": {"score": score, "f1": score, "loss": 2.0}, "passes": passes, "probes": extra.pop("probes", 0),
            "out_dir": out_dir, **extra}


# Worked example for the cost model (seconds):
#   grid:  wall 1000 = its 8 fine-tunes 720 + the winner's re-run 80 + the rest 200; test generation 40 s
#          over 8 test examples, 4 dev examples
#   GRASP: wall 250 = final fine-tune 80 + controller-run training 40 (8 steps) + probes 30 + the rest 100
#   so S_grid = 800, F_grid = 200, S_grasp = 80, F_grasp = 170; fine-tunes of 32 steps, adapters 50 s
GRID = record("grid", 1000.0, {"train_s": 720.0, "final_train_s": 80.0, "eval_test_s": 40.0}, 50.0,
              notes={"split_sizes": {"test": 8, "dev": 4}},
              grid_points=[{"value": [i / 7], "dev_score": 0.0} for i in range(8)])
GRASP = record("grpo", 250.0, {"train_s": 40.0, "final_train_s": 80.0, "probe_s": 30.0}, 49.0, probes=20,
               phase_passes={"train": {"backward": 8}, "final_train": {"backward": 32}})


# ----------------------------------------------------------------------------- paired_bootstrap
def test_paired_bootstrap_pairs_by_id_and_ignores_the_rest():
    a = {"x": 3.0, "y": 5.0, "only_a": 100.0}
    b = {"y": 3.0, "x": 1.0, "only_b": -7.0}
    got = analysis.paired_bootstrap(a, b)
    # two shared ids, both differences 2: every resample's mean is 2
    assert got == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 2, "sd": 0.0}
    assert analysis.paired_bootstrap({"x": 1.0}, {"y": 1.0}) is None
    assert analysis.paired_bootstrap({"x": 4.0}, {"x": 1.0})["sd"] == 0.0  # one pair: no spread


def test_paired_bootstrap_interval_and_spread():
    a, b = {"p": 10.0, "q": 20.0}, {"p": 10.0, "q": 10.0}
    got = analysis.paired_bootstrap(a, b, n=2000, seed=3)
    # differences 0 and 10: mean 5, sd sqrt(50); resample means are 0, 5 or 10 (1/4, 1/2, 1/4), so the 2.5 % and
    # 97.5 % points of 2000 resamples are 0 and 10
    assert got["mean"] == 5.0 and got["n"] == 2 and got["sd"] == pytest.approx(math.sqrt(50))
    assert (got["lo"], got["hi"]) == (0.0, 10.0)
    # b - a is the mirror image: same resamples, negated
    back = analysis.paired_bootstrap(b, a, n=2000, seed=3)
    assert (back["mean"], back["lo"], back["hi"]) == (-5.0, -10.0, 0.0)
    # differences 0, 0, 30: a resample's mean is 10 x (draws of the 30), Binomial(3, 1/3): P(30) = 1/27 = 3.7 %,
    # P(<= 20) = 96.3 %, so the 97.5 % point is 30 (a 90 % interval would stop at 20) and the 2.5 % point is 0
    got = analysis.paired_bootstrap({"p": 0.0, "q": 0.0, "r": 30.0}, {"p": 0.0, "q": 0.0, "r": 0.0}, seed=0)
    assert (got["mean"], got["lo"], got["hi"]) == (10.0, 0.0, 30.0)
    # deterministic per seed
    assert analysis.paired_bootstrap({"p": 1.0, "q": 4.0, "r": 9.0}, {"p": 0.0, "q": 0.0, "r": 0.0}, seed=7) == \
        analysis.paired_bootstrap({"p": 1.0, "q": 4.0, "r": 9.0}, {"p": 0.0, "q": 0.0, "r": 0.0}, seed=7)


# ----------------------------------------------------------------------------- breakdown, time_ratios
def test_breakdown_cuts_the_wall_time_into_phases():
    rec = record("grpo", 300.0, {"load_s": 10.0, "source_adapter_s": 5.0, "target_adapter_s": 4.0, "merge_s": 1.0,
                                 "controller_s": 150.0, "train_s": 100.0, "probe_s": 40.0, "final_s": 120.0,
                                 "final_train_s": 90.0}, 0.0)
    t = analysis.breakdown(rec, adapters_s=25.0)
    assert t == {"setup_s": 20.0, "search_s": 150.0, "search_train_s": 100.0, "search_scoring_s": 40.0,
                 "final_train_s": 90.0, "export_test_s": 30.0, "other_s": 10.0, "total_s": 300.0,
                 "total_with_adapters_s": 325.0}
    # the grid scores its points on dev (grid_dev_eval_s) where GRASP probes
    grid = record("grid", 800.0, {"controller_s": 700.0, "train_s": 640.0, "grid_dev_eval_s": 60.0}, 0.0)
    t = analysis.breakdown(grid, adapters_s=0.0)
    assert (t["search_s"], t["search_train_s"], t["search_scoring_s"], t["other_s"]) == (700.0, 640.0, 60.0, 100.0)


def test_time_ratios_in_five_accountings():
    grid = {"wall_s": 100.0, "phases": {"final_train_s": 20.0, "eval_test_s": 10.0}}
    arm = {"wall_s": 25.0, "phases": {"eval_test_s": 10.0, "eval_dev_s": 5.0}}
    assert analysis.time_ratios(grid, arm, 5.0) == pytest.approx({
        "as_measured": 4.0,  # 100 / 25
        "with_shared_adapters": 3.5,  # 105 / 30
        "grid_without_rerun": 3.2,  # 80 / 25
        "grid_without_rerun_with_shared_adapters": 85 / 30,
        "without_reporting": 9.0,  # (100 - 10) / (25 - 10 - 5): test and dev-loss scoring out of both
    })
    # a grid without a recorded re-run: nothing to take off
    r = analysis.time_ratios({"wall_s": 100.0, "phases": {}}, arm, 0.0)
    assert r["grid_without_rerun"] == r["as_measured"] == r["with_shared_adapters"] == 4.0


# ----------------------------------------------------------------------------- cost_model
def test_cost_model_splits_scaled_from_fixed_time():
    cm = analysis.cost_model(GRID, GRASP, adapters_s=50.0, steps=32, controller_steps=8)
    assert (cm["steps"], cm["controller_steps"], cm["target"]) == (32, 8, 4.0)
    assert cm["scaled"] == {"grid_fine_tunes_s": 720.0, "grid_rerun_s": 80.0, "grasp_final_s": 80.0}
    assert cm["fixed"] == {"grasp_controller_train_s": 40.0, "grasp_probes_s": 30.0, "grid_rest_s": 200.0,
                           "grasp_rest_s": 100.0, "adapters_s": 50.0}


def test_cost_model_fine_tune_length_that_reaches_the_target():
    cm = analysis.cost_model(GRID, GRASP, adapters_s=50.0, steps=32, controller_steps=8)
    # ratio(m) = (800 m + 200) / (80 m + 170) = 4  <=>  m = (680 - 200) / (800 - 320) = 1: exactly at 4x now
    a = cm["as_measured"]
    assert (a["scaled_grid_s"], a["fixed_grid_s"], a["scaled_grasp_s"], a["fixed_grasp_s"]) == (800, 200, 80, 170)
    assert a["ratio"] == 4.0 and a["limit"] == 10.0
    assert a["train_multiplier_needed"] == 1.0 and a["steps_needed"] == 32
    # without the re-run: (720 m + 200) / (80 m + 170) = 4  <=>  m = 480 / 400 = 1.2 -> ceil(38.4) = 39 steps
    w = cm["grid_without_rerun"]
    assert w["ratio"] == pytest.approx(920 / 250) and w["limit"] == 9.0
    assert w["train_multiplier_needed"] == pytest.approx(1.2) and w["steps_needed"] == 39
    # adapters (50 s) on both sides: (800 m + 250) / (80 m + 220) = 4  <=>  m = 630 / 480 = 1.3125 -> 42 steps
    s = cm["with_shared_adapters"]
    assert s["ratio"] == 3.5 and s["train_multiplier_needed"] == 1.3125 and s["steps_needed"] == 42


def test_cost_model_with_the_controller_run_growing_too():
    cs = analysis.cost_model(GRID, GRASP, adapters_s=50.0, steps=32, controller_steps=8)["controller_scaled"]
    # GRASP's scaled part is now final + controller run = 120 s, fixed 130 s
    a = cs["as_measured"]
    assert (a["scaled_grasp_s"], a["fixed_grasp_s"]) == (120.0, 130.0) and a["limit"] == pytest.approx(800 / 120)
    assert a["train_multiplier_needed"] == 1.0 and (a["steps_needed"], a["controller_steps_needed"]) == (32, 8)
    # (720 m + 200) / (120 m + 130) = 4  <=>  m = 320 / 240 -> 43 steps, ceil(10.67) = 11 controller steps
    w = cs["grid_without_rerun"]
    assert w["train_multiplier_needed"] == pytest.approx(4 / 3)
    assert (w["steps_needed"], w["controller_steps_needed"]) == (43, 11)
    # (800 m + 250) / (120 m + 180) = 4  <=>  m = 470 / 320 = 1.46875 -> 47 steps, ceil(11.75) = 12
    s = cs["with_shared_adapters"]
    assert s["train_multiplier_needed"] == 1.46875 and (s["steps_needed"], s["controller_steps_needed"]) == (47, 12)


def test_cost_model_unreachable_and_always_reached_targets():
    # limit 800 / 80 = 10: a 10x target is never reached by longer training
    cm = analysis.cost_model(GRID, GRASP, 0.0, 32, 8, target=10.0)
    assert cm["as_measured"]["train_multiplier_needed"] is None and cm["as_measured"]["steps_needed"] is None
    # 1x: (800 m + 200) / (80 m + 170) >= 1 for every m >= 0 (m = -30 / 720 < 0): any length, 0 steps
    cm = analysis.cost_model(GRID, GRASP, 0.0, 32, 8, target=1.0)
    assert cm["as_measured"]["train_multiplier_needed"] == pytest.approx(-30 / 720)
    assert cm["as_measured"]["steps_needed"] == 0


def test_cost_model_per_step_probes_and_units():
    cm = analysis.cost_model(GRID, GRASP, adapters_s=50.0, steps=32, controller_steps=8)
    assert cm["per_step"] == {"controller_steps": 8, "fine_tune_steps": 32, "controller_step_s": 5.0,
                              "fine_tune_step_s": 2.5}
    # 30 s of probes at 5 s per controller-run step = 6 steps' worth
    assert cm["probes"] == {"probe_s": 30.0, "probes": 20, "train_steps": 8, "step_s": 5.0,
                            "train_step_equivalents": 6.0}
    assert cm["fine_tunes"] == {"grid": 10.0, "grid_points": 9.0, "grid_rerun": 1.0, "grasp": 1.0,
                                "grasp_controller_run": 0.5, "grasp_with_controller_run": 1.5}
    # dev scored by generation: 40 s for 8 test examples -> 20 s per point on 4 dev examples, 8 points
    g = cm["grid_generation_dev"]
    assert g == {"per_point_s": 20.0, "points": 8, "extra_s": 160.0, "ratio": 1160 / 250,
                 "ratio_without_rerun": 1080 / 250}
    # no recorded backward passes: the step counts fall back to the configured ones
    bare = analysis.cost_model(GRID, {**GRASP, "phase_passes": {}}, 0.0, steps=64, controller_steps=16)
    assert bare["per_step"] == {"controller_steps": 16, "fine_tune_steps": 64, "controller_step_s": 2.5,
                                "fine_tune_step_s": 1.25}
    assert analysis.cost_model(GRID, GRASP, 0.0, steps=32)["controller_steps"] == 32  # default: steps


# ----------------------------------------------------------------------------- summarise
def _two_seeds() -> tuple[dict, dict]:
    records = {
        0: {"grid": GRID, "grpo": GRASP,
            "target-only": record("target-only", 125.0, {"final_train_s": 80.0}, 40.0, learned=0.0)},
        1: {"grid": {**GRID, "wall_s": 1200.0, "metrics": {"score": 52.0, "f1": 52.0, "loss": 2.0}},
            "grpo": {**GRASP, "wall_s": 200.0, "learned": {"prune_ratio": 0.7},
                     "metrics": {"score": 53.0, "f1": 53.0, "loss": 1.0}},
            "target-only": record("target-only", 150.0, {"final_train_s": 80.0}, 44.0, learned=0.0)},
    }
    adapters = {0: {"train_s": 50.0}, 1: {"train_s": 100.0}}
    return records, adapters


def test_summarise_per_seed():
    records, adapters = _two_seeds()
    s = analysis.summarise(records, adapters, "xquad", "en", steps=32, controller_steps=8)
    s0, s1 = s["per_seed"][0], s["per_seed"][1]
    assert (s0["adapters_train_s"], s1["adapters_train_s"]) == (50.0, 100.0)
    assert set(s0["rows"]) == {"grid", "grpo", "target-only"} and set(s0["vs_grid"]) == {"grpo", "target-only"}
    row = s0["rows"]["grpo"]
    assert row["times"]["total_with_adapters_s"] == 300.0 and row["metrics"] == {"score": 49.0, "f1": 49.0, "loss": 2.0}
    c = s0["vs_grid"]["grpo"]
    assert c["time_ratio"]["as_measured"] == 4.0 and c["time_ratio"]["with_shared_adapters"] == 3.5
    assert c["pass_ratio"] == {"forward_passes": 1.0, "backward_passes": 1.0}
    assert c["metric_diff"] == {"score": -1.0, "f1": -1.0, "loss": 0.0}
    assert c["score_diff_bootstrap"] is None  # no predictions files
    assert c["cost_model"]["as_measured"]["ratio"] == 4.0
    assert "cost_model" not in s0["vs_grid"]["target-only"]  # only GRASP arms get one
    assert s0["vs_grid"]["target-only"]["time_ratio"]["as_measured"] == 8.0  # 1000 / 125
    # seed 1: grid 1200 s vs 200 s, adapters 100 s
    assert s1["vs_grid"]["grpo"]["time_ratio"]["as_measured"] == 6.0
    assert s1["vs_grid"]["grpo"]["time_ratio"]["with_shared_adapters"] == pytest.approx(1300 / 300)


def test_summarise_medians_over_seeds():
    records, adapters = _two_seeds()
    med = analysis.summarise(records, adapters, "xquad", "en", steps=32, controller_steps=8)["median"]
    assert list(med) == ["grid", "grpo", "target-only"]  # ARMS order
    g = med["grpo"]
    # two seeds: the median is the mean of the two
    assert g["n"] == 2 and g["total_s"] == 225.0 and g["total_with_adapters_s"] == 300.0  # (300 + 300) / 2
    assert g["learned"] == {"prune_ratio": 0.6} and g["metrics"]["score"] == 51.0
    assert g["time_ratio"]["as_measured"] == 5.0  # (4 + 6) / 2
    assert g["metric_diff"]["score"] == 0.0  # (-1 + 1) / 2
    assert "time_ratio" not in med["grid"] and med["grid"]["total_s"] == 1100.0
    assert med["target-only"]["time_ratio"]["as_measured"] == 8.0  # 1000 / 125 and 1200 / 150


def test_summarise_without_a_grid_and_the_median_of_nothing():
    records, adapters = _two_seeds()
    no_grid = {seed: {a: r for a, r in arms.items() if a != "grid"} for seed, arms in records.items()}
    s = analysis.summarise(no_grid, {}, "xquad", "en", steps=32)
    assert s["per_seed"][0]["vs_grid"] == {} and s["per_seed"][0]["adapters_train_s"] == 0.0
    assert "time_ratio" not in s["median"]["grpo"]
    assert analysis._med([1.0, None, 10.0, float("nan"), 2.0]) == 2.0 and math.isnan(analysis._med([None]))


# ----------------------------------------------------------------------------- criteria
def _summary(ratios: dict, score_diff: float | None) -> dict:
    med = {"time_ratio": ratios} if ratios else {}
    if score_diff is not None:
        med["metric_diff"] = {"score": score_diff}
    return {"median": {"grpo": med}}


RATIOS = {"as_measured": 5.0, "with_shared_adapters": 4.0, "grid_without_rerun": 4.5,
          "grid_without_rerun_with_shared_adapters": 3.9}


def test_criteria_speedup_and_score_gap_at_their_thresholds():
    crit = analysis.criteria(_summary(RATIOS, -0.5), None)
    assert crit["speedup_headline"]["value"] == 4.0 and crit["speedup_headline"]["pass"]  # >= 4 passes
    assert crit["speedup_conservative"]["value"] == 3.9 and not crit["speedup_conservative"]["pass"]
    assert crit["score_gap"] == {"value": -0.5, "target": -0.5, "pass": True}
    assert not analysis.criteria(_summary(RATIOS, -0.51), None)["score_gap"]["pass"]
    assert set(analysis.criteria(_summary({}, float("nan")), None)) == set()  # nothing measured, nothing checked
    assert analysis.criteria({"median": {}}, None) == {}


def _throughput(label_only: float, hf_loss: float, amortised: float) -> dict:
    st = analysis._stats
    return {"group_size": 4, "ratio_vs_plain_label_only": st([label_only]), "ratio_vs_plain_hf_loss": st([hf_loss]),
            "probe_cost": {"micro_dev_examples": 16, "amortised_fraction": st([amortised]),
                           "cold_fraction": st([0.02]), "warm_fraction": st([0.001])}}


def test_criteria_throughput_and_prune_cost():
    crit = analysis.criteria(_summary({}, None), _throughput(0.95, 0.949, 0.0099))
    assert crit["throughput_like_for_like"]["pass"] and not crit["throughput_vs_hf_loss"]["pass"]
    pr = crit["prune_restore_fraction"]
    assert pr["pass"] and (pr["cold"], pr["warm"]) == (0.02, 0.001)
    assert pr["accounting"] == "a round of 5 probes on the run's 16 micro-dev examples"
    assert not analysis.criteria(_summary({}, None), _throughput(1.0, 1.0, 0.01))["prune_restore_fraction"]["pass"]


def test_stats():
    assert analysis._stats([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "values": [3.0, 1.0, 2.0]}


# ----------------------------------------------------------------------------- issue 36: time to adapter, pooling
def test_time_to_the_final_adapter_leaves_the_scoring_both_pay_apart():
    grid = record("grid", 1000.0, {"controller_s": 800.0, "grid_dev_eval_s": 100.0, "final_train_s": 80.0,
                                   "eval_test_s": 40.0, "eval_dev_s": 10.0}, 50.0)
    grpo = record("grpo", 250.0, {"controller_s": 70.0, "final_train_s": 80.0, "eval_test_s": 40.0,
                                  "eval_dev_s": 10.0}, 49.0)
    # the grid's dev scoring of its points and its re-run stay in; the finished adapter's scoring comes out
    assert analysis.adapter_time(grid) == {"adapter_s": 950.0, "test_s": 40.0, "dev_loss_s": 10.0, "wall_s": 1000.0}
    assert analysis.adapter_time(grpo)["adapter_s"] == 200.0
    slow = record("grpo", 300.0, {"eval_test_s": 40.0, "eval_dev_s": 10.0}, 49.0)
    sa = analysis.seed_averaged({0: {"grid": grid, "grpo": grpo}, 1: {"grid": grid, "grpo": slow}}, "xquad", "en")
    t = sa["arms"]["grpo"]
    assert [x["ratio"] for x in t["time"]] == [950 / 200, 950 / 250]
    assert [x["wall_ratio"] for x in t["time"]] == [1000 / 250, 1000 / 300]
    assert t["ratio_range"] == [950 / 250, 950 / 200] and t["ratio_median"] == pytest.approx((950 / 250 + 950 / 200) / 2)
    assert t["adapter_s_median"] == 225.0 and "ratio" not in sa["arms"]["grid"]["time"][0]
    assert sa["curve"] is None  # no grid points: no landscape, the times all the same
    # the check: the lowest seed against 4.5x
    crit = analysis.criteria({"median": {"grpo": {}}, "seed_averaged": sa}, None)["adapter_speedup_every_seed"]
    assert crit["value"] == 950 / 250 and crit["target"] == 4.5 and not crit["pass"]


def test_pooled_differences_against_the_grid_and_against_target_only():
    def scored(arm, wall, scores):
        return record(arm, wall, {}, 0.0, test_scores=scores)

    records = {0: {"grid": scored("grid", 900.0, {"q0": 50.0, "q1": 20.0}),
                   "grpo": scored("grpo", 200.0, {"q0": 60.0, "q1": 20.0}),
                   "target-only": scored("target-only", 100.0, {"q0": 40.0, "q1": 20.0})},
               1: {"grid": scored("grid", 900.0, {"q0": 10.0, "q1": 30.0}),
                   "grpo": scored("grpo", 200.0, {"q0": 20.0, "q1": 30.0}),
                   "target-only": scored("target-only", 100.0, {"q0": 10.0, "q1": 0.0, "q9": 99.0})}}
    # grpo - grid over the 4 (seed, question) pairs: 10, 0, 10, 0; grpo - target-only: 20, 0, 10, 30 (q9: unpaired)
    assert analysis.pooled_difference(records, "grpo", "grid", "xquad", "en")["mean"] == 5.0
    vs_t = analysis.pooled_difference(records, "grpo", "target-only", "xquad", "en")
    assert vs_t["mean"] == 15.0 and vs_t["n"] == 4 and vs_t["lo"] <= 15.0 <= vs_t["hi"]
    assert vs_t == analysis.paired_bootstrap({"0/q0": 60.0, "0/q1": 20.0, "1/q0": 20.0, "1/q1": 30.0},
                                             {"0/q0": 40.0, "0/q1": 20.0, "1/q0": 10.0, "1/q1": 0.0})
    assert analysis.pooled_difference(records, "ppo", "grid", "xquad", "en") is None  # no seed has it
    sa = analysis.seed_averaged(records, "xquad", "en")
    assert sa["arms"]["grpo"]["vs_grid"]["mean"] == 5.0 and sa["arms"]["grpo"]["vs_target_only"]["mean"] == 15.0
    assert sa["arms"]["grid"]["vs_target_only"]["mean"] == 10.0  # 10, 0, 0, 30
    assert "vs_grid" not in sa["arms"]["grid"] and "vs_target_only" not in sa["arms"]["target-only"]
    assert sa["arms"]["target-only"]["vs_grid"]["mean"] == -10.0
    # the over-seeds pooling against the grid is the same figure
    s = analysis.summarise(records, {}, "xquad", "en", steps=8, yardstick=analysis.YARDSTICK)
    assert s["median"]["grpo"]["score_diff_pooled"] == sa["arms"]["grpo"]["vs_grid"]
