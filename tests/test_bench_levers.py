"""benchmarks/probe_levers.py: a lever screened end to end on the tiny backbone, and its committed report."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from benchmarks import probe_levers  # noqa: E402
from benchmarks.grasp_vs_grid import analysis  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _fake_regret_part(folder: Path) -> None:
    """A regret-scale results file at the smoke scale: a grid curve with its minimum at 0.386, a GRPO arm
    that learned 0.9, and adapter folders that no longer exist (so the screen retrains them)."""
    from hpctl.config import RunOptions

    ratios = [0.9 * i / 7 for i in range(8)]
    losses = [1.0 + (r - 0.386) ** 2 + 0.001 * (i % 2) for i, r in enumerate(ratios)]
    data = {
        "lang": "zh", "controller_steps": 4,
        "arm_specs": {"grpo": {"plugin": "grasp_lora",
                               "options": dataclasses.asdict(RunOptions(controller="grpo", seed=0)),
                               "plugin_config": {"preset": "smoke", "lang": "zh", "baseline": "none",
                                                 "source_adapter": str(folder / "gone" / "source_adapter"),
                                                 "target_adapter": str(folder / "gone" / "target_adapter")}}},
        "adapters": {"0": {"source_adapter": str(folder / "gone" / "source_adapter"),
                           "target_adapter": str(folder / "gone" / "target_adapter")}},
        "runs": {"0": {"grid": {"grid_points": [{"value": [r], "dev_score": -v} for r, v in zip(ratios, losses)],
                                "metrics": {"dev_loss": min(losses)}},
                       "grpo": {"learned": {"prune_ratio": 0.9}}}},
    }
    (folder / "grasp_vs_grid_regret_zh.json").write_text(json.dumps(data))


def test_a_warm_up_lever_is_screened_against_the_committed_grid_curve(tmp_path):
    _fake_regret_part(tmp_path)
    argv = ["--parts", "zh:0", "--lever", "warmup_steps=2,controller_steps=6", "--tag", "w2",
            "--results", str(tmp_path), "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    assert probe_levers.main(argv) == 0
    (entry,) = probe_levers.load(tmp_path / "probe_levers.json")
    assert (entry["tag"], entry["lang"], entry["seed"]) == ("w2", "zh", 0)
    assert entry["lever"] == {"warmup_steps": 2, "controller_steps": 6}
    # 2 warm-up steps at the start ratio, then 4 rounds (20 probes in groups of 4 + 1) of 1 step each
    assert entry["warmup_steps"] == 2 and entry["steps_per_round"] == 1 and entry["controller_steps"] == 6
    assert entry["rounds"][0]["step"] == 2 and all(p["step"] >= 2 for p in entry["probe_trace"])
    assert entry["probes"] == 20 and entry["committed_controller_steps"] == 4
    curve = analysis.grid_loss_curve(json.loads((tmp_path / "grasp_vs_grid_regret_zh.json").read_text())["runs"]["0"]["grid"])
    assert entry["trend_regret"] == pytest.approx(analysis.curve_roughness(curve, entry["learned"])["smoothed_fraction"])
    assert entry["committed_trend_regret"] == pytest.approx(analysis.curve_roughness(curve, 0.9)["smoothed_fraction"])
    assert (tmp_path / "work" / "adapters_zh0" / "source_adapter").is_dir()  # the gone adapters were retrained
    md = (tmp_path / "probe_levers.md").read_text()
    assert f"| w2 | zh 0 | {entry['learned']:.3f} (0.900) |" in md


@pytest.mark.parametrize("argv, match", [
    (["--lever", "warmup_steps"], "key=value"),
    (["--parts", "fr:0"], "LANG:SEED"),
])
def test_bad_arguments_are_one_line_errors(argv, match):
    with pytest.raises(SystemExit, match=match):
        probe_levers.main(argv)


def test_an_unknown_lever_option_is_a_one_line_error(tmp_path):
    _fake_regret_part(tmp_path)
    with pytest.raises(SystemExit, match=r"probe_levers.py: error: .*warmup"):
        probe_levers.main(["--parts", "zh:0", "--lever", "warmup=3", "--results", str(tmp_path), "--out",
                           str(tmp_path), "--work", str(tmp_path / "work")])


def test_the_committed_report_is_regenerated_from_its_json():
    path = RESULTS / "probe_levers.json"
    entries = probe_levers.load(path)
    assert entries, "benchmarks/results/probe_levers.json holds no screened lever"
    assert path.with_suffix(".md").read_text() == probe_levers.report(entries)


def test_the_readme_quotes_the_probe_levers():
    """Every figure of the README's probe-lever paragraph, recomputed from the committed screen."""
    entries = probe_levers.load(RESULTS / "probe_levers.json")
    readme = " ".join((RESULTS.parent.parent / "README.md").read_text(encoding="utf-8").split())
    w16, w48 = probe_levers.lever_summary(entries, "warmup16"), probe_levers.lever_summary(entries, "warmup48")
    assert w16["parts"] == w48["parts"] == 6
    by = {(e["tag"], e["lang"], e["seed"]): e for e in entries}
    # the 16-step warm-up's rounds still favour pruning in five parts; zh seed 0 is the one that turned
    turned = [k for k, e in by.items() if k[0] == "warmup16" and min(r["spearman"] for r in e["rounds"]) < 0]
    assert turned == [("warmup16", "zh", 0)]
    rest = [r["spearman"] for k, e in by.items() if k[0] == "warmup16" and k != turned[0] for r in e["rounds"]]
    zh0, zh2 = by[("warmup16", "zh", 0)], by[("warmup16", "zh", 2)]
    quoted = [f"correlate {min(rest):+.2f} to {max(rest):+.2f}",
              f"within 10 % of the trend's range in {w16['within']} of 6 parts (the committed runs: "
              f"{w16['committed_within']}), median {100 * w16['median']:.0f} % (committed {100 * w16['committed_median']:.0f} %)",
              f"Chinese seed 0 from {zh0['committed_learned']:.3f} to {zh0['learned']:.3f}",
              f"seed 2 from {zh2['committed_learned']:.3f} to {zh2['learned']:.3f}",
              f"learned ratios fall to {w48['learned_min']:.3f}-{w48['learned_max']:.3f}",
              f"within 10 % in {w48['within']} of 6, median {100 * w48['median']:.0f} %, worst {100 * w48['worst']:.0f} %"]
    same = probe_levers.lever_summary(entries, "warmup12-same-cost")
    assert same["parts"] == 6 and all(e["controller_steps"] <= 16 for e in entries if e["tag"] == "warmup12-same-cost")
    quoted.append(f"within 10 % in {same['within']} of 6, median {100 * same['median']:.0f} %, learned "
                  f"{same['learned_min']:.3f}-{same['learned_max']:.3f}")
    # the look-ahead from the merged start, screened on the two parts furthest up their trends
    s8 = [by[("start8", lang, seed)] for lang, seed in (("ar", 0), ("zh", 1))]
    assert probe_levers.lever_summary(entries, "start8")["parts"] == 2
    assert all(e["lever"] == {"probe_from": "start", "probe_steps": 8} and e["probes"] == 20 for e in s8)
    rho = [r["spearman"] for e in s8 for r in e["rounds"]]
    quoted += [f"every round still correlates {min(rho):+.2f} to {max(rho):+.2f}",
               f"GRPO learned {s8[0]['learned']:.3f} and {s8[1]['learned']:.3f}, "
               f"{100 * s8[0]['trend_regret']:.0f} % and {100 * s8[1]['trend_regret']:.0f} % up the trend (committed "
               f"{100 * s8[0]['committed_trend_regret']:.0f} % and {100 * s8[1]['committed_trend_regret']:.0f} %)",
               f"{min(e['wall_s'] for e in s8) / 60:.0f}-{max(e['wall_s'] for e in s8) / 60:.0f} min a part for "
               f"{8 * 20} more training steps"]
    for text in quoted:
        assert text in readme, text


def test_a_look_ahead_levers_probe_training_is_counted_in_its_steps():
    entry = {"lever": {"probe_from": "start", "probe_steps": 8}, "probes": 20, "controller_steps": 16}
    assert probe_levers.steps_text(entry) == "16 + 160"
    assert probe_levers.steps_text({**entry, "lever": {"warmup_steps": 4}}) == "16"
