"""Engines: ``--engine ray`` gives the local engine's results, survives lost workers,
resumes, and every bad engine setting is one line.

One local Ray instance (2 CPUs) serves the whole module; it is shut down at the end.
Workers are killed the way a real failure kills them: SIGKILL to the worker process,
found by the title Ray gives it (``ray::hpctl.run_trial``, ``ray::ReplicaActor.run``)
among this process's descendants.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hpctl.config import RunOptions
from hpctl.rundir import CHECKPOINT, RunSpec

SYNTH = {"noise": 0.05, "optimum": 0.3}


# ------------------------------------------------------------------ helpers ------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    # address="local": a new instance of our own, even where another one runs on the machine (ray.init()
    # would join the latest one and refuse num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _descendant(pid: int, root: int) -> bool:
    for _ in range(64):
        if pid == root:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid <= 1:
            return False
    return False


def _ray_procs(title: str) -> list[int]:
    """PIDs of this process's Ray workers whose title starts with ``title``."""
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(title) and _descendant(int(p.name), os.getpid()):
            out.append(int(p.name))
    return out


class Killer(threading.Thread):
    """Kills the first worker titled ``title`` once ``ready()`` holds (at most once)."""

    def __init__(self, title: str, ready=lambda: True, timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.title, self.ready, self.timeout = title, ready, timeout
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while not self.stop.is_set() and time.time() < deadline:
            if self.ready():
                pids = _ray_procs(self.title)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    self.killed = pids[0]
                    return
            time.sleep(0.02)


def _spec(out: Path, uri: str, *, controller: str = "grpo", budget: int = 27, group: int = 4, seed: int = 3,
          plugin_config: dict | None = None, **options) -> RunSpec:
    return RunSpec("synthetic", RunOptions(controller=controller, seed=seed, budget=budget, group_size=group,
                                           out=str(out), tracking_uri=uri, **options),
                   dict(SYNTH, **(plugin_config or {})))


def _events(run_dir: Path, kinds=("probe", "commit")) -> list[tuple]:
    hist = json.loads((Path(run_dir) / "history.json").read_text())
    return [(e["event"], e.get("kind"), e["probe"], tuple(e["value"]), e.get("score")) for e in hist
            if e["event"] in kinds]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------- bad settings ------
@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "'spark' is not one of 'local', 'ray'"),
    (["--probe-workers", "0", "--engine", "ray"], "--probe-workers must be >= 1, got 0"),
    (["--probe-workers", "2"], "--probe-workers needs --engine ray"),
    (["--cpus-per-trial", "-1", "--engine", "ray"], "--cpus-per-trial must be > 0, got -1"),
    (["--cpus-per-trial", "0", "--engine", "ray"], "--cpus-per-trial must be > 0, got 0"),
    (["--gpus-per-trial", "-0.5", "--engine", "ray"], "--gpus-per-trial must be >= 0, got -0.5"),
    (["--cpus-per-trial", "2"], "--cpus-per-trial needs --engine ray"),
    (["--address", "auto"], "--address needs --engine ray"),
    (["--engine", "ray", "--address", "host:port"], "--address must be 'auto' or HOST[:PORT]"),
])
def test_bad_engine_settings_are_one_line(hpctl_main, args, message):
    code, out, err = hpctl_main("run", "synthetic", "--budget", "9", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not list(Path.cwd().glob("runs/*")) or "Traceback" not in err


def test_compare_refuses_probe_workers_and_checks_engine_settings(hpctl_main, tmp_path):
    code, _, err = hpctl_main("compare", "synthetic", "--probe-workers", "2")
    assert code == 2 and "No such option" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probe_workers: 2\nengine: ray\n")
    code, _, err = hpctl_main("compare", "synthetic", "--config", str(cfg), "--seeds", "1", "--budget", "9")
    assert code == 2 and "--probe-workers is for `hpctl run`" in err and len(err.strip().splitlines()) == 1
    cfg.write_text("engine: dask\n")
    code, _, err = hpctl_main("compare", "synthetic", "--config", str(cfg), "--seeds", "1", "--budget", "9")
    assert code == 2 and "unknown engine 'dask'" in err and len(err.strip().splitlines()) == 1


def test_engine_ray_without_ray_installed_is_one_line(hpctl_main, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    monkeypatch.delitem(sys.modules, "hpctl.engines.ray", raising=False)
    for args in (["run", "synthetic", "--budget", "9", "--engine", "ray"],
                 ["compare", "synthetic", "--seeds", "1", "--budget", "9", "--engine", "ray"]):
        code, out, err = hpctl_main(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert "--engine ray needs the 'ray' extra: pip install 'hpctl[ray]'" in lines[0]


def test_only_the_ray_engine_imports_ray():
    import ast

    root = Path(__file__).resolve().parents[1]
    importers = set()
    for folder in ("hpctl", "plugins", "envs"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                if any(n == "ray" or n.startswith("ray.") for n in names):
                    importers.add(str(path.relative_to(root)))
    assert importers == {"hpctl/engines/ray.py"}


def test_the_local_engine_imports_no_ray(tmp_path, tracking_uri):
    code = ("import sys, json; from hpctl.cli import main; "
            f"rc = main(['run', 'synthetic', '--budget', '9', '-c', 'random', '--out', {str(tmp_path / 'r')!r}]); "
            "print(json.dumps([rc, 'ray' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, False], proc.stderr


def test_unreachable_address_fails_within_seconds(hpctl_main):
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    code, _, err = hpctl_main("run", "synthetic", "--budget", "9", "--engine", "ray", "--address", f"127.0.0.1:{port}")
    seconds = time.perf_counter() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0], err
    assert seconds < 30  # Ray's own ray.init retries for minutes; the check answers at once
    code, _, err = hpctl_main("run", "synthetic", "--budget", "9", "--engine", "ray",
                              "--address", "no-such-host.invalid:6379")
    assert code == 2 and "unknown host 'no-such-host.invalid'" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def ray_head_with_token(tmp_path):
    """A Ray head of our own (``ray start --head --block``, token authentication on, as Ray 2.60's
    default), its token under ``tmp_path``; stopped after the test, also when it fails.

    Stopped by its own process group (the head's processes), not ``ray stop``, which would stop
    every Ray instance on the machine.
    """
    import secrets
    import shutil
    import tempfile

    port = _free_port()
    home = tmp_path / "home"
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text(secrets.token_hex(32))  # the head's ~/.ray/auth_token: `ray start --head` then requires it
    # Ray's session folder (and its record of the latest cluster) away from /tmp/ray, which other runs use;
    # short, for Ray's unix socket paths
    temp_dir = tempfile.mkdtemp(prefix="hpray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--block", "--port", str(port),
           "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir]
    log = open(tmp_path / "ray_head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if "Ray runtime started" in (tmp_path / "ray_head.log").read_text():
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"ray start --head did not come up: {(tmp_path / 'ray_head.log').read_text()[-2000:]}")
        yield f"127.0.0.1:{port}", token
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # ray start --block ignores SIGTERM
            try:
                os.killpg(proc.pid, sig)  # the head's own process group (start_new_session)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # ray start is gone; its children may linger a moment
                time.sleep(1)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_head_that_requires_a_token_is_refused_in_one_line_naming_ray_auth_mode(ray_head_with_token, tmp_path):
    address, token = ray_head_with_token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = [sys.executable, "-m", "hpctl.cli", "run", "synthetic", "--budget", "9", "--engine", "ray",
           "--address", address, "--out", str(tmp_path / "run")]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr  # no InvalidAuthToken lines from Ray's C++ client
    assert "requires token authentication: set RAY_AUTH_MODE=token" in lines[0] and address in lines[0]
    assert "InvalidAuthToken" not in proc.stderr
    # the documented fix joins: RAY_AUTH_MODE=token with the head's token
    code = ("from hpctl.engines.ray import connect; import ray; connect(%r); "
            "print(int(ray.cluster_resources()['CPU'])); ray.shutdown()" % address)
    joined = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)))
    assert joined.returncode == 0 and joined.stdout.strip().splitlines()[-1] == "1", joined.stderr[-2000:]
    # a wrong token is refused in one line too, naming what to fix
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 32)
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong)))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "refused this machine's authentication token" in lines[0], \
        proc.stderr


