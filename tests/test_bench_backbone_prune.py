"""benchmarks/backbone_prune.py: the landscape-vs-recovery measures on constructed landscapes, the
merge over seeds on synthetic parts, and one smoke part end to end on the tiny backbone."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import backbone_prune as bench  # noqa: E402


def _grid(curve):
    """Grid points from (sparsity, reward, loss ratio) triples (dense dev loss 2)."""
    return [{"sparsity": s, "dev_reward": r, "dev_loss": 2.0 * q, "dense_dev_loss": 2.0} for s, r, q in curve]


def _probe(step, s, reward, ratio):
    return {"step": step, "sparsity": s, "reward": reward, "loss": 3.0 * ratio, "ref_loss": 3.0}


def test_spearman_and_ranks_with_ties():
    assert bench.rankdata([3, 1, 2, 1]).tolist() == [4.0, 1.5, 3.0, 1.5]
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2], [1, 2]) is None  # too few pairs
    assert bench.spearman([1, 2, 3], [5, 5, 5]) is None  # a constant side has no ranking
    x, y = [0.1, 0.4, 0.2, 0.9, 0.5], [1.0, 3.0, 2.0, 4.0, 2.5]
    d = bench.rankdata(x) - bench.rankdata(y)
    assert bench.spearman(x, y) == pytest.approx(1 - 6 * np.sum(d ** 2) / (5 * (25 - 1)))


def test_the_fitted_peak_is_a_quadratics_vertex_or_the_better_end():
    xs = [0.1, 0.3, 0.5, 0.7]
    assert bench.fitted_peak(xs, [-(x - 0.42) ** 2 for x in xs]) == pytest.approx(0.42)
    assert bench.fitted_peak(xs, [x for x in xs]) == pytest.approx(0.7)  # monotone: the upper end
    assert bench.fitted_peak(xs, [(x - 0.35) ** 2 for x in xs]) == pytest.approx(0.7)  # convex: the better end (at 0.4 the two ends tie)
    assert bench.fitted_peak([0.2, 0.2], [1.0, 2.0]) is None


def test_landscape_against_recovery_on_a_constructed_example():
    # the grid's final curve peaks at 0.6 (reward) and its loss ratio rises with the sparsity
    grid = _grid([(0.0, 0.0, 1.0), (0.3, 0.3, 1.01), (0.6, 0.6, 1.04), (0.9, 0.2, 1.2)])
    early = [_probe(0, s, r, q) for s, r, q in [(0.1, 0.9, 1.3), (0.3, 0.5, 1.2), (0.45, 0.2, 1.0)]]  # reversed
    late = [_probe(4, s, -(s - 0.6) ** 2, 1 + s ** 2) for s in (0.2, 0.4, 0.55, 0.7, 0.85)]  # as the grid
    rounds = bench.rounds_of(early + late)  # no history: grouped by training step
    assert [len(r) for r in rounds] == [3, 5]
    out = bench.landscape_vs_recovery(rounds, grid)
    assert [r["step"] for r in out] == [0, 4]
    assert out[0]["spearman_reward"] == pytest.approx(-1.0)
    assert out[0]["spearman_loss_ratio"] == pytest.approx(-1.0)
    assert out[1]["spearman_reward"] == pytest.approx(1.0)  # interpolated: 0.2, 0.4, 0.55, 0.47, 0.27
    assert out[1]["spearman_loss_ratio"] == pytest.approx(1.0)
    assert out[0]["best_probe"] == 0.1 and out[1]["best_probe"] == 0.55
    assert out[1]["fitted_peak"] == pytest.approx(0.6)
    assert out[1]["grid_best"] == 0.6 and out[1]["peak_minus_grid"] == pytest.approx(0.0)
    assert out[0]["crossing"] is None and out[0]["grid_crossing"] is None  # no tolerance given
    # at tolerance 5 %: the grid crosses between 0.6 (1.04) and 0.9 (1.2); the late round between 0.2 (1.04)
    # and 0.4 (1.16); the early round's lowest probe already exceeds it
    tol = bench.landscape_vs_recovery(rounds, grid, 0.05)
    assert tol[0]["grid_crossing"] == pytest.approx(0.6 + 0.3 * 0.01 / 0.16)
    assert tol[1]["crossing"] == pytest.approx(0.2 + 0.2 * 0.01 / 0.12)
    assert tol[0]["crossing"] == 0.1
    assert bench.crossing([0.1, 0.5], [1.0, 1.01], 0.05) is None  # never exceeds it


def test_rounds_come_from_the_history_when_it_matches_the_probes():
    probes = [_probe(0, s, s, 1.0) for s in (0.1, 0.2, 0.3, 0.4)]
    history = [{"event": "reset"}] + [{"event": "probe", "round": r} for r in (0, 0, 1, 1)]
    assert [len(r) for r in bench.rounds_of(probes, history)] == [2, 2]
    assert [len(r) for r in bench.rounds_of(probes, history[:3])] == [4]  # no match: by step


def _part(seed, grid_choice, arms, grid_wall=100.0):
    """A synthetic part: the grid's choice and per controller (sparsity, dev reward, loss ratio, wall s)."""

    def scored(s, r, q):
        return {"sparsity": s, "dev_reward": r, "dev_loss": 2.0 * q, "dense_dev_loss": 2.0, "loss_ratio": q,
                "within_tolerance": q - 1 <= 0.05}

    controllers = {}
    for name, spec in arms.items():
        if spec is None:
            controllers[name] = {"error": "could not run"}
            continue
        s, r, q, wall = spec
        controllers[name] = {"dev": scored(s, r, q), "wall_s": wall, "time_ratio_grid_over_run": grid_wall / wall,
                             "time_ratio_to_adapter": grid_wall / (wall - 5.0),
                             "landscape": [{"round": 0, "step": 0, "probes": 4, "spearman_reward": 0.1 * seed,
                                            "spearman_loss_ratio": None, "best_probe": s, "fitted_peak": s,
                                            "grid_best": grid_choice[0]},
                                           {"round": 1, "step": 2, "probes": 4, "spearman_reward": 0.5 + 0.1 * seed,
                                            "spearman_loss_ratio": 0.2, "best_probe": s, "fitted_peak": None,
                                            "grid_best": grid_choice[0], "crossing": 0.1 * (seed + 1),
                                            "grid_crossing": 0.2 + 0.1 * seed}]}
    return {"seed": seed, "preset": "smoke", "set": {}, "grid_points": 8, "budget": 20, "tolerance": 0.05,
            "objective": "tolerance", "dev_size": 64, "backbone": "tiny", "grid_wall_s": grid_wall,
            "grid_choice": {**scored(*grid_choice), "value": {"sparsity": grid_choice[0]}},
            "grid": [], "controllers": controllers}


