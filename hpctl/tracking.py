"""MLflow tracking of runs, probes, commits and controller state.

Every ``hpctl run`` is an MLflow run. The default store is a local sqlite database under
``./mlruns`` (``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows it);
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` choose another.

Tracking is never on the run's critical path. Only opening the run talks to the store
from the run's own thread (and fails in one line when the store cannot work). Everything
after that (metrics, parameters, tags, artifacts, nested runs, the final status) is handed
to one background writer thread per process (:class:`_Writer`, a daemon, so a write stuck
on a stalled server never holds the process at exit). Metrics are batched in memory,
``flush_every`` at a time. :meth:`Tracker.flush` waits for the writes at most
``HPCTL_TRACKING_WAIT_S`` seconds (and not at all while the writer is still behind), a
failed metric batch is sent again with the next flush, and metrics beyond
``HPCTL_TRACKING_BUFFER`` held in memory are dropped and counted. :meth:`Tracker.end`
waits while writes complete, gives up after ``HPCTL_TRACKING_STALL_S`` seconds without one
(``HPCTL_TRACKING_KILL_WAIT_S`` in all when the run was interrupted), holds SIGTERM and
Ctrl-C back while it sets the run's status, and says in one line what MLflow did not get
(:meth:`Tracker.unlogged`; the run folder keeps everything).
:attr:`Tracker.seconds` accumulates the time the run's own thread spends in tracking so
the overhead can be reported.

A new sqlite store is a copy of a template (:func:`store_template`): an empty store that
MLflow created and migrated once per MLflow version, kept in hpctl's cache folder, so a
run in a fresh folder does not replay MLflow's schema migrations (about 2 s) every time.
A store is only ever created whole: built or copied into a temporary file beside it, then
renamed into place, so an interrupt at any moment leaves either no store or a complete
one. A store that an older hpctl (or MLflow itself) left half-migrated and that holds no
runs is moved aside and made again (:func:`_repair_unfinished`).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import queue
import shutil
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hpctl.errors import ConfigError, one_line, shorten

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


def _workspaces() -> bool:
    return os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true", "yes")


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _remove_tmp(tmp: Path) -> None:
    for p in (tmp, tmp.with_name(tmp.name + "-journal")):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _build_store(path: Path) -> None:
    """Make an empty MLflow store at ``path``, whole or not at all.

    It is built by the function MLflow's ``SqlAlchemyStore`` runs on an empty database
    (``mlflow.store.db.utils._initialize_tables``) in a temporary file beside ``path``,
    checked to be at MLflow's head revision, then renamed into place: an interrupt
    (SIGTERM, Ctrl-C, SIGKILL) at any moment leaves either no store at ``path`` or a
    complete one. It stops where MLflow would go on to add the ``Default`` experiment:
    MLflow adds it when it first opens the store, with the artifact location it would
    give it there.
    """
    import sqlalchemy
    from mlflow.store.db import utils as db_utils

    tmp = _tmp_beside(path)
    try:
        _remove_tmp(tmp)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            db_utils._initialize_tables(engine)
            db_utils._verify_schema(engine)  # at MLflow's head revision
            with engine.connect() as con:
                if con.execute(sqlalchemy.text("SELECT COUNT(*) FROM experiments")).scalar():
                    raise RuntimeError("migrations added an experiment")  # not the empty store we want
        finally:
            engine.dispose()
        os.replace(tmp, path)
    except BaseException:
        _remove_tmp(tmp)
        raise


def _sweep_stale_tmp(folder: Path, name: str, older_than_s: float) -> None:
    """Remove temporary files of ``name`` that an interrupted maker left in ``folder``."""
    now = time.time()
    try:
        for p in folder.glob(f".{name}.*.tmp*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
            except OSError:
                pass
    except OSError:
        pass


def store_template() -> Path | None:
    """An empty MLflow sqlite store at the current schema, made once per MLflow version.

    MLflow creates a new store by running its whole chain of schema migrations (about 2 s
    here); copying this file gives the same tables, indexes, rows and schema revision in
    milliseconds. It is made by :func:`_build_store` (whole or not at all; two processes
    making it at once each make their own and the last rename wins, both complete). A
    template at another schema revision than this MLflow's (made by another MLflow under
    the same version number) is made again. Returns None (the caller builds the store in
    place, or lets MLflow create it) where MLflow's function is missing, the cache folder
    cannot be written, or workspaces are enabled (``MLFLOW_ENABLE_WORKSPACES``: another
    store class).
    """
    import mlflow

    if _workspaces():
        return None
    folder = cache_dir()
    path = folder / f"mlflow-{mlflow.__version__}-store.db"
    if path.is_file():
        if _at_mlflows_schema(path):
            return path
        try:
            path.unlink(missing_ok=True)  # made by another MLflow under the same version number: make it again
        except OSError:
            return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _sweep_stale_tmp(folder, path.name, older_than_s=600)  # makers killed mid-way (others may be at work)
        _build_store(path)
        return path
    except Exception:  # noqa: BLE001 - a template is an optimisation; the store can always be made in place
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


def _create_store(db: Path) -> bool:
    """Create the store ``db`` (absent or empty), whole or not at all: a copy of
    :func:`store_template`, else built beside it (:func:`_build_store`), renamed into place.

    Called with the store's lock held. Returns whether it did (False: MLflow creates it).
    """
    template = store_template()
    if template is not None:
        tmp = _tmp_beside(db)
        try:
            shutil.copyfile(template, tmp)
            os.replace(tmp, db)
            return True
        except OSError:
            pass
        finally:
            _remove_tmp(tmp)
    if _workspaces():
        return False
    try:
        _build_store(db)
        return True
    except Exception:  # noqa: BLE001 - MLflow can still try to create it
        return False


def _holds_nothing(db: Path) -> bool:
    """Whether the sqlite file ``db`` holds no run and no experiment but MLflow's Default."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "runs" in tables and con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
            return False
        if "experiments" in tables and con.execute(
                "SELECT COUNT(*) FROM experiments WHERE name != 'Default'").fetchone()[0]:
            return False
        return True
    except sqlite3.Error:  # not a database, or damaged: not ours to move
        return False
    finally:
        con.close()


