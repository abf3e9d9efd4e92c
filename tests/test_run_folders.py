"""Run folders (issue 37, items 1 and 4): hpctl removes or overwrites only what it wrote,
and one writer at a time writes a run folder (runs, resumes, Sessions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hpctl
from hpctl.errors import ConfigError
from hpctl.rundir import CHECKPOINT, HISTORY_LOG, LOCK, MARKER, RESULT, SPEC, RunLock, lock_run_dir, read_marker

FAST = ["run", "synthetic", "-c", "random", "--budget", "8"]
#: a run slow enough to be caught mid-way (64 probes of 0.05 s)
SLOW = ["run", "synthetic", "-c", "grpo", "--budget", "64", "--seed", "5", "--probe-delay", "0.05"]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _legacy(folder: Path, hpctl_main) -> None:
    """A finished run as an hpctl without markers left it."""
    assert hpctl_main(*FAST, "--out", str(folder))[0] == 0
    (folder / MARKER).unlink()
    (folder / LOCK).unlink()


# ----------------------------------------------------------------- item 1: only what it wrote --
def test_overwrite_never_empties_the_current_directory(hpctl_main, tmp_path):
    """The issue's first case: a run made with --out . beside runs/, mlruns/ and the user's notes."""
    _legacy(tmp_path, hpctl_main)
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "keep.txt").write_text("x")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "store.db").write_text("x")
    (tmp_path / "my_notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    code, _, err = hpctl_main(*FAST, "--out", ".", "--overwrite")
    assert code == 2 and "--overwrite does not empty '.': it is the current directory" in _one_line(err)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    # a folder above the current directory is refused the same way
    sub = tmp_path / "runs" / "other"
    os.chdir(sub)
    code, _, err = hpctl_main(*FAST, "--out", str(tmp_path), "--overwrite")
    assert code == 2 and "it holds the current directory" in _one_line(err)
    assert (tmp_path / "my_notes.txt").read_text() == "mine"


def test_overwrite_never_empties_a_folder_holding_the_mlflow_store(hpctl_main, tmp_path, monkeypatch):
    run = tmp_path / "proj"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{run / 'mlruns' / 'mlflow.db'}")
    assert hpctl_main(*FAST, "--out", str(run))[0] == 0  # the store is made inside the run folder
    code, _, err = hpctl_main(*FAST, "--out", str(run), "--overwrite")
    assert code == 2 and "it holds the MLflow store" in _one_line(err)
    assert (run / "mlruns" / "mlflow.db").is_file() and (run / RESULT).is_file()


def test_overwrite_from_elsewhere_keeps_a_store_and_runs_made_inside_the_run_folder(hpctl_main, tmp_path,
                                                                                  monkeypatch, tracking_uri):
    """A run made with --out . in a project made ./mlruns there while it ran (and another run
    went to ./runs): --overwrite of that folder from outside removes neither."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert hpctl_main(*FAST, "--out", ".")[0] == 0
    assert hpctl_main(*FAST, "--out", "runs/other")[0] == 0
    assert "mlruns" in read_marker(proj)["files"]  # made while the run ran: listed, yet never removed
    monkeypatch.chdir(tmp_path)
    code, _, err = hpctl_main(*FAST, "--out", "proj", "--overwrite", "--tracking-uri", tracking_uri)
    assert code == 0, err
    assert (proj / "mlruns" / "mlflow.db").is_file() and (proj / "runs" / "other" / RESULT).is_file()