def test_merge_takes_medians_worst_seeds_tolerance_counts_and_time_ratios(tmp_path):
    parts = [
        _part(2, (0.6, 0.6, 1.045), {"grpo": (0.5, 0.5, 1.02, 25.0), "tpe": None}),
        _part(0, (0.7, 0.7, 1.04), {"grpo": (0.8, 0.2, 1.45, 50.0), "tpe": (0.6, 0.6, 1.03, 20.0)}),
        _part(1, (0.5, 0.5, 1.01), {"grpo": (0.6, 0.55, 1.06, 20.0), "tpe": (0.4, 0.4, 1.0, 40.0)}),
    ]
    doc = bench.merge(parts)
    assert doc["seeds"] == [0, 1, 2]
    g, p, t = doc["arms"]["grid"], doc["arms"]["grpo"], doc["arms"]["tpe"]
    assert g["median"]["sparsity"] == 0.6 and g["within_tolerance"] == 3 and g["worst"]["seed"] == 1
    assert p["median"]["sparsity"] == 0.6 and p["median"]["dev_reward"] == 0.5
    assert p["median"]["dev_loss"] == pytest.approx(2.12)
    assert p["worst"] == {"seed": 0, "sparsity": 0.8, "dev_reward": 0.2, "dev_loss": 2.9, "loss_ratio": 1.45}
    assert p["within_tolerance"] == 1  # 1.02 only (1.06 and 1.45 exceed 5 %)
    assert p["time_ratio"] == {"median": 4.0, "min": 2.0, "max": 5.0}
    # the same less 5 s of test scoring each: 100 / 20, 100 / 45, 100 / 15
    assert p["time_ratio_to_adapter"] == {"median": pytest.approx(5.0), "min": pytest.approx(100 / 45),
                                          "max": pytest.approx(100 / 15)}
    assert p["reward_below_grid"]["median"] == pytest.approx(0.1) and p["reward_below_grid"]["worst"] == pytest.approx(0.5)
    assert p["spearman_first_round"] == pytest.approx(0.1) and p["spearman_last_round"] == pytest.approx(0.6)
    assert p["crossing_last_round"] == pytest.approx(0.2) and p["grid_crossing"] == pytest.approx(0.3)
    assert t["seeds"] == [0, 1] and t["errors"] == [{"seed": 2, "error": "could not run"}]
    assert t["median"]["sparsity"] == pytest.approx(0.5) and t["within_tolerance"] == 2
    with pytest.raises(SystemExit):
        bench.merge([parts[0], parts[0]])  # a seed twice
    with pytest.raises(SystemExit, match="seed 2 has 0 of its 8 grid points"):
        bench.merge([{k: v for k, v in parts[0].items() if k != "grid_choice"}])  # an interrupted part
    # the report renders from the JSON alone: a row per arm, a row per (seed, arm) that ran, a plot per seed
    md = bench.render(json.loads(json.dumps(doc)))
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert sum(line.startswith("| grpo |") for line in rows) == 1
    assert sum(line.startswith(("| 0 |", "| 1 |", "| 2 |")) and " grid (" in line for line in rows) == 3
    assert md.count("](backbone_prune_seed") == 3


