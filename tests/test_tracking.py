"""The MLflow tracker's background writer, the run recorder's flush, and tidy records:
resolved parameters, no empty child runs or experiments, git tags of the user's project."""

from __future__ import annotations

from pathlib import Path

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


def test_a_failed_write_is_said_once_and_sent_again_by_a_later_flush(tracker, monkeypatch, capfd):
    _break_metric_writes(tracker, monkeypatch)
    tracker.metric("probe/x", 1.0, 0)
    tracker.flush(wait=False)  # handed to the background writer: the failure is seen by a later flush
    assert tracker.flush(wait=True) is False  # not raised: the run goes on
    assert tracker.flush(wait=True) is False  # failed again (second try)
    err = capfd.readouterr().err
    assert err.count("store is down") == 1 and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    tracker.metric("probe/x", 2.0, 1)
    assert tracker.flush(wait=True) is True  # the store is back: the failed batch went again
    assert sorted(m.value for m in tracker.client.get_metric_history(tracker.run_id, "probe/x")) == [1.0, 2.0]
    tracker.end()
    assert tracker.unlogged() is None and tracker.status() == "FINISHED"


def test_a_batch_failing_every_try_is_counted_not_logged(tracker, monkeypatch, capfd):
    _break_metric_writes(tracker, monkeypatch)
    for step in range(3):
        tracker.metric("probe/x", 1.0, step)
    tracker.end()  # retries the batch until its tries are used up, then gives it up
    info = tracker.unlogged()
    assert info["not_logged"] == {"metrics": 3} and info["status_recorded"] and "store is down" in info["last_error"]
    assert tracker.status() == "FINISHED"
    assert "did not get 3 metrics" in capfd.readouterr().err


def test_recorder_keeps_unflushed_events_for_resume(tracker, monkeypatch):
    rec = RunRecorder(("x",), tracker)
    for i in range(3):
        rec({"event": "probe", "probe": i, "round": 0, "kind": "candidate", "value": [0.1 * i], "score": -1.0})
    _break_metric_writes(tracker, monkeypatch)
    rec.checkpoint_flush(min_interval=0.0)
    rec.checkpoint_flush(min_interval=0.0)
    assert rec.logged == 0  # these events will be logged again by a resumed run
    monkeypatch.undo()
    rec.checkpoint_flush(min_interval=0.0)
    assert rec.logged == 3
    assert len(tracker.client.get_metric_history(tracker.run_id, "probe/x")) == 3


@pytest.mark.parametrize("controller", ["grpo", "random"])
def test_every_controller_logs_its_answer_under_one_name(hpctl_main, tracking_uri, controller):
    import json

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


