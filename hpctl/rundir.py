"""The run directory: what a run writes to disk, and reads back to resume.

A run directory holds ``spec.json`` (what was asked), ``checkpoint.safetensors`` (after
every round, written atomically; see :mod:`hpctl.statefile`: reading it cannot run code),
``history.jsonl`` (every probe and commit, appended as the run goes, so a checkpoint's
cost does not grow with the run), ``result.json`` (written as soon as the result exists,
before plots and artifact uploads), ``history.json`` and ``run.png``. Everything here is
file I/O; :mod:`hpctl.runner` decides when to call it.

Every run folder is hpctl's by its marker, :data:`MARKER` (``.hpctl-run``: the run's id and
the names the run wrote), and is written by one process at a time, which holds its
:data:`LOCK` (``.hpctl-lock``, an ``flock``; see :class:`RunLock`). :func:`open_run_dir`
refuses a non-empty folder that is not a run, and ``--overwrite`` removes only what the
run there wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.config import RunOptions
from hpctl import statefile
from hpctl.errors import ConfigError, ResumeError

CHECKPOINT = "checkpoint.safetensors"
HISTORY_LOG = "history.jsonl"
SPEC = "spec.json"
RESULT = "result.json"
#: what MLflow did not get (a stalled, dead or full store), written at the run's end when anything
UNLOGGED = "mlflow_unlogged.json"
#: minimum seconds between two checkpoints (every round of a real training run is longer)
CHECKPOINT_EVERY_S = 0.25


@dataclass
class RunSpec:
    """Everything that defines a run (saved as ``spec.json`` for ``--resume``)."""

    plugin: str
    options: RunOptions = field(default_factory=RunOptions)
    plugin_config: dict[str, Any] = field(default_factory=dict)
    command: str = "run"

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "options": dataclasses.asdict(self.options),
                "plugin_config": self.plugin_config, "command": self.command}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSpec":
        return cls(plugin=data["plugin"], options=RunOptions(**data["options"]),
                   plugin_config=dict(data["plugin_config"]), command=data.get("command", "run"))


#: the marker that makes a folder an hpctl run folder: JSON with the run's id, written first
MARKER = ".hpctl-run"
#: the lock file of a run folder: held (``flock``) by the one process writing the folder,
#: and holding that process's pid, host and start time
LOCK = ".hpctl-lock"
#: a trial folder's mark: the comparison that started it (a retry of the same trial resumes)
TRIAL_MARK = ".hpctl-trial"
#: the names hpctl itself writes in a run folder (a comparison's, a session's, a Trainer callback's
#: included): what ``--overwrite`` removes from a folder of an older hpctl, which has no marker
KNOWN_FILES = frozenset({
    SPEC, CHECKPOINT, HISTORY_LOG, RESULT, "history.json", "run.png", "error.txt", "controller_state.json",
    TRIAL_MARK, "compare.json", "compare.png", "callback.json", MARKER, UNLOGGED,
    *(n + ".tmp" for n in (SPEC, CHECKPOINT, RESULT, "history.json", "controller_state.json", "compare.json",
                            "error.txt", UNLOGGED)),
})


def _entries(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(f"--out {str(path)!r} is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"output directory {str(path)!r} cannot be read: {exc.strerror or exc}") from None


def _listed(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of the run folder ``path`` (None where there is none or it is not hpctl's)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None


def legacy_run(path: Path) -> bool:
    """Whether ``path`` holds a run of an hpctl from before run folders had a marker: a
    ``spec.json`` in hpctl's format (a run's, a comparison trial's or a Session's) and a
    ``checkpoint.safetensors`` that is an hpctl state file or a ``result.json`` with its MLflow run.

    Any other folder holding a ``spec.json`` (a project of the user's) is not a run."""
    try:
        spec = json.loads((path / SPEC).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(spec, dict):
        return False
    if not ({"plugin", "options", "plugin_config"} <= spec.keys() or
            (spec.get("command") == "session" and {"knob", "controller"} <= spec.keys())):
        return False
    try:
        result = json.loads((path / RESULT).read_text(encoding="utf-8"))
        if isinstance(result, dict) and "mlflow_run_id" in result and "out_dir" in result:
            return True
    except (OSError, ValueError):
        pass
    try:
        return statefile._metadata((path / CHECKPOINT).read_bytes()).get("format") == statefile.FORMAT
    except (OSError, ValueError):
        return False


class RunLock:
    """The one-writer lock of a run folder: an ``flock`` on its :data:`LOCK` file.

    Taken without waiting: a folder another process (or another object in this process)
    writes is refused in one line naming the holder (pid, host, start time, read from the
    lock file, which the holder rewrites on taking it). The operating system drops the lock
    when its holder dies, however it dies (SIGKILL too), so a stale lock never blocks a
    resume. A child forked while the lock is held does not keep it (its copy of the file is
    closed in the child). Release it with :meth:`release` (idempotent) or with the object.
    """

    def __init__(self, folder: Path, *, what: str = "run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"run folder {str(self.folder)!r} is not writable (its lock file {LOCK} cannot be "
                              f"made: {exc.strerror or exc})") from None
        try:
            _flock(fd)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{str(self.folder)!r} is in use: another hpctl {what} writes to it "
                              f"({_holder(self.path)}); wait for it to end or choose another folder") from None
        except OSError as exc:  # a file system without locks: no second writer is refused there
            os.close(fd)
            raise ConfigError(f"cannot lock {str(self.folder)!r}: {exc.strerror or exc}") from None
        self.fd: int | None = fd
        self.created = False  # open_run_dir: whether the folder was made for this run
        _HELD[fd] = self
        _OPENED.append((self.folder, what))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now().astimezone().isoformat(timespec="seconds"), "what": what}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:  # the holder's details are a courtesy: the lock is what counts
            pass

    def discard(self) -> None:
        """Undo :func:`open_run_dir` for a run that never started (a user error): the folder
        if it was made for the run, else the marker; then release the lock."""
        try:
            if self.created:
                shutil.rmtree(self.folder, ignore_errors=True)
            else:
                for name in (MARKER, LOCK):
                    (self.folder / name).unlink(missing_ok=True)
        finally:
            self.release()

    def release(self) -> None:
        """Let another writer in (idempotent)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            _HELD.pop(fd, None)
            os.close(fd)  # closing the file drops the flock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


#: the lock files this process holds, by descriptor (closed in a forked child); weak, so a
#: lock whose owner is gone is collected with it, and its file closed
_HELD: "weakref.WeakValueDictionary[int, RunLock]" = weakref.WeakValueDictionary()
#: every folder a RunLock was taken on in this process, with what took it (for the CLI's exit line)
_OPENED: list[tuple[Path, str]] = []


def _flock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _after_fork_in_child() -> None:
    for fd, lock in list(_HELD.items()):
        lock.fd = None  # the child's copy: closing it leaves the parent's lock in place
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        who = f"pid {int(info['pid'])} on {info['host']}, started {info['started']}"
        return who + (" in this process" if int(info["pid"]) == os.getpid() and info["host"] == socket.gethostname()
                      else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its details yet"


def resumable_folders() -> list[tuple[Path, str]]:
    """``(folder, what)`` of every folder this process locked that a ``--resume`` can continue:
    a run with its checkpoint, a comparison with its spec (what the CLI's exit line offers after
    an interrupt; a folder whose run was killed before its first checkpoint is not one)."""
    seen, out = set(), []
    for folder, what in _OPENED:
        key = (str(folder), what)
        if key in seen:
            continue
        seen.add(key)
        if (folder / (SPEC if what == "compare" else CHECKPOINT)).is_file():
            out.append((folder, what))
    return out


def lock_run_dir(folder: str | Path, *, what: str = "run") -> RunLock:
    """:class:`RunLock` on ``folder``; in this process, a lock held by an object nobody
    references any more (a dropped Session in a reference cycle) is collected first."""
    try:
        return RunLock(Path(folder), what=what)
    except ConfigError:
        if not any(Path(lock.folder).resolve() == Path(folder).resolve() for lock in list(_HELD.values())):
            raise
    import gc

    gc.collect()
    return RunLock(Path(folder), what=what)


def _protected(path: Path, tracking_uri: str | None) -> str | None:
    """Why ``--overwrite`` must not empty ``path`` (None if it may)."""
    here = Path.cwd().resolve()
    target = path.resolve()
    if target == here or target in here.parents:
        return "it is the current directory" if target == here else "it holds the current directory"
    from hpctl.tracking import default_tracking_uri

    from urllib.parse import urlparse

    uri = tracking_uri or default_tracking_uri()
    store = None
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///"):]).resolve().parent  # the database's folder
    elif uri.startswith("file:"):
        store = Path(urlparse(uri).path).resolve()
    elif "://" not in uri:  # a plain path is a file store
        store = Path(uri).resolve()
    if store is not None and (store == target or target in store.parents):
        return f"it holds the MLflow store ({store})"
    return None


def _remove_run_files(path: Path, marker: dict[str, Any] | None) -> None:
    """Remove what the run in ``path`` wrote: the names its marker lists (or, for an older run
    without a marker, hpctl's own names and the artifacts its result lists); nothing else."""
    names = set(KNOWN_FILES)
    if marker is not None:
        names |= {str(n) for n in marker.get("files", []) if isinstance(n, str)}
    else:
        try:
            result = json.loads((path / RESULT).read_text(encoding="utf-8"))
            listed = [*result.get("artifacts", []), *result.get("controller_files", [])]
            names |= {Path(p).name for p in listed if isinstance(p, str) and
                      Path(p).resolve().parent == path.resolve()}
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    names -= {LOCK, "", ".", ".."}
    for name in sorted(names):
        item = path / name
        if "/" in name or os.sep in name or not (item.exists() or item.is_symlink()):
            continue
        if item.is_dir() and not item.is_symlink():
            if not _holds_other_records(item):
                shutil.rmtree(item)
        else:
            item.unlink()


def _holds_other_records(folder: Path) -> bool:
    """Whether ``folder`` holds another run (its marker) or an MLflow store: a folder made in a
    run folder while the run ran (``mlruns/`` of a run made with ``--out .``, another run's
    folder under ``runs/``) is never removed with it."""
    if folder.name == "mlruns":
        return True
    try:
        return any(p.name in (MARKER, SPEC, "mlflow.db", "meta.yaml") for p in folder.rglob("*"))
    except OSError:
        return True


def open_run_dir(out: str | None, plugin: str, controller: str, seed: int, *, overwrite: bool = False,
                 command: str = "run", tracking_uri: str | None = None) -> tuple[Path, RunLock]:
    """The run folder, created, locked for this writer and marked as hpctl's; and its lock.

    ``out``: the folder (default ``runs/PLUGIN-CONTROLLER-sSEED-TIME``). It may be new,
    empty, or hold a run of hpctl's (its :data:`MARKER`, or an older hpctl's run recognised
    by :func:`legacy_run`). Any other non-empty folder is refused in one line naming what
    it holds: hpctl never writes over files it did not write. A folder holding a run is
    refused unless ``overwrite``; then only what that run wrote is removed, and never from
    the current directory, a folder above it, or one holding the MLflow store. The lock
    (:class:`RunLock`) is taken before anything is removed or written, so a folder
    another process writes is refused, and nothing of it touched.
    """
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out = os.path.join("runs", f"{plugin}-{controller}-s{seed}-{stamp}")
    path = Path(out)
    entries = _entries(path)
    # MARKER's temporary name too: a writer that started a moment earlier may be writing its marker
    # (it holds the lock, so the lock below refuses this one in one line naming it)
    ours = {MARKER, MARKER + ".tmp", LOCK, TRIAL_MARK}
    marker = read_marker(path) if MARKER in entries else None
    holds_run = marker is not None or (SPEC in entries and legacy_run(path))
    foreign = [n + ("/" if (path / n).is_dir() else "") for n in entries if n not in ours]
    if not holds_run and foreign:
        raise ConfigError(f"--out {str(path)!r} is not empty and not an hpctl run folder (it holds "
                          f"{_listed(foreign)}); choose a new or empty folder")
    if holds_run and overwrite:
        why = _protected(path, tracking_uri)
        if why:
            raise ConfigError(f"--overwrite does not empty {str(path)!r}: {why}; choose another --out")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output directory {str(path)!r} is not writable: {exc.strerror or exc}") from None
    lock = lock_run_dir(path, what=command)
    lock.created = created
    try:
        # under the lock: what another writer may have finished since the first look
        entries = _entries(path)
        marker = read_marker(path) if MARKER in entries else None
        if marker is not None:  # a marked folder no run has written into yet holds no run
            holds_run = any(n not in ours and n not in marker.get("kept", ()) for n in entries)
        else:
            holds_run = SPEC in entries and legacy_run(path)
        if holds_run and not overwrite:
            if command == "compare":
                raise ConfigError(f"{str(path)!r} already holds a comparison; choose another --out")
            raise ConfigError(f"{str(path)!r} already holds a run; resume it with --resume, choose another "
                              f"--out, or pass --overwrite to replace it")
        if holds_run:
            _remove_run_files(path, marker)
        elif marker is not None:
            _remove_run_files(path, {"files": []})  # only hpctl's own names
        kept = [n for n in _entries(path) if n not in ours]
        atomic_write_json(path / MARKER, {"run_id": uuid.uuid4().hex, "command": command,
                                          "created": datetime.now().astimezone().isoformat(timespec="seconds"),
                                          "kept": kept, "files": []})
    except OSError as exc:
        lock.release()
        raise ConfigError(f"output directory {str(path)!r} is not writable: {exc.strerror or exc}") from None
    except BaseException:
        lock.release()
        raise
    return path, lock


def note_files(path: Path) -> None:
    """Record in the run folder's marker the names the run has written so far (what
    ``--overwrite`` may remove later); names that were there before the run are not its."""
    marker = read_marker(path)
    if marker is None:
        return
    kept = set(marker.get("kept", []))
    files = [n for n in _entries(path) if n not in kept and n not in (MARKER, LOCK)]
    if files != marker.get("files"):
        try:
            atomic_write_json(path / MARKER, {**marker, "files": files})
        except OSError:
            pass


def mark_legacy(path: Path, command: str = "run") -> None:
    """Give a run folder of an older hpctl (no marker) its marker, when it is resumed: hpctl's
    own names are the run's, anything else there is kept."""
    if (path / MARKER).exists():
        return
    kept = [n for n in _entries(path) if n not in KNOWN_FILES and n != LOCK]
    try:
        atomic_write_json(path / MARKER, {"run_id": uuid.uuid4().hex, "command": command,
                                          "created": datetime.now().astimezone().isoformat(timespec="seconds"),
                                          "kept": kept, "files": []})
    except OSError:
        pass


def prepare_out_dir(out: str | None, plugin: str, controller: str, seed: int, *, overwrite: bool = False,
                    command: str = "run", tracking_uri: str | None = None) -> Path:
    """:func:`open_run_dir` for a caller that writes the folder without holding its lock."""
    path, lock = open_run_dir(out, plugin, controller, seed, overwrite=overwrite, command=command,
                              tracking_uri=tracking_uri)
    lock.release()
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all; a failed write (a full disk) leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def to_jsonable(obj: Any, *, nonfinite: Callable[[float], Any] = str) -> Any:
    """``obj`` with numpy scalars and arrays, tuples, paths and dict keys made plain JSON; a
    non-finite float becomes ``nonfinite(x)`` (``"inf"`` by default, so it survives a round
    trip as text; pass ``lambda x: None`` for a JSON null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nonfinite=nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite=nonfinite) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), nonfinite=nonfinite)
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return nonfinite(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a :mod:`hpctl.statefile`, never a pickle)."""
    atomic_write_bytes(out_dir / CHECKPOINT, statefile.dumps(state))


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    if not (out_dir / SPEC).is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    if not (out_dir / CHECKPOINT).is_file():
        raise ResumeError(f"{str(out_dir)!r} has no {CHECKPOINT} to resume from")
    path = out_dir / CHECKPOINT
    try:
        state = statefile.loads(path.read_bytes())
    except (statefile.StateFileError, OSError) as exc:
        raise ResumeError(f"checkpoint in {str(out_dir)!r} cannot be used: {exc}") from None
    # a state file of another kind (a Session's, a hand-made one) is no run checkpoint
    if not isinstance(state, dict):
        raise ResumeError(f"{str(path)!r} is not a run checkpoint (it holds a {type(state).__name__}, not a dict)")
    for key, kind in (("controller", dict), ("env", dict), ("history_len", int)):
        if key not in state:
            raise ResumeError(f"{str(path)!r} is not a run checkpoint (no {key!r} in it)")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ResumeError(f"{str(path)!r} is not a run checkpoint ({key!r} is a {type(state[key]).__name__})")
    return state


class HistoryLog:
    """``history.jsonl``: the run's events, appended at checkpoints, one JSON object a line.

    A checkpoint records how many events it covers; a resumed run keeps exactly those
    (events written after that checkpoint are redone, deterministically, so they are cut).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / HISTORY_LOG
        self.written = 0

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append ``events[self.written:]`` and make them durable."""
        new = events[self.written:]
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, default=_json_default) + "\n" for e in new))
            fh.flush()
            os.fsync(fh.fileno())
        self.written = len(events)

    def restore(self, count: int | None) -> list[dict[str, Any]]:
        """The first ``count`` events (all complete lines for None), and the file cut back to them."""
        events: list[dict[str, Any]] = []
        offset = 0
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    if len(events) == count:
                        break
                    if not line.endswith(b"\n"):
                        break  # a torn last line: the checkpoint never counted it
                    events.append(json.loads(line))
                    offset += len(line)
        except FileNotFoundError:
            pass
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResumeError(f"{str(self.path)!r} is corrupt: {exc}") from None
        if count is None:
            count = len(events)
        if len(events) < count:
            raise ResumeError(f"{str(self.path)!r} holds {len(events)} events, the checkpoint needs {count}")
        if self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)
        self.written = count
        return events


def read_spec(out_dir: str | Path) -> RunSpec:
    p = Path(out_dir) / SPEC
    if not p.is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    try:
        return RunSpec.from_json(json.loads(p.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ResumeError(f"{str(p)!r} is not a valid run spec: {exc}") from None