def test_an_unrelated_spec_json_is_not_a_run(hpctl_main, tmp_path):
    """The issue's second case: a project folder with its own spec.json, README.txt and src/."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print(1)\n")
    (proj / "README.txt").write_text("readme")
    (proj / SPEC).write_text('{"name": "my api", "version": 2}')
    for extra in ([], ["--overwrite"]):
        code, _, err = hpctl_main(*FAST, "--out", str(proj), *extra)
        line = _one_line(err)
        assert code == 2 and "is not empty and not an hpctl run folder" in line
        assert "README.txt" in line and "src/" in line and "spec.json" in line
    assert sorted(p.name for p in proj.iterdir()) == ["README.txt", "spec.json", "src"]
    assert (proj / "src" / "main.py").is_file()


def test_out_on_the_users_own_results_is_refused(hpctl_main, tmp_path):
    """The issue's third case: the user's result.json and history.json are never overwritten."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / RESULT).write_text('{"accuracy": 0.9}')
    (mine / "history.json").write_text("[1, 2, 3]")
    code, _, err = hpctl_main(*FAST, "--out", str(mine))
    assert code == 2 and "not an hpctl run folder (it holds history.json, result.json)" in _one_line(err)
    assert (mine / RESULT).read_text() == '{"accuracy": 0.9}' and (mine / "history.json").read_text() == "[1, 2, 3]"
    assert sorted(p.name for p in mine.iterdir()) == ["history.json", "result.json"]  # no marker, no lock left


def test_overwrite_of_a_run_removes_only_what_the_run_wrote(hpctl_main, tmp_path):
    run = tmp_path / "r"
    assert hpctl_main(*FAST, "--out", str(run))[0] == 0
    marker = read_marker(run)
    assert marker is not None and {SPEC, RESULT, CHECKPOINT, HISTORY_LOG, "run.png"} <= set(marker["files"])
    (run / "notes.txt").write_text("added by the user after the run")
    first_id = marker["run_id"]
    code, _, err = hpctl_main("run", "synthetic", "-c", "grid", "--budget", "8", "--out", str(run), "--overwrite")
    assert code == 0, err
    assert json.loads((run / RESULT).read_text())["controller"] == "grid"
    assert (run / "notes.txt").read_text() == "added by the user after the run"
    again = read_marker(run)
    assert again["run_id"] != first_id and again["kept"] == ["notes.txt"] and "notes.txt" not in again["files"]
    # a probe count the grid run would not have: the history is the new run's alone
    assert all(json.loads(line)["event"] != "probe" or json.loads(line)["probe"] <= 8
               for line in (run / HISTORY_LOG).read_text().splitlines())


def test_a_run_of_an_older_hpctl_is_recognised_and_overwritten_by_name(hpctl_main, tmp_path):
    """No marker: spec.json and result.json in hpctl's format make it a run; --overwrite removes
    hpctl's own names and keeps anything else."""
    run = tmp_path / "old"
    _legacy(run, hpctl_main)
    (run / "mine.txt").write_text("keep")
    code, _, err = hpctl_main(*FAST, "--out", str(run))
    assert code == 2 and "already holds a run" in _one_line(err)
    code, _, err = hpctl_main("run", "synthetic", "-c", "grid", "--budget", "8", "--out", str(run), "--overwrite")
    assert code == 0, err
    assert (run / "mine.txt").read_text() == "keep" and read_marker(run)["kept"] == ["mine.txt"]
    assert json.loads((run / RESULT).read_text())["controller"] == "grid"


def test_resume_of_an_older_run_still_works_and_marks_it(hpctl_main, tmp_path):
    run = tmp_path / "old"
    _legacy(run, hpctl_main)
    (run / RESULT).unlink()  # an unfinished run of an older hpctl
    (run / "history.json").unlink()
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(run))
    assert code == 0, err
    assert (run / RESULT).is_file() and read_marker(run) is not None


def test_resume_still_works_after_sigkill(tmp_path, tracking_uri, hpctl_main):
    run = tmp_path / "k"
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *SLOW, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_probes(run, proc, 6)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (run / RESULT).exists()
    # the killed process's lock went with it: the resume is not blocked
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(run))
    assert code == 0, err
    done = json.loads((run / RESULT).read_text())["probes"]
    assert done > 56 and _probe_ids(run) == list(range(1, done + 1))