# ------------------------------------------------------------------ the store template --
def _schema(db) -> tuple:
    import sqlite3

    def lines(sql):  # the order of a table's constraints varies between two migrations (set order)
        return sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())

    con = sqlite3.connect(db)
    try:
        objects = sorted(((t, n, tbl, lines(sql)) for t, n, tbl, sql in
                          con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")), key=str)
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = con.execute("SELECT experiment_id, name, lifecycle_stage FROM experiments "
                                  "ORDER BY experiment_id").fetchall()
    finally:
        con.close()
    return objects, revision, experiments


def test_a_new_store_is_a_copy_of_the_template_and_equals_the_store_mlflow_makes(tmp_path, monkeypatch):
    from hpctl import tracking

    monkeypatch.setenv("HPCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    a = Tracker(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", "exp", run_name="r")
    template = tracking.store_template()
    assert template is not None and template.parent == tmp_path / "cache"
    made = template.stat().st_mtime_ns
    with monkeypatch.context() as m:  # the store MLflow makes itself, by its migrations
        m.setattr(tracking, "store_template", lambda: None)
        b = Tracker(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", "exp", run_name="r")
    assert _schema(tmp_path / "a" / "mlflow.db") == _schema(tmp_path / "b" / "mlflow.db")
    for t in (a, b):  # MLflow added its Default experiment where it would have, then ours
        default = t.client.get_experiment("0")
        assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    c = Tracker(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}", "exp", run_name="r")  # the template is reused
    assert template.stat().st_mtime_ns == made
    c.metric("m", 2.5, 3)
    c.end()
    run = c.client.get_run(c.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["m"] == 2.5
    a.end()
    b.end()


def test_a_template_at_another_schema_revision_is_made_again(tmp_path, monkeypatch):
    import sqlite3

    from hpctl import tracking

    monkeypatch.setenv("HPCTL_CACHE", str(tmp_path / "cache"))
    template = tracking.store_template()
    con = sqlite3.connect(template)
    with con:  # as if made by another MLflow under the same version number
        con.execute("UPDATE alembic_version SET version_num = 'not-a-revision'")
    con.close()
    t = Tracker(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}", "exp", run_name="r")
    t.metric("m", 1.5, 0)
    t.end()
    assert _schema(template)[1] == _schema(tmp_path / "s" / "mlflow.db")[1] != [("not-a-revision",)]
    con = sqlite3.connect(tmp_path / "s" / "mlflow.db")
    try:
        assert con.execute("SELECT status FROM runs WHERE run_uuid = ?", (t.run_id,)).fetchone()[0] == "FINISHED"
        assert con.execute("SELECT value FROM metrics WHERE run_uuid = ? AND key = 'm'", (t.run_id,)).fetchone()[0] == 1.5
    finally:
        con.close()


def test_end_waits_for_every_background_write(tracker):
    tracker.flush_every = 700  # three batches go to the writer thread before end()
    for step in range(2500):
        tracker.metric("probe/x", float(step), step)
    tracker.end()
    assert len(tracker.client.get_metric_history(tracker.run_id, "probe/x")) == 2500
    assert tracker.status() == "FINISHED"


# ------------------------------------------------------- tidy records (#34 item 2) --
def test_a_run_logs_resolved_parameters_and_no_empty_child_run(hpctl_main, tracking_uri):
    import json

    from mlflow.tracking import MlflowClient

    code, out, err = hpctl_main("run", "synthetic", "--budget", "18", "--out", "r", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    client = MlflowClient(tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    params = run.data.params
    assert not [k for k, v in params.items() if v == "None"]
    assert params["controller_config.group_size"] == "8"  # GRPO's None: the run's group size
    assert params["plugin_config.start"] == "[0.5]"  # the value training started at
    assert "plugin_config.optimum2" not in params and "plugin_config.env" not in params  # truly unset
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert children == []  # no "controller" child holding only its seconds and a copy of the params
    assert run.data.metrics["time/controller_s"] >= 0


def test_resolved_params_fill_from_sources_and_leave_out_what_nobody_set():
    from types import SimpleNamespace

    from hpctl.runner import resolved_params

    class Ctrl:
        def group_size(self):
            return 6

        def needs_args(self, budget):
            return budget

    got = resolved_params({"a": 1, "group_size": None, "needs_args": None, "gone": None, "nested": {"x": None, "y": 2}},
                          Ctrl(), {"gone": None}, SimpleNamespace(needs_args=3))
    assert got == {"a": 1, "group_size": 6, "needs_args": 3, "nested": {"y": 2}}


def test_grasp_lora_reports_what_it_chose_for_unset_options(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from hpctl.plugins.grasp_lora import GraspLoraConfig, resolve_config
    from hpctl.plugins.grasp_lora.task import GraspTask

    monkeypatch.setenv("HPCTL_CACHE", str(tmp_path / "cache"))
    cfg = resolve_config(GraspLoraConfig(preset="smoke"))
    assert cfg.controller_lr is None and cfg.cache_dir is None and cfg.data_dir is None
    chosen = GraspTask.resolved_options(SimpleNamespace(cfg=cfg))
    assert chosen["controller_lr"] == cfg.lr and chosen["cache_dir"] == str(tmp_path / "cache")
    assert Path(chosen["data_dir"]).is_dir() and chosen["merge_weights"] == "source=1,target=1"
    weighted = resolve_config(GraspLoraConfig(preset="smoke", merge="weighted", merge_weights="0.3,1"))
    assert GraspTask.resolved_options(SimpleNamespace(cfg=weighted))["merge_weights"] == "source=0.3,target=1"


def test_attaching_to_an_existing_run_creates_no_experiment(tmp_path):
    owner = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "the-owners", run_name="trainer")
    attached = Tracker(owner.uri, "hpctl-trainer", run_id=owner.run_id, reopen=False)
    assert attached.experiment_id == owner.experiment_id
    assert owner.client.get_experiment_by_name("hpctl-trainer") is None  # no empty experiment
    owner.end()


def test_git_tags_describe_the_working_directorys_repository(tmp_path, monkeypatch):
    import subprocess

    from hpctl import tracking

    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", run_name="outside")
    t.end()
    tags = t.client.get_run(t.run_id).data.tags
    assert not [k for k in tags if k.startswith("mlflow.source.git")]  # not hpctl's own checkout
    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@x", "-c", "commit.gpgsign=false", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://example.invalid/project.git"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.chdir(repo)
    tracking._context_tags_in.cache_clear()
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", run_name="inside")
    t.end()
    tags = t.client.get_run(t.run_id).data.tags
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.source.git.branch"] == "main"
    assert tags["mlflow.source.git.repoURL"] == "https://example.invalid/project.git"


def test_a_tracker_without_a_run_name_gets_mlflows_own(tmp_path):
    """No empty mlflow.runName tag (plain MLflow refuses it): the store names the run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    t = Tracker(uri, "exp")
    t.metric("a", 1.0)
    t.end()
    run = MlflowClient(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name and run.data.metrics == {"a": 1.0}
