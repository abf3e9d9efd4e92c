"""benchmarks/trainer_callback.py: the committed report is what its recorded measurements give."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_trainer_callback", ROOT / "benchmarks" / "trainer_callback.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_report_matches_its_json():
    res = json.loads((ROOT / "benchmarks" / "results" / "trainer_callback.json").read_text())
    md = (ROOT / "benchmarks" / "results" / "trainer_callback.md").read_text()
    assert _bench().report(res) == md
    cb = res["callback"]
    sec = cb["seconds"]
    # the fraction is recurring work over the callback run's training time, both from the same run
    assert cb["training_s"] == cb["train_runtime_s"] - sum(sec.values())
    assert cb["overhead_fraction"] == (sec["rounds"] + sec["steps"] + sec["saves"]) / cb["training_s"]
    assert md.splitlines()[2] == f"Command: `{res['command']}`  "


def test_report_on_hand_made_numbers():
    res = {"command": "python benchmarks/trainer_callback.py --steps 8", "machine": "m", "args": {
        "steps": 8, "batch_size": 2, "max_len": 64, "every": 2, "budget": 8, "group_size": 2, "micro_dev": 4},
        "versions": {"torch": "t", "transformers": "x"},
        "plain": {"train_runtime_s": 10.0, "step_s": [1.0, 1.2, 0.9]},
        "callback": {"backbone": "b", "train_runtime_s": 16.0, "probes": 8, "rounds": 4, "learned": 0.25,
                     "seconds": {"probes": 4.0, "rounds": 0.02, "steps": 0.01, "saves": 0.01, "setup": 1.0,
                                 "finish": 0.5},
                     "training_s": 10.46, "overhead_fraction": 0.04 / 10.46, "per_round_ms": 5.0,
                     "per_step_ms": 1.25, "controller_until_step": 2, "step_s": [1.0, 1.0, 1.5, 1.5, 1.5]}}
    text = _bench().report(res)
    assert "**Recurring overhead: 0.38 % of the training time** (5.0 ms per round, 1.25 ms per step)" in text
    assert "the one-time 1.5 s are paid once per run" in text
    assert "median step time 1000 ms in the plain run, 1500 ms in the callback run" in text