# ---------------------------------------------------------------- item 4: one writer per folder --
def _probe_ids(run: Path) -> list[int]:
    events = [json.loads(line) for line in (run / HISTORY_LOG).read_text().splitlines()]
    return [e["probe"] for e in events if e["event"] == "probe"]


def _probes(run: Path) -> int:
    try:
        return sum(1 for line in (run / HISTORY_LOG).read_text().splitlines() if '"probe"' in line)
    except FileNotFoundError:
        return 0


def _wait_for_probes(run: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.time() + 240
    while _probes(run) < n:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.05)


def _start(args, run: Path, tracking_uri: str) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    return subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path, tracking_uri):
    run = tmp_path / "same"
    first = _start([*SLOW, "--out", str(run)], run, tracking_uri)
    try:
        _wait_for_probes(run, first, 3)
        second = _start([*SLOW, "--out", str(run)], run, tracking_uri)
        _, err = second.communicate(timeout=240)
        assert first.poll() is None, "the first run must still be running for the test to mean anything"
        line = _one_line(err)
        assert second.returncode == 2 and "is in use: another hpctl run writes to it" in line
        assert f"pid {first.pid} on " in line and "started 20" in line
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    done = json.loads((run / RESULT).read_text())["probes"]
    assert done > 56 and _probe_ids(run) == list(range(1, done + 1))  # one run's history, not two interleaved


