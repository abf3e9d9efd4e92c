"""run.png drawn in a child process (hpctl.plots.PlotProcess) is the PNG drawn in-process."""

from __future__ import annotations

import math
import sys

from hpctl.plots import PlotProcess, plot_run

HISTORY = [{"event": "probe", "probe": i + 1, "step": 10 * i, "round": i // 4, "kind": "baseline" if i % 4 == 0
            else "candidate", "value": [0.1 + 0.05 * i], "current": [0.5], "score": -abs(0.37 - 0.05 * i)}
           for i in range(12)] + [{"event": "commit", "probe": 8, "step": 40, "value": [0.4], "loss": 0.2}]
HISTORY[3]["score"] = math.nan  # a failed probe


def test_the_child_draws_the_same_png(tmp_path, monkeypatch):
    import hpctl.plots

    here = plot_run(HISTORY, ("x",), tmp_path / "here.png", title="t", optimum=[0.37], learned=[0.4])
    child = PlotProcess()
    proc = child.proc

    def not_here(*args, **kwargs):
        raise AssertionError("drawn in this process, not by the child")

    monkeypatch.setattr(hpctl.plots, "plot_run", not_here)
    there = child.plot_run(HISTORY, ("x",), tmp_path / "there.png", title="t", optimum=[0.37], learned=[0.4])
    assert proc.returncode == 0 and child.proc is None
    assert there.read_bytes() == here.read_bytes()


def test_a_child_that_cannot_draw_leaves_the_plot_to_this_process(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # the child cannot even start
    child = PlotProcess()
    assert child.proc is None
    png = child.plot_run(HISTORY, ("x",), tmp_path / "a.png", title="t")
    assert png.stat().st_size > 0
    monkeypatch.undo()
    child = PlotProcess()
    child.proc.stdin.write(b"{not json")  # the child fails on its job: drawn here all the same
    png = child.plot_run(HISTORY, ("x",), tmp_path / "b.png", title="t")
    assert png.read_bytes() == (tmp_path / "a.png").read_bytes()


def test_close_ends_a_child_that_drew_nothing():
    child = PlotProcess()
    proc = child.proc
    child.close()
    assert proc.returncode == 0 and child.proc is None
    child.close()  # idempotent
