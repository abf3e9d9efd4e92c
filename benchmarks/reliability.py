"""Reliability under concurrency, kills and long runs (issue 17) and hostile cases (issue 37), measured end to end.

Four parts, each writing ``benchmarks/results/reliability_<part>.json`` and a section of
``benchmarks/results/reliability.md`` (run them separately: each fits a short session):

* ``concurrent``: 8 runs started at once in a fresh folder with no MLflow store yet;
  all must finish and every run must have its metrics.
* ``kills``: 20 runs each killed at a random moment (SIGKILL or SIGTERM, alternating)
  and resumed; each must end with the same learned value and probe sequence as an
  uninterrupted run, and no MLflow run may be left RUNNING.
* ``throughput``: one 100k-probe synthetic run; probes per second over its first and
  last 10k probes (from the MLflow metric timestamps), whose ratio should be near 1 now
  that a checkpoint no longer rewrites the whole history.
* ``hostile``: the hostile cases of issue 37 (:mod:`benchmarks.hostile_cases`: deleting
  what hpctl did not write, an interrupted first run, a stalled or dead tracking server,
  two writers on one run, runs left RUNNING, input not refused or refused in the wrong
  words, raw exceptions), one after another; counts per class and, per case, handled or
  not with the one line observed. ``--case NAME`` (repeatable) runs some of them and
  updates their rows in the existing results.

    python benchmarks/reliability.py --part concurrent|kills|throughput|hostile [--n N] [--case NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SYNTH = ["run", "synthetic", "--optimum", "0.3", "--noise", "0.02", "-c", "grpo"]


def _cli(args, cwd, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "hpctl.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _env(uri: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in exps]) if exps else []


def part_concurrent(n: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hpctl-conc-"))
    t0 = time.perf_counter()
    procs = [_cli([*SYNTH, "--budget", "64", "--seed", str(i), "--out", f"r{i}", "--json"], work, _env(None))
             for i in range(n)]
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - t0
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    client, runs = _runs(uri)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    probes = {}  # run id -> probes the run spent (the budget is a ceiling: GRPO spends whole rounds)
    for i in range(n):
        res = json.loads((work / f"r{i}" / "result.json").read_text()) if (work / f"r{i}" / "result.json").exists() else {}
        if res:
            probes[res["mlflow_run_id"]] = res["probes"]
    complete = [r for r in top if r.info.status == "FINISHED" and r.info.run_id in probes
                and len(client.get_metric_history(r.info.run_id, "probe/x")) == probes[r.info.run_id]
                and "learned/x" in r.data.metrics]
    return {"runs": n, "exit_codes": [p.returncode for p in procs], "finished": len(complete),
            "errors": [e.strip().splitlines()[-1] for p, (_, e) in zip(procs, outs) if p.returncode][:5],
            "wall_s": wall,
            "ok": all(p.returncode == 0 for p in procs) and len(complete) == n}


def part_kills(n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="hpctl-kill-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = _env(uri)
    args = [*SYNTH, "--budget", "64", "--seed", "3", "--probe-delay", "0.02"]
    ref = _cli([*args, "--out", "ref", "--json"], work, env)
    out, err = ref.communicate(timeout=600)
    expected = json.loads(out.strip().splitlines()[-1])
    ref_probes = [e["probe"] for e in json.loads((work / "ref" / "history.json").read_text()) if e["event"] == "probe"]
    cases = []
    for i in range(n):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        delay = rng.uniform(0.0, 3.0)  # after the first checkpoint; the controller phase lasts ~3-5 s
        p = _cli([*args, "--out", f"k{i}"], work, env)
        while p.poll() is None and not (work / f"k{i}" / "checkpoint.safetensors").exists():
            time.sleep(0.01)
        time.sleep(delay)
        killed_mid_run = p.poll() is None
        if killed_mid_run:
            p.send_signal(sig)
        p.communicate(timeout=120)
        res = _cli(["run", "synthetic", "--resume", f"k{i}", "--json"], work, env)
        rout, rerr = res.communicate(timeout=600)
        # a kill that lands after the run finished leaves nothing to resume: what counts is the
        # folder's result and history either way
        finished = res.returncode == 0 or "nothing to resume" in rerr
        folder = work / f"k{i}"
        got = json.loads((folder / "result.json").read_text()) if finished else {}
        probes = ([e["probe"] for e in json.loads((folder / "history.json").read_text())
                   if e["event"] == "probe"] if finished else [])
        cases.append({"signal": sig.name, "after_s": round(delay, 2), "killed_mid_run": killed_mid_run,
                      "first_exit": p.returncode, "resume_exit": res.returncode,
                      "same_learned": got.get("learned") == expected["learned"], "same_probes": probes == ref_probes,
                      "resume_error": rerr.strip().splitlines()[-1] if res.returncode and rerr.strip() else ""})
    _, runs = _runs(uri)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    return {"kills": n, "cases": cases, "identical": sum(c["same_learned"] and c["same_probes"] for c in cases),
            "killed_mid_run": sum(c["killed_mid_run"] for c in cases), "running_left": len(running),
            "ok": all(c["same_learned"] and c["same_probes"] for c in cases) and not running}


def part_throughput(budget: int, window: int = 10_000) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hpctl-long-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    p = _cli(["run", "synthetic", "-c", "random", "--budget", str(budget), "--out", "long", "--json"], work, _env(uri))
    out, err = p.communicate(timeout=3600)
    if p.returncode:
        raise SystemExit(err)
    result = json.loads(out.strip().splitlines()[-1])
    client, _ = _runs(uri)
    hist = sorted(client.get_metric_history(result["mlflow_run_id"], "probe/x"), key=lambda m: m.step)
    ts = [m.timestamp / 1000 for m in hist]

    def rate(lo: int, hi: int) -> float:
        return (hi - lo) / max(ts[hi - 1] - ts[lo], 1e-9)

    start, end = rate(0, window), rate(len(ts) - window, len(ts))
    ckpt = (work / "long" / "checkpoint.safetensors").stat().st_size
    return {"probes": len(ts), "window": window, "start_probes_per_s": start, "end_probes_per_s": end,
            "end_over_start": end / start, "checkpoint_bytes": ckpt, "wall_s": result["wall_s"],
            "ok": end / start > 0.8}


def part_hostile(names: list[str] | None = None) -> dict:
    """Run the hostile cases (all, or ``names``), one at a time; with ``names`` the rows of
    the other cases come from the existing results file."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.hostile_cases import CASES, CLASSES, run_case

    unknown = [n for n in names or [] if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; the cases: {', '.join(CASES)}")
    rows = {}
    old = RESULTS / "reliability_hostile.json"
    if names and old.exists():
        rows = {c["name"]: c for c in json.loads(old.read_text()).get("cases", []) if c["name"] in CASES}
    for name in names or list(CASES):
        t0 = time.perf_counter()
        handled, detail = run_case(name)
        rows[name] = {"name": name, "class": CASES[name].cls, "handled": handled, "detail": detail,
                      "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{'handled    ' if handled else 'NOT HANDLED'} {name}: {detail}", file=sys.stderr, flush=True)
    cases = [rows[n] for n in CASES if n in rows]
    classes = {c: {"title": title, "cases": sum(r["class"] == c for r in cases),
                   "handled": sum(r["class"] == c and r["handled"] for r in cases)} for c, title in CLASSES.items()}
    handled = sum(r["handled"] for r in cases)
    return {"cases_total": len(cases), "handled": handled, "classes": classes, "cases": cases,
            "ok": handled == len(cases) == len(CASES)}


def write(part: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"part": part, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count(), **data}
    (RESULTS / f"reliability_{part}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "reliability.md").write_text(render_md(RESULTS))


def render_md(results: Path = RESULTS) -> str:
    """reliability.md from the parts' JSON files in ``results`` (benchmarks/pages.py regenerates it)."""
    lines = ["# Reliability (issues 17 and 37)", "",
             "Reproduce one part: `python benchmarks/reliability.py --part PART`.", ""]
    for name in ("concurrent", "kills", "throughput", "hostile"):
        f = results / f"reliability_{name}.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        lines.append(f"## {name} ({d['when']}, load average {d['load_avg_1m']:.1f} on {d['cpus']} CPUs): "
                     f"{'PASS' if d['ok'] else 'FAIL'}")
        if name == "concurrent":
            lines.append(f"{d['runs']} runs started at once in a fresh folder: {d['finished']} finished with a "
                         f"metric for every probe they spent and the learned value in MLflow; exit codes "
                         f"{d['exit_codes']}.")
        elif name == "kills":
            sigs = {s: sum(c["signal"] == s for c in d["cases"]) for s in ("SIGKILL", "SIGTERM")}
            lines.append(f"{d['kills']} runs killed at a random moment ({sigs['SIGKILL']} SIGKILL, "
                         f"{sigs['SIGTERM']} SIGTERM; {d['killed_mid_run']} while running) and resumed: "
                         f"{d['identical']} ended with the uninterrupted run's learned value and probe sequence; "
                         f"MLflow runs left RUNNING: {d['running_left']}.")
        elif name == "hostile":
            lines.append(f"The hostile cases of issue 37, each a test in tests/test_hostile.py: {d['handled']} of "
                         f"{d['cases_total']} handled (a one-line error naming the problem and a non-zero exit, "
                         "no traceback, nothing deleted that hpctl did not write, nothing left RUNNING, a run "
                         "that goes on without its tracking server).")
            lines += ["", "| class | handled |", "|---|---|"]
            lines += [f"| {c['title']} | {c['handled']} of {c['cases']} |" for c in d["classes"].values()]
            lines += ["", "| case | class | handled | observed |", "|---|---|---|---|"]
            lines += [f"| `{c['name']}` | {c['class']} | {'yes' if c['handled'] else '**no**'} | "
                      f"{c['detail'].replace('|', '/')} |" for c in d["cases"]]
        else:
            lines.append(f"One {d['probes']}-probe synthetic run (random search): "
                         f"{d['start_probes_per_s']:.0f} probes/s over the first {d['window']} probes, "
                         f"{d['end_probes_per_s']:.0f} over the last {d['window']} (ratio "
                         f"{d['end_over_start']:.2f}); final checkpoint {d['checkpoint_bytes'] / 1024:.1f} KiB.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True, choices=["concurrent", "kills", "throughput", "hostile"])
    ap.add_argument("--n", type=int, default=None, help="runs (concurrent: 8), kills (20) or probes (100000)")
    ap.add_argument("--case", action="append", default=None, help="hostile: run only this case (repeatable)")
    a = ap.parse_args(argv)
    if a.part == "concurrent":
        data = part_concurrent(a.n or 8)
    elif a.part == "kills":
        data = part_kills(a.n or 20)
    elif a.part == "hostile":
        data = part_hostile(a.case)
    else:
        data = part_throughput(a.n or 100_000)
    write(a.part, data)
    print(json.dumps({k: v for k, v in data.items() if k != "cases"}, indent=2))
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
