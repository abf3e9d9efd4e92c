"""The hostile cases of issue 37: what a user, a kill, a full disk or a dead tracking server
did to hpctl that it did not handle, one function per case.

Each case builds its own tiny situation in a scratch folder (``work``), runs ``hpctl`` (in a
subprocess, for exit codes, signals and the absence of tracebacks) or the library (in
process), and returns ``(handled, detail)``: ``handled`` is the behaviour issue 37 asks
for (a one-line error naming the problem and a non-zero exit, no traceback, nothing
deleted that hpctl did not write, nothing left RUNNING, a run that goes on without its
tracking server), ``detail`` the one line observed (the error shown, or what went wrong).

:data:`CASES` holds them by name, each with its class (:data:`CLASSES`, the issue's
headings) and whether it is slow (tens of seconds: a tracking server, signal timing) or
needs a transformers Trainer (``llm``). ``python benchmarks/reliability.py --part hostile``
runs them all; ``tests/test_hostile.py`` runs each as a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

#: the issue's classes, in its order
CLASSES = {
    "deletes": "deletes or overwrites what it did not write",
    "interrupted": "an interrupted first run breaks the store",
    "server": "a stalled or dead tracking server stalls the run",
    "writers": "two writers, one run",
    "running": "runs left RUNNING",
    "input": "input not refused, or refused in the wrong words",
    "raw": "raw Python exceptions instead of HpctlError",
}


@dataclass(frozen=True)
class Case:
    name: str
    cls: str
    fn: Callable[[Path], tuple[bool, str]]
    slow: bool = False
    llm: bool = False
    needs: tuple[str, ...] = ()  # modules the case imports (the test skips without them)


CASES: dict[str, Case] = {}


def case(cls: str, *, slow: bool = False, llm: bool = False, needs: tuple[str, ...] = ()):
    assert cls in CLASSES

    def register(fn):
        name = fn.__name__
        CASES[name] = Case(name, cls, fn, slow=slow, llm=llm, needs=needs)
        return fn

    return register


def run_case(name: str, work: Path | None = None) -> tuple[bool, str]:
    """Run one case in ``work`` (a fresh temporary folder by default); an exception the case
    did not expect counts as not handled, with its one line as the detail."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix=f"hpctl-hostile-{name}-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        handled, detail = CASES[name].fn(work)
        return bool(handled), _line(_relative(detail, work))
    except Exception as exc:  # noqa: BLE001 - the harness reports, never stops
        return False, _line(_relative(f"case raised {type(exc).__name__}: {exc}", work))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------- helpers --
SYNTH = ["run", "synthetic", "--optimum", "0.3", "--noise", "0.02", "-c", "grpo"]
TINY = [*SYNTH, "--budget", "8", "--group-size", "4"]


def _relative(text: str, work: Path) -> str:
    """``text`` with the case's scratch folder left out of its paths (the same line every run)."""
    for folder in {str(work), str(work.resolve())}:
        text = str(text).replace(folder + os.sep, "").replace(folder, ".")
    return text


