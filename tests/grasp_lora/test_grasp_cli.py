"""grasp_lora through the CLI: every bad input is one line, and a SIGKILLed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hpctl.rundir import CHECKPOINT, HISTORY_LOG

SMOKE = ["run", "grasp_lora", "--preset", "smoke"]


def _bad_mlqa_dir(tmp_path: Path, text: str) -> str:
    d = tmp_path / "mlqa"
    d.mkdir(exist_ok=True)
    for split in ("dev", "test"):
        for lang in ("en", "ar"):
            (d / f"{split}-context-{lang}-question-{lang}.json").write_text(text, encoding="utf-8")
    return str(d)


def _wrong_shape_adapter(tmp_path: Path) -> str:
    """A peft LoRA folder whose tensors do not fit the tiny backbone."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "bad_adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "base_model_name_or_path": "tiny",
    }))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 999),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(999, 4)},
              str(d / "adapter_model.safetensors"))
    return str(d)


CASES = [
    (["--task", "squad"], "squad"),
    (["--lang", "fr"], "fr"),
    (["-c", "nosuch"], "'nosuch' is not one of"),
    (["--backbone", "/nonexistent/model-dir"], "/nonexistent/model-dir"),
    (["--p-min", "0.6", "--p-max", "0.2"], "p_min < p_max"),
    (["--p-max", "1.0"], "p_max < 1"),
    (["--p-min", "-0.1"], "0 <= p_min"),
    (["-c", "fixed", "--set", "value=0.95"], "outside its bounds"),
    (["--group-size", "1"], "group size must be >= 2"),
    (["--budget", "0"], "budget must be > 0"),
    (["--budget", "-3"], "budget must be > 0"),
    (["--knob", "dropout"], "dropout"),
    (["--out", "/proc/hpctl-cannot-write"], "not writable"),
    (["--resume", "/tmp"], "drop --preset"),  # a resumed run takes no other flags
    (["--export-tolerance", "-0.1"], "export-tolerance must be >= 0"),
    (["--export-rank", "-1"], "export-rank must be >= 0"),
]


def test_resume_of_a_directory_that_is_not_a_run(hpctl_main, tmp_path):
    code, _, err = hpctl_main("run", "grasp_lora", "--resume", str(tmp_path))
    assert code != 0 and "not an hpctl run directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_one_line(hpctl_main, extra, message):
    code, out, err = hpctl_main(*SMOKE, *extra)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err + out


@pytest.mark.parametrize("kind", ["missing", "empty", "not-json", "no-fields"])
def test_bad_data_files_one_line(hpctl_main, tmp_path, kind):
    if kind == "missing":
        data_dir = str(tmp_path / "nowhere")
        expect = "nowhere"
    elif kind == "empty":
        data_dir, expect = _bad_mlqa_dir(tmp_path, ""), "empty"
    elif kind == "not-json":
        data_dir, expect = _bad_mlqa_dir(tmp_path, "{not json"), "JSON"
    else:
        data_dir, expect = _bad_mlqa_dir(tmp_path, json.dumps({"data": [{"title": "t", "paragraphs": [{"x": 1}]}]})), "context"
    code, out, err = hpctl_main(*SMOKE, "--task", "mlqa", "--data-dir", data_dir)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, err
    assert expect.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err


def test_adapter_with_wrong_shapes_one_line(hpctl_main, tmp_path):
    code, out, err = hpctl_main(*SMOKE, "--source-adapter", _wrong_shape_adapter(tmp_path))
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, err
    assert "bad_adapter" in lines[0] and "Traceback" not in err


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_smoke(grasp_smoke_run, tmp_path, tracking_uri, hpctl_main):
    """The session's smoke run, repeated in a process SIGKILLed mid-way through its controller phase
    (3 rounds), then resumed (in-process): the same result, no probe lost or repeated."""
    from conftest import GRASP_SMOKE

    expected = grasp_smoke_run.result
    # the process uses the reference run's torch thread count: the same float reductions
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, OMP_NUM_THREADS=str(grasp_smoke_run.threads))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *GRASP_SMOKE, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, seen, last = run_dir / CHECKPOINT, 0, None
    deadline = time.time() + 300
    # Checkpoints are throttled by time (CHECKPOINT_EVERY_S, far below a round here), so kill at the
    # first one after the start state: after the first of the three rounds.
    while time.time() < deadline and proc.poll() is None and seen < 2:
        if ckpt.exists() and ckpt.stat().st_mtime_ns != last:
            seen, last = seen + 1, ckpt.stat().st_mtime_ns
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists()
    logged = [json.loads(line) for line in (run_dir / HISTORY_LOG).read_text().splitlines() if line.strip()]
    assert 0 < sum(e["event"] == "probe" for e in logged) < expected["probes"]  # killed mid-way through the rounds

    code, out, err = hpctl_main("run", "grasp_lora", "--resume", str(run_dir), "--json")
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["learned"] == expected["learned"]
    assert got["probes"] == expected["probes"]
    assert got["metrics"]["loss"] == expected["metrics"]["loss"]  # the final fine-tune too
    probes = [e["probe"] for e in json.loads((run_dir / "history.json").read_text()) if e["event"] == "probe"]
    assert probes == list(range(1, len(probes) + 1))  # none lost, none repeated
