"""benchmarks/yardstick.py: the 64-step and 32-step grids side by side, on synthetic and committed results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import yardstick
from benchmarks.grasp_vs_grid import analysis

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RATIOS = [0.9 * i / 7 for i in range(8)]


def _write(folder: Path, *, short_lang: str = "ar", short_ratios=RATIOS, short_dev: int = 300,
           grpo_seeds=(0, 1)) -> tuple[list[float], list[float]]:
    """A committed-looking pair: a 64-step grid whose minimum is at 0.386 (GRPO learned 0.9), a 32-step
    landscape for seed 0 (minimum near 0.771), and a trajectory file that also holds seed 0 (ignored: the
    32-step grid wins) and seed 1 at 32 of its 64 steps."""
    long = [1.0 + (r - 0.386) ** 2 + 0.002 * (i % 2) for i, r in enumerate(RATIOS)]
    short = [0.7 + 0.5 * (r - 0.771) ** 2 - 0.001 * (i % 3) for i, r in enumerate(RATIOS)]
    grid = {"grid_points": [{"value": [r], "dev_score": -v} for r, v in zip(RATIOS, long)],
            "metrics": {"dev_loss": min(long)}, "wall_s": 1000.0, "phases": {"train_s": 800.0, "final_train_s": 100.0}}
    grpo = {"learned": {"prune_ratio": 0.9}, "wall_s": 250.0,
            "phases": {"train_s": 20.0, "final_train_s": 100.0, "probe_s": 30.0}}
    runs = {str(s): {"grid": grid, **({"grpo": grpo} if s in grpo_seeds else {})} for s in (0, 1)}
    specs = {"grid": {"plugin_config": {"dev": 300, "steps": 64, "source_adapter": "/gone/src"}}}
    (folder / "grasp_vs_grid_regret_ar.json").write_text(json.dumps({"runs": runs, "arm_specs": specs}))
    land = {"command": "landscape 32", "config": {"lang": short_lang, "steps": 32, "dev": short_dev, "source_adapter": None},
            "seeds": [{"seed": 0, "ratios": short_ratios, "grid_dev_loss": short}]}  # its length from the config
    (folder / "ratio_landscape_default_regret32.json").write_text(json.dumps(land))
    traj = {"command": "trajectory", "config": {"lang": "ar", "steps": 64},
            "seeds": [{"seed": s, "ratios": RATIOS, "fine_tune_steps": 64, "grid_dev_loss": long,
                       "trajectory": [{"steps": 16, "dev_loss": long}, {"steps": 32, "dev_loss": [v - 0.1 for v in long]}]}
                      for s in (0, 1)]}
    (folder / "ratio_landscape_default_regret_traj.json").write_text(json.dumps(traj))
    return long, short


def test_each_part_reads_grpos_ratio_off_both_trends(tmp_path):
    long, short = _write(tmp_path)
    rows = yardstick.collect(tmp_path)
    assert [(r["lang"], r["seed"], r["source"]) for r in rows] == [
        ("ar", 0, "ratio_landscape_default_regret32.json"), ("ar", 1, "ratio_landscape_default_regret_traj.json")]
    r0, r1 = rows
    assert r0["long"]["trend_regret"] == pytest.approx(
        analysis.curve_roughness(list(zip(RATIOS, long)), 0.9)["smoothed_fraction"])
    assert r0["short"]["trend_regret"] == pytest.approx(
        analysis.curve_roughness(list(zip(RATIOS, short)), 0.9)["smoothed_fraction"])
    assert r0["long"]["trend_regret"] > 0.5 > r0["short"]["trend_regret"]  # 0.9 is far from 0.386, near 0.771
    assert r0["long"]["best"] == pytest.approx(RATIOS[3]) and r0["short"]["best"] == pytest.approx(RATIOS[6])
    assert r0["short_below"] == 8 and r0["points"] == 8
    assert r1["short_below"] == 8 and r1["gap_min"] == pytest.approx(0.1) == r1["gap_max"]
    assert r1["short"]["trend_regret"] == pytest.approx(r1["long"]["trend_regret"])  # a shifted copy
    # halved fine-tunes: the grid (900 s of them, 100 s fixed) against GRPO (100 s final, 150 s fixed, 20 s of it
    # the controller run's training, which the scaled variant halves too)
    assert r0["time_ratio"] == pytest.approx({"measured": 4.0, "short": 550 / 200, "short_controller_scaled": 550 / 190})
    md = yardstick.report(rows, tmp_path)
    assert "| ar 0 | 0.900 |" in md and "`landscape 32`" in md and "`trajectory`" in md
    assert "at every ratio in 2 of 2 parts" in md and "ratio would be 2.75x-2.75x (2.89x-2.89x" in md


def test_mismatched_inputs_are_one_line_errors(tmp_path):
    _write(tmp_path, short_lang="zh")
    with pytest.raises(SystemExit, match="measured 'zh', not 'ar'"):
        yardstick.collect(tmp_path)
    _write(tmp_path, short_ratios=[r / 2 for r in RATIOS])
    with pytest.raises(SystemExit, match="ar seed 0: the two grids do not share their ratios"):
        yardstick.collect(tmp_path)
    _write(tmp_path, short_dev=64)
    with pytest.raises(SystemExit, match="ar seed 0: the 32-step grid .* has dev=64, the 64-step grid 300"):
        yardstick.collect(tmp_path)
    _write(tmp_path, grpo_seeds=(1,))  # a part run without the GRPO arm: nothing to read off, left out
    assert [r["seed"] for r in yardstick.collect(tmp_path)] == [1]
    with pytest.raises(SystemExit, match="no part has both"):
        yardstick.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "y.md")])


def test_the_committed_report_is_what_the_code_reports():
    assert (RESULTS / "yardstick.md").read_text() == yardstick.report(yardstick.collect(RESULTS))


LONG_MIN, SHORT_MIN, LEARNED = (0.2, 0.3, 0.7), 0.45, (0.4, 0.9, 0.45)


def _quad(m: float, c: float = 0.7) -> list[float]:
    return [c + (r - m) ** 2 for r in RATIOS]


def _write3(folder: Path, *, zh_ratios=RATIOS) -> None:
    """Three Arabic seeds with exact quadratic curves: 64-step minima at 0.2, 0.3 and 0.7, 32-step ones all at 0.45
    (other heights); GRPO learned 0.4, 0.9 and 0.45. A Chinese part with its own ratios when asked."""
    def run(m, learned, ratios=RATIOS):
        grid = {"grid_points": [{"value": [r], "dev_score": -v} for r, v in zip(ratios, _quad(m))],
                "metrics": {"dev_loss": min(_quad(m))}, "wall_s": 1000.0, "phases": {"train_s": 800.0, "final_train_s": 100.0}}
        return {"grid": grid, "grpo": {"learned": {"prune_ratio": learned}, "wall_s": 250.0,
                                       "phases": {"train_s": 20.0, "final_train_s": 100.0, "probe_s": 30.0}}}
    specs = {"grid": {"plugin_config": {"dev": 300, "steps": 64}}}
    runs = {str(s): run(m, x) for s, (m, x) in enumerate(zip(LONG_MIN, LEARNED))}
    (folder / "grasp_vs_grid_regret_ar.json").write_text(json.dumps({"runs": runs, "arm_specs": specs}))
    land = {"command": "landscape 32", "config": {"lang": "ar", "steps": 32, "dev": 300},
            "seeds": [{"seed": s, "ratios": RATIOS, "grid_dev_loss": _quad(SHORT_MIN, 0.5 + 0.01 * s)} for s in range(3)]}
    (folder / "ratio_landscape_default_regret32.json").write_text(json.dumps(land))
    if zh_ratios is not None:
        (folder / "grasp_vs_grid_regret_zh.json").write_text(json.dumps(
            {"runs": {"0": run(0.5, 0.5, zh_ratios)}, "arm_specs": specs}))
        land = {"command": "landscape 32 zh", "config": {"lang": "zh", "steps": 32, "dev": 300},
                "seeds": [{"seed": 0, "ratios": zh_ratios, "grid_dev_loss": [0.6 + (r - 0.5) ** 2 for r in zh_ratios]}]}
        (folder / "ratio_landscape_default_regret32_zh.json").write_text(json.dumps(land))
    levers = {"entries": [{"tag": "lever", "lang": "ar", "seed": 1, "learned": 0.4},
                          {"tag": "lever", "lang": "ar", "seed": 0, "learned": 0.0}]}
    (folder / "probe_levers.json").write_text(json.dumps(levers))


def _write_redraw(folder: Path, *, m: float = 0.6, dev: int = 300, ratios=RATIOS) -> list[float]:
    """Arabic seed 0's 32-step grid measured again at ratios moved by 1e-7: its minimum at ``m``, not 0.45."""
    again = _quad(m, 0.5)
    doc = {"command": "redraw 32", "config": {"lang": "ar", "steps": 32, "dev": dev, "p_min": 1e-7, "p_max": 0.9000001},
           "seeds": [{"seed": 0, "ratios": [r + 1e-7 for r in ratios], "grid_dev_loss": again}]}
    (folder / "ratio_landscape_default_regret32_jit.json").write_text(json.dumps(doc))
    return again


