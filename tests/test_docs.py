"""The README and the docs site: generated pages are current, the site builds offline and strictly,
and the README stays a short page whose links resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import pages  # noqa: E402


def test_every_generated_page_and_report_is_current():
    """`python -m benchmarks.pages` leaves every file unchanged: the results reports are what their
    benchmarks' code renders from the committed JSON, and the docs pages and the README's headline
    quote those figures (a changed result or analysis must be regenerated, not left behind)."""
    files = pages.render_all()
    assert pages.README in files and any(p.parent == pages.DOCS for p in files)
    stale = [str(p.relative_to(ROOT)) for p, text in files.items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"run `python -m benchmarks.pages`; stale: {stale}"


def test_the_check_mode_names_a_stale_page(tmp_path, monkeypatch, capsys):
    page = tmp_path / "controllers.md"
    page.write_text("an old page\n")
    real = pages.render_pages
    monkeypatch.setattr(pages, "render_pages", lambda reports: {**real(reports), page: "the new page\n"})
    assert pages.main(["--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [f"stale: {page} (run python -m benchmarks.pages)"]
    assert page.read_text() == "an old page\n"  # --check writes nothing


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    assert pages.HEAD_START in text and pages.HEAD_END in text


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def walk(items):
        for item in items:
            if isinstance(item, str):
                yield item
            else:
                for value in item.values():
                    yield from (walk(value) if isinstance(value, list) else [value])

    nav = set(walk(config["nav"]))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert nav == on_disk


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="the docs extra is not installed")
def test_the_site_builds_offline_and_strictly(tmp_path):
    proc = subprocess.run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "index.html").read_text().count("doc-class") >= 5  # the API reference rendered
    html = (site / "benchmarks" / "grasp-vs-grid" / "index.html").read_text()
    for src in re.findall(r'src="\.\./(results/[^"]+\.png)"', html):
        assert (site / "benchmarks" / src).is_file(), src  # the hook serves every plot a page links
