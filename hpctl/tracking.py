"""MLflow tracking of runs, probes, commits and controller state.

Every ``hpctl run`` is an MLflow run. The default store is a local sqlite database under
``./mlruns`` (``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows it);
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` choose another.

Logging is batched and asynchronous: events from the environment are turned into MLflow
``Metric`` entities in memory and handed, ``flush_every`` at a time, to one background
writer thread per process (:func:`_writer`), which calls ``log_batch``;
:meth:`Tracker.flush` waits on the returned futures and raises a failed write there,
:meth:`Tracker.end` waits for all. So a synthetic run's probes (microseconds each) never
wait for a database write. (MLflow's own ``log_batch(..., synchronous=False)`` would do
the same, but its queue polls once a second and every ``set_terminated`` shuts it down,
so each run's end waited up to a second for nothing.)
:attr:`Tracker.seconds` accumulates the time the run's own thread spends in tracking so
the overhead can be reported.

A new sqlite store is a copy of a template (:func:`store_template`): an empty store that
MLflow created and migrated once per MLflow version, kept in hpctl's cache folder, so a
run in a fresh folder does not replay MLflow's schema migrations (about 2 s) every time.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hpctl.errors import ConfigError, one_line

DEFAULT_DIR = "mlruns"


def default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(DEFAULT_DIR).resolve() / 'mlflow.db'}"


def _flatten(prefix: str, obj: Any, out: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)


#: seconds an unreachable tracking server may take to refuse, at start
CONNECT_TIMEOUT_S = 5


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def cache_dir() -> Path:
    """hpctl's cache folder: ``$HPCTL_CACHE``, else ``~/.cache/hpctl`` (as grasp_lora's backbone cache)."""
    env = os.environ.get("HPCTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hpctl"


def store_template() -> Path | None:
    """An empty MLflow sqlite store at the current schema, made once per MLflow version.

    MLflow creates a new store by running its whole chain of schema migrations (about 2 s
    here); copying this file gives the same tables, indexes, rows and schema revision in
    milliseconds. It is made by the function MLflow's ``SqlAlchemyStore`` runs on an
    empty database (``mlflow.store.db.utils._initialize_tables``), stopping where MLflow
    would go on to add the ``Default`` experiment: MLflow adds it when it first opens the
    copy, with the artifact location it would give it there. A template at another schema
    revision than this MLflow's (made by another MLflow under the same version number) is
    made again. Returns None (the caller lets MLflow create the store) where that function
    is missing, the cache folder cannot be written, or workspaces are enabled
    (``MLFLOW_ENABLE_WORKSPACES``: another store class).
    """
    import mlflow

    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes"):
        return None
    folder = cache_dir()
    path = folder / f"mlflow-{mlflow.__version__}-store.db"
    if path.is_file():
        if _at_mlflows_schema(path):
            return path
        path.unlink(missing_ok=True)  # made by another MLflow under the same version number: make it again
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        import sqlalchemy
        from mlflow.store.db import utils as db_utils

        folder.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            db_utils._initialize_tables(engine)
            db_utils._verify_schema(engine)  # at MLflow's head revision
            with engine.connect() as con:
                if con.execute(sqlalchemy.text("SELECT COUNT(*) FROM experiments")).scalar():
                    raise RuntimeError("migrations added an experiment")  # not the empty store we want
        finally:
            engine.dispose()
        os.replace(tmp, path)  # atomic: a concurrent maker's copy is as good as ours
        return path
    except Exception:  # noqa: BLE001 - a template is an optimisation; MLflow can always create the store
        tmp.unlink(missing_ok=True)
        return None


def _at_mlflows_schema(db: Path) -> bool:
    """Whether the sqlite store ``db`` is at the schema revision this MLflow expects (MLflow's
    own check as it opens a store, which would otherwise refuse a copy of ``db``)."""
    try:
        import sqlalchemy
        from mlflow.store.db import utils as db_utils

        engine = sqlalchemy.create_engine(f"sqlite:///{db}")
        try:
            db_utils._verify_schema(engine)
        finally:
            engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - any doubt: not a template to copy
        return False


def _create_from_template(db: Path) -> bool:
    """Create the store ``db`` (absent or empty) as a copy of :func:`store_template`.

    Called with the store's lock held. Returns whether it did (False: MLflow creates it).
    """
    template = store_template()
    if template is None:
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.replace(tmp, db)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


@contextmanager
def _store_guard(uri: str) -> Iterator[None]:
    """Open the store safely: fail fast when it cannot work, never race its creation.

    * sqlite: the folder must be writable (checked by writing, which also catches a
      read-only file system), and a file lock beside the database serialises the first
      use, when the store is created (a copy of :func:`store_template`, or MLflow's
      migrations where there is none): concurrent first runs otherwise race in alembic
      and leave a store every later run fails on.
    * http(s): the first requests run without retries and with a short timeout, so a
      server that is not there is a one-line error in seconds, not minutes of backoff.
      Later logging keeps MLflow's usual retries.
    """
    db = _sqlite_path(uri)
    if db is not None:
        from filelock import FileLock, Timeout

        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            probe = db.parent / f".hpctl-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            if db.exists():
                with open(db, "ab"):
                    pass
        except OSError as exc:
            raise ConfigError(f"MLflow store {str(db)!r} is not writable: {exc.strerror or exc}") from None
        try:
            with FileLock(str(db) + ".lock", timeout=300):
                if not db.exists() or db.stat().st_size == 0:
                    _create_from_template(db)  # else (no template) MLflow creates it, under this lock
                yield
        except Timeout:
            raise ConfigError(f"MLflow store {str(db)!r} stayed locked for 300 s by another process") from None
    elif uri.startswith(("http://", "https://")):
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CONNECT_TIMEOUT_S)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    else:
        yield


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created if missing (another process may create it first)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - e.g. RESOURCE_ALREADY_EXISTS from a concurrent first run
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@functools.lru_cache(maxsize=1)
def _context_tags() -> dict[str, str]:
    """MLflow's standard run tags (user, source, git commit) for a run started by hpctl.

    Set by hand, once per process: MLflow's own context providers import GitPython and
    inspect the calling script, seconds per run here, for tags that would name the
    console script rather than hpctl.
    """
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (some containers): leave it out
        user = None
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "hpctl"}
    if user:
        tags["mlflow.user"] = user
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    """The commit of the hpctl source tree when it runs from a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_WRITER: ThreadPoolExecutor | None = None
_WRITER_LOCK = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """The process's background writer: one thread, so batches land in the order sent.

    A submitted write starts at once (no polling interval), and nothing needs shutting
    down between runs: the idle thread costs nothing and is joined at interpreter exit.
    """
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpctl-mlflow-writer")
        return _WRITER


