"""Shared fixtures (one MLflow sqlite store for the session, the in-process CLI) and the rule
that marks the parts of the suite.

Parts (registered in pyproject.toml; ``--strict-markers`` refuses any other):

- ``llm``: needs the LLM stack: loads a transformers/peft model (the tiny Gemma 3 backbone, a
  tiny Llama) or runs a transformers Trainer. Every test in the files of :data:`LLM_FILES` is
  marked here; a test elsewhere is marked ``@pytest.mark.llm`` where it is defined (or by its
  module's ``pytestmark``).
- ``ray``: starts a local Ray instance: every test that uses the ``ray_local`` fixture.
- ``slow``: takes more than about 10 s alone; marked ``@pytest.mark.slow`` at the test itself.

``python -m pytest -m "not slow"`` is the quick part, ``-m llm`` / ``-m ray`` the parts that
need those stacks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

#: test files (relative to tests/, a folder with a trailing slash) whose every test loads a model
LLM_FILES = ("grasp_lora/", "test_integrations_transformers.py", "test_bench_eval_speed.py",
             "test_backbone_prune.py")
#: fixtures that start Ray
RAY_FIXTURES = ("ray_local",)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


@pytest.fixture
def hpctl_main(tracking_uri, tmp_path, capsys, monkeypatch):
    """Call the CLI in-process; returns (exit code, stdout, stderr)."""
    from hpctl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


#: the session's one grasp_lora smoke run (tiny backbone): its outputs, MLflow runs and `hpctl eval`
#: are checked in tests/grasp_lora, and a SIGKILLed copy of it must resume to the same result
GRASP_SMOKE = ("run", "grasp_lora", "--preset", "smoke", "-c", "grpo", "--seed", "0", "--budget", "12",
               "--group-size", "3")


class SmokeRun(NamedTuple):
    """A finished run: its folder, its result.json, and the torch thread count it ran with."""

    run: Path
    result: dict
    threads: int


@pytest.fixture(scope="session")
def grasp_smoke_run(tmp_path_factory, tracking_uri) -> SmokeRun:
    """``hpctl run grasp_lora`` with :data:`GRASP_SMOKE`, in-process, once per session (tests read it only)."""
    pytest.importorskip("peft")
    import torch

    from hpctl.cli import main

    run = tmp_path_factory.mktemp("grasp_smoke") / "run"
    assert main([*GRASP_SMOKE, "--out", str(run), "--tracking-uri", tracking_uri]) == 0
    return SmokeRun(run, json.loads((run / "result.json").read_text()), torch.get_num_threads())


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `hpctl` in a subprocess (for exit codes and the absence of tracebacks)."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hpctl.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def pytest_collection_modifyitems(config, items):
    """Mark ``llm`` and ``ray`` by file and fixture (see the module docstring)."""
    for item in items:
        try:
            rel = item.path.resolve().relative_to(TESTS).as_posix()
        except ValueError:  # a test outside tests/ (run by path): only its own marks
            continue
        if rel.startswith(LLM_FILES):
            item.add_marker(pytest.mark.llm)
        if any(name in RAY_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