def test_resources_no_node_has_are_refused(ray_local, hpctl_main):
    code, _, err = hpctl_main("run", "synthetic", "--budget", "9", "--engine", "ray", "--gpus-per-trial", "1")
    assert code == 2 and "no node of the Ray cluster has a GPU" in err and len(err.strip().splitlines()) == 1
    code, _, err = hpctl_main("run", "synthetic", "--budget", "9", "--engine", "ray", "--cpus-per-trial", "3")
    assert code == 2 and "more than any Ray node has (at most 2)" in err
    code, _, err = hpctl_main("run", "synthetic", "--budget", "9", "--engine", "ray", "--probe-workers", "3")
    assert code == 2 and "--probe-workers 3 x 1 CPUs each need 3 CPUs at once; the Ray cluster has 2" in err


def test_a_grid_starts_no_more_workers_than_its_points(monkeypatch, tmp_path):
    import hpctl.engines as engines
    from hpctl.engines.base import Engine
    from hpctl.runner import build

    sizes = []

    class Roomy(Engine):  # a cluster with room for 64 workers
        name, parallel = "roomy", True

        def map(self, fn, calls, *, on_result=None, in_process=None):
            raise AssertionError("not used")

        def capacity(self):
            return 64

        def replica_pool(self, spec_json, out_dir, workers):
            sizes.append(workers)
            return object()

    monkeypatch.setattr(engines, "get_engine", lambda options: Roomy())
    for controller, settings, started in (("grid", {"full_runs": True, "k": 3}, [3]),  # at once, one per point
                                          ("grpo", {}, [])):  # no --probe-workers: GRPO uses none
        sizes.clear()
        spec = _spec(tmp_path, "sqlite:///unused.db", controller=controller, budget=8, engine="ray",
                     controller_config=settings)
        _, _, _, _, ctrl, budget = build(spec, tmp_path)
        assert engines.run_workers(spec, tmp_path, ctrl, budget) is not None
        assert sizes == started