def _line(text: str, limit: int = 300) -> str:
    text = " | ".join(s.strip() for s in str(text).strip().splitlines() if s.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cache() -> Path:
    """One hpctl cache (the MLflow store template) for the cases that do not test its creation."""
    path = Path(tempfile.gettempdir()) / "hpctl-hostile-cache"
    path.mkdir(exist_ok=True)
    return path


def env(uri: str | None = None, **extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out.update({"HPCTL_CACHE": str(_cache()), "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    if uri:
        out["MLFLOW_TRACKING_URI"] = uri
    out.update(extra)
    return out


def store(work: Path) -> str:
    return f"sqlite:///{work / 'store' / 'mlflow.db'}"


def cli(args: list[str], cwd: Path, *, uri: str | None = None, timeout: float = 180,
        environ: dict | None = None) -> subprocess.CompletedProcess:
    """``hpctl ARGS`` in ``cwd``; a run past ``timeout`` is killed and reported with rc None."""
    p = popen(args, cwd, uri=uri, environ=environ)
    try:
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        kill(p)
        out, err = p.communicate()
        return subprocess.CompletedProcess(p.args, None, out, err + f"\n(still running after {timeout:.0f} s)")


def popen(args: list[str], cwd: Path, *, uri: str | None = None, environ: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args], cwd=cwd, env=environ or env(uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def script(code: str, cwd: Path, *, uri: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """A Python script in a process of its own (for exits, signals and atexit)."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env(uri),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, None, exc.stdout or "", f"(still running after {timeout:.0f} s)")


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def wait_for(pred: Callable[[], bool], timeout: float, p: subprocess.Popen | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        if p is not None and p.poll() is not None:
            return pred()
        time.sleep(0.02)
    return False


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [s for s in (p.stderr or "").strip().splitlines() if s.strip()]
    return lines[-1].strip() if lines else (p.stdout or "").strip()[-200:]


def _error_lines(err: str) -> list[str]:
    """The lines of ``err`` that report an error: hpctl's own (``hpctl: error: ...``) and any raw
    exception line (``ValueError: ...``); progress lines and ``hpctl: warning:`` lines are not."""
    return [s for s in err.splitlines()
            if s.startswith("hpctl: error") or re.match(r"^[\w.]+(Error|Exception)\b.*:", s.strip())]


def one_line_error(p: subprocess.CompletedProcess, *must: str, must_not: tuple[str, ...] = ()) -> tuple[bool, str]:
    """Refused: a non-zero exit, no traceback, the error one ``hpctl: error:`` line that names
    each of ``must`` (a file, a value) and none of ``must_not`` (a raw exception type, say)."""
    err = p.stderr or ""
    msg = last_line(p)
    if p.returncode is None:
        return False, f"not refused: {msg}"
    if p.returncode == 0:
        return False, f"accepted (exit 0): {_line(p.stdout)[-200:]}"
    if "Traceback" in err or "Traceback" in (p.stdout or ""):
        return False, f"traceback (exit {p.returncode}): {msg}"
    errors = _error_lines(err)
    if len(errors) > 1:
        return False, f"{len(errors)} error lines (exit {p.returncode}): {msg}"
    missing = [m for m in must if m not in msg]
    if missing:
        return False, f"the error does not name {missing[0]!r} (exit {p.returncode}): {msg}"
    bad = [m for m in must_not if m in msg]
    if bad:
        return False, f"the error says {bad[0]!r} (exit {p.returncode}): {msg}"
    return True, f"exit {p.returncode}: {msg}"


def raises_hpctl(fn: Callable[[], object], *must: str) -> tuple[bool, str]:
    """In process: ``fn()`` must raise an HpctlError whose message is one line (naming ``must``)."""
    from hpctl.errors import HpctlError

    try:
        got = fn()
    except HpctlError as exc:
        msg = str(exc)
        if "\n" in msg.strip():
            return False, f"{type(exc).__name__} of {len(msg.splitlines())} lines: {msg}"
        missing = [m for m in must if m not in msg]
        if missing:
            return False, f"{type(exc).__name__} does not name {missing[0]!r}: {msg}"
        return True, f"{type(exc).__name__}: {msg}"
    except Exception as exc:  # noqa: BLE001 - what the case looks for
        return False, f"raw {type(exc).__name__}: {exc}"
    return False, f"accepted: returned {got!r}"[:200]


def runs_in(uri: str, status: str | None = "RUNNING") -> list:
    """The MLflow runs of the store ``uri`` (with ``status``, or all)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], max_results=5000) if exps else []
    return [r for r in runs if status is None or r.info.status == status]


def probe_ids(folder: Path) -> list[int]:
    path = folder / "history.json"
    if path.is_file():
        events = json.loads(path.read_text())
    else:
        events = [json.loads(s) for s in (folder / "history.jsonl").read_text().splitlines() if s.strip()]
    return [e["probe"] for e in events if e.get("event") == "probe"]


def _killed_run(work: Path, name: str, uri: str, *, budget: int = 200) -> Path:
    """A run SIGKILLed after its first checkpoint (resumable)."""
    folder = work / name
    p = popen([*SYNTH, "--budget", str(budget), "--probe-delay", "0.02", "--out", name], work, uri=uri)
    ok = wait_for(lambda: (folder / "checkpoint.safetensors").exists(), 120, p)
    time.sleep(0.3)
    kill(p)
    if not ok or (folder / "result.json").exists():
        raise RuntimeError(f"could not kill {name} mid-run (exit {p.returncode})")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ==================================================== deletes what it did not write --
@case("deletes")
def overwrite_dot_out_keeps_other_runs_and_user_files(work: Path) -> tuple[bool, str]:
    """`--out . --overwrite` in a folder holding a run made with --out ., runs/, mlruns/ and my_notes.txt."""
    proj = work / "proj"
    proj.mkdir()
    first = cli([*TINY, "--out", "."], proj)  # an empty folder: a run may go there; the store is ./mlruns
    (proj / "my_notes.txt").write_text("mine\n")
    other = cli([*TINY, "--out", "runs/a"], proj)
    if other.returncode != 0:
        return False, f"setup: --out runs/a failed: {last_line(other)}"
    keep = {"my_notes.txt": (proj / "my_notes.txt").read_bytes(),
            "runs/a/result.json": (proj / "runs/a/result.json").read_bytes()}
    p = cli([*TINY, "--out", ".", "--overwrite"], proj)
    lost = [k for k, v in keep.items() if not (proj / k).is_file() or (proj / k).read_bytes() != v]
    if not (proj / "mlruns").is_dir() or not any((proj / "mlruns").iterdir()):
        lost.append("mlruns/")
    if lost:
        return False, f"deleted {', '.join(lost)} (exit {p.returncode}): {last_line(p)}"
    if p.returncode == 0:
        if first.returncode != 0:
            return False, f"--out . was refused at first ({last_line(first)}) but --overwrite ran"
        if not (proj / "result.json").is_file():
            return False, "--out . --overwrite exited 0 without a result.json"
        here = "replaced only its own run"
    else:
        ok, here = one_line_error(p)
        if not ok:
            return False, f"--out . --overwrite: {here}"
    # the same folder named from outside (not the current directory): only the run's own files go
    home = work / "home"
    home.mkdir()
    uri = f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}"
    p = cli([*TINY, "--out", str(proj), "--overwrite"], home, uri=uri)
    lost = [k for k, v in keep.items() if not (proj / k).is_file() or (proj / k).read_bytes() != v]
    if not (proj / "mlruns" / "mlflow.db").is_file():
        lost.append("mlruns/mlflow.db")
    if lost:
        return False, f"from outside: deleted {', '.join(lost)} (exit {p.returncode}): {last_line(p)}"
    if p.returncode == 0:
        return (proj / "result.json").is_file(), f"{here}; from outside: replaced only its own run, kept the rest"
    ok, msg = one_line_error(p)
    return ok, f"{here}; from outside: {msg}"


@case("deletes")
def overwrite_refuses_a_project_with_its_own_spec_json(work: Path) -> tuple[bool, str]:
    """`--overwrite` on a project folder holding an unrelated spec.json, README.txt and src/."""
    proj = work / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "spec.json").write_text(json.dumps({"name": "my-project", "version": 2}))
    (proj / "README.txt").write_text("my project\n")
    (proj / "src" / "main.py").write_text("print('hi')\n")
    before = _snapshot(proj)
    p = cli([*TINY, "--out", "proj", "--overwrite"], work, uri=store(work))
    after = {k: v for k, v in _snapshot(proj).items() if k in before}
    if after != before:
        return False, f"changed or deleted {sorted(set(before) - set(after)) or 'spec.json'} (exit {p.returncode})"
    return one_line_error(p, "proj")


@case("deletes")
def out_refuses_a_folder_with_the_users_result_and_history(work: Path) -> tuple[bool, str]:
    """`--out` on a folder holding the user's own result.json and history.json."""
    proj = work / "mine"
    proj.mkdir()
    (proj / "result.json").write_text('{"accuracy": 0.91}\n')
    (proj / "history.json").write_text('[{"epoch": 1}]\n')
    before = _snapshot(proj)
    p = cli([*TINY, "--out", "mine"], work, uri=store(work))
    after = {k: v for k, v in _snapshot(proj).items() if k in before}
    if after != before:
        return False, f"overwrote {[k for k in before if after.get(k) != before[k]]} (exit {p.returncode})"
    return one_line_error(p, "mine")


# ================================================= an interrupted first run -------
@case("interrupted", slow=True)
def interrupted_first_run_leaves_a_usable_store(work: Path) -> tuple[bool, str]:
    """SIGTERM or Ctrl-C (SIGINT) during the first run's store creation, at several moments, with
    and without a store template in the cache; then a run in the same folder must work, and the
    exit message must not promise a checkpoint the folder does not have."""
    no_template = work / "not-a-folder"
    no_template.write_text("")  # HPCTL_CACHE under a file: no template, MLflow migrates in place
    moments = [(signal.SIGTERM, 0.2, "fresh"), (signal.SIGINT, 1.0, "fresh"), (signal.SIGTERM, 1.8, "fresh"),
               (signal.SIGTERM, 0.3, "none"), (signal.SIGINT, 1.2, "none"), (signal.SIGTERM, 2.2, "none")]
    seen, problems, promised, usable = [], [], [], 0
    for i, (sig, after, cache_kind) in enumerate(moments):
        name = f"{signal.Signals(sig).name} at +{after} s ({cache_kind} cache)"
        folder = work / f"m{i}"
        folder.mkdir()
        cache = folder / ".cache" if cache_kind == "fresh" else no_template / "cache"
        first = popen([*TINY, "--out", "r"], folder, environ=env(HPCTL_CACHE=str(cache)))
        wait_for(lambda: (folder / "mlruns").exists(), 120, first)
        time.sleep(after)
        if first.poll() is None:
            first.send_signal(sig)
        try:
            _, err = first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill(first)
            problems.append(f"{name} did not end the run in 60 s")
            continue
        if "Traceback" in err:
            problems.append(f"traceback after {name}: {_line(err)[-160:]}")
        if (first.returncode in (130, 143) and "--resume" in err
                and not (folder / "r" / "checkpoint.safetensors").exists()):
            promised.append(name)
        again = cli([*TINY, "--out", "r2"], folder, environ=env(HPCTL_CACHE=str(cache)))
        if again.returncode != 0:
            problems.append(f"{name}: the next run fails: {last_line(again)}")
        else:
            usable += 1
        seen.append(f"{signal.Signals(sig).name}@{after}s/{cache_kind}:exit {first.returncode}")
    store_ok = (f"the store stayed usable after {usable} of {len(moments)} interrupts"
                + (": " + "; ".join(problems) if problems else ""))
    if promised:
        problems.append("promised")
        store_ok += (f"; the exit message offers --resume DIR with no checkpoint in r/ after {len(promised)} "
                     f"of them (first: {promised[0]})")
    return not problems, store_ok


@case("interrupted", slow=True)
def interrupted_first_compare_leaves_a_usable_store(work: Path) -> tuple[bool, str]:
    """A first `compare` SIGTERMed while the store is created; the next compare must work."""
    args = ["compare", "synthetic", "--controllers", "random,grid", "--seeds", "1", "--budget", "8"]
    seen = []
    for i, after in enumerate((0.4, 1.6)):
        folder = work / f"c{i}"
        folder.mkdir()
        cache = folder / ".cache"
        first = popen([*args, "--out", "cmp"], folder, environ=env(HPCTL_CACHE=str(cache)))
        wait_for(lambda: (folder / "mlruns").exists(), 120, first)
        time.sleep(after)
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
        try:
            _, err = first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill(first)
            return False, f"SIGTERM at +{after} s did not end the compare in 60 s"
        if "Traceback" in err:
            return False, f"traceback after SIGTERM: {_line(err)[-200:]}"
        again = cli([*args, "--out", "cmp2"], folder, environ=env(HPCTL_CACHE=str(cache)))
        if again.returncode != 0:
            return False, f"SIGTERM at +{after} s: the next compare fails: {last_line(again)}"
        seen.append(f"+{after}s:exit {first.returncode}")
    return True, "next compare worked after SIGTERM " + ", ".join(seen)


# ================================================ a stalled or dead server --------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(work: Path):
    """An ``mlflow server`` on a free local port (its own process group); yields (process, uri)."""
    import urllib.request

    port = _free_port()
    db = work / "server" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), db)
    log = open(work / "server" / "log.txt", "w")
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                          "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root",
                          str(work / "server" / "artifacts"), "--workers", "1"],
                         cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env())
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        if not wait_for(up, 120, p):
            raise RuntimeError(f"mlflow server did not start: {(work / 'server' / 'log.txt').read_text()[-300:]}")
        yield p, uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.close()


