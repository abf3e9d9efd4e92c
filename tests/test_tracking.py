"""The MLflow tracker's background writer and the run recorder's flush."""

from __future__ import annotations

import pytest

from hpctl.tracking import RunRecorder, Tracker


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test-tracking", run_name="t")
    yield t
    try:
        t.end()
    except Exception:  # noqa: BLE001 - some tests leave the writer failing on purpose
        pass


def _break_metric_writes(tracker, monkeypatch):
    real = tracker.client.log_batch

    def log_batch(run_id, metrics=(), **kw):
        if metrics:  # metric writes run on the background writer: the error lands in its future
            raise RuntimeError("store is down")
        return real(run_id, metrics=metrics, **kw)

    monkeypatch.setattr(tracker.client, "log_batch", log_batch)


def test_metrics_reach_the_store(tracker):
    for step in range(5):
        tracker.metric("probe/x", 0.1 * step, step)
    tracker.flush()
    history = tracker.client.get_metric_history(tracker.run_id, "probe/x")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]


def test_a_write_error_is_raised_by_the_next_waiting_flush_then_cleared(tracker, monkeypatch):
    _break_metric_writes(tracker, monkeypatch)
    tracker.metric("probe/x", 1.0, 0)
    tracker.flush(wait=False)  # handed to the background writer: the error shows when waited for
    with pytest.raises(Exception, match="store is down"):
        tracker.flush(wait=True)
    monkeypatch.undo()
    tracker.metric("probe/x", 2.0, 1)
    tracker.flush(wait=True)  # later writes still work
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "probe/x")] == [2.0]


def test_recorder_keeps_unflushed_events_for_resume_and_warns(tracker, monkeypatch):
    rec = RunRecorder(("x",), tracker)
    for i in range(3):
        rec({"event": "probe", "probe": i, "round": 0, "kind": "candidate", "value": [0.1 * i], "score": -1.0})
    _break_metric_writes(tracker, monkeypatch)
    rec.checkpoint_flush(min_interval=0.0)
    assert rec.logged == 0  # these events will be logged again by a resumed run
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert "store is down" in tags["warning"]
    monkeypatch.undo()
    rec.checkpoint_flush(min_interval=0.0)
    assert rec.logged == 3


@pytest.mark.parametrize("controller", ["grpo", "random"])
def test_every_controller_logs_its_answer_under_one_name(hpctl_main, tracking_uri, controller):
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    code, out, err = hpctl_main("run", "synthetic", "-c", controller, "--budget", "18", "--out", "r", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    client = MlflowClient(tracking_uri)
    hist = client.get_metric_history(result["mlflow_run_id"], "controller/answer/x")
    assert hist, "no controller/answer/x"
    assert hist[-1].value == pytest.approx(result["learned"]["x"])  # the last answer is what was learned
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["learned/x"] == pytest.approx(result["learned"]["x"])
    assert run.data.tags["mlflow.source.name"] == "hpctl" and "mlflow.user" in run.data.tags
    assert Path("r/history.jsonl").is_file()