def _forget_writer() -> None:  # a forked child has the executor but not its thread
    global _WRITER, _WRITER_LOCK
    _WRITER, _WRITER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer)


class Tracker:
    """One MLflow run (optionally nested under a parent) with batched metric logging."""

    #: whether :meth:`end` sets the run's status (False for a run someone else owns)
    owns_run = True

    def __init__(self, uri: str | None = None, experiment: str = "hpctl", *, run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, flush_every: int = 2000,
                 tags: dict[str, str] | None = None, reopen: bool = True, experiment_id: str | None = None) -> None:
        """Open (``run_id``) or create a run; ``reopen`` marks an existing run RUNNING again.

        ``experiment_id``: the id of ``experiment`` when the caller has it (a nested run goes
        to its parent's experiment): saves looking the name up.
        """
        t0 = time.perf_counter()
        import mlflow  # noqa: F401  (slow import, kept out of `import hpctl`)

        # MLflow announces database creation/migration at INFO on stderr: keep the CLI's
        # stderr for progress and one-line errors.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        self.flush_every = int(flush_every)
        try:
            with _store_guard(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = experiment_id or _experiment_id(self.client, self.uri, experiment)
                if run_id is not None:
                    self.run_id = run_id
                    if reopen:
                        self.client.update_run(run_id, status="RUNNING")
                else:
                    all_tags = {**_context_tags(), "mlflow.runName": run_name or "", **(tags or {})}
                    if parent_run_id:
                        all_tags["mlflow.parentRunId"] = parent_run_id
                    run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
                    self.run_id = run.info.run_id
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure is a user-facing config problem
            raise ConfigError(f"cannot open MLflow tracking URI {self.uri!r}: {one_line(exc, with_type=False)}") from None
        self._metrics: list[Any] = []
        self._pending: list[Future] = []  # background writes not waited for yet
        self.seconds = time.perf_counter() - t0
        self.setup_seconds = self.seconds
        self.ended = False

    # ------------------------------------------------------------------ logging ---
    @contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        with self._timed():
            flat: dict[str, str] = {}
            _flatten("", params, flat)
            items = [Param(k[:250], v[:6000]) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self._timed():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def metric(self, key: str, value: float, step: int = 0) -> None:
        """Queue one metric (non-finite values are skipped: MLflow rejects NaN in some stores)."""
        from mlflow.entities import Metric

        with self._timed():
            value = float(value)
            if not math.isfinite(value):
                return
            self._metrics.append(Metric(key, value, int(time.time() * 1000), int(step)))
            if len(self._metrics) >= self.flush_every:
                self._flush()

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.metric(k, v, step)

    def _flush(self, wait: bool = False) -> None:
        batch, self._metrics = self._metrics, []
        for k in range(0, len(batch), 1000):  # MLflow's per-request limit
            self._pending.append(_writer().submit(self.client.log_batch, self.run_id, metrics=batch[k:k + 1000]))
        if wait:
            pending, self._pending = self._pending, []
            errors = [op.exception() for op in pending]  # waits for every write, failed or not
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                raise failed

    def flush(self, wait: bool = True) -> None:
        """Send queued metrics; with ``wait`` return once they are in the store."""
        with self._timed():
            self._flush(wait=wait)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._timed():
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            elif path.exists():
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    # ---------------------------------------------------------------- env events --
    def on_event(self, event: dict[str, Any], names: tuple[str, ...]) -> None:
        """Listener for :class:`hpctl.control_env.ControlEnv` events."""
        kind = event["event"]
        if kind == "probe":
            step = event["probe"]
            for n, v in zip(names, event["value"]):
                self.metric(f"probe/{n}", v, step)
            self.metric(f"probe/{event['kind']}_score", event["score"], step)
            self.metric("probe/round", event["round"], step)
        elif kind == "commit":
            step = event["step"]
            for n, v in zip(names, event["value"]):
                self.metric(f"train/{n}", v, step)
            self.metric("train/loss", event["loss"], step)
        elif kind == "fault":
            self.metric("faults", 1.0, event["probe"])

    def status(self) -> str:
        """The run's MLflow status (RUNNING, FINISHED, FAILED, KILLED)."""
        return self.client.get_run(self.run_id).info.status

    def close_children(self, status: str = "KILLED") -> int:
        """End nested runs of this run that are still RUNNING (left by a killed process)."""
        try:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.run_id}' and attributes.status = 'RUNNING'")
            for r in runs:
                self.client.set_terminated(r.info.run_id, status=status)
            return len(runs)
        except Exception as exc:  # noqa: BLE001 - a bookkeeping repair never stops the run
            warn(self, f"could not close nested runs: {exc}")
            return 0

    # ------------------------------------------------------------------- ending ---
    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.ended:
            return
        with self._timed():
            try:
                self._flush(wait=True)
            finally:
                if error:
                    self.set_tags({"error": error})
                if self.owns_run:
                    self.client.set_terminated(self.run_id, status=status)
                self.ended = True


# ------------------------------------------------------- run-level recorders ---
class RunRecorder:
    """Env listener: keeps the history (for plots, checkpoints) and forwards to MLflow."""

    def __init__(self, names: tuple[str, ...], tracker: Tracker | None) -> None:
        self.names = names
        self.tracker = tracker
        self.history: list[dict[str, Any]] = []
        self.faults = 0
        self.logged = 0  # history events already flushed to MLflow (for resume)
        self.last_flush = time.perf_counter()

    def checkpoint_flush(self, min_interval: float = 2.0) -> None:
        """Flush queued metrics at a checkpoint, at most every ``min_interval`` seconds."""
        if self.tracker is not None and time.perf_counter() - self.last_flush >= min_interval:
            try:
                self.tracker.flush()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop training
                warn(self.tracker, f"metrics flush failed: {type(exc).__name__}: {exc}")
                return  # `logged` stays: those events are logged again on resume
            self.logged = len(self.history)
            self.last_flush = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        if event["event"] == "fault":
            self.faults += 1
        if self.tracker is not None:
            self.tracker.on_event(event, self.names)


class PhaseRuns:
    """Nested MLflow runs, one per long phase (the controller run, a plugin's adapter training).

    Used as a task's ``phase_listener``; each child run gets the phase's wall time and
    whatever counters the plugin reports. Tracking problems here only cost the child run.
    """

    def __init__(self, parent: Tracker, experiment: str) -> None:
        self.parent = parent
        self.experiment = experiment
        self.open: dict[str, Tracker] = {}

    def __call__(self, name: str, event: str, info: dict[str, Any]) -> None:
        """``start`` (``info["params"]``: the phase's own settings), ``log`` (``info["step"]``
        and metrics, e.g. the training loss of every step) or ``end`` (wall time, counters,
        ``status``)."""
        try:
            if event == "start":
                child = Tracker(self.parent.uri, self.experiment, run_name=name, experiment_id=self.parent.experiment_id,
                                parent_run_id=self.parent.run_id, tags={"hpctl.phase": name})
                self.open[name] = child
                if info.get("params"):
                    child.log_params(info["params"])
            elif name not in self.open:
                return
            elif event == "log":
                step = int(info.get("step", 0))
                self.open[name].metrics({k: v for k, v in info.items() if k != "step"}, step)
            else:
                child = self.open.pop(name)
                child.metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
                child.end(str(info.get("status", "FINISHED")))
        except Exception as exc:  # noqa: BLE001
            warn(self.parent, f"nested run for phase {name!r} not recorded: {exc}")

    @contextmanager
    def phase(self, name: str, params: dict[str, Any] | None = None):
        t0, status = time.perf_counter(), "FAILED"
        self(name, "start", {"params": params or {}})
        try:
            yield
            status = "FINISHED"
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: killed, not failed
            status = "KILLED"
            raise
        finally:
            self(name, "end", {"seconds": time.perf_counter() - t0, "status": status})


def warn(tracker: Tracker, message: str) -> None:
    try:
        tracker.set_tags({"warning": message[:500]})
    except Exception:  # noqa: BLE001 - the store itself is failing; the run directory has everything
        pass


def end_quietly(tracker: Tracker, status: str, error: str | None) -> None:
    try:
        tracker.end(status, error)
    except Exception:  # noqa: BLE001 - never mask the run's own outcome with a store failure
        pass


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def log_outputs(tracker: Tracker, paths: list[Path]) -> None:
    """Upload a task's outputs (e.g. adapters) under ``outputs/<name>``.

    Outputs over ``$HPCTL_MAX_ARTIFACT_MB`` (default 100) stay only in the run directory,
    and a tag records where, so a large exact adapter is not copied into the store on
    every run.
    """
    limit = float(os.environ.get("HPCTL_MAX_ARTIFACT_MB", "100"))
    for path in map(Path, paths):
        size = _size_mb(path)
        if size > limit:
            tracker.set_tags({f"output.{path.name}": f"{path.resolve()} ({size:.0f} MB, over "
                                                     f"HPCTL_MAX_ARTIFACT_MB={limit:g}: not uploaded)"})
        elif path.is_dir():
            tracker.artifact(path, f"outputs/{path.name}")
        else:
            tracker.artifact(path, "outputs")


