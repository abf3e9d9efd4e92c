"""examples/: the scripts run, the YAML configs are accepted, and a third-party plugin installs.

The third-party test builds a throwaway package (its own ``pyproject.toml`` declaring an
``hpctl.plugins`` entry point) in a temporary folder and installs it with
``pip install --no-deps --no-build-isolation --no-index --target``: the real path a user
takes, offline, in about a second. ``hpctl list`` and ``hpctl run`` (in-process) then see it
once the target folder is on ``sys.path``, as PYTHONPATH would put it (importlib.metadata reads
the ``*.dist-info/entry_points.txt`` pip wrote there), and nothing in hpctl names it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT

EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
CONFIGS = EXAMPLES / "configs"

#: config file -> (command, plugin, extra flags that keep the check short); None: parse and key check only
CONFIG_RUNS: dict[str, tuple[str, str, list[str]] | None] = {
    "synthetic.yaml": ("run", "synthetic", ["--budget", "16"]),
    "magnitude_prune.yaml": ("run", "magnitude_prune", ["--budget", "9", "--total-steps", "60"]),
    "compare_synthetic.yaml": ("compare", "synthetic", ["--controllers", "random,grid", "--seeds", "1",
                                                        "--budget", "8"]),
    "grasp_lora_xquad_ar.yaml": None,  # a full run needs the LLM backbone: keys are checked instead
    "backbone_prune.yaml": None,  # needs the LLM backbone: keys are checked in tests/test_backbone_prune.py
}


def run_script(path: Path, *args: str, cwd: Path, tracking_uri: str, timeout: int = 300):
    """``python path args`` in a new interpreter (what a reader types)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    return subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_example(tmp_path, tracking_uri, monkeypatch, capsys):
    """``python examples/NAME.py args`` in this process (saves an interpreter's imports per script):
    run as ``__main__`` with its folder first on sys.path and ``sys.argv`` set, in ``tmp_path``;
    returns its stdout. custom_knob.py still runs in a new interpreter (test_custom_knob_script)."""

    def call(name: str, *args: str) -> str:
        path = EXAMPLES / f"{name}.py"
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        monkeypatch.syspath_prepend(str(EXAMPLES))
        capsys.readouterr()
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as e:
            assert e.code in (None, 0), f"{name}.py exited with {e.code}"
        return capsys.readouterr().out

    return call


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# ------------------------------------------------------------------ scripts ----
def test_custom_knob_task_keeps_the_contract():
    mod = load_example("custom_knob")
    task = mod.RegressionPlugin().make_task(mod.RegressionConfig(total_steps=40), seed=1, out_dir=ROOT)
    task.train(15, np.array([0.05]))
    snap = task.snapshot()
    scores = [task.probe(np.array([lr])) for lr in (0.001, 0.01, 0.1, 0.5)]
    assert np.array_equal(task.w, snap["w"])  # probes look ahead on a copy
    assert scores[2] > scores[0] and scores[2] > scores[3]  # the best lr is inside the range
    a = task.train(10, np.array([0.05]))
    task.restore(snap)
    assert task.train(10, np.array([0.05])) == a


def test_custom_knob_script(tmp_path, tracking_uri):
    proc = run_script(EXAMPLES / "custom_knob.py", cwd=tmp_path, tracking_uri=tracking_uri)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"learned lr = ([0-9.e+-]+) after (\d+) probes", proc.stdout)
    assert m, proc.stdout
    lr, probes = float(m.group(1)), int(m.group(2))
    assert 0.02 < lr <= 0.5  # moved up from the default 0.01 towards the edge of stability (~0.2)
    assert 0 < probes <= 90 + 9
    scores = dict(re.findall(r"^(default|learned) lr [0-9.e+-]+: micro-dev score after a full run ([0-9.+-]+)$",
                             proc.stdout, re.M))
    assert float(scores["learned"]) - float(scores["default"]) > 1.0  # the docs: "a far lower error"
    # the docs show this run's output verbatim
    quoted = quoted_output(DOCS / "add_your_own_knob.md", "python examples/custom_knob.py")
    assert proc.stdout.strip().splitlines() == quoted, (
        "docs/add_your_own_knob.md quotes another output than examples/custom_knob.py prints; paste this "
        "output into its console block:\n" + proc.stdout)