def _template() -> Path:
    """The MLflow store template (an empty store at this MLflow's schema) from hpctl's cache."""
    from hpctl.tracking import store_template

    saved = os.environ.get("HPCTL_CACHE")
    os.environ["HPCTL_CACHE"] = str(_cache())
    try:
        path = store_template()
    finally:
        if saved is None:
            os.environ.pop("HPCTL_CACHE", None)
        else:
            os.environ["HPCTL_CACHE"] = saved
    if path is None:
        raise RuntimeError("no MLflow store template")
    return path


def _history_len(folder: Path) -> int:
    try:
        return sum(1 for s in (folder / "history.jsonl").read_text().splitlines() if '"probe"' in s)
    except OSError:
        return 0


@case("server", slow=True)
def stalled_tracking_server_neither_stops_probing_nor_sigterm(work: Path) -> tuple[bool, str]:
    """The MLflow server is SIGSTOPped mid-run: probing must go on, and SIGTERM must end the run
    within 10 s."""
    with mlflow_server(work) as (server, uri):
        folder = work / "r"
        p = popen([*SYNTH, "--budget", "2000", "--probe-delay", "0.01", "--out", "r"], work, uri=uri)
        try:
            if not wait_for(lambda: _history_len(folder) >= 16, 120, p):
                why = _line(p.communicate()[1])[-200:] if p.poll() is not None else ""
                return False, f"the run did not start probing: {why}"
            os.killpg(server.pid, signal.SIGSTOP)
            n0 = _history_len(folder)
            time.sleep(8)
            n1 = _history_len(folder)
            p.send_signal(signal.SIGTERM)
            t0 = time.time()
            try:
                _, err = p.communicate(timeout=30)
                ended = time.time() - t0
            except subprocess.TimeoutExpired:
                kill(p)
                return False, f"SIGTERM did not end the run within 30 s (probes {n0} -> {n1} in 8 s while stalled)"
            if ended > 10:
                return False, (f"SIGTERM ended the run in {ended:.1f} s, over 10 s (probes {n0} -> {n1} in 8 s "
                               f"while stalled): {_line(err)[-160:]}")
            if n1 - n0 < 16:
                return False, f"probing stalled with the server: probes {n0} -> {n1} in 8 s"
            if "Traceback" in err:
                return False, f"traceback after SIGTERM: {_line(err)[-200:]}"
            return True, (f"probes {n0} -> {n1} in 8 s while stalled; SIGTERM ended it in {ended:.1f} s: "
                          f"{_line(err)[-160:]}")
        finally:
            kill(p)