# ------------------------------------------------------------ the same results ---
def _mlflow_children(uri: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")


def test_compare_on_ray_equals_local(ray_local, tmp_path, tracking_uri):
    from hpctl.compare import compare

    base = RunOptions(seed=1, budget=18, group_size=4, tracking_uri=tracking_uri)
    local = compare("synthetic", ["grpo", "random"], 2, base, dict(SYNTH), out=str(tmp_path / "local"))
    on_ray = compare("synthetic", ["grpo", "random"], 2, RunOptions(**{**vars(base), "engine": "ray"}), dict(SYNTH),
                     out=str(tmp_path / "ray"))
    assert local["engine"] == "local" and on_ray["engine"] == "ray"
    assert not local["failures"] and not on_ray["failures"]
    for ctrl in ("grpo", "random"):
        assert [r["learned"] for r in on_ray["runs"][ctrl]] == [r["learned"] for r in local["runs"][ctrl]]
        assert [r["metrics"] for r in on_ray["runs"][ctrl]] == [r["metrics"] for r in local["runs"][ctrl]]
        for seed in (1, 2):
            assert _events(tmp_path / "ray" / f"{ctrl}-s{seed}") == _events(tmp_path / "local" / f"{ctrl}-s{seed}")
    # MLflow: one FINISHED child per trial under each parent, with the same names and parameters
    kids = {}
    for name, res in (("local", local), ("ray", on_ray)):
        runs = _mlflow_children(tracking_uri, res["mlflow_run_id"])
        assert all(r.info.status == "FINISHED" for r in runs)
        kids[name] = sorted((r.info.run_name, tuple(sorted((k, v) for k, v in r.data.params.items()))) for r in runs)
    assert len(kids["ray"]) == 4 and kids["ray"] == kids["local"]


def test_probe_workers_score_like_sequential_probing(ray_local, tmp_path, tracking_uri):
    from hpctl.runner import run

    seq = run(_spec(tmp_path / "seq", tracking_uri, group=8))
    par = run(_spec(tmp_path / "par", tracking_uri, group=8, engine="ray", probe_workers=2))
    assert par["learned"] == seq["learned"] and par["probes"] == seq["probes"] and par["faults"] == 0
    events = _events(tmp_path / "par")
    assert events == _events(tmp_path / "seq")
    assert sum(1 for e in events if e[0] == "probe") == seq["probes"] > 9  # several parallel groups


def test_grid_points_in_parallel_choose_like_the_sequential_grid(ray_local, tmp_path, tracking_uri):
    from hpctl.runner import run

    common = dict(controller="grid", budget=8, group=4, controller_config={"full_runs": True},
                  plugin_config={"drift": 0.3})  # drift: the final phase reads the state the grid left
    seq = run(_spec(tmp_path / "seq", tracking_uri, **common))
    par = run(_spec(tmp_path / "par", tracking_uri, engine="ray", **common))
    assert par["learned"] == seq["learned"] and par["metrics"] == seq["metrics"]
    assert _events(tmp_path / "par") == _events(tmp_path / "seq")


@pytest.mark.llm
@pytest.mark.slow
def test_grasp_lora_grid_on_ray_chooses_the_sequential_point(ray_local, tmp_path, tracking_uri):
    """Each worker builds grasp_lora's task from the spec (the backbone once per worker,
    the run's saved source/target adapters reused) and fine-tunes its grid points."""
    from hpctl.runner import run

    def spec(name: str, **engine) -> RunSpec:
        return RunSpec("grasp_lora", RunOptions(controller="grid", seed=0, budget=3, out=str(tmp_path / name),
                                                tracking_uri=tracking_uri, controller_config={"k": 3}, **engine),
                       {"preset": "smoke", "baseline": "none", "steps": 2})  # 2-step fine-tunes

    seq, par = run(spec("seq")), run(spec("par", engine="ray"))
    assert par["learned"] == seq["learned"]
    a, b = _events(tmp_path / "seq", ("probe",)), _events(tmp_path / "par", ("probe",))
    assert [e[:4] for e in a] == [e[:4] for e in b] and len(a) == 3
    # a worker runs torch with its own thread count: the same numbers up to float rounding
    assert np.allclose([e[4] for e in a], [e[4] for e in b], rtol=1e-5, atol=0)
    assert par["phases"]["workers_train_s"] > 0 and "train_s" not in par["phases"]  # the points ran on workers


# ------------------------------------------------------------------- failures ----
@pytest.mark.slow
def test_a_killed_trial_is_retried_and_the_comparison_finishes(ray_local, tmp_path, tracking_uri):
    from hpctl.compare import compare

    base = RunOptions(seed=4, budget=45, group_size=4, tracking_uri=tracking_uri)
    slow = dict(SYNTH, probe_delay=0.05)
    started = lambda: any((tmp_path / "ray").glob(f"*/{CHECKPOINT}"))  # noqa: E731 - a trial is under way
    killer = Killer("ray::hpctl.run_trial", started)
    killer.start()
    try:
        on_ray = compare("synthetic", ["grpo"], 2, RunOptions(**{**vars(base), "engine": "ray"}), slow,
                         out=str(tmp_path / "ray"))
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no trial worker was running"
    local = compare("synthetic", ["grpo"], 2, base, dict(SYNTH), out=str(tmp_path / "local"))
    assert not on_ray["failures"]
    assert [r["learned"] for r in on_ray["runs"]["grpo"]] == [r["learned"] for r in local["runs"]["grpo"]]
    for seed in (4, 5):
        assert _events(tmp_path / "ray" / f"grpo-s{seed}") == _events(tmp_path / "local" / f"grpo-s{seed}")
    # the retry resumed the lost attempt's MLflow run: still one child per trial, all finished
    runs = _mlflow_children(tracking_uri, on_ray["mlflow_run_id"])
    assert sorted(r.info.run_name for r in runs) == ["synthetic/grpo/seed4", "synthetic/grpo/seed5"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_killed_probe_worker_is_restarted_and_its_probes_repeated(ray_local, tmp_path, tracking_uri):
    from hpctl.runner import run

    seq = run(_spec(tmp_path / "seq", tracking_uri, group=8, budget=36))
    killer = Killer("ray::ReplicaActor.run")  # a worker in the middle of a probe
    killer.start()
    try:
        par = run(_spec(tmp_path / "par", tracking_uri, group=8, budget=36, engine="ray", probe_workers=2,
                        plugin_config={"probe_delay": 0.1}))
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no probe worker was running"
    assert par["learned"] == seq["learned"]
    assert _events(tmp_path / "par") == _events(tmp_path / "seq")  # no probe lost, none changed
    faults = [e for e in json.loads((tmp_path / "par" / "history.json").read_text()) if e["event"] == "fault"]
    assert faults and all(f["kind"] == "worker" and "died" in f["error"] for f in faults)
    assert par["faults"] == len(faults)


def test_sigkilled_ray_run_resumes_on_ray(ray_local, tmp_path, tracking_uri, hpctl_main):
    from hpctl.runner import run

    address = ray_local.get_runtime_context().gcs_address
    args = ["run", "synthetic", "-c", "grpo", "--seed", "6", "--budget", "54", "--group-size", "8",
            "--noise", "0.05", "--optimum", "0.3", "--probe-delay", "0.05",
            "--engine", "ray", "--address", address, "--probe-workers", "2"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, last, deadline = 0, None, time.time() + 240
    while time.time() < deadline and proc.poll() is None and seen < 3:
        ck = run_dir / CHECKPOINT
        if ck.exists() and ck.stat().st_mtime_ns != last:
            seen, last = seen + 1, ck.stat().st_mtime_ns
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.kill()
    proc.wait()
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["options"]["engine"] == "ray" and spec["options"]["probe_workers"] == 2
    # the resume runs in-process: it joins the same instance (this process's, at the spec's address)
    code, out, err = hpctl_main("run", "synthetic", "--resume", str(run_dir), "--json")
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    seq = run(_spec(tmp_path / "seq", tracking_uri, seed=6, budget=54, group=8))
    assert got["learned"] == seq["learned"] and got["probes"] == seq["probes"]
    assert _events(run_dir) == _events(tmp_path / "seq")


def test_resume_takes_engine_flags_and_no_others(hpctl_main, tmp_path):
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(tmp_path), "--engine", "ray", "--seed", "3")
    assert code == 2 and "drop --seed" in err and len(err.strip().splitlines()) == 1
    code, _, err = hpctl_main("run", "synthetic", "--resume", str(tmp_path), "--engine", "ray")
    assert code == 2 and "not an hpctl run directory" in err  # the engine flag itself was accepted