def _repair_unfinished(db: Path) -> None:
    """A store an interrupted first run left half-made (an older hpctl, or MLflow itself,
    created it in place: ``table ... already exists`` or ``duplicate column name`` on every
    later run) and that holds nothing is moved aside (never deleted) and made again.

    Called with the store's lock held, for an existing non-empty ``db``. A store at another
    schema revision that holds runs is left for MLflow to explain (``mlflow db upgrade``).
    """
    if _at_mlflows_schema(db) or not _holds_nothing(db):
        return
    aside = db.with_name(f"{db.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(db, aside)
    except OSError:
        return
    print(f"hpctl: the MLflow store {str(db)!r} was left half-made by an interrupted first run and held "
          f"no runs: moved aside to {aside.name!r} and made again", file=sys.stderr)
    _create_store(db)


@contextmanager
def _store_guard(uri: str) -> Iterator[None]:
    """Open the store safely: fail fast when it cannot work, never race its creation.

    * sqlite: the folder must be writable (checked by writing, which also catches a
      read-only file system), and a file lock beside the database serialises the first
      use, when the store is created (:func:`_create_store`, whole or not at all):
      concurrent first runs otherwise race in alembic and leave a store every later run
      fails on. A store left half-made and empty is made again (:func:`_repair_unfinished`).
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
                _sweep_stale_tmp(db.parent, db.name, older_than_s=0)  # under the lock: no maker is alive
                if not db.exists() or db.stat().st_size == 0:
                    _create_store(db)  # else MLflow creates it, under this lock
                else:
                    _repair_unfinished(db)
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


def _context_tags() -> dict[str, str]:
    """MLflow's standard run tags (user, source, git) for a run started by hpctl.

    Set by hand: MLflow's own context providers import GitPython and inspect the calling
    script, seconds per run here, for tags that would name the console script rather than
    hpctl. The git tags describe the repository of the current working directory (the
    user's project), not hpctl's own checkout, and are absent outside a git repository.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = "/"
    return _context_tags_in(cwd)


@functools.lru_cache(maxsize=8)
def _context_tags_in(cwd: str) -> dict[str, str]:
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (some containers): leave it out
        user = None
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "hpctl"}
    if user:
        tags["mlflow.user"] = user
    tags.update(_git_tags(cwd))
    return tags


def _git(cwd: str, *args: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True, timeout=2, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _git_tags(cwd: str) -> dict[str, str]:
    """``mlflow.source.git.commit``, ``.branch`` and ``.repoURL`` of the git repository holding
    ``cwd`` (none outside one, or where git is missing)."""
    head = _git(cwd, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if head is None:
        return {}
    lines = head.splitlines()
    tags = {"mlflow.source.git.commit": lines[0]}
    if len(lines) > 1 and lines[1] != "HEAD":  # "HEAD": a detached checkout, no branch
        tags["mlflow.source.git.branch"] = lines[1]
    url = _git(cwd, "config", "--get", "remote.origin.url")
    if url:
        tags["mlflow.source.git.repoURL"] = url
    return tags


def _env_number(name: str, default: float) -> float:
    """A non-negative number from the environment (a bad value keeps the default)."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


class _Writer:
    """The process's background writer: one daemon thread, so writes land in the order sent.

    A submitted write starts at once (no polling interval). The thread is a daemon: a write
    stuck on a stalled tracking server never holds the process at exit (a
    ``ThreadPoolExecutor``'s thread is joined at exit, so it did).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="hpctl-mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _loop(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)


_WRITER: _Writer | None = None
_WRITER_LOCK = threading.Lock()
#: a run's end gave up waiting on the store (stalled or dead): the exit does not wait for it again
_GAVE_UP = False
#: a store :meth:`Tracker.open_or_offline` could not open: uri -> (when, why)
_UNREACHABLE: dict[str, tuple[float, str]] = {}
_WARNED_OFFLINE: set[str] = set()
#: seconds before :meth:`Tracker.open_or_offline` tries a store it could not open again
REOPEN_AFTER_S = 60.0


def _writer() -> _Writer:
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            _WRITER = _Writer()
            atexit.register(_drain_at_exit, _WRITER)
        return _WRITER


def _drain_at_exit(writer: _Writer) -> None:
    """Let writes nobody waited for (a tracker never ended) land before the process exits, for
    at most ``HPCTL_TRACKING_KILL_WAIT_S`` seconds: the daemon writer is not joined at exit."""
    if writer is not _WRITER or _GAVE_UP:  # forked away, or a run's end already gave up on a stalled store
        return
    try:
        writer.submit(lambda: None).result(timeout=_env_number("HPCTL_TRACKING_KILL_WAIT_S", 3.0))
    except Exception:  # noqa: BLE001 - a stalled store: exit anyway
        pass


def _forget_writer() -> None:  # a forked child has the writer but not its thread
    global _WRITER, _WRITER_LOCK
    _WRITER, _WRITER_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer)


class _QuietStoreErrors(logging.Filter):
    """Drops MLflow's own report of a failed store write (``SQLAlchemy database error``, a
    traceback of some 40 lines each) made from hpctl's writer: the error reaches hpctl,
    which says it once, in one line (a full disk printed 1,600 lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not threading.current_thread().name.startswith("hpctl-mlflow-writer")


_QUIET = _QuietStoreErrors()


def _quiet_store_logs() -> None:
    for name in ("mlflow", "alembic"):  # MLflow announces database creation/migration at INFO on stderr
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    logger = logging.getLogger("mlflow.store.db.utils")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


def _store_error(exc: BaseException) -> str:
    """A failed write in one line: the database's own words where SQLAlchemy wraps them
    (its first line is often "raised as a result of Query-invoked autoflush")."""
    import re

    found = re.search(r"\((sqlite3\.\w+|psycopg2?\.\w+|pymysql\.\w+)\) ([^\n\[]+)", str(exc))
    if found:
        return f"{found.group(1)}: {found.group(2).strip()}"
    return one_line(exc)


def _disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "disk is full" in text or "no space left" in text or getattr(exc, "errno", None) == 28


def _set_status_in_place(db: Path, run_id: str, status: str) -> None:
    """Set a run's status in a sqlite store whose disk is full: MLflow's update needs room
    for a rollback journal, an update of one row in place (journal in memory) does not."""
    con = sqlite3.connect(str(db), timeout=10)
    try:
        con.execute("PRAGMA journal_mode=MEMORY")
        with con:
            cur = con.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                              (status, int(time.time() * 1000), run_id))
            if cur.rowcount != 1:
                raise RuntimeError(f"run {run_id} not found")
    finally:
        con.close()


class _Held:
    """A SIGTERM or Ctrl-C held back by :func:`_signals_held` (``got``: its number)."""

    got: int | None = None
    at = 0.0


@contextmanager
def _signals_held() -> Iterator[_Held]:
    """Hold SIGTERM and Ctrl-C back (main thread only) while a run's end is recorded, then
    deliver them as they would have been: a signal arriving inside :meth:`Tracker.end` left
    the run RUNNING. The caller bounds the time it holds them (see ``held.got``)."""
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def hold(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
        if held.got is None:
            held.got, held.at = signum, time.monotonic()

    saved: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            prev = signal.signal(sig, hold)
        except (ValueError, OSError):
            continue
        if prev is None:  # a handler not set from Python: it cannot be put back, so leave it
            signal.signal(sig, signal.SIG_DFL)
            continue
        saved[sig] = prev
    try:
        yield held
    finally:
        for sig, prev in saved.items():
            signal.signal(sig, prev)
        if held.got is not None and held.got in saved:
            prev = saved[held.got]
            if callable(prev):
                prev(held.got, None)  # e.g. hpctl's SIGTERM handler or Python's Ctrl-C: raises here
            elif prev == signal.SIG_DFL:
                os.kill(os.getpid(), held.got)


class _Op:
    """One write handed to the writer: what it carries, for the count of what was not logged."""

    __slots__ = ("future", "kind", "n", "tracker", "metrics", "attempts")

    def __init__(self, future: Future, kind: str, n: int, tracker: "Tracker", metrics: list | None,
                 attempts: int) -> None:
        self.future, self.kind, self.n, self.tracker = future, kind, n, tracker
        self.metrics, self.attempts = metrics, attempts


#: how MLflow's losses are named in the one-line report (kind -> singular, plural)
_KINDS = {"metrics": ("metric", "metrics"), "params": ("parameter write", "parameter writes"),
          "tags": ("tag write", "tag writes"), "artifacts": ("artifact", "artifacts"),
          "runs": ("nested run", "nested runs"), "repairs": ("run-closing", "run-closings"),
          "status": ("final status", "final statuses")}


class _Ledger:
    """What a run and its nested runs handed to the writer, and what MLflow did not get.

    Used from the run's own thread only (the writer touches the futures alone)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.pending: list[_Op] = []
        self.retry: list[tuple["Tracker", list, int]] = []  # failed metric batches, sent again with the next flush
        self.lost = {k: 0 for k in _KINDS}
        self.last_error: str | None = None
        self.behind = False  # writes outlived a flush's wait: flushes do not wait until they are done
        self.last_done = time.monotonic()
        self.held = 0  # metrics handed to the writer or waiting for a retry
        self.lost_since_flush = False
        self.warned: set[str] = set()
        self.reported = False

    def done(self, future: Future) -> None:  # the writer's thread
        self.last_done = time.monotonic()

    def lose(self, kind: str, n: int) -> None:
        self.lost[kind] = self.lost.get(kind, 0) + n
        self.lost_since_flush = True

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            print(f"hpctl: warning: {message}", file=sys.stderr, flush=True)


class Tracker:
    """One MLflow run (optionally nested under a parent) with batched metric logging.

    Only opening the run waits for the store; every later write goes to the background
    writer (see the module's docstring): a stalled or dead store never stops the run.
    """

    #: whether :meth:`end` sets the run's status (False for a run someone else owns)
    owns_run = True
    #: no MLflow run behind this tracker (:meth:`open_or_offline`): every write counts as not logged
    offline = False
    #: how often a failed metric batch is sent again before it counts as not logged
    RETRIES = 3

    def __init__(self, uri: str | None = None, experiment: str = "hpctl", *, run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, flush_every: int = 2000,
                 tags: dict[str, str] | None = None, reopen: bool = True, experiment_id: str | None = None) -> None:
        """Open (``run_id``) or create a run; ``reopen`` marks an existing run RUNNING again.

        ``experiment_id``: the id of ``experiment`` when the caller has it (a nested run goes
        to its parent's experiment): saves looking the name up.
        """
        t0 = time.perf_counter()
        import mlflow  # noqa: F401  (slow import, kept out of `import hpctl`)

        _quiet_store_logs()
        from mlflow.tracking import MlflowClient

        self._setup(uri or default_tracking_uri(), flush_every, None)
        try:
            with _store_guard(self.uri):
                self.client = MlflowClient(tracking_uri=self.uri)
                if run_id is not None and experiment_id is None:
                    # an existing run (a resume, a Trainer's run) lives in its own experiment: creating
                    # `experiment` by name would leave an empty one (the Trainer callback's hpctl-trainer)
                    experiment_id = self.client.get_run(run_id).info.experiment_id
                self.experiment_id = experiment_id or _experiment_id(self.client, self.uri, experiment)
                if run_id is not None:
                    self.run_id = run_id
                    if reopen:
                        self.client.update_run(run_id, status="RUNNING")
                else:
                    all_tags = {**_context_tags(), **({"mlflow.runName": run_name} if run_name else {}), **(tags or {})}
                    if parent_run_id:
                        all_tags["mlflow.parentRunId"] = parent_run_id
                    run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
                    self.run_id = run.info.run_id
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure is a user-facing config problem
            raise ConfigError(f"cannot open MLflow tracking URI {self.uri!r}: {one_line(exc, with_type=False)}") from None
        self.seconds = time.perf_counter() - t0
        self.setup_seconds = self.seconds

    @classmethod
    def open_or_offline(cls, uri: str | None, experiment: str, **kwargs: Any) -> "Tracker":
        """Open a run as :class:`Tracker` does or, when the store cannot be opened, an
        offline tracker that runs on without MLflow: every write counts as not logged, so
        the run's end says so in one line and the run folder's ``mlflow_unlogged.json``
        records it (the run folder holds everything).

        For a run that must not stop because the store stalled after its caller opened
        its own run on it fine: a trial of ``hpctl compare``. A store that could not be
        opened is not asked again by this process for :data:`REOPEN_AFTER_S` seconds, so
        each later trial does not wait for it."""
        uri = uri or default_tracking_uri()
        since = _UNREACHABLE.get(uri)
        reason = None
        if since is not None and time.monotonic() - since[0] < REOPEN_AFTER_S:
            reason = since[1]
        else:
            try:
                return cls(uri, experiment, **kwargs)
            except ConfigError as exc:
                reason = str(exc)
                _UNREACHABLE[uri] = (time.monotonic(), reason)
                if uri not in _WARNED_OFFLINE:
                    _WARNED_OFFLINE.add(uri)
                    print(f"hpctl: warning: {shorten(reason, 200)}; the run goes on without MLflow "
                          f"(its folder keeps everything and its mlflow_unlogged.json says what MLflow lacks)",
                          file=sys.stderr, flush=True)
        tracker = cls.__new__(cls)
        tracker._setup(uri, kwargs.get("flush_every", 2000), None)
        tracker.offline, tracker.client, tracker.experiment_id = True, None, None
        tracker._ledger.last_error = reason
        return tracker

    def _setup(self, uri: str, flush_every: int, ledger: _Ledger | None) -> None:
        self.uri = uri
        self.flush_every = int(flush_every)
        self._ledger = ledger or _Ledger(uri)
        self._metrics: list[Any] = []
        self.run_id: str | None = None
        self.seconds = self.setup_seconds = 0.0
        self.ended = False
        #: the most a flush waits for the writer (not at all while it is behind)
        self.wait_s = _env_number("HPCTL_TRACKING_WAIT_S", 2.0)
        #: :meth:`end` gives up once no write has completed for this long
        self.stall_s = _env_number("HPCTL_TRACKING_STALL_S", 60.0)
        #: :meth:`end` of an interrupted run (or one a signal arrives in) waits at most this long
        self.kill_wait_s = _env_number("HPCTL_TRACKING_KILL_WAIT_S", 3.0)
        #: metrics held in memory at most (queued, in flight, waiting for a retry); more are dropped
        self.max_buffer = int(_env_number("HPCTL_TRACKING_BUFFER", 500_000))

    def nested(self, run_name: str, tags: dict[str, str] | None = None) -> "Tracker":
        """A nested run under this one, created by the writer (so a stalled store never
        holds the caller); it shares this run's count of what MLflow did not get, and its
        :meth:`end` does not wait (this run's end waits for everything)."""
        child = Tracker.__new__(Tracker)
        child._setup(self.uri, self.flush_every, self._ledger)
        child.offline = self.offline
        child.client, child.experiment_id = self.client, self.experiment_id
        child.wait_s, child.stall_s, child.kill_wait_s, child.max_buffer = (
            self.wait_s, self.stall_s, self.kill_wait_s, self.max_buffer)
        all_tags = {**_context_tags(), "mlflow.runName": run_name, "mlflow.parentRunId": self.run_id, **(tags or {})}

        def create() -> None:
            child.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id

        child._submit("runs", 1, create)
        return child

    # ------------------------------------------------------------------ logging ---
    @contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def _submit(self, kind: str, n: int, fn: Any, *args: Any, batch: list | None = None, attempts: int = 0,
                **kwargs: Any) -> None:
        if self.offline:  # no run to write to: counted, and the run folder keeps it
            self._ledger.lose(kind, n)
            return
        future = _writer().submit(fn, *args, **kwargs)
        future.add_done_callback(self._ledger.done)
        self._ledger.pending.append(_Op(future, kind, n, self, batch, attempts))

    def _log_batch(self, **kwargs: Any) -> None:  # on the writer, after a nested run's creation
        if self.run_id is None:
            raise RuntimeError("the nested run could not be created")
        self.client.log_batch(self.run_id, **kwargs)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        with self._timed():
            flat: dict[str, str] = {}
            _flatten("", params, flat)
            items = [Param(k[:250], v[:6000]) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                chunk = items[i:i + 100]
                self._submit("params", len(chunk), self._log_batch, params=chunk)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self._timed():
            if tags:
                self._submit("tags", len(tags), self._log_batch,
                             tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def metric(self, key: str, value: float, step: int = 0) -> None:
        """Queue one metric (non-finite values are skipped: MLflow rejects NaN in some stores)."""
        from mlflow.entities import Metric

        with self._timed():
            value = float(value)
            if not math.isfinite(value):
                return
            ledger = self._ledger
            if len(self._metrics) + ledger.held >= self.max_buffer:
                ledger.lose("metrics", 1)
                ledger.warn_once("buffer", f"MLflow ({self.uri}) is not keeping up: {self.max_buffer:,} metrics wait "
                                           "in memory (HPCTL_TRACKING_BUFFER), so newer ones are dropped from MLflow "
                                           "(the run folder keeps every event); the run goes on")
                return
            self._metrics.append(Metric(key, value, int(time.time() * 1000), int(step)))
            if len(self._metrics) >= self.flush_every:
                self._reap()
                self._hand()

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.metric(k, v, step)

    def _send(self, metrics: list, attempts: int) -> None:
        for k in range(0, len(metrics), 1000):  # MLflow's per-request limit
            chunk = metrics[k:k + 1000]
            self._submit("metrics", len(chunk), self._log_batch, batch=chunk, attempts=attempts, metrics=chunk)

    def _hand(self) -> None:
        """Hand the queued metrics, and failed batches due for another try, to the writer."""
        ledger = self._ledger
        retry, ledger.retry = ledger.retry, []
        for tracker, metrics, attempts in retry:
            tracker._send(metrics, attempts)
        batch, self._metrics = self._metrics, []
        self._send(batch, 0)
        ledger.held += len(batch)

    def _reap(self) -> None:
        """Take stock of finished writes: failed metric batches wait for a retry, other
        failures count as not logged."""
        ledger = self._ledger
        still: list[_Op] = []
        for op in ledger.pending:
            if not op.future.done():
                still.append(op)
                continue
            exc = op.future.exception()
            if exc is None:
                continue
            ledger.last_error = _store_error(exc)
            if op.kind == "metrics" and op.attempts < self.RETRIES:
                ledger.retry.append((op.tracker, op.metrics, op.attempts + 1))
            else:
                ledger.lose(op.kind, op.n)
            ledger.warn_once("failing", f"writes to MLflow ({self.uri}) fail ({shorten(ledger.last_error, 160)}); "
                                        "the run goes on, metrics are sent again later")
        ledger.pending = still
        ledger.held = (sum(op.n for op in still if op.kind == "metrics")
                       + sum(len(m) for _, m, _ in ledger.retry))

    def _wait(self, timeout: float | None) -> bool:
        futures = [op.future for op in self._ledger.pending]
        if not futures:
            return True
        _, not_done = wait_futures(futures, timeout=timeout)
        return not not_done

    def flush(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Send queued metrics; with ``wait`` wait for the writer at most ``timeout``
        seconds (default :attr:`wait_s`; not at all while it is still behind an earlier
        flush). Returns whether everything handed so far is in the store."""
        with self._timed():
            self._reap()
            self._hand()
            if not wait:
                return False
            ledger = self._ledger
            limit = 0.0 if ledger.behind else (self.wait_s if timeout is None else timeout)
            done = self._wait(limit)
            ledger.behind = not done
            if not done and limit > 0:
                ledger.warn_once("stalled", f"MLflow ({self.uri}) has not answered for {limit:g} s: the run goes on, "
                                            "metrics wait in memory and are sent when it answers")
            self._reap()
            ok = done and not ledger.retry and not ledger.lost_since_flush
            ledger.lost_since_flush = False
            return ok

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._timed():
            path = Path(path)
            if path.is_dir():
                self._submit("artifacts", 1, self._log_artifact, str(path), artifact_path, True)
            elif path.exists():
                self._submit("artifacts", 1, self._log_artifact, str(path), artifact_path, False)

    def _log_artifact(self, path: str, artifact_path: str | None, folder: bool) -> None:
        if self.run_id is None:
            raise RuntimeError("the nested run could not be created")
        if folder:
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

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

    def close_children(self, status: str = "KILLED") -> None:
        """End nested runs of this run that are still RUNNING (left by a killed process).

        Done by the writer, before anything handed to it later (this run's end waits for it)."""
        with self._timed():
            self._submit("repairs", 1, self._close_children, status)

    def _close_children(self, status: str) -> int:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}' and attributes.status = 'RUNNING'")
        for r in runs:
            self.client.set_terminated(r.info.run_id, status=status)
        return len(runs)

    def _terminate(self, status: str) -> None:
        if self.run_id is None:
            raise RuntimeError("the nested run could not be created")
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            db = _sqlite_path(self.uri)
            if db is None or not _disk_full(exc):
                raise
            _set_status_in_place(db, self.run_id, status)

    # ------------------------------------------------------------------- ending ---
    def end(self, status: str = "FINISHED", error: str | None = None, *, wait: bool = True) -> None:
        """Record the run's end: what is queued, ``error`` as a tag, the status.

        With ``wait`` (a nested run's end does not wait: its parent's does) it waits while
        writes complete, at most :attr:`stall_s` without one, at most :attr:`kill_wait_s`
        for an interrupted run (``KILLED``) or once SIGTERM or Ctrl-C arrives (they are held
        back meanwhile and delivered after), then says in one line what MLflow did not get
        (:meth:`unlogged`)."""
        if self.ended:
            return
        with self._timed(), _signals_held() as held:
            self._reap()
            self._hand()
            if error:
                self.set_tags({"error": error})
            if self.owns_run:
                self._submit("status", 1, self._terminate, status)
            self.ended = True
            if wait:
                self._drain(interrupted=status == "KILLED", held=held)
                self._report()

    def _drain(self, *, interrupted: bool, held: _Held) -> None:
        ledger = self._ledger
        t0 = time.monotonic()
        while True:
            self._reap()
            if ledger.retry:
                self._hand()
            if not ledger.pending:
                return
            now = time.monotonic()
            if interrupted and now - t0 >= self.kill_wait_s:
                break
            if held.got is not None and now - held.at >= self.kill_wait_s:
                break
            if now - max(ledger.last_done, t0) >= self.stall_s:
                break
            wait_futures([op.future for op in ledger.pending], timeout=0.1, return_when="FIRST_COMPLETED")
        global _GAVE_UP
        _GAVE_UP = True
        for op in ledger.pending:  # abandoned: the writer may still finish them, unconfirmed
            ledger.lose(op.kind, op.n)
        ledger.pending = []
        ledger.held = 0
        ledger.last_error = ledger.last_error or f"no answer for {time.monotonic() - t0:.0f} s"

    def unlogged(self) -> dict[str, Any] | None:
        """What MLflow did not get (counts by kind, the last error), or None when it got everything."""
        ledger = self._ledger
        lost = {k: v for k, v in ledger.lost.items() if v}
        if not lost:
            return None
        return {"tracking_uri": self.uri, "mlflow_run_id": self.run_id, "not_logged": lost,
                "status_recorded": not lost.get("status"), "last_error": ledger.last_error}

    def unlogged_line(self) -> str | None:
        info = self.unlogged()
        if info is None:
            return None
        parts = [f"{n:,} {_KINDS[k][n != 1]}" for k, n in info["not_logged"].items()]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        which = f"run {self.run_id}" if self.run_id else "this run (its MLflow run could not be opened)"
        return (f"MLflow ({self.uri}) did not get {listed} of {which} "
                f"({shorten(info['last_error'] or '', 160)}); the run folder keeps everything")

    def _report(self) -> None:
        line = self.unlogged_line()
        if line and not self._ledger.reported:
            self._ledger.reported = True
            print(f"hpctl: warning: {line}", file=sys.stderr, flush=True)


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
        """Flush queued metrics at a checkpoint, at most every ``min_interval`` seconds.

        ``logged`` moves on only when the store has every event so far; otherwise (a store
        that is slow, stalled or failing: the tracker warns once and the run goes on) those
        events are logged again by a resumed run."""
        if self.tracker is not None and time.perf_counter() - self.last_flush >= min_interval:
            try:
                complete = self.tracker.flush()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop training
                warn(self.tracker, f"metrics flush failed: {type(exc).__name__}: {exc}")
                complete = False
            if complete:
                self.logged = len(self.history)
            self.last_flush = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        if event["event"] == "fault":
            self.faults += 1
        if self.tracker is not None:
            self.tracker.on_event(event, self.names)


class PhaseRuns:
    """Nested MLflow runs, one per long phase of a plugin (e.g. grasp_lora's adapter training).

    Used as a task's ``phase_listener``; each child run gets the phase's own settings, its
    per-step metrics, wall time and whatever counters the plugin reports. The controller
    itself gets none: its settings are the run's parameters and its time the run's
    ``time/controller_s``, so such a child would hold nothing of its own. The children are
    created by the writer (:meth:`Tracker.nested`); tracking problems here only cost them.
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
                child = self.parent.nested(name, tags={"hpctl.phase": name})
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
                child.end(str(info.get("status", "FINISHED")), wait=False)  # the parent's end waits for it
        except Exception as exc:  # noqa: BLE001
            warn(self.parent, f"nested run for phase {name!r} not recorded: {exc}")


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