def test_on_trend_and_trend_min_are_the_regret_reports_measures():
    import numpy as np

    rng = np.random.default_rng(3)
    for _ in range(5):
        curve = list(zip(RATIOS, (0.7 + 0.05 * rng.standard_normal(8)).tolist()))
        rough = analysis.curve_roughness(curve, 0.33)
        assert yardstick.on_trend(curve, 0.33) == pytest.approx(rough["smoothed_fraction"])
        assert yardstick.trend_min(curve) == pytest.approx(rough["oracle_ratio"])
    assert yardstick.on_trend(list(zip(RATIOS, _quad(0.2))), 0.5) == pytest.approx(0.09 / 0.49, abs=1e-4)


def test_the_yardstick_read_against_other_seeds_and_lengths(tmp_path):
    _write3(tmp_path, zh_ratios=None)
    rows = yardstick.collect(tmp_path)
    rep = {r["seed"]: r for r in yardstick.reproducibility(rows)}
    d = 0.9 - 0.2  # seed 0's 64-step trend: 0 at 0.2, 1 at 0.9
    assert rep[0]["long"]["other_seeds"] == [pytest.approx(0.1 ** 2 / d ** 2, abs=1e-3), pytest.approx(0.5 ** 2 / d ** 2, abs=1e-3)]
    assert rep[0]["long"]["other_length"] == pytest.approx(0.25 ** 2 / d ** 2, abs=1e-3)  # the 32-step minimum, 0.45
    # the other seeds' mean curve bends at the mean of their minima (equal curvatures): 0.5
    assert rep[0]["long"]["pooled_ratio"] == pytest.approx(0.5, abs=1e-3)
    assert rep[0]["long"]["pooled"] == pytest.approx(0.3 ** 2 / d ** 2, abs=1e-3)
    assert rep[2]["long"]["pooled_ratio"] == pytest.approx(0.25, abs=1e-3)
    assert rep[1]["short"]["other_seeds"] == [pytest.approx(0.0, abs=1e-5)] * 2  # same minimum, other heights
    fixed = yardstick.fixed_ratios(rows)
    assert [n for _, n in fixed["long"]] == [1, 2, 2, 2, 1, 1, 1, 1]
    assert [n for _, n in fixed["short"]] == [0, 0, 0, 3, 3, 0, 0, 0]
    s = yardstick.repro_summary(rows, tmp_path)
    assert s["other_seeds"] == {"long": (2, 6), "short": (6, 6)} and s["other_length"] == {"long": 1, "short": 0}
    assert s["best_fixed"] == {"long": 2, "short": 3} and s["grpo_within"] == {"long": 1, "short": 2}
    assert s["redraws"] == 0 and "measured twice" not in yardstick.report(rows, tmp_path)


