"""benchmarks/eval_speed.py runs end to end on the tiny backbone and records what it measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_eval_speed_on_the_tiny_backbone(tmp_path):
    spec = importlib.util.spec_from_file_location("eval_speed", ROOT / "benchmarks" / "eval_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "eval_speed.md"
    assert mod.main(["--backbone", "tiny", "--questions", "3", "--compare-peft", "--set", "max_new_tokens=2",
                     "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "merged weights, repeat 1 (tiny, float32, batches of 8, 2 new tokens" in text
    assert "peft adapter attached, repeat 1" in text and "--compare-peft" in text
    merged, attached, median = [line for line in text.splitlines() if line.startswith("- ")]
    assert median.startswith("- median over 1: merged ")
    # both ways score the same adapter: the same loss, to the printed digits
    assert merged.split(", loss ")[1].split(";")[0] == attached.split(", loss ")[1].split(";")[0]