def test_the_docs_summary_quotes_the_time_to_the_adapter(tmp_path, monkeypatch):
    from benchmarks import pages

    doc = bench.merge([_part(0, (0.7, 0.7, 1.04), {"grpo": (0.6, 0.6, 1.03, 25.0)}),
                       _part(1, (0.5, 0.5, 1.01), {"grpo": (0.5, 0.5, 1.02, 45.0)})])
    (tmp_path / pages.BACKBONE_PRUNE).write_text(json.dumps(doc))
    monkeypatch.setattr(pages, "RESULTS", tmp_path)
    text = pages.backbone_prune_summary()
    grpo = [line for line in text.splitlines() if line.startswith("- grpo:")]
    to_adapter, as_run = (100 / 20 + 100 / 40) / 2, (100 / 25 + 100 / 45) / 2
    assert len(grpo) == 1 and f"{to_adapter:.2f}x" in grpo[0] and f"{as_run:.2f}x" not in grpo[0]


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_a_smoke_part_end_to_end_then_the_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "parts"
    part = bench.compare("smoke", 0, ["grpo", "random"], 3, 12, out, {"dev": 6}, rescore=True)
    assert (out / "part-seed0.json").is_file() and (out / "part-seed0.png").stat().st_size > 0
    assert json.loads((out / "part-seed0.json").read_text())["grid_choice"] == part["grid_choice"]
    s = [g["sparsity"] for g in part["grid"]]
    assert len(s) == 3 and s == sorted(s) and s[0] == 0.0
    assert part["grid_choice"]["dev_reward"] == max(g["dev_reward"] for g in part["grid"])
    assert part["dev_size"] == 6
    for name, arm in part["controllers"].items():
        result = json.loads((tmp_path / "parts" / "runs" / f"seed0-{name}" / "result.json").read_text())
        assert arm["budget"] == 12 and sum(len(r) for r in arm["probes_record"]) == result["probes"]
        assert len(arm["landscape"]) == len(arm["probes_record"])
        assert arm["time_ratio_grid_over_run"] == pytest.approx(part["grid_wall_s"] / arm["wall_s"])
        # the run's recovery is the grid's fine-tune at the learned sparsity: scored alike, the same numbers
        for k in ("sparsity", "dev_reward", "dev_loss", "dense_dev_loss"):
            assert arm["rescored"][k] == pytest.approx(arm["dev"][k], rel=1e-6), (name, k)
    assert part["controllers"]["grpo"]["landscape"][-1]["step"] > 0  # rounds at later training states
    # a second call with the same settings reuses the finished arms and grid
    again = bench.compare("smoke", 0, ["grpo", "random"], 3, 12, out, {"dev": 6}, rescore=True)
    assert again["controllers"]["grpo"]["wall_s"] == part["controllers"]["grpo"]["wall_s"]
    assert again["grid_wall_s"] == part["grid_wall_s"]
    # the grid pays its dense reference once, then one dev pass a point (no second pass to read the loss)
    assert part["grid_wall_s"] == pytest.approx(part["grid_reference_s"] + sum(g["wall_s"] for g in part["grid"]))
    assert part["grid_phases"]["score_dev_s"] > 0 and part["grid_phases"].get("dense_reference_s", 0.0) == 0.0
    for name, arm in part["controllers"].items():  # time to the adapter: the run less its test scoring
        assert 0 < arm["phases"]["test_scoring_s"] and arm["adapter_s"] == pytest.approx(
            arm["wall_s"] - arm["phases"]["test_scoring_s"])
    # a grid killed after its first point resumes at the second, with the same numbers
    cut = json.loads((out / "part-seed0.json").read_text())
    cut["grid"] = cut["grid"][:1]
    for k in ("grid_choice", "grid_wall_s"):
        cut.pop(k)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "part-seed0.json").write_text(json.dumps(cut))
    with pytest.raises(SystemExit, match="1 of its 3 grid points"):
        bench.merge_parts(tmp_path / "cut", tmp_path / "cut.json")
    resumed = bench.compare("smoke", 0, ["grpo", "random"], 3, 12, tmp_path / "cut", {"dev": 6})
    assert resumed["grid"][0] == part["grid"][0] and len(resumed["grid"]) == 3
    for a, b in zip(resumed["grid"][1:], part["grid"][1:]):
        assert a["value"] == b["value"] and a["dev_loss"] == pytest.approx(b["dev_loss"], rel=1e-6)
    assert resumed["grid_choice"]["value"] == part["grid_choice"]["value"]
    doc = bench.merge_parts(out, tmp_path / "res" / "backbone_prune.json")
    assert set(doc["arms"]) == {"grid", "grpo", "random"}
    assert (tmp_path / "res" / "backbone_prune_seed0.png").is_file()
    assert (tmp_path / "res" / "backbone_prune.md").read_text() == bench.render(
        json.loads((tmp_path / "res" / "backbone_prune.json").read_text()))
