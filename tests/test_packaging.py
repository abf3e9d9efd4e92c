"""pyproject.toml's explicit package list matches the source tree.

setuptools is given the package list by hand (plugins/ and envs/ install as hpctl.plugins
and hpctl.envs); a new sub-package missing from it would import in a checkout and fail
in an installed copy.
"""

from __future__ import annotations

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
