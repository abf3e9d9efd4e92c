"""The layers: hpctl never imports a plugin, its modules import each other without a cycle,
and the core (``pip install hpctl``, no extras) runs without torch, transformers, peft,
SB3, Ray or Optuna, naming the extra a feature needs in one line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folders and the package each installs as (pyproject.toml's package-dir)
CORE = {"hpctl": ROOT / "hpctl", "hpctl.envs": ROOT / "envs"}
PLUGINS = {"hpctl.plugins": ROOT / "plugins"}


def _modules(roots: dict[str, Path]) -> dict[str, Path]:
    out = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """hpctl modules that ``name`` imports anywhere in its file (top level, in functions, under
    TYPE_CHECKING): ``from pkg import mod`` counts as importing ``pkg.mod`` when that is a module."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "hpctl")
    return found


def _graph(roots: dict[str, Path]) -> dict[str, set[str]]:
    mods = _modules(roots)
    every = set(_modules({**CORE, **PLUGINS}))
    return {name: _imports(name, path, every) - {name} for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_finds_imports_and_cycles():
    # the checker itself: relative and function-local imports count, and a cycle is found
    graph = _graph(CORE)
    assert "hpctl.engines.base" in graph["hpctl.control_env"]
    assert "hpctl.statefile" in graph["hpctl.rundir"]  # `from hpctl import statefile`
    assert "hpctl.registry" in graph["hpctl.engines.base"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_hpctl_imports_no_plugin():
    """hpctl/ (and envs/, installed as hpctl.envs) never import hpctl.plugins: plugins build on
    the core and its integrations, never the other way round."""
    bad = sorted(f"{m} imports {t}" for m, targets in _graph(CORE).items() for t in targets
                 if t == "hpctl.plugins" or t.startswith("hpctl.plugins."))
    assert not bad, bad


def test_no_import_cycle():
    """Not in the core (function-local imports included: hiding a cycle in a function still
    makes one), nor with the shipped plugins."""
    assert _cycle(_graph(CORE)) is None, " -> ".join(_cycle(_graph(CORE)))
    everything = _graph({**CORE, **PLUGINS})
    assert _cycle(everything) is None, " -> ".join(_cycle(everything))


# ---------------------------------------------------------------------- the core alone
BLOCKED = ("torch", "transformers", "peft", "accelerate", "stable_baselines3", "ray", "optuna", "datasets",
           "evaluate", "gguf", "safetensors.torch")

CORE_SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {blocked!r}

    class Blocker(MetaPathFinder):
        """As if the extras were not installed: these imports fail like a missing package's."""
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    report = {{}}

    import hpctl
    import gymnasium as gym
    env = gym.make("hpctl/Landscape-v0")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()
    report["import"] = "ok"

    from hpctl.cli import main

    def cli(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return [code, out.getvalue(), err.getvalue()]

    report["list"] = cli("list")
    report["synthetic"] = cli("run", "synthetic", "--budget", "16", "--out", "run-synthetic", "--json")
    report["grasp_lora"] = cli("run", "grasp_lora", "--preset", "smoke", "--out", "run-grasp")
    report["magnitude_prune"] = cli("run", "magnitude_prune", "--out", "run-prune")
    report["ppo"] = cli("run", "synthetic", "-c", "ppo", "--budget", "16", "--out", "run-ppo")
    report["ray"] = cli("run", "synthetic", "--engine", "ray", "--budget", "16", "--out", "run-ray")
    try:
        import hpctl.integrations.transformers
        report["trainer"] = "imported"
    except hpctl.HpctlError as exc:
        report["trainer"] = type(exc).__name__ + ": " + str(exc)
    report["loaded"] = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    print("REPORT " + json.dumps(report))
''')


def test_the_core_runs_without_the_extras(tmp_path, tracking_uri):
    """`import hpctl`, `hpctl list` and `hpctl run synthetic` with torch, transformers, peft,
    SB3, Ray and Optuna unimportable; the features that need them fail in one line naming
    the extra (the fresh-venv install itself is checked by hand: see the packaging notes)."""
    proc = subprocess.run([sys.executable, "-c", CORE_SCRIPT.format(blocked=BLOCKED)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "COLUMNS": "250"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(line[len("REPORT "):])
    assert report["import"] == "ok"
    assert report["loaded"] == []  # nothing blocked slipped in by another route

    code, out, _ = report["list"]
    assert code == 0 and "synthetic" in out and "grpo" in out and "hpctl/Landscape-v0" in out
    assert "grasp_lora needs the 'grasp' extra: pip install 'hpctl[grasp]'" in out  # as its description

    code, out, err = report["synthetic"]
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["plugin"] == "synthetic"

    for key, message in [("grasp_lora", "grasp_lora needs the 'grasp' extra: pip install 'hpctl[grasp]'"),
                         ("magnitude_prune", "magnitude_prune needs the 'prune' extra: pip install 'hpctl[prune]'"),
                         ("ppo", "controller 'ppo' needs the 'sb3' extra: pip install 'hpctl[sb3]'"),
                         ("ray", "--engine ray needs the 'ray' extra: pip install 'hpctl[ray]'")]:
        code, out, err = report[key]
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("[")]  # progress lines start with [
        assert code == 2 and len(lines) == 1 and message in lines[0], (key, err)
    assert report["trainer"].startswith("MissingExtraError: hpctl.integrations needs the 'trainer' extra: "
                                        "pip install 'hpctl[trainer]'"), report["trainer"]
