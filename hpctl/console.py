"""What the CLI shows while and after a run: progress on stderr, the result table.

Kept apart from :mod:`hpctl.cli` (options, commands, errors) so each reads on its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click


def make_console(stderr: bool = True):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped or captured output has no terminal width: rich would fold tables at 80 columns
    width = None if stream.isatty() or "COLUMNS" in os.environ else 140
    return Console(stderr=stderr, width=width)


class RunProgress:
    """Progress over probes on stderr (so --json stdout stays clean).

    On a terminal a rich bar; otherwise (a log file, CI, a pipe) one plain line at every
    quarter of the budget and at every phase change, like the plugins' long phases.
    """

    QUARTERS = 4

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.label = label
        self.plain = not sys.stderr.isatty()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=make_console(), transient=False, disable=self.plain)
        self.task_id = None
        self.budget = 0
        self.next_line = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> "RunProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def _line(self, text: str) -> None:
        click.echo(f"[{self.label}] {text} ({time.perf_counter() - self.t0:.0f} s)", err=True)

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "start":
            self.budget, done = int(info["budget"]), int(info.get("done", 0))
            self.task_id = self.progress.add_task(self.label, total=self.budget, completed=done, info="")
            self.next_line = done + 1
            if self.plain:
                self._line(f"controller: {done}/{self.budget} probes done, run folder {info.get('out_dir', '')}")
        elif kind == "probe" and self.task_id is not None:
            val = ", ".join(f"{v:.3f}" for v in info["value"])
            cur = ", ".join(f"{v:.3f}" for v in info["current"])
            text = f"current {cur}  probe {val} -> {info['score']:.4g}"
            self.progress.update(self.task_id, completed=info["probe"], info=text)
            if self.plain and info["probe"] >= self.next_line:
                quarter = max(1, self.budget // self.QUARTERS)
                self.next_line = (info["probe"] // quarter + 1) * quarter
                self._line(f"probe {info['probe']}/{self.budget}, round {info['round']}: {text}")
        elif kind == "phase":
            if self.task_id is not None:  # the controller is done: the bar ends where it stopped
                done = self.progress.tasks[0].completed
                self.progress.update(self.task_id, total=done, info=f"phase: {info['name']}")
            if self.plain:
                self._line(f"phase: {info['name']}")


def print_result(result: dict[str, Any], as_json: bool) -> None:
    from rich.table import Table

    console = make_console(stderr=as_json)
    table = Table(title=f"{result['plugin']} / {result['controller']} / seed {result['seed']}")
    table.add_column("what")
    table.add_column("value")
    for k, v in result["learned"].items():
        table.add_row(f"learned {k}", f"{v:.4f}  (what the final phase uses)")
    best = result.get("best_probe")
    if best:
        where = f"probe {best['probe']}, step {best['step']}"
        table.add_row("best probe", f"{', '.join(f'{v:.4f}' for v in best['value'].values())}  "
                                    f"(scored {best['score']:.4g} once, {where})")
    if result.get("optimum"):
        for k, v in result["optimum"].items():
            table.add_row(f"optimum {k}", f"{v:.4f}")
    for k, v in result["metrics"].items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("probes", str(result["probes"]))
    if "updates" in result:
        table.add_row("updates", f"{result['updates']} (gradient steps on the controller's policy)")
    table.add_row("wall time", f"{result['wall_s']:.2f} s")
    table.add_row("run dir", result["out_dir"])
    table.add_row("mlflow run", result["mlflow_run_id"])
    console.print(table)
    if as_json:
        click.echo(json.dumps(result, default=str))