def test_a_grid_measured_twice(tmp_path):
    _write3(tmp_path, zh_ratios=None)
    rows = yardstick.collect(tmp_path)
    again = _write_redraw(tmp_path)
    a = yardstick.redraws(rows, tmp_path)[("ar", 0)]
    assert a["trend_min"] == pytest.approx(0.6, abs=1e-3) and a["best"] == pytest.approx(RATIOS[5])
    assert a["first_on_again"] == pytest.approx(0.15 ** 2 / 0.6 ** 2, abs=1e-3)  # 0.45 on the re-draw's trend
    assert a["again_on_first"] == pytest.approx(0.15 ** 2 / 0.45 ** 2, abs=1e-3)  # 0.6 on the first's
    assert a["learned_on_again"] == pytest.approx(0.2 ** 2 / 0.6 ** 2, abs=1e-3)  # GRPO's 0.4
    first = _quad(SHORT_MIN, 0.5)
    import numpy as np
    assert a["point_sd"] == pytest.approx(float(np.sqrt(np.mean((np.array(first) - again) ** 2) / 2)))
    assert a["same_points"] == 0 and a["max_diff"] == pytest.approx(max(abs(x - y) for x, y in zip(first, again)))
    # issue 12's raw regret of each draw's best point on the other draw
    raw = lambda curve, i: (curve[i] - min(curve)) / (max(curve) - min(curve))  # noqa: E731
    assert a["raw_again_on_first"] == pytest.approx(raw(first, 5))
    assert a["raw_first_on_again"] == pytest.approx(raw(again, first.index(min(first))))
    assert a["raw_first_on_again"] > 0.1 and a["raw_again_on_first"] > 0.1  # 12 % and 17 %: both miss
    md = yardstick.report(rows, tmp_path)
    assert "`redraw 32`" in md and "| ar 0 | 0.643, 0.600, " in md and "| 6% | 11% | 11% (" in md
    s = yardstick.repro_summary(rows, tmp_path)
    assert (s["redraws"], s["redraw_within"]) == (1, 1)
    assert "on its own re-draw's trend in 1 of 1 parts" in md
    assert (s["redraw_raw_within"], s["redraw_raw_worst"]) == (0, pytest.approx(a["raw_again_on_first"]))
    assert (f"| {a['raw_again_on_first']:.0%}; {a['raw_first_on_again']:.0%} |" in md
            and "scored on the other draw is within it in 0 of 2 cases (worst 17%)" in md)
    _write_redraw(tmp_path, m=0.8)
    assert yardstick.repro_summary(rows, tmp_path)["redraw_within"] == 0  # 0.45 on a trend bent at 0.8: 28 %
    _write_redraw(tmp_path, dev=64)
    with pytest.raises(SystemExit, match=r"ar seed 0: the re-draw \(ratio_landscape_default_regret32_jit.json\) has dev=64, "
                                         "the 32-step grid 300"):
        yardstick.redraws(rows, tmp_path)
    _write_redraw(tmp_path, ratios=[r / 2 for r in RATIOS])
    with pytest.raises(SystemExit, match=r"ar seed 0: the re-draw \(ratio_landscape_default_regret32_jit.json\) does not share"):
        yardstick.redraws(rows, tmp_path)