@case("server", slow=True)
def dead_tracking_server_does_not_stop_the_run(work: Path) -> tuple[bool, str]:
    """The MLflow server dies (SIGKILL) mid-run: the run must finish its probes and write its result."""
    with mlflow_server(work) as (server, uri):
        folder = work / "r"
        p = popen([*SYNTH, "--budget", "96", "--probe-delay", "0.02", "--out", "r"], work, uri=uri)
        try:
            if not wait_for(lambda: _history_len(folder) >= 8, 120, p):
                return False, "the run did not start probing"
            os.killpg(server.pid, signal.SIGKILL)
            try:
                _, err = p.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                return False, f"still running 90 s after the server died, at probe {_history_len(folder)}/96"
            if not (folder / "result.json").is_file():
                return False, f"no result.json (exit {p.returncode}): {_line(err)[-200:]}"
            if "Traceback" in err:
                return False, f"traceback (exit {p.returncode}): {_line(err)[-200:]}"
            return True, f"finished without its server (exit {p.returncode}): {_line(err)[-160:]}"
        finally:
            kill(p)


# ======================================================== two writers, one run ----
def _one_winner(procs: list[subprocess.Popen], folder: Path) -> tuple[bool, str]:
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    if codes.count(0) != 1:
        return False, f"exit codes {codes}: {'; '.join(_line(e)[-120:] for _, e in outs)}"
    loser = outs[codes.index(next(c for c in codes if c != 0))]
    done = subprocess.CompletedProcess([], next(c for c in codes if c != 0), loser[0], loser[1])
    ok, msg = one_line_error(done)
    if not ok:
        return False, f"the second writer: {msg}"
    ids = probe_ids(folder)
    if ids != list(range(1, len(ids) + 1)):
        return False, f"history interleaved: probe ids {ids[:12]}..."
    if not (folder / "result.json").is_file():
        return False, "no result.json"
    return True, f"exit codes {codes}; the second: {msg}"


@case("writers")
def two_runs_into_one_out_folder(work: Path) -> tuple[bool, str]:
    uri = store(work)
    cli([*TINY, "--out", "warm"], work, uri=uri)  # the store exists: both start at once
    args = [*SYNTH, "--budget", "48", "--probe-delay", "0.02", "--out", "same"]
    procs = [popen(args, work, uri=uri) for _ in range(2)]
    ok, msg = _one_winner(procs, work / "same")
    if not ok:
        return False, f"started at once: {msg}"
    # a second writer while the first is surely writing: its error names the holder (its pid)
    first = popen([*SYNTH, "--budget", "400", "--probe-delay", "0.02", "--out", "held"], work, uri=uri)
    try:
        if not wait_for(lambda: (work / "held" / "checkpoint.safetensors").exists(), 120, first):
            return False, f"setup: the first writer did not start (exit {first.returncode})"
        second = cli([*TINY, "--out", "held"], work, uri=uri)
        still = first.poll() is None
    finally:
        kill(first)
    ok2, msg2 = one_line_error(second, str(first.pid))
    if still and not ok2:
        return False, f"a second writer while the first runs: {msg2} (the holder is pid {first.pid})"
    return True, f"at once: {msg}; later: {msg2}"