def quoted_output(doc: Path, command: str) -> list[str]:
    """The lines a ```console block of ``doc`` shows after ``$ command``."""
    m = re.search(r"```console\n\$ " + re.escape(command) + r"\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert m, f"{doc.name} has no console block for {command!r}"
    return m.group(1).strip().splitlines()


#: (document, command) of every console block that quotes an example's output; each is
#: compared with a real run above
CHECKED_QUOTES = {("docs/add_your_own_knob.md", "python examples/custom_knob.py")}


def test_every_quoted_example_output_is_checked():
    found = set()
    for doc in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for command in re.findall(r"```console\n\$ (python examples/[^\n]*)\n", doc.read_text(encoding="utf-8")):
            found.add((str(doc.relative_to(ROOT)), command))
    assert found == CHECKED_QUOTES


def test_ask_tell_script(tmp_path, run_example):
    stdout = run_example("ask_tell", "--fast", "--out", str(tmp_path / "s"))
    default = re.search(r"^default lr 0.001: test mse ([0-9.]+)$", stdout, re.M)
    learned = re.search(r"^learned lr = ([0-9.e+-]+) after (\d+) probes: test mse ([0-9.]+)$", stdout, re.M)
    assert default and learned, stdout
    lr, probes, mse = float(learned.group(1)), int(learned.group(2)), float(learned.group(3))
    assert 0.002 < lr < 1.0 and 0 < probes <= 36  # moved up from the too-small default, within the budget
    assert mse < float(default.group(1))  # the steered loop ends better than the default rate
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    assert result["learned"]["lr"] == pytest.approx(lr, rel=1e-3) and result["probes"] == probes


@pytest.mark.llm
def test_trainer_callback_script_tiny(tmp_path, run_example):
    pytest.importorskip("peft")
    # --tiny with half its steps and probes (8 and 16): two rounds still commit, probe and save
    stdout = run_example("trainer_callback", "--tiny", "--steps", "4", "--budget", "8", "--out", str(tmp_path / "t"))
    m = re.search(r"^learned prune_ratio = ([0-9.]+) after (\d+) probes in (\d+) rounds", stdout, re.M)
    assert m, stdout
    ratio, probes, rounds = float(m.group(1)), int(m.group(2)), int(m.group(3))
    assert 0.0 <= ratio <= 0.9 and 0 < probes <= 8 and rounds >= 1
    assert re.search(r"^test loss at the learned ratio: [0-9.]+$", stdout, re.M)
    assert (tmp_path / "t" / "pruned_adapter" / "adapter_config.json").is_file()
    folder = Path(re.search(r"^session folder: (\S+);", stdout, re.M).group(1))
    result = json.loads((folder / "result.json").read_text())
    assert result["learned"]["prune_ratio"] == pytest.approx(ratio, abs=1e-4) and result["probes"] == probes
    assert (folder / "run.png").is_file() and (folder / "callback.json").is_file()


def test_compare_controllers_script(tmp_path, run_example):
    stdout = run_example("compare_controllers", "--out", str(tmp_path / "cmp"))
    for ctrl in ("grpo", "ppo", "random", "grid"):
        assert re.search(rf"^{ctrl}: learned x = [0-9.]+, distance to optimum = [0-9.]+$", stdout, re.M), ctrl
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["controllers"] == ["grpo", "ppo", "random", "grid"]
    assert all(len(result["runs"][c]) == 2 for c in result["controllers"])  # 2 seeds each
    assert result["budget"] == 64 and result["optimum"] == {"x": pytest.approx(0.37)}


# ------------------------------------------------------------------ configs ----
def test_every_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(CONFIG_RUNS)


@pytest.mark.parametrize("name", sorted(k for k, v in CONFIG_RUNS.items() if v is not None))
def test_config_is_accepted(name, hpctl_main):
    from hpctl.config import COMMON_KEYS

    command, plugin, extra = CONFIG_RUNS[name]
    data = yaml.safe_load((CONFIGS / name).read_text())
    assert isinstance(data, dict) and data
    code, out, err = hpctl_main(command, plugin, "--config", str(CONFIGS / name), *extra, "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["plugin"] == plugin
    out_dir = Path(res["out_dir"])
    specs = [out_dir / "spec.json"] if command == "run" else sorted(out_dir.glob("*/spec.json"))
    assert specs and all(p.is_file() for p in specs)
    overridden = {a[2:].replace("-", "_") for a in extra if a.startswith("--")}
    for path in specs:  # every value of the file reached the run, except where a flag won
        spec = json.loads(path.read_text())
        for key, value in data.items():
            if key in overridden or (command == "compare" and key in ("seed", "seeds", "controllers")):
                continue
            got = spec["options"][key] if key in COMMON_KEYS else spec["plugin_config"][key]
            if key == "controller_config" and command == "compare":  # dotted keys reach their controller only
                ctrl = spec["options"]["controller"]
                value = {k: v for k, v in value.items() if k.split(".", 1)[0] == ctrl}
            assert got == value, (name, key)


def test_grasp_lora_config_keys_are_valid_options():
    from hpctl.config import split_config
    from hpctl.registry import load_plugin

    path = CONFIGS / "grasp_lora_xquad_ar.yaml"
    data = yaml.safe_load(path.read_text())
    plugin = load_plugin("grasp_lora")
    common, options = split_config(data, plugin.Config, source=str(path))  # raises on an unknown key
    assert options["task"] == "xquad" and options["lang"] == "ar"
    from hpctl.config import build_dataclass

    build_dataclass(plugin.Config, options, what="grasp_lora")  # types and choices are valid too


# -------------------------------------------------------- third-party plugin ----
THROWAWAY = '''
"""A third-party knob: nothing in hpctl names it; it arrives through its entry point."""
from dataclasses import dataclass, field

from hpctl.knob import Knob
from hpctl.task import Plugin, Task


class GainTask(Task):
    knob = Knob("gain", 0.0, 2.0, default=1.5)
    total_steps = 40

    def __init__(self, target):
        self.target = target
        self.reset()

    def reset(self, seed=None):
        self.steps = 0

    def train(self, steps, value):
        self.steps += steps
        return float((value[0] - self.target) ** 2)

    def probe(self, value):
        return -float((value[0] - self.target) ** 2)

    def snapshot(self):
        return {"steps": self.steps}

    def restore(self, state):
        self.steps = state["steps"]


@dataclass
class GainConfig:
    target: float = field(default=0.6, metadata={"help": "the best gain"})


class ThrowawayPlugin(Plugin):
    name = "throwaway"
    description = "a throwaway third-party knob"
    Config = GainConfig

    def make_task(self, config, *, seed, out_dir):
        return GainTask(config.target)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hpctl-throwaway"
version = "0.1.0"

[project.entry-points."hpctl.plugins"]
throwaway = "hpctl_throwaway:ThrowawayPlugin"

[tool.setuptools]
packages = ["hpctl_throwaway"]
'''


def test_third_party_plugin_installs_through_its_entry_point(tmp_path, hpctl_main, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "hpctl_throwaway").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (pkg / "hpctl_throwaway" / "__init__.py").write_text(textwrap.dedent(THROWAWAY))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--disable-pip-version-check", "--target", str(site), str(pkg)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("hpctl_throwaway-0.1.0.dist-info/entry_points.txt"))

    # the folder on the path, as PYTHONPATH puts it there: importlib.metadata reads it at every lookup
    monkeypatch.setenv("COLUMNS", "200")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        code, out, err = hpctl_main("list")
        assert code == 0, err
        assert re.search(r"throwaway\s.*hpctl_throwaway:ThrowawayPlugin", out), out

        code, out, err = hpctl_main("run", "throwaway", "--target", "0.8", "-c", "random", "--budget", "24", "--json",
                                    "--out", str(tmp_path / "run"))
        assert code == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        assert res["plugin"] == "throwaway"
        assert abs(res["learned"]["gain"] - 0.8) < 0.3  # the flag from its Config reached its task
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("hpctl_throwaway", None)
        importlib.invalidate_caches()

    # without the folder on the path the plugin is unknown again: one line, exit code 2
    code, _, err = hpctl_main("run", "throwaway")
    assert code == 2 and "unknown plugin 'throwaway'" in err and len(err.strip().splitlines()) == 1