def test_two_resumes_of_one_run_the_second_is_refused(tmp_path, tracking_uri):
    run = tmp_path / "r"
    proc = _start([*SLOW, "--out", str(run)], run, tracking_uri)
    try:
        _wait_for_probes(run, proc, 4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    first = _start(["run", "synthetic", "--resume", str(run)], run, tracking_uri)
    try:
        time.sleep(0.2)
        deadline = time.time() + 120  # the resume holds the lock from its start: wait until it writes
        while json.loads((run / LOCK).read_text() or "{}").get("pid") != first.pid:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        second = _start(["run", "synthetic", "--resume", str(run)], run, tracking_uri)
        _, err = second.communicate(timeout=240)
        assert first.poll() is None
        assert second.returncode == 2 and f"another hpctl run writes to it (pid {first.pid}" in _one_line(err)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    done = json.loads((run / RESULT).read_text())["probes"]
    assert done > 56 and _probe_ids(run) == list(range(1, done + 1))  # not doubled


def test_overwrite_of_a_folder_in_use_is_refused_and_touches_nothing(tmp_path, tracking_uri, hpctl_main):
    run = tmp_path / "busy"
    proc = _start([*SLOW, "--out", str(run)], run, tracking_uri)
    try:
        _wait_for_probes(run, proc, 3)
        code, _, err = hpctl_main(*FAST, "--out", str(run), "--overwrite")
        assert proc.poll() is None
        assert code == 2 and "is in use" in _one_line(err)
        assert (run / SPEC).is_file() and (run / CHECKPOINT).is_file()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        proc.kill()


def test_two_sessions_on_one_folder(tmp_path, tracking_uri):
    """In one process, a resume takes the folder over (the old object, which a traceback or a
    notebook variable may still hold, writes nothing more); a fresh Session there is refused."""
    from hpctl.session import SessionError

    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    kw = dict(budget=16, group_size=4, tracking_uri=tracking_uri)
    first = hpctl.Session(knob, "random", out_dir=tmp_path / "s", **kw)
    for v in first.ask():
        first.tell(v, -abs(v - 0.2))
    saved = (tmp_path / "s" / CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError, match="already holds a run: pass resume=True"):
        hpctl.Session(knob, "random", out_dir=tmp_path / "s", **kw)
    again = hpctl.Session(knob, "random", out_dir=tmp_path / "s", resume=True, **kw)
    assert again.probes == 4
    for call in (lambda: next(iter(first.ask())), first.save, lambda: first.tell(0.5, 0.0)):
        with pytest.raises(SessionError, match=r"this Session no longer writes '.*s': a Session resumed there "
                                               r"in this process took it over; use that one") as e:
            call()
        assert "\n" not in str(e.value)
    first.close()  # a no-op: the checkpoint is the new writer's
    assert (tmp_path / "s" / CHECKPOINT).read_bytes() == saved
    while not again.done:
        for v in again.ask():
            again.tell(v, -abs(v - 0.2))
    RunLock(tmp_path / "s").release()  # finished: the lock went with the run


def test_a_dropped_session_frees_its_folder(tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0, default=0.5)
    kw = dict(budget=16, group_size=4, tracking_uri=tracking_uri)
    first = hpctl.Session(knob, "random", out_dir=tmp_path / "s", **kw)
    next(iter(first.ask()))
    del first  # no close(): like a loop that died; whatever still refers to it in a cycle is collected
    again = hpctl.Session(knob, "random", out_dir=tmp_path / "s", resume=True, **kw)
    assert again.probes == 0
    again.close()


_SESSION = """
import sys, time, hpctl
s = hpctl.Session(hpctl.Knob("x", 0.0, 1.0), "random", budget=16, group_size=4, out_dir=sys.argv[1],
                  tracking_uri=sys.argv[2], resume=True)
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
s.close()
"""


def test_a_session_in_another_process_holds_the_folder_until_it_dies(tmp_path, tracking_uri):
    knob = hpctl.Knob("x", 0.0, 1.0)
    kw = dict(budget=16, group_size=4, tracking_uri=tracking_uri)
    proc = subprocess.Popen([sys.executable, "-c", _SESSION, str(tmp_path / "s"), tracking_uri, "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        with pytest.raises(ConfigError, match=rf"another hpctl session writes to it \(pid {proc.pid} on "):
            hpctl.Session(knob, "random", out_dir=tmp_path / "s", resume=True, **kw)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    again = hpctl.Session(knob, "random", out_dir=tmp_path / "s", resume=True, **kw)  # the OS dropped the lock
    again.close()


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    lock = lock_run_dir(tmp_path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on after the parent lets go
        os.write(w, b"1")  # its fork handlers have run by now
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        lock.release()
        RunLock(tmp_path).release()  # free at once, although the child still runs
    finally:
        os.waitpid(pid, 0)


def test_the_exit_line_offers_resume_only_for_a_folder_with_a_checkpoint(tmp_path, monkeypatch):
    """After an interrupt the CLI names what can be resumed: a run folder with its checkpoint, a
    comparison with its spec, or nothing (a run killed before its first checkpoint)."""
    from hpctl import cli, rundir

    monkeypatch.setattr(rundir, "_OPENED", [])
    for name in ("early", "late", "cmp"):
        (tmp_path / name).mkdir()
    early = lock_run_dir(tmp_path / "early")
    early.release()
    assert "nothing to resume" in cli._resume_hint() and "--resume" not in cli._resume_hint()
    late = lock_run_dir(tmp_path / "late")
    (tmp_path / "late" / CHECKPOINT).write_bytes(b"x")
    assert cli._resume_hint().endswith(f"--resume {tmp_path / 'late'}")
    comp = lock_run_dir(tmp_path / "cmp", what="compare")
    (tmp_path / "cmp" / SPEC).write_text("{}")
    assert cli._resume_hint().endswith(f"hpctl compare --resume {tmp_path / 'cmp'}")
    late.release()
    comp.release()


def test_a_marker_being_written_is_hpctls_own(tmp_path):
    """A second writer that looks while the first writes its marker is refused by the lock, naming
    the holder, not told the folder holds a foreign file."""
    folder = tmp_path / "same"
    folder.mkdir()
    first = lock_run_dir(folder)
    (folder / (MARKER + ".tmp")).write_text("{}")
    from hpctl.rundir import open_run_dir

    with pytest.raises(ConfigError, match="in use: another hpctl run writes to it") as err:
        open_run_dir(str(folder), "synthetic", "grpo", 0)
    assert str(os.getpid()) in str(err.value)
    first.release()
