"""Seeding torch without importing it (hpctl.torch_seed): the same numbers, no import cost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_torch_imported_after_seeding_draws_what_manual_seed_gives():
    pytest.importorskip("torch")
    out = _python("""
        import sys
        from hpctl.seeding import seed_everything
        seed_everything(3)
        seed_everything(7)  # the last seed counts, as with torch.manual_seed
        assert "torch" not in sys.modules
        import torch
        first = torch.rand(4).tolist()
        torch.manual_seed(7)
        assert first == torch.rand(4).tolist(), first
        seed_everything(11)  # torch is imported now: seeded at once
        again = torch.rand(2).tolist()
        torch.manual_seed(11)
        assert again == torch.rand(2).tolist()
        print("ok")
    """)
    assert out == "ok"


def test_a_synthetic_run_never_imports_torch(tmp_path):
    out = _python(f"""
        import sys
        from hpctl.config import RunOptions
        from hpctl.runner import run
        from hpctl.rundir import RunSpec
        opts = RunOptions(controller="grpo", budget=12, group_size=3, out={str(tmp_path / 'r')!r},
                          tracking_uri={f"sqlite:///{tmp_path / 'mlflow.db'}"!r})
        result = run(RunSpec(plugin="synthetic", options=opts))
        assert result["probes"] > 0
        print(sorted(m for m in ("torch", "matplotlib.pyplot") if m in sys.modules))
    """)
    assert out == "[]"
