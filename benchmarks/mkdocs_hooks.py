"""MkDocs hook: serve the benchmark plots from benchmarks/results without copying them into docs/.

The generated pages under docs/benchmarks/ link their plots as ``results/<name>.png``; this hook adds
every PNG of ``benchmarks/results`` to the site at ``benchmarks/results/<name>.png``, so the links
resolve (and ``mkdocs build --strict`` checks them) with one copy of each plot in the repository.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent / "results"


def on_files(files: Files, config) -> Files:
    for png in sorted(RESULTS.rglob("*.png")):
        uri = "benchmarks/results/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
