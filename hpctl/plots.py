"""PNG plots of a run: the knob value over training and the probes' rewards.

Figures are drawn with matplotlib's object API and its Agg canvas, never ``pyplot``:
that skips pyplot's import (a few tenths of a second per ``hpctl run``), and it leaves
the process's pyplot backend alone (a notebook driving a :class:`hpctl.Session` keeps
its inline plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _figure(**kwargs: Any):
    """A matplotlib Figure with an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _colors() -> list[str]:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_run(history: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path, *,
             title: str = "", optimum: Sequence[float] | None = None,
             learned: Sequence[float] | None = None) -> Path:
    """Two panels: knob value(s) per probe and committed, and reward per probe."""
    probes = [e for e in history if e["event"] == "probe"]
    commits = [e for e in history if e["event"] == "commit"]
    fig = _figure(figsize=(8, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    colors = _colors()
    for d, name in enumerate(names):
        c = colors[d % len(colors)]
        if probes:
            x = [e["probe"] for e in probes]
            y = [float(e["value"][d]) for e in probes]
            ax1.scatter(x, y, s=10, alpha=0.45, color=c, label=f"{name} probed")
        if commits:
            # the value training started at (before the first commit) is each probe's "current"
            start = [(0, float(probes[0]["current"][d]))] if probes and "current" in probes[0] else []
            xs = [x for x, _ in start] + [e["probe"] for e in commits]
            ys = [y for _, y in start] + [float(e["value"][d]) for e in commits]
            ax1.step(xs, ys, where="post", color=c, lw=2, label=f"{name} committed (training)")
        if optimum is not None:
            ax1.axhline(float(optimum[d]), color=c, ls=":", lw=1, label=f"{name} optimum at end")
        if learned is not None:
            ax1.axhline(float(learned[d]), color=c, ls="--", lw=1, label=f"{name} learned = {float(learned[d]):.3g}")
    ax1.set_ylabel("knob value")
    ax1.legend(fontsize=7, loc="best")
    if title:
        ax1.set_title(title)
    if probes:
        x = np.array([e["probe"] for e in probes])
        r = np.array([e["score"] for e in probes], dtype=float)
        kinds = [e["kind"] for e in probes]
        cand = np.array([k == "candidate" for k in kinds])
        ax2.scatter(x[cand], r[cand], s=10, alpha=0.6, label="candidate score")
        base = np.array([k == "baseline" for k in kinds])
        if base.any():
            ax2.plot(x[base], r[base], "k.-", lw=1, ms=4, label="baseline score (current value)")
        other = ~cand & ~base
        if other.any():
            ax2.scatter(x[other], r[other], s=14, marker="x", color="C3", label="guard/other probes")
        ax2.legend(fontsize=7, loc="best")
    ax2.set_xlabel("probe")
    ax2.set_ylabel("probe score")
    return _save(fig, path)


def plot_compare(trajectories: dict[str, list[list[tuple[int, list[float]]]]], names: Sequence[str],
                 path: str | Path, *, optimum: Sequence[float] | None = None, title: str = "") -> Path:
    """Knob trajectories (committed or learned value vs probe) per controller, one line per seed."""
    dims = len(names)
    fig = _figure(figsize=(8, 3.2 * dims))
    axes = fig.subplots(dims, 1, squeeze=False)
    colors = _colors()
    for d, name in enumerate(names):
        ax = axes[d][0]
        for i, (ctrl, runs) in enumerate(trajectories.items()):
            c = colors[i % len(colors)]
            for j, traj in enumerate(runs):
                if not traj:
                    continue
                xs = [p for p, _ in traj]
                ys = [v[d] for _, v in traj]
                ax.step(xs, ys, where="post", color=c, alpha=0.7, lw=1.2, label=ctrl if j == 0 else None)
        if optimum is not None:
            ax.axhline(float(optimum[d]), color="k", ls=":", lw=1, label="optimum")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[-1][0].set_xlabel("probe")
    if title:
        axes[0][0].set_title(title)
    return _save(fig, path)


class PlotProcess:
    """Draws a run's ``run.png`` in a child process started as the run starts.

    The child imports matplotlib (about half a second) while the run imports MLflow's
    store and learns, on another core where there is one, then waits for the history on
    its stdin; :meth:`plot_run` sends it and waits for the PNG. Any failure of the child
    (it could not start, import or draw) is no failure of the plot: :meth:`plot_run` then
    draws in this process, so the PNG is the same either way. A child left waiting (the
    run failed first) ends when :meth:`close` closes its stdin, or with this process.
    """

    def __init__(self) -> None:
        import subprocess
        import sys

        try:
            # this file run on its own (it imports numpy and matplotlib only): importing the
            # hpctl package would cost the child more than matplotlib does
            self.proc: Any = subprocess.Popen(
                [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1])['_serve']()", __file__],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError:
            self.proc = None

    def plot_run(self, history: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path,
                 **kwargs: Any) -> Path:
        """:func:`plot_run`'s PNG, drawn by the child (or here, if the child cannot)."""
        import json

        from hpctl.rundir import to_jsonable

        path = Path(path)
        proc, self.proc = self.proc, None
        if proc is not None:
            job = {"history": list(history), "names": list(names), "path": str(path.resolve()), "kwargs": kwargs}
            try:
                # NaN scores (failed probes) travel as JSON's NaN, as history.json holds them
                proc.communicate(json.dumps(to_jsonable(job, nonfinite=lambda x: x)).encode(), timeout=120)
                if proc.returncode == 0 and path.is_file():
                    return path
            except Exception:  # noqa: BLE001 - e.g. a timeout: draw here instead
                proc.kill()
                proc.wait()
        return plot_run(history, names, path, **kwargs)

    def close(self) -> None:
        """End a child that has drawn nothing (idempotent)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.communicate(b"", timeout=10)  # an empty job: the child exits at once
            except Exception:  # noqa: BLE001
                proc.kill()
                proc.wait()


def _serve() -> None:
    """The body of :class:`PlotProcess`'s child: import, then draw the one job on stdin."""
    import json
    import sys

    _figure()  # the imports, while the parent runs
    _colors()
    data = sys.stdin.buffer.read()
    if not data:
        return
    job = json.loads(data)
    plot_run(job["history"], job["names"], job["path"], **job["kwargs"])
