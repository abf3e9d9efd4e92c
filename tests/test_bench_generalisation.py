"""benchmarks/generalisation.py on a tiny subset: two families, two seeds, cheap controllers (seconds).
The measured values are not checked: the summary math, the targets, the merge and the report are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import generalisation as gen  # noqa: E402
from benchmarks.controllers import make_env  # noqa: E402

ROWS = ["grpo", "random", "grid", "grid8"]
FAMILIES = ["skewed", "budget 12, groups of 3"]
SEEDS = [3000, 3001]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generalisation")
    assert gen.main(["--seeds", "3000-3001", "--controllers", ",".join(ROWS), "--families", ",".join(FAMILIES),
                     "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def doc(out) -> dict:
    return gen.load(out / "generalisation.json")


def _family(name: str) -> gen.Family:
    return next(f for f in gen.FAMILIES if f.name == name)


def test_the_families_are_well_formed():
    names = [s.name for f in gen.FAMILIES for s in f.scenarios]
    assert len(names) == len(set(names))  # a scenario names one landscape
    assert len({f.name for f in gen.FAMILIES}) == len(gen.FAMILIES)
    for f in gen.FAMILIES:
        assert 3 <= len(f.scenarios) <= 10
        for s in f.scenarios:
            env = make_env(s, f.budget, f.group_size)  # every landscape builds
            assert np.all(env.current == s.start)
    assert gen.controller_for("grid", 20) == "grid[k=20]" and gen.controller_for("grid8", 20) == "grid[k=8]"
    with pytest.raises(SystemExit, match="unknown row"):
        gen.controller_for("gird", 20)


def test_every_row_scenario_and_seed_is_one_run_at_its_familys_budget(doc):
    want = sorted((s.name, c, seed) for name in FAMILIES for s in _family(name).scenarios for c in ROWS for seed in SEEDS)
    assert sorted((r["scenario"], r["controller"], r["seed"]) for r in doc["runs"]) == want
    budget = {s.name: f.budget for f in gen.FAMILIES for s in f.scenarios}
    for r in doc["runs"]:
        b = budget[r["scenario"]]
        expected = {"grid": b, "grid8": 8, "random": b}.get(r["controller"])
        assert r["probes"] == expected if expected is not None else 0 < r["probes"] <= b


def test_family_summaries_are_the_statistics_of_their_runs(doc):
    fam = gen.family_of()
    assert {r["scenario"] for r in doc["summary"]} == set(FAMILIES)
    for row in doc["summary"]:
        dist = [r["distance"] for r in doc["runs"] if fam[r["scenario"]] == row["scenario"]
                and r["controller"] == row["controller"]]
        assert row["n"] == len(dist) == len(_family(row["scenario"]).scenarios) * len(SEEDS)
        assert row["dist_median"] == pytest.approx(np.median(dist), rel=1e-6)
        assert row["dist_p90"] == pytest.approx(np.percentile(dist, 90), rel=1e-6)
        assert row["trapped"] == pytest.approx(np.mean(np.asarray(dist) > 0.1))
    for s in doc["signed"]:
        d = [r["learned"][0] - r["optimum_end"][0] for r in doc["runs"]
             if fam[r["scenario"]] == s["family"] and r["controller"] == s["controller"]]
        assert s["signed_median"] == pytest.approx(np.median(d), abs=1e-7)
        assert s["above"] == pytest.approx(np.mean(np.asarray(d) > 0))
    assert len(doc["signed"]) == len(doc["summary"])  # both families are 1-D
    for row in doc["scenario_summary"]:
        dist = [r["distance"] for r in doc["runs"] if r["scenario"] == row["scenario"] and r["controller"] == row["controller"]]
        assert row["n"] == len(SEEDS) and row["dist_median"] == pytest.approx(np.median(dist), rel=1e-6)


def test_the_targets_follow_from_the_family_rows(doc):
    assert [t["family"] for t in doc["targets"]] == FAMILIES
    for t in doc["targets"]:
        rows = {r["controller"]: r for r in doc["summary"] if r["scenario"] == t["family"]}
        others = [c for c in rows if c != "grpo"]
        assert t["best_other_median"] == pytest.approx(min(rows[c]["dist_median"] for c in others))
        assert t["median_met"] == (rows["grpo"]["dist_median"] <= t["best_other_median"])
        assert t["trapped_met"] == (rows["grpo"]["trapped"] <= rows["random"]["trapped"] + 0.01 + 1e-12)
    v = doc["verdict"]
    assert v["median_met"] == sum(t["median_met"] for t in doc["targets"])
    assert v["median_target"] == (v["median_met"] >= 0.8 * len(FAMILIES))
    assert v["trapped_target"] == all(t["trapped_met"] for t in doc["targets"])


def _row(family: str, controller: str, median: float, trapped: float = 0.0) -> dict:
    return {"scenario": family, "controller": controller, "dist_median": median, "trapped": trapped}


def test_grpo_variants_are_not_the_other_controller_and_one_point_of_trapping_is_allowed():
    rows = [_row("skewed", "grpo", 0.03, 0.05), _row("skewed", "grpo[paper]", 0.01),
            _row("skewed", "random", 0.04, 0.04), _row("skewed", "tpe", 0.05)]
    (t,) = gen.targets(rows)
    assert t["best_other"] == "random" and t["median_met"] is True and t["trapped_met"] is True
    (t,) = gen.targets([{**r, "trapped": 0.06} if r["controller"] == "grpo" else r for r in rows])
    assert t["trapped_met"] is False


def test_the_best_at_a_budget_is_the_lowest_mean_rank_with_ties_sharing_it():
    # two 64-probe families: grpo best in one, tied with tpe in the other
    rows = [_row("skewed", "grpo", 0.01), _row("skewed", "tpe", 0.02), _row("skewed", "random", 0.03),
            _row("cliff", "grpo", 0.02), _row("cliff", "tpe", 0.02), _row("cliff", "random", 0.01)]
    (b,) = gen.best_at_budgets(rows, ["grpo", "tpe", "random"])
    assert (b["budget"], b["group_size"], b["families"]) == (64, 8, 2) and "synthetic" in b["plugins"]
    ranks = {r["controller"]: r for r in b["ranking"]}
    assert ranks["grpo"]["mean_rank"] == pytest.approx((1 + 2.5) / 2) and ranks["grpo"]["wins"] == 1
    assert ranks["tpe"]["mean_rank"] == pytest.approx((2 + 2.5) / 2) and ranks["random"]["mean_rank"] == 2.0
    assert b["best"] == "grpo"


def test_the_report_is_rendered_from_the_json_alone(out, doc):
    md = (out / "generalisation.md").read_text()
    assert gen.markdown(json.loads((out / "generalisation.json").read_text())) == md
    # one targets row per family, one per-family table row per controller, one per-landscape row per landscape
    targets = [line for line in md.splitlines() if any(line.startswith(f"| {f} |") for f in FAMILIES)]
    assert len(targets) == len(FAMILIES)
    body = md.split("## Per family")[1].split("## Per landscape")
    assert sum(line.startswith(tuple(f"| {c} |" for c in ROWS)) for line in body[0].splitlines()) == \
        len(ROWS) * len(FAMILIES)
    scen = [s.name for name in FAMILIES for s in _family(name).scenarios]
    assert [line.split(" | ")[0][2:] for line in body[1].splitlines() if line.startswith("| ") and "---" not in line][1:] == scen
    assert gen.summary(doc).count("\n- ") >= 2


def test_parts_merge_into_the_same_summaries(out, doc, tmp_path):
    for name, rows in (("a", "grpo,random"), ("b", "grid,grid8")):
        assert gen.main(["--seeds", "3000-3001", "--controllers", rows, "--families", ",".join(FAMILIES),
                         "--out", str(tmp_path), "--part", name]) == 0
    assert gen.main(["--merge", "--out", str(tmp_path)]) == 0
    merged = gen.load(tmp_path / "generalisation.json")
    assert merged["controllers"] == doc["controllers"] and merged["seeds"] == SEEDS
    keys = ("scenario", "controller", "n", "trapped", "probes_median")
    assert [{k: r[k] for k in keys} for r in merged["summary"]] == [{k: r[k] for k in keys} for r in doc["summary"]]
    for a, b in zip(merged["summary"], doc["summary"]):  # the runs were stored to 8 digits in between
        assert (a["dist_median"], a["dist_p90"]) == pytest.approx((b["dist_median"], b["dist_p90"]), rel=1e-6)
    assert [t["median_met"] for t in merged["targets"]] == [t["median_met"] for t in doc["targets"]]
    assert len(merged["commands"]) == 3


def test_a_part_that_reruns_one_controller_replaces_only_its_runs(tmp_path):
    common = ["--seeds", "3000-3001", "--families", FAMILIES[0], "--out", str(tmp_path)]
    assert gen.main([*common, "--controllers", "grpo,random", "--part", "a"]) == 0
    assert gen.main(["--merge", "--out", str(tmp_path)]) == 0
    first = gen.load(tmp_path / "generalisation.json")
    for p in (tmp_path / "parts").iterdir():  # parts are not kept between sessions; the results are
        p.unlink()
    moved = [dict(r, distance=r["distance"] + 1.0) for r in first["runs"] if r["controller"] == "grpo"]
    part = {**first, "command": "python benchmarks/generalisation.py --controllers grpo --part b", "runs": moved}
    (tmp_path / "parts" / "generalisation-b.json").write_text(json.dumps(part))
    assert gen.main(["--merge", "--out", str(tmp_path)]) == 0
    merged = gen.load(tmp_path / "generalisation.json")
    key = lambda r: (r["controller"], r["scenario"], r["seed"])  # noqa: E731
    old, new = {key(r): r for r in first["runs"]}, {key(r): r for r in merged["runs"]}
    assert new.keys() == old.keys()
    for k, r in new.items():
        assert r["distance"] == pytest.approx(old[k]["distance"] + (1.0 if k[0] == "grpo" else 0.0))
    assert merged["commands"] == [*first["commands"][:1], part["command"], merged["command"]]


def test_a_merge_without_parts_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no parts"):
        gen.main(["--merge", "--out", str(tmp_path)])
