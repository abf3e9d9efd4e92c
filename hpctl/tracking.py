"""MLflow tracking of runs, probes, commits and controller state.

Every ``hpctl run`` is an MLflow run. The default store is a local sqlite database under
``./mlruns`` (``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows it);
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` choose another.

Logging is batched and asynchronous: events from the environment are turned into MLflow
``Metric`` entities in memory and handed, ``flush_every`` at a time, to one background
writer thread that sends them with ``log_batch``; :meth:`Tracker.end` waits for it. So a
synthetic run's probes (microseconds each) never wait for a database write.
:attr:`Tracker.seconds` accumulates the time the run's own thread spends in tracking so
the overhead can be reported.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
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


class Tracker:
    """One MLflow run (optionally nested under a parent) with batched metric logging."""

    def __init__(self, uri: str | None = None, experiment: str = "hpctl", *, run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, flush_every: int = 2000,
                 tags: dict[str, str] | None = None) -> None:
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
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///"):])
                db.parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                artifact_location = None
                if self.uri.startswith("sqlite:///"):
                    artifact_location = (Path(self.uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
                exp_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
            else:
                exp_id = exp.experiment_id
            if run_id is not None:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                all_tags = dict(tags or {})
                if parent_run_id:
                    all_tags["mlflow.parentRunId"] = parent_run_id
                run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
                self.run_id = run.info.run_id
        except Exception as exc:  # noqa: BLE001 - any store failure is a user-facing config problem
            raise ConfigError(f"cannot open MLflow tracking URI {self.uri!r}: {one_line(exc, with_type=False)}") from None
        self.experiment_id = exp_id
        self._metrics: list[Any] = []
        self._queue: queue.Queue = queue.Queue()
        self._writer_error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="hpctl-mlflow-writer", daemon=True)
        self._writer.start()
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

    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                for i in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
            except BaseException as exc:  # noqa: BLE001 - reported by flush(wait=True)
                self._writer_error = exc
            finally:
                self._queue.task_done()

    def _flush(self, wait: bool = False) -> None:
        pending, self._metrics = self._metrics, []
        if pending:
            self._queue.put(pending)
        if wait:
            self._queue.join()
            if self._writer_error is not None:
                err, self._writer_error = self._writer_error, None
                raise err

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

    # ------------------------------------------------------------------- ending ---
    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.ended:
            return
        with self._timed():
            try:
                self._flush(wait=True)
                self._queue.put(None)
                self._writer.join(timeout=60)
            finally:
                if error:
                    self.set_tags({"error": error})
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
        try:
            if event == "start":
                self.open[name] = Tracker(self.parent.uri, self.experiment, run_name=name,
                                          parent_run_id=self.parent.run_id, tags={"hpctl.phase": name})
            elif name in self.open:
                child = self.open.pop(name)
                child.metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
                child.end(str(info.get("status", "FINISHED")))
        except Exception as exc:  # noqa: BLE001
            warn(self.parent, f"nested run for phase {name!r} not recorded: {exc}")

    @contextmanager
    def phase(self, name: str):
        t0, status = time.perf_counter(), "FAILED"
        self(name, "start", {})
        try:
            yield
            status = "FINISHED"
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


