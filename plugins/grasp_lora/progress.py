"""Progress of ``hpctl eval``: a rich bar on a terminal, plain lines otherwise (both on stderr)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Callable, Iterator

#: what each stage of scoring does, as the bar says it
STAGES = {"generate": "generating", "loss": "teacher-forced loss"}


@contextlib.contextmanager
def eval_progress(title: str, stream: IO[str] | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback for :func:`.splits.split_metrics`.

    On a terminal ``stream`` (default stderr) it drives a rich progress bar per stage; else it
    prints ``[grasp_lora] title: stage done/total (x.xx s per example)`` about every tenth of a
    stage and at its end, so a log shows that scoring is alive and how fast it goes.
    """
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn(), console=Console(file=stream), transient=False)
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{title}: {STAGES.get(stage, stage)}", total=total)
            bar.update(tasks[stage], completed=done)

        with bar:
            yield update
        return
    starts: dict[str, float] = {}
    shown: dict[str, int] = {}

    def line(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        t0 = starts.setdefault(stage, now)
        step = max(1, total // 10)
        if done >= total or done - shown.get(stage, 0) >= step:
            shown[stage] = done
            rate = (now - t0) / max(1, done)
            print(f"[grasp_lora] {title}: {STAGES.get(stage, stage)} {done}/{total} ({rate:.2f} s per example)",
                  file=stream, flush=True)

    yield line
