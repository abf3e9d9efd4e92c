"""benchmarks/controllers.py on a tiny configuration: two scenarios, two seeds, a 12-probe budget (a few seconds)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import controllers  # noqa: E402

CONTROLLERS = ["grid", "random", "grpo"]
SCENARIOS = ["peaked 0.37 n0.01", "2-D (0.3; 0.7) n0.01"]
BUDGET, GROUP = 12, 3


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("controllers")
    code = controllers.main(["--seeds", "2", "--budget", str(BUDGET), "--group-size", str(GROUP),
                             "--controllers", ",".join(CONTROLLERS), "--scenarios", ",".join(SCENARIOS),
                             "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "controllers.json").read_text())
    doc["_md"] = (out / "controllers.md").read_text()
    doc["runs"] = controllers.unpack_runs(doc["runs"])  # stored as a table: one row per run
    return doc


def test_every_controller_scenario_and_seed_is_one_run(result):
    assert result["seeds"] == [0, 1] and result["budget"] == BUDGET and result["group_size"] == GROUP
    assert [s["name"] for s in result["scenarios"]] == SCENARIOS
    runs = result["runs"]
    assert sorted((r["scenario"], r["controller"], r["seed"]) for r in runs) == sorted(
        (s, c, seed) for s in SCENARIOS for c in CONTROLLERS for seed in (0, 1))
    for r in runs:
        dim = 2 if r["scenario"].startswith("2-D") else 1
        assert len(r["learned"]) == len(r["optimum_end"]) == dim
        assert all(0.0 <= v <= 1.0 for v in r["learned"])
        assert 0 < r["probes"] <= BUDGET
        # the recorded distance and reward are the landscape's at the learned value (peaked, width 0.15)
        d = math.dist(r["learned"], r["optimum_end"])
        assert r["distance"] == pytest.approx(d)
        assert r["true_reward"] == pytest.approx(math.exp(-0.5 * (d / 0.15) ** 2))


def test_the_grid_lands_where_its_points_put_it(result):
    # 1-D: k = 8 points i/7 over [0, 1]; the one nearest 0.37 is 3/7 (its reward beats 2/7's by 0.07, noise 0.01)
    # 2-D: a 12-probe budget pays for floor(sqrt(12)) = 3 points per axis {0, 0.5, 1}; the best is (0.5, 0.5)
    grid = {(r["scenario"], r["seed"]): r for r in result["runs"] if r["controller"] == "grid"}
    for seed in (0, 1):
        one, two = grid[(SCENARIOS[0], seed)], grid[(SCENARIOS[1], seed)]
        assert one["learned"] == pytest.approx([3 / 7]) and one["distance"] == pytest.approx(3 / 7 - 0.37)
        assert one["probes"] == 8
        assert two["learned"] == pytest.approx([0.5, 0.5]) and two["distance"] == pytest.approx(math.sqrt(0.08))
        assert two["probes"] == 9


def test_summary_rows_agree_with_the_runs(result):
    rows = {(r["scenario"], r["controller"]): r for r in result["summary"]}
    assert set(rows) == {(s, c) for s in SCENARIOS for c in CONTROLLERS}
    for (scenario, ctrl), row in rows.items():
        runs = [r for r in result["runs"] if r["scenario"] == scenario and r["controller"] == ctrl]
        dists = sorted(r["distance"] for r in runs)
        assert row["n"] == 2
        assert row["dist_median"] == pytest.approx(sum(dists) / 2)
        assert row["dist_q25"] <= row["dist_median"] <= row["dist_q75"]
        assert row["success"] == sum(d <= controllers.SUCCESS for d in dists) / 2
        assert row["probes_max"] == max(r["probes"] for r in runs)
    assert rows[(SCENARIOS[0], "grid")]["success"] == 0.0  # 3/7 is 0.059 away, over the 0.02 threshold
    totals = {t["controller"]: t for t in result["overall"]}
    assert set(totals) == set(CONTROLLERS) and all(t["runs"] == 4 for t in totals.values())
    assert totals["grpo"]["time_vs_grpo"] == pytest.approx(1.0)
    assert "| grid | 4 |" in result["_md"] and "## Per scenario" in result["_md"]


def test_time_is_relative_to_grpo_and_absent_without_it():
    runs = [{"controller": c, "scenario": "s", "seed": 0, "distance": dist, "true_reward": 1.0, "probes": 4,
             "wall_s": w, "process": "main"} for c, dist, w in (("grpo", 0.01, 2.0), ("grid", 0.03, 1.0))]
    (grpo, grid) = controllers.summarise(runs, ["grpo", "grid"], ["s"])
    assert grid["time_vs_grpo"] == pytest.approx(0.5) and (grpo["success"], grid["success"]) == (1.0, 0.0)
    assert controllers.overall(runs[1:], ["grid"])[0]["time_vs_grpo"] is None


def test_a_part_rerun_replaces_only_its_controllers_in_the_results(tmp_path):
    """--merge keeps the runs of controllers no part re-ran, and every command that made them."""
    common = ["--seeds", "2", "--budget", str(BUDGET), "--group-size", str(GROUP), "--scenarios", SCENARIOS[0],
              "--out", str(tmp_path)]
    assert controllers.main([*common, "--controllers", "random", "--part", "a"]) == 0
    assert controllers.main([*common, "--controllers", "grpo", "--part", "b"]) == 0
    assert controllers.main(["--merge", "--out", str(tmp_path)]) == 0
    first = json.loads((tmp_path / "controllers.json").read_text())
    (tmp_path / "parts" / "controllers-a.json").unlink()  # parts are not kept: the results are the record
    assert controllers.main([*common, "--controllers", "grpo,grid", "--part", "c"]) == 0
    (tmp_path / "parts" / "controllers-b.json").unlink()
    assert controllers.main(["--merge", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "controllers.json").read_text())
    runs = controllers.unpack_runs(doc["runs"])
    assert sorted({r["controller"] for r in runs}) == ["grid", "grpo", "random"]
    assert len(runs) == 3 * 2  # one scenario, two seeds: grpo's runs replaced, not doubled
    old_random = [r for r in controllers.unpack_runs(first["runs"]) if r["controller"] == "random"]
    assert [r for r in runs if r["controller"] == "random"] == old_random
    times = {t["controller"]: t["time_vs_grpo"] for t in doc["overall"]}
    assert times["grpo"] == 1.0 and times["grid"] > 0  # run side by side in part c
    assert times["random"] is None  # part a ran at another time: its wall time does not compare
    assert sum("--part a" in c for c in doc["commands"]) == 1 and any("--part c" in c for c in doc["commands"])
    assert [("--merge" in c.split()) for c in doc["commands"]] == [False] * 3 + [True]  # one merge: the last
    # part c run again with another option: its new command replaces the old one
    assert controllers.main([*common, "--controllers", "grpo,grid", "--part", "c", "--threads", "1"]) == 0
    assert controllers.main(["--merge", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "controllers.json").read_text())
    assert [c for c in doc["commands"] if "--part c" in c] == [next(c for c in doc["commands"] if "--threads 1" in c)]
    assert controllers.part_name("python benchmarks/controllers.py --part x --seeds 3") == "x"
    assert controllers.part_name("python benchmarks/controllers.py --merge") is None


def test_a_grpo_variant_is_named_by_its_settings(tmp_path):
    """``grpo[key=value;...]`` runs GRPO with those settings; an ablation's name keeps its settings;
    a malformed or unknown setting stops the benchmark before any run, in one line."""
    from hpctl.envs import make_landscape_env

    assert controllers.variant_settings("grpo") == {}
    assert controllers.variant_settings("grpo[trend=none]") == controllers.ABLATIONS["trend=none"]
    assert controllers.variant_settings("grpo[policy_lr_sigma=0.4; epochs=5]") == {"policy_lr_sigma": "0.4", "epochs": "5"}
    ctrl = controllers.make_controller("grpo[policy_lr_sigma=0.4;epochs=5]", make_landscape_env(group_size=3), 0)
    assert ctrl.config.policy_lr_sigma == 0.4 and ctrl.config.epochs == 5
    for bad, says in (("grpo[policy_lr_sigma]", "key=value"), ("grpo[no_such=1]", "no_such"), ("grpo[epochs=x]", "epochs")):
        with pytest.raises(SystemExit) as exc:
            controllers.main(["--seeds", "1", "--controllers", bad, "--out", str(tmp_path)])
        assert says in str(exc.value) and "\n" not in str(exc.value)
    assert not any(tmp_path.iterdir())