def test_the_expected_landscape(tmp_path):
    _write3(tmp_path)
    rows = yardstick.collect(tmp_path)
    exp = yardstick.expected(rows, tmp_path)
    assert exp["curves"]["ar", "long"]["trend_min"] == pytest.approx(0.4, abs=1e-3)  # the mean of 0.2, 0.3, 0.7
    assert exp["curves"]["ar", "short"]["trend_min"] == pytest.approx(0.45, abs=1e-3)
    assert exp["curves"]["zh", "long"]["seeds"] == 1
    grpo = exp["learned"]["GRPO (committed)"]
    assert [(e["lang"], e["seed"], e["learned"]) for e in grpo] == [("ar", 0, 0.4), ("ar", 1, 0.9), ("ar", 2, 0.45), ("zh", 0, 0.5)]
    assert [e["long"] for e in grpo[:3]] == [pytest.approx(0.0, abs=1e-4), pytest.approx(1.0), pytest.approx(0.01, abs=1e-3)]
    assert exp["learned"]["fixed 0.00"][0]["long"] == pytest.approx(0.64, abs=1e-3)
    lever = exp["learned"]["lever"]  # the probe levers' screens, sorted by part
    assert [(e["seed"], e["learned"]) for e in lever] == [(0, 0.0), (1, 0.4)]
    s = yardstick.repro_summary(rows, tmp_path)
    assert s["expected"] == {"ar": {"n": 3, "long": 2, "short": 2}, "zh": {"n": 1, "long": 1, "short": 1}}
    assert s["expected_by"]["lever"]["ar"] == {"n": 2, "long": 1, "short": 1}
    assert "| lever | 2 | 1 of 2; 1 | - |" in yardstick.report(rows, tmp_path)


def test_parts_compared_ratio_by_ratio_must_share_their_ratios(tmp_path):
    _write3(tmp_path, zh_ratios=[0.1 * i for i in range(8)])
    with pytest.raises(SystemExit, match="zh seed 0: its grid's ratios differ from ar seed 0's"):
        yardstick.collect(tmp_path)