@case("writers")
def two_resumes_of_one_run(work: Path) -> tuple[bool, str]:
    uri = store(work)
    folder = _killed_run(work, "k", uri, budget=64)
    procs = [popen(["run", "synthetic", "--resume", "k"], work, uri=uri) for _ in range(2)]
    ok, msg = _one_winner(procs, folder)
    if ok:
        from mlflow.tracking import MlflowClient

        run_id = json.loads((folder / "result.json").read_text())["mlflow_run_id"]
        logged = len(MlflowClient(uri).get_metric_history(run_id, "probe/x"))
        if logged != len(probe_ids(folder)):
            return False, f"MLflow has {logged} probes, the folder {len(probe_ids(folder))}"
    return ok, msg


_SESSION_KW = "knob=hpctl.Knob('x', 0.0, 1.0, default=0.5), controller='grpo', budget=32, group_size=4, seed=0"


@case("writers")
def two_sessions_resume_one_folder(work: Path) -> tuple[bool, str]:
    """Two ``Session(..., resume=True)`` on one folder: one in another process, one here; and two
    in this process (the older one must not write the checkpoint any more)."""
    import hpctl

    uri = store(work)
    folder = work / "s"
    ready = work / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, hpctl
        s = hpctl.Session({_SESSION_KW}, out_dir={str(folder)!r}, resume=True, tracking_uri={uri!r})
        for v in s.ask():
            s.tell(v, -abs(v - 0.3))
        open({str(ready)!r}, 'w').close()
        sys.stdin.read()
        s.close()
        """)], cwd=work, env=env(uri), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        if not wait_for(ready.exists, 120, holder):
            return False, f"the holder did not start: {_line(holder.communicate()[1])[-200:]}"
        ok, msg = raises_hpctl(lambda: hpctl.Session(**_session_kw(), out_dir=folder, resume=True, tracking_uri=uri))
        if not ok:
            return False, f"across processes: {msg}"
    finally:
        holder.communicate(input="", timeout=120)
    # in one process: the newer session takes the folder; the older must not write it any more
    s1 = hpctl.Session(**_session_kw(), out_dir=folder, resume=True, tracking_uri=uri)
    s2 = hpctl.Session(**_session_kw(), out_dir=folder, resume=True, tracking_uri=uri)
    ok2, msg2 = raises_hpctl(s1.save)
    s2.close()
    if not ok2:
        return False, f"in one process the older session still writes: {msg2}"
    return True, f"other process: {msg}; older session here: {msg2}"


def _session_kw() -> dict:
    import hpctl

    return dict(knob=hpctl.Knob("x", 0.0, 1.0, default=0.5), controller="grpo", budget=32, group_size=4, seed=0)


# ============================================================ runs left RUNNING ---
_COMPARE = ["compare", "synthetic", "--controllers", "grpo,random", "--seeds", "2", "--budget", "64",
            "--probe-delay", "0.03"]


def _start_compare(work: Path, uri: str) -> subprocess.Popen:
    cli([*TINY, "--out", "warm"], work, uri=uri)  # the store exists before the comparison starts
    p = popen([*_COMPARE, "--out", "cmp"], work, uri=uri)
    if not wait_for(lambda: any((work / "cmp").rglob("checkpoint.safetensors")), 180, p):
        kill(p)
        raise RuntimeError(f"the comparison never checkpointed (exit {p.returncode})")
    time.sleep(0.5)
    return p


@case("running", slow=True)
def compare_sigterm_leaves_nothing_running(work: Path) -> tuple[bool, str]:
    uri = store(work)
    p = _start_compare(work, uri)
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        kill(p)
        return False, "SIGTERM did not end the comparison within 30 s"
    running = runs_in(uri)
    if running:
        return False, (f"{len(running)} run(s) left RUNNING after SIGTERM: "
                       f"{', '.join(r.data.tags.get('mlflow.runName', r.info.run_id) for r in running)}")
    if "Traceback" in err:
        return False, f"traceback: {_line(err)[-200:]}"
    return True, f"exit {p.returncode}, nothing RUNNING: {_line(err)[-120:]}"


@case("running", slow=True)
def compare_sigkill_then_compare_resume_finishes(work: Path) -> tuple[bool, str]:
    uri = store(work)
    p = _start_compare(work, uri)
    kill(p)
    again = cli(["compare", "synthetic", "--resume", "cmp"], work, uri=uri, timeout=300)
    if again.returncode != 0 and "No such option" in again.stderr:
        again = cli(["compare", "--resume", "cmp"], work, uri=uri, timeout=300)
    if again.returncode != 0:
        return False, f"compare --resume cmp: exit {again.returncode}: {last_line(again)}"
    if not (work / "cmp" / "compare.json").is_file():
        return False, "compare --resume exited 0 without compare.json"
    running = runs_in(uri)
    if running:
        return False, f"{len(running)} run(s) RUNNING after compare --resume"
    return True, "compare --resume finished the comparison; nothing RUNNING"


@case("running")
def sigterm_inside_tracker_end_leaves_the_run_ended(work: Path) -> tuple[bool, str]:
    """SIGTERM (hpctl's handler) arrives while ``Tracker.end`` waits on a slow metrics flush."""
    uri = store(work)
    p = script(f"""
        import os, signal, threading, time
        from hpctl.cli import _on_sigterm
        from hpctl.tracking import Tracker
        signal.signal(signal.SIGTERM, _on_sigterm)
        t = Tracker({uri!r}, "hostile", run_name="ended-under-sigterm")
        print(t.run_id, flush=True)
        for i in range(50):
            t.metric("m", float(i), i)
        slow = t.client.log_batch
        def log_batch(*a, **k):
            time.sleep(1.5)
            return slow(*a, **k)
        t.client.log_batch = log_batch
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        t.end()
        """, work, uri=uri, timeout=120)
    run_id = (p.stdout or "").strip().splitlines()[0] if (p.stdout or "").strip() else None
    if run_id is None:
        return False, f"the script failed before its run: {_line(p.stderr)[-200:]}"
    from mlflow.tracking import MlflowClient

    status = MlflowClient(uri).get_run(run_id).info.status
    return status != "RUNNING", f"run {status} after SIGTERM inside end() (script exit {p.returncode})"


@case("running")
def session_whose_loop_raises_is_not_left_running(work: Path) -> tuple[bool, str]:
    """A Session without ``with`` (as in the docs) whose loop raises: the process dies."""
    uri = store(work)
    p = script(f"""
        import hpctl
        s = hpctl.Session({_SESSION_KW}, out_dir="s", tracking_uri={uri!r})
        print(s.tracker.run_id, flush=True)
        for v in s.ask():
            s.tell(v, -abs(v - 0.3))
        raise RuntimeError("the user's training loop failed")
        """, work, uri=uri)
    if not (p.stdout or "").strip():
        return False, f"the script failed before its run: {_line(p.stderr)[-200:]}"
    from mlflow.tracking import MlflowClient

    status = MlflowClient(uri).get_run(p.stdout.strip().splitlines()[0]).info.status
    return status != "RUNNING", f"the session's run is {status} after the loop raised"


def _tiny_trainer(work: Path, knob, *, uri: str, steps: int = 8, callbacks=()):
    """A transformers Trainer on a two-weight model with a KnobCallback for ``knob``."""
    import torch
    from torch import nn
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from hpctl.integrations.transformers import KnobCallback

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Linear(2, 1)

        def forward(self, x, labels=None):
            out = self.w(x).squeeze(-1)
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(2, generator=g), "labels": torch.tensor(0.5)} for _ in range(64)]
    cb = KnobCallback(knob, every_steps=2, budget=12, group_size=3, seed=0, tracking_uri=uri,
                      out_dir=str(work / "session"))
    args = TrainingArguments(output_dir=str(work / "trainer"), per_device_train_batch_size=8, max_steps=steps,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0, logging_strategy="no")
    trainer = Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=[cb, *callbacks])
    trainer.remove_callback(PrinterCallback)  # the session's logs, printed as dicts on stdout
    return trainer, cb


