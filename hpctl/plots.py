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
