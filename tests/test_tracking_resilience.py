"""Tracking never on the critical path, and a store that survives interrupts (#37 items 2, 3, 5).

* A store is created whole or not at all: an interrupt injected at many moments of its
  creation (the template's migrations, the copy, the rename; MLflow's own migrations in
  place) leaves a folder where the next run works.
* A stalled tracking server (accepts, never answers) or a dead one (nothing listens) does
  not stop a run: metrics wait in memory, the run ends in bounded time, and it says in one
  line, and in its run folder, what MLflow did not get. A local fake MLflow REST server
  plays the server; MLflow's HTTP timeouts are kept small through its own env variables.
* SIGTERM inside ``Tracker.end`` still records the run's status; a full disk is one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpctl import tracking
from hpctl.tracking import Tracker

# --------------------------------------------------------------------- helpers ---
#: the CLI in a fresh interpreter
HPCTL = [sys.executable, "-c", "import sys; from hpctl.cli import main; sys.exit(main(sys.argv[1:]))"]



def _status(db: Path, run_id: str) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
    finally:
        con.close()


def _works(db: Path) -> None:
    """A run can be made, logged to and ended in the store ``db``."""
    t = Tracker(f"sqlite:///{db}", "after", run_name="next")
    t.metric("m", 1.5, 0)
    t.end()
    assert t.unlogged() is None
    assert _status(db, t.run_id) == "FINISHED"


class _Interrupt(KeyboardInterrupt):
    """An injected Ctrl-C/SIGTERM (hpctl's Terminated is a KeyboardInterrupt too)."""


def _statements_of(fn) -> int:
    """How many SQL statements ``fn()`` runs."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    count = [0]

    def seen(*_a, **_k):
        count[0] += 1

    sqlalchemy.event.listen(Engine, "before_cursor_execute", seen)
    try:
        fn()
    finally:
        sqlalchemy.event.remove(Engine, "before_cursor_execute", seen)
    return count[0]


@contextlib.contextmanager
def _interrupted_at_statement(k: int):
    """The block is interrupted (:class:`_Interrupt`) at its ``k``-th SQL statement; checks that
    the interrupt reached it."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    count = [0]

    def hit(*_a, **_k):
        count[0] += 1
        if count[0] == k:
            raise _Interrupt()

    sqlalchemy.event.listen(Engine, "before_cursor_execute", hit)
    try:
        with pytest.raises(_Interrupt):
            yield
    finally:
        sqlalchemy.event.remove(Engine, "before_cursor_execute", hit)


def _interrupted_first_tracker(db: Path, k: int) -> None:
    """Open the first Tracker on the store ``db``, interrupted at its ``k``-th SQL statement."""
    with _interrupted_at_statement(k):
        Tracker(f"sqlite:///{db}", "first", run_name="interrupted")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


# ------------------------------------------------ #37 item 2: the store's creation ---
def test_an_interrupt_at_any_statement_of_the_stores_creation_leaves_a_usable_store(tmp_path, own_cache):
    """The template's migrations (a fresh cache) are interrupted at statements spread over
    the whole chain: the store's folder is left without a store, and the next start works."""
    total = _statements_of(lambda: tracking._build_store(tmp_path / "probe.db"))
    assert total > 50  # MLflow's migrations: the moments an interrupt can fall in
    for i, k in enumerate(sorted({1, 2, total // 7, total // 3, total // 2, 2 * total // 3, total - 1, total})):
        for p in own_cache.glob("*"):
            p.unlink()  # a fresh cache each time: the template is made (and interrupted) again
        db = tmp_path / f"s{i}" / "mlflow.db"
        _interrupted_first_tracker(db, k)
        assert not db.exists()  # no half-made store, in place or as the template
        assert [p.name for p in db.parent.iterdir() if not p.name.endswith(".lock")] == []
        assert list(own_cache.glob("*.db")) == []
        _works(db)


@pytest.mark.parametrize("step", ["copyfile", "replace"])
def test_an_interrupt_while_the_template_is_copied_leaves_no_store(tmp_path, own_cache, monkeypatch, step):
    import shutil

    assert tracking.store_template() is not None
    db = tmp_path / "s" / "mlflow.db"
    real = {"copyfile": shutil.copyfile, "replace": os.replace}[step]

    def broken(src, dst, *a, **k):
        if str(dst).endswith(("mlflow.db", ".tmp")) and Path(dst).parent == db.parent:
            if step == "copyfile":  # half the file written, then the interrupt
                Path(dst).write_bytes(Path(src).read_bytes()[:4096])
            raise _Interrupt()
        return real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(shutil if step == "copyfile" else os, step, broken)
        with pytest.raises(_Interrupt):
            Tracker(f"sqlite:///{db}", "first", run_name="interrupted")
    assert not db.exists() and [p.name for p in db.parent.iterdir() if not p.name.endswith(".lock")] == []
    _works(db)


def test_without_a_template_the_store_is_still_built_whole(tmp_path, own_cache, monkeypatch):
    monkeypatch.setattr(tracking, "store_template", lambda: None)  # e.g. a cache folder that cannot be written
    db = tmp_path / "s" / "mlflow.db"
    total = _statements_of(lambda: tracking._build_store(tmp_path / "probe.db"))
    _interrupted_first_tracker(db, total // 2)
    assert not db.exists()
    _works(db)


def test_a_store_left_half_migrated_and_empty_is_moved_aside_and_made_again(tmp_path, own_cache, capfd):
    """As an older hpctl (MLflow migrating in place) left it: every later run failed with
    'table ... already exists' or 'duplicate column name'."""
    import sqlalchemy
    from mlflow.store.db import utils as db_utils

    db = tmp_path / "s" / "mlflow.db"
    db.parent.mkdir()
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    total = _statements_of(lambda: tracking._build_store(tmp_path / "probe.db"))
    try:
        with _interrupted_at_statement(total // 2):
            db_utils._initialize_tables(engine)  # MLflow's own creation, in place
    finally:
        engine.dispose()
    assert db.stat().st_size > 0 and not tracking._at_mlflows_schema(db)
    _works(db)
    aside = [p for p in db.parent.iterdir() if ".unfinished-" in p.name]
    assert len(aside) == 1  # kept, not deleted
    assert "moved aside" in capfd.readouterr().err


def test_a_store_at_another_revision_that_holds_runs_is_left_alone(tmp_path, own_cache):
    db = tmp_path / "s" / "mlflow.db"
    t = Tracker(f"sqlite:///{db}", "exp", run_name="kept")
    t.end()
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
    con.close()
    assert not tracking._at_mlflows_schema(db)
    try:
        Tracker(f"sqlite:///{db}", "exp", run_name="other").end()
    except Exception:  # noqa: BLE001 - MLflow may refuse it: its own words, not ours
        pass
    assert not [p for p in db.parent.iterdir() if ".unfinished-" in p.name]  # nothing moved
    assert _status(db, t.run_id) == "FINISHED"


@pytest.mark.slow
def test_sigkill_at_many_moments_of_a_first_run_leaves_a_usable_store(tmp_path):
    """Real processes killed at a range of delays into their first run in a fresh folder
    and a fresh cache; each next run in that folder works."""
    code = ("import sys; from hpctl.tracking import Tracker; "
            "t = Tracker(sys.argv[1], 'first', run_name='killed'); t.end()")
    for i, delay in enumerate([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]):
        env = dict(os.environ, HPCTL_CACHE=str(tmp_path / f"cache{i}"))
        db = tmp_path / f"s{i}" / "mlflow.db"
        proc = subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{db}"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL if i % 2 else signal.SIGTERM)
        proc.wait()
        out = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (delay, out.stderr[-2000:])


# ------------------------------------------------ a fake MLflow tracking server ---
class FakeMlflow:
    """Enough of MLflow's REST API for a run; ``stall()`` makes it accept and never answer,
    ``kill()`` closes its port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics = 0
        self.statuses: dict[str, str] = {}
        self.requests = 0
        self.stalled = threading.Event()
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _answer(self):
                fake.requests += 1
                if fake.stalled.is_set():
                    fake.released.wait()
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}") if n else {}
                reply = fake.handle(self.path.split("?")[0], body, self.path)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run_json(self, run_id: str) -> dict:
        return {"info": {"run_id": run_id, "run_uuid": run_id, "experiment_id": "1", "user_id": "u",
                         "status": self.statuses.get(run_id, "RUNNING"), "start_time": 1,
                         "artifact_uri": (self.root / run_id).as_uri(), "lifecycle_stage": "active"},
                "data": {}}

    def handle(self, path: str, body: dict, full: str) -> dict:
        if path.endswith("/experiments/get-by-name"):
            return {"experiment": {"experiment_id": "1", "name": "exp", "artifact_location": self.root.as_uri(),
                                   "lifecycle_stage": "active"}}
        if path.endswith("/runs/create"):
            run_id = uuid.uuid4().hex
            self.statuses[run_id] = "RUNNING"
            return {"run": self.run_json(run_id)}
        if path.endswith("/runs/log-batch"):
            self.metrics += len(body.get("metrics", []))
            return {}
        if path.endswith("/runs/update"):
            run_id = body.get("run_id") or body.get("run_uuid")
            if body.get("status"):
                self.statuses[run_id] = body["status"]
            return {"run_info": self.run_json(run_id)["info"]}
        if path.endswith("/runs/get"):
            return {"run": self.run_json(full.split("run_id=")[-1].split("&")[0])}
        if path.endswith("/runs/search"):
            return {"runs": []}
        return {}

    def stall(self) -> None:
        self.stalled.set()

    def kill(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def close(self) -> None:
        self.released.set()
        try:
            self.server.shutdown()
            self.server.server_close()
        except OSError:
            pass


@pytest.fixture
def fake_server(tmp_path, monkeypatch):
    # small timeouts, no retries: MLflow's own settings, read at every request
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("HPCTL_TRACKING_WAIT_S", "0.2")
    monkeypatch.setenv("HPCTL_TRACKING_STALL_S", "2")
    monkeypatch.setenv("HPCTL_TRACKING_KILL_WAIT_S", "1")
    server = FakeMlflow(tmp_path / "artifacts")
    yield server
    server.close()


def test_the_fake_server_takes_a_whole_run(fake_server):
    t = Tracker(fake_server.uri, "exp", run_name="healthy")
    for step in range(2500):
        t.metric("m", float(step), step)
    t.log_params({"a": 1})
    t.end()
    assert t.unlogged() is None
    assert fake_server.metrics == 2500 and fake_server.statuses[t.run_id] == "FINISHED"


@pytest.mark.parametrize("how", ["stalled", "dead"])
def test_a_stalled_or_dead_server_never_holds_the_run(fake_server, how, capfd):
    t = Tracker(fake_server.uri, "exp", run_name=how, flush_every=100)
    t.metric("m", 0.0, 0)
    assert t.flush() is True  # healthy so far
    (fake_server.stall if how == "stalled" else fake_server.kill)()
    flushes = []
    for step in range(1, 3001):  # probing goes on: metrics queue, flushes do not wait on the server
        t.metric("m", float(step), step)
        if step % 500 == 0:
            flushes.append(t.flush())
    assert flushes and not any(flushes)
    child = t.nested("phase")  # a nested run is made by the writer, not by the run's thread
    child.metric("loss", 1.0, 0)
    child.end(wait=False)
    t.end("FINISHED")  # gives up once nothing completes for HPCTL_TRACKING_STALL_S
    info = t.unlogged()
    assert info is not None and info["not_logged"]["metrics"] >= 3000 - fake_server.metrics - 1
    assert not info["status_recorded"]
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hpctl:")]
    assert sum("did not get" in w for w in warnings) == 1 and len(warnings) <= 3
    assert t.run_id in warnings[-1] and "final status" in warnings[-1]


def test_a_server_back_after_a_stall_gets_everything(fake_server):
    t = Tracker(fake_server.uri, "exp", run_name="comes-back", flush_every=100)
    fake_server.stall()
    for step in range(1000):
        t.metric("m", float(step), step)
    assert t.flush() is False
    fake_server.stalled.clear()
    fake_server.released.set()  # the stalled requests are dropped by the server: MLflow's timeout fails them
    t.end()  # the failed batches are sent again
    assert t.unlogged() is None
    assert fake_server.metrics == 1000 and fake_server.statuses[t.run_id] == "FINISHED"


def test_too_many_waiting_metrics_are_dropped_and_counted(fake_server, monkeypatch):
    monkeypatch.setenv("HPCTL_TRACKING_BUFFER", "300")
    t = Tracker(fake_server.uri, "exp", run_name="buffer", flush_every=100)
    fake_server.stall()
    for step in range(1000):
        t.metric("m", float(step), step)
    t.end()
    assert t.unlogged()["not_logged"]["metrics"] == 1000


def _wait_for(predicate, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["stalled", "dead"])
def test_sigterm_ends_a_run_whose_server_stalled_or_died(fake_server, tmp_path, how):
    """``hpctl run`` keeps probing after the server goes; SIGTERM ends it (bounded by
    HPCTL_TRACKING_KILL_WAIT_S, not by the server), it says in one line what MLflow did
    not get and writes it into the run folder."""
    out = tmp_path / "r"
    env = dict(os.environ, MLFLOW_TRACKING_URI=fake_server.uri, HPCTL_TRACKING_KILL_WAIT_S="1")
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        del env[name]  # MLflow's own: a stalled request waits 120 s, a refused one is retried for minutes
    proc = subprocess.Popen([*HPCTL, "run", "synthetic", "--budget", "100000",
                             "--probe-delay", "0.002", "--out", str(out)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (fake_server.metrics > 0 and (out / "history.jsonl").is_file()) or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        (fake_server.stall if how == "stalled" else fake_server.kill)()
        seen = (out / "history.jsonl").stat().st_size
        _wait_for(lambda: (out / "history.jsonl").stat().st_size > seen + 20_000)  # probing goes on
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.startswith("hpctl:")]
    assert sum("did not get" in line for line in lines) == 1, err
    info = json.loads((out / "mlflow_unlogged.json").read_text())
    assert info["not_logged"]["metrics"] > 0 and info["status_recorded"] is False
    assert "Traceback" not in err
    if how == "stalled":  # the server answers again: a resume logs what was missing and closes the run
        fake_server.stalled.clear()
        fake_server.released.set()
        before = fake_server.metrics
        proc = subprocess.Popen([*HPCTL, "run", "synthetic", "--resume", str(out)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: fake_server.metrics >= before + info["not_logged"]["metrics"] or proc.poll() is not None)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 143, err
        assert fake_server.statuses[info["mlflow_run_id"]] == "KILLED"
        assert not (out / "mlflow_unlogged.json").exists() and "did not get" not in err


def test_a_run_whose_server_died_finishes_and_its_result_says_what_mlflow_lacks(fake_server, tmp_path):
    out = tmp_path / "r"
    env = dict(os.environ, MLFLOW_TRACKING_URI=fake_server.uri, HPCTL_TRACKING_STALL_S="1")
    proc = subprocess.Popen([*HPCTL, "run", "synthetic", "--budget", "400", "--probe-delay", "0.005", "--out", str(out),
                             "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (fake_server.metrics > 0 and (out / "history.jsonl").is_file()) or proc.poll() is not None)
        fake_server.kill()
        stdout, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err  # the run is not the store: it finishes
    result = json.loads(stdout.strip().splitlines()[-1])
    assert json.loads((out / "result.json").read_text())["mlflow_unlogged"] == result["mlflow_unlogged"]
    assert result["mlflow_unlogged"]["not_logged"]["metrics"] > 0 and not result["mlflow_unlogged"]["status_recorded"]
    assert (out / "mlflow_unlogged.json").is_file() and result["learned"]
    assert sum("did not get" in line for line in err.splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------- #37 item 5: Tracker.end and full disks ---
def test_sigterm_inside_end_still_records_the_status(tmp_path, monkeypatch):
    from hpctl.errors import Terminated

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", run_name="ending")
        t.metric("m", 1.0, 0)
        real = t._terminate

        def terminate_after_a_signal(status):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while end waits for this very write
            time.sleep(0.3)
            real(status)

        monkeypatch.setattr(t, "_terminate", terminate_after_a_signal)
        with pytest.raises(Terminated):
            t.end("FINISHED")  # the signal is held back until the status is recorded
        assert _status(tmp_path / "mlflow.db", t.run_id) == "FINISHED"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_full_disk_still_ends_the_run(tmp_path, monkeypatch, capfd):
    """Every MLflow write fails with 'database or disk is full' (as a full disk gives):
    the run is still ended in place, and the failure is one line, not SQLAlchemy's tracebacks."""
    import sqlalchemy.exc

    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", run_name="full")

    def full(*a, **k):
        import logging

        logging.getLogger("mlflow.store.db.utils").exception("SQLAlchemy database error (as MLflow logs it)")
        raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(t.client, "log_batch", full)
    monkeypatch.setattr(t.client, "set_terminated", full)
    for step in range(10):
        t.metric("m", 1.0, step)
    t.end("FAILED", "OSError: [Errno 28] No space left on device")
    assert _status(tmp_path / "mlflow.db", t.run_id) == "FAILED"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SQLAlchemy database error" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2
    assert "database or disk is full" in t.unlogged()["last_error"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_run_on_a_really_full_disk_fails_in_one_line(tmp_path):
    """A 3 MB tmpfs holding the store and the run folder fills up mid-run."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        out = subprocess.run([*HPCTL, "run", "synthetic", "--budget", "100000",
                              "--total-steps", "100000", "--out", "r"], cwd=disk, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr and "SQLAlchemy" not in out.stderr
        assert len([line for line in out.stderr.splitlines() if line.startswith("hpctl:")]) <= 3, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("hpctl: error:")
        error_txt = disk / "r" / "error.txt"
        assert not error_txt.exists() or error_txt.stat().st_size > 0
        assert not list((disk / "r").glob("*.tmp"))
        con = sqlite3.connect(disk / "mlruns" / "mlflow.db")
        try:
            assert con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0] == 0
        finally:
            con.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_writes_of_a_tracker_never_ended_still_land_before_exit(tmp_path):
    """The writer is a daemon thread (a stalled write must not hold the exit), so an exit hook
    lets queued writes land first."""
    code = ("import sys; from hpctl.tracking import Tracker; t = Tracker(sys.argv[1], 'exp', run_name='open'); "
            "[t.metric('m', i, i) for i in range(3000)]; t.flush(wait=False); print(t.run_id)")
    db = tmp_path / "mlflow.db"
    out = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(db)
    try:
        n = con.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (out.stdout.split()[-1],)).fetchone()[0]
    finally:
        con.close()
    assert n == 3000


# ------------------------------------- #37 item 3: a store that stalls mid-comparison ---
def test_a_comparison_whose_server_stalls_runs_its_later_trials_untracked(fake_server, tmp_path, monkeypatch, capfd):
    """The comparison opened its run fine; the server stalls after the first trial. The
    later trials do not fail on "cannot open MLflow tracking URI": they run without MLflow,
    the store is asked once (not once per trial), and every folder says what MLflow lacks."""
    from hpctl import compare as compare_mod
    from hpctl.config import RunOptions

    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 1)
    monkeypatch.setattr(tracking, "_UNREACHABLE", {})
    monkeypatch.setattr(tracking, "_WARNED_OFFLINE", set())
    real_trial, started = compare_mod.run_trial, []

    def trial_then_stall(*args, **kwargs):
        if started:
            fake_server.stall()
        started.append(time.monotonic())
        return real_trial(*args, **kwargs)

    monkeypatch.setattr(compare_mod, "run_trial", trial_then_stall)
    out = tmp_path / "cmp"
    result = compare_mod.compare("synthetic", ["random", "grid"], 2, RunOptions(budget=16, tracking_uri=fake_server.uri),
                                 {}, out=str(out))
    assert not result["failures"] and sum(len(rs) for rs in result["runs"].values()) == 4
    first, *later = [r for rs in result["runs"].values() for r in rs]
    assert first["mlflow_run_id"] and "mlflow_unlogged" not in first  # before the stall: all in MLflow
    for r in later:
        assert r["mlflow_run_id"] is None and r["mlflow_unlogged"]["not_logged"]["metrics"] > 0
    for ctrl, seed in (("random", 1), ("grid", 0), ("grid", 1)):
        folder = out / f"{ctrl}-s{seed}"
        assert json.loads((folder / "result.json").read_text())["learned"]
        assert json.loads((folder / "mlflow_unlogged.json").read_text())["status_recorded"] is False
    # the comparison's own run: its closing writes are not in MLflow; its folder and compare.json say so
    assert json.loads((out / "mlflow_unlogged.json").read_text())["mlflow_run_id"] == result["mlflow_run_id"]
    assert json.loads((out / "compare.json").read_text())["mlflow_unlogged"]["status_recorded"] is False
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("the run goes on without MLflow") == 1
    assert fake_server.requests < 40  # the stalled store was asked once to open a run, not by every trial
