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


@pytest.mark.llm
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


def test_a_look_ahead_levers_probe_training_is_counted_in_its_steps():
    entry = {"lever": {"probe_from": "start", "probe_steps": 8}, "probes": 20, "controller_steps": 16}
    assert probe_levers.steps_text(entry) == "16 + 160"
    assert probe_levers.steps_text({**entry, "lever": {"warmup_steps": 4}}) == "16"


def _grid(losses):
    return {"grid_points": [{"value": [0.9 * i / 7], "dev_score": -v} for i, v in enumerate(losses)],
            "metrics": {"dev_loss": min(losses)}}


def test_the_32_step_scale_reads_a_part_on_its_languages_seed_averaged_curve(tmp_path):
    a = [1.0 + 0.1 * i for i in range(8)]
    b = [2.0 - 0.1 * i for i in range(8)]
    data = {"runs": {"0": {"grid": _grid(a)}, "1": {"grid": _grid(b)}, "2": {"grpo": {}}}}  # seed 2: no grid yet
    mean = probe_levers.yardstick(data, 0, "regret32")
    assert [v for _, v in mean] == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
    assert [v for _, v in probe_levers.yardstick(data, 1, "regret")] == pytest.approx(b)  # the part's own
    with pytest.raises(SystemExit, match="grasp_vs_grid_regret32_zh.json is missing"):
        probe_levers.committed("zh", tmp_path, "regret32")
    # the same tag on both scales: separate rows and summaries
    entry = {"tag": "none", "lang": "zh", "seed": 1, "lever": {}, "learned": 0.8, "committed_learned": 0.8,
             "trend_regret": 0.6, "committed_trend_regret": 0.6, "learned_pass_rate": 0.0, "oracle_pass_rate": 0.5,
             "controller_steps": 16, "committed_controller_steps": 16, "probes": 20, "rounds": [], "command": "c"}
    md = probe_levers.report([entry, {**entry, "scale": "regret32", "trend_regret": 0.05}])
    assert "| none | zh 1 | 0.800 (0.800) | 60% (60%) |" in md and "| none | zh 1 32-step | 0.800 (0.800) | 5% (60%) |" in md
    assert "| none | 1 | 60% |" in md and "| none (32-step) | 1 | 5% |" in md