@case("running", llm=True, needs=("transformers",))
def trainer_aborted_by_an_exception_leaves_nothing_running(work: Path) -> tuple[bool, str]:
    import hpctl
    from transformers import TrainerCallback

    from hpctl.integrations.transformers import FunctionKnob

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise RuntimeError("the user's callback failed")

    uri = store(work)
    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5), apply=lambda v: None,
                        probe=lambda v: -abs(v - 0.8))
    trainer, cb = _tiny_trainer(work, knob, uri=uri, callbacks=[Boom()])
    try:
        trainer.train()
        return False, "the Trainer did not raise"
    except RuntimeError:
        pass
    finally:
        running = runs_in(uri)
        _close(cb)
    return not running, f"{len(running)} run(s) RUNNING right after the Trainer raised"


def _close(cb) -> None:
    """End what a case's Trainer left open, so nothing writes into its folder after the case."""
    session = getattr(cb, "session", None)
    if session is not None:
        with contextlib.suppress(Exception):
            session.close()


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@case("running", slow=True)
def full_disk_is_one_line_and_leaves_nothing_running(work: Path) -> tuple[bool, str]:
    """The disk (a small tmpfs holding the run folder and the store) fills up mid-run: one
    error line, no traceback, nothing left RUNNING, no empty error.txt. Without root (no
    tmpfs) the run's file-size limit (RLIMIT_FSIZE) stands in for the full disk."""
    disk = work / "disk"
    mounted = _mount_tmpfs(disk, "6m")
    disk.mkdir(exist_ok=True)
    try:
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        e = env(uri)
        if mounted:
            pre = None
        else:
            import resource

            def pre() -> None:  # writes past 1.2 MB fail (EFBIG) instead of killing the process
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1200 << 10, 1200 << 10))
        p = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *SYNTH, "--budget", "100000", "--probe-delay",
                              "0.001", "--out", "r"], cwd=disk, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=pre, start_new_session=True)
        folder = disk / "r"
        if not wait_for(lambda: (folder / "checkpoint.safetensors").exists(), 120, p):
            kill(p)
            return False, f"the run did not start (exit {p.returncode}): {_line(p.communicate()[1])[-200:]}"
        if mounted:  # fill what is left
            with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * (64 << 10))
                    f.flush()
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            kill(p)
            return False, "the run did not end within 120 s of the disk filling"
        with contextlib.suppress(OSError):
            (disk / "filler").unlink()
        lines = [s for s in err.splitlines() if s.strip()]
        how = "tmpfs" if mounted else "RLIMIT_FSIZE"
        if p.returncode == 0:
            return False, f"exit 0 on a full disk ({how})"
        if "Traceback" in err or len(_error_lines(err)) > 1:
            return False, (f"{len(lines)} lines, {err.count('Traceback')} tracebacks on stderr ({how}): "
                           f"{lines[-1] if lines else ''}")
        empty = [str(x.relative_to(disk)) for x in disk.rglob("error.txt") if x.stat().st_size == 0]
        if empty:
            return False, f"empty {empty[0]} left ({how})"
        running = runs_in(uri)
        if running:
            return False, f"{len(running)} run(s) left RUNNING ({how}): {lines[-1] if lines else ''}"
        return True, f"exit {p.returncode} ({how}): {lines[-1] if lines else ''}"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ============================================ input not refused / wrong words ----
@case("input")
def total_steps_beyond_bounds_is_refused_at_once(work: Path) -> tuple[bool, str]:
    for value in ("100000000000000000000", "1e20"):
        p = cli([*TINY, "--total-steps", value, "--out", "r"], work, uri=store(work), timeout=60)
        ok, msg = one_line_error(p, "total")
        if not ok:
            return False, f"--total-steps {value}: {msg}"
    cfg = work / "c.yaml"
    cfg.write_text("total_steps: 1.0e+20\n")
    p = cli([*TINY, "--config", str(cfg), "--out", "r"], work, uri=store(work), timeout=60)
    ok, msg = one_line_error(p, "total_steps")
    return ok, ("config total_steps: 1e20: " if not ok else "") + msg


@case("input")
def compare_huge_seeds_is_refused_before_any_work(work: Path) -> tuple[bool, str]:
    p = cli(["compare", "synthetic", "--controllers", "random", "--seeds", "1000000000", "--budget", "8",
             "--out", "cmp"], work, uri=store(work), timeout=60)
    ok, msg = one_line_error(p, "seeds")
    if ok and (work / "cmp").exists() and any((work / "cmp").iterdir()):
        return False, f"refused, but after writing {sorted(os.listdir(work / 'cmp'))[:3]}"
    return ok, msg


@case("input")
def resume_with_config_names_the_flag_as_typed(work: Path) -> tuple[bool, str]:
    uri = store(work)
    folder = _killed_run(work, "k", uri)
    cfg = work / "c.yaml"
    cfg.write_text("budget: 16\n")
    p = cli(["run", "synthetic", "--resume", str(folder), "--config", str(cfg)], work, uri=uri)
    return one_line_error(p, "--config", must_not=("--config-file", "config_file"))


@case("input", needs=("torch", "transformers", "peft", "datasets"))
def eval_advice_names_evals_own_option(work: Path) -> tuple[bool, str]:
    """`hpctl eval` of a run made on a device this machine lacks must advise eval's spelling
    (-o device=cpu), not run's --device."""
    import torch

    device = "mps" if torch.cuda.is_available() else "cuda"
    folder = work / "r"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"plugin": "grasp_lora", "command": "run", "options": {},
                                                  "plugin_config": {"preset": "smoke", "device": device}}))
    data = work / "data.json"
    data.write_text(json.dumps([{"context": "a b", "question": "a?", "answers": {"text": ["a"],
                                                                                 "answer_start": [0]}}]))
    p = cli(["eval", "r", "--data", str(data)], work, uri=store(work))
    return one_line_error(p, "device", must_not=("--device",))


@case("input")
def result_json_that_is_not_an_object_names_the_file(work: Path) -> tuple[bool, str]:
    uri = store(work)
    folder = _killed_run(work, "k", uri)
    (folder / "result.json").write_text("[1, 2]\n")
    p = cli(["run", "synthetic", "--resume", "k"], work, uri=uri)
    return one_line_error(p, "result.json", must_not=("TypeError", "AttributeError"))


@case("input")
def state_file_without_a_controller_names_the_file(work: Path) -> tuple[bool, str]:
    from hpctl import statefile

    uri = store(work)
    folder = _killed_run(work, "k", uri)
    path = folder / "checkpoint.safetensors"
    state = statefile.loads(path.read_bytes())
    if "controller" not in state:
        return False, f"setup: the checkpoint has no 'controller' key to remove (keys {sorted(state)[:8]})"
    del state["controller"]
    path.write_bytes(statefile.dumps(state))
    p = cli(["run", "synthetic", "--resume", "k"], work, uri=uri)
    return one_line_error(p, "checkpoint", must_not=("KeyError",))


@case("input")
def read_only_run_folder_is_named_not_hidden(work: Path) -> tuple[bool, str]:
    """`--resume` of a run whose folder is read-only: the error names the folder as not writable,
    not a failure to write error.txt. (A read-only bind mount as root, chmod otherwise.)"""
    uri = store(work)
    folder = _killed_run(work, "k", uri)
    bound = False
    if os.geteuid() == 0:
        bound = (subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
                 and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)],
                                    capture_output=True).returncode == 0)
    else:
        for x in [folder, *folder.iterdir()]:
            x.chmod(x.stat().st_mode & ~0o222)
    try:
        if os.geteuid() == 0 and not bound:
            return False, "setup: cannot make the folder read-only (no bind mount)"
        p = cli(["run", "synthetic", "--resume", "k"], work, uri=uri)
        return one_line_error(p, "k", must_not=("error.txt",))
    finally:
        if bound:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            for x in [folder, *folder.iterdir()]:
                x.chmod(x.stat().st_mode | 0o200)


def _asked_session(work: Path):
    import hpctl

    s = hpctl.Session(**_session_kw(), out_dir=work / "s", tracking_uri=store(work))
    value = next(iter(s.ask()))
    return s, value


@case("input")
def session_tell_refuses_a_string_score(work: Path) -> tuple[bool, str]:
    s, v = _asked_session(work)
    try:
        return raises_hpctl(lambda: s.tell(v, "0.5"), "0.5")
    finally:
        s.close()


@case("input")
def session_tell_refuses_a_bool_score(work: Path) -> tuple[bool, str]:
    s, v = _asked_session(work)
    try:
        return raises_hpctl(lambda: s.tell(v, True), "True")
    finally:
        s.close()


@case("input", llm=True, needs=("transformers",))
def function_knob_whose_probes_are_all_nan_is_refused(work: Path) -> tuple[bool, str]:
    """A FunctionKnob whose every probe is NaN must fail as `hpctl run` does (all probes failed),
    not finish "successfully" at the default value."""
    import hpctl

    from hpctl.errors import HpctlError
    from hpctl.integrations.transformers import FunctionKnob

    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5), apply=lambda v: None,
                        probe=lambda v: float("nan"))
    trainer, cb = _tiny_trainer(work, knob, uri=store(work))
    try:
        trainer.train()
    except HpctlError as exc:
        return "\n" not in str(exc).strip(), f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001
        return False, f"raw {type(exc).__name__}: {exc}"
    finally:
        _close(cb)
    learned = getattr(cb.session, "learned", None)
    return False, f"finished with learned {learned} from all-NaN probes"


@case("input")
def session_without_total_steps_learns_a_sane_value(work: Path) -> tuple[bool, str]:
    """The README's Session (prune_ratio in [0, 0.9], grpo, budget 40, group 4, seed 0) without
    total_steps, on a score peaked at 0.3: the answer must be near 0.3, not at a bound."""
    import hpctl

    s = hpctl.Session(knob=hpctl.Knob("prune_ratio", 0.0, 0.9), controller="grpo", budget=40, group_size=4,
                      seed=0, out_dir=work / "mine", tracking_uri=store(work))
    rounds = 0
    while not s.done and rounds < 200:
        for value in s.ask():
            s.tell(value, -(value - 0.3) ** 2)
        rounds += 1
    learned = float(s.learned if s.learned is not None else s.value)
    if not s.done:
        s.close()
        return False, f"not done after {rounds} rounds (value {learned:.3f})"
    return abs(learned - 0.3) <= 0.15, f"learned {learned:.3f} for an optimum of 0.3 ({rounds} rounds)"


# ===================================================== raw Python exceptions ------
def _session(**kw):
    import hpctl

    return lambda: hpctl.Session(**{**_session_kw(), **kw})


@case("raw")
def session_seed_minus_one(work: Path) -> tuple[bool, str]:
    return raises_hpctl(_session(seed=-1, out_dir=work / "s", tracking_uri=store(work)), "seed")


@case("raw")
def session_max_move_not_a_number(work: Path) -> tuple[bool, str]:
    return raises_hpctl(_session(max_move="x", out_dir=work / "s", tracking_uri=store(work)), "max_move")


@case("raw")
def session_controller_config_not_a_dict(work: Path) -> tuple[bool, str]:
    return raises_hpctl(_session(controller_config="notadict", out_dir=work / "s", tracking_uri=store(work)),
                        "controller_config")


@case("raw")
def knob_with_string_bounds(work: Path) -> tuple[bool, str]:
    import hpctl

    return raises_hpctl(lambda: hpctl.Knob("x", "a", "b"), "x")


@case("raw")
def knob_with_fractional_dim(work: Path) -> tuple[bool, str]:
    import hpctl

    return raises_hpctl(lambda: hpctl.Knob("x", 0.0, 1.0, dim=2.5), "dim")


@case("raw", needs=("peft", "transformers"))
def lora_prune_knob_with_string_low(work: Path) -> tuple[bool, str]:
    from hpctl.integrations.transformers import LoraPruneKnob

    return raises_hpctl(lambda: LoraPruneKnob(low="a"), "low")


@case("raw", needs=("peft", "transformers"))
def lora_prune_knob_with_groups_a_list(work: Path) -> tuple[bool, str]:
    from hpctl.integrations.transformers import LoraPruneKnob

    return raises_hpctl(lambda: LoraPruneKnob(groups=[1, 2]), "groups")


@case("raw", llm=True, needs=("transformers",))
def function_knob_probe_returning_a_string(work: Path) -> tuple[bool, str]:
    """A FunctionKnob probe that returns "abc", in a Trainer: a one-line HpctlError naming what it returned."""
    import hpctl

    from hpctl.errors import HpctlError
    from hpctl.integrations.transformers import FunctionKnob

    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5), apply=lambda v: None, probe=lambda v: "abc")
    trainer, cb = _tiny_trainer(work, knob, uri=store(work))
    try:
        trainer.train()
    except HpctlError as exc:
        msg = str(exc)
        return "\n" not in msg.strip() and "abc" in msg, f"{type(exc).__name__}: {msg}"
    except Exception as exc:  # noqa: BLE001
        return False, f"raw {type(exc).__name__}: {exc}"
    finally:
        _close(cb)
    return False, f"accepted: the Trainer finished (learned {getattr(cb.session, 'learned', None)})"


def _tampered_session(work: Path, change: Callable[[dict], None]) -> tuple[bool, str]:
    """A session saved mid-run, its checkpoint rewritten (a valid state file: checksum and all)
    with ``change``; resuming it must be a one-line HpctlError naming the file."""
    import hpctl
    from hpctl import statefile

    uri = store(work)
    folder = work / "s"
    s = hpctl.Session(**_session_kw(), out_dir=folder, tracking_uri=uri)
    for _ in range(2):
        for v in s.ask():
            s.tell(v, -abs(v - 0.3))
    s.save()
    s.close()
    path = folder / "checkpoint.safetensors"
    state = statefile.loads(path.read_bytes())
    change(state)
    path.write_bytes(statefile.dumps(state))
    return raises_hpctl(lambda: hpctl.Session(**_session_kw(), out_dir=folder, resume=True, tracking_uri=uri),
                        "checkpoint")


@case("raw")
def tampered_session_state_without_spec(work: Path) -> tuple[bool, str]:
    return _tampered_session(work, lambda st: st.pop("spec"))


@case("raw")
def tampered_session_state_start_not_a_pair(work: Path) -> tuple[bool, str]:
    return _tampered_session(work, lambda st: st.__setitem__("start", "garbage"))


@case("raw")
def tampered_session_state_answers_not_a_list(work: Path) -> tuple[bool, str]:
    return _tampered_session(work, lambda st: st.__setitem__("answers", 7))


@case("raw")
def tampered_session_state_value_not_a_number(work: Path) -> tuple[bool, str]:
    return _tampered_session(work, lambda st: st.__setitem__("value", "abc"))


@case("raw")
def tampered_session_state_history_events_malformed(work: Path) -> tuple[bool, str]:
    return _tampered_session(work, lambda st: st.__setitem__("history", json.dumps([{"no_event": 1}, 5])))
