"""The command line: ``python -m benchmarks.grasp_vs_grid --scale smoke|cpu|regret|regret32|gpu ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __doc__ as DOC
from .analysis import YARDSTICK, criteria, per_example_scores, summarise
from .arms import ARMS, EXPERIMENT, SCALES, arm_spec, resolved, run_arm, train_shared_adapters, warm_up_metrics
from .report import _jsonable, markdown, plot_seed, print_tables
from .throughput import measure_throughput


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    from hpctl.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    """:func:`benchmarks.seeds.parse_seeds`, a ConfigError (one line, exit 2) for a bad value."""
    from hpctl.errors import ConfigError

    from ..seeds import parse_seeds as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ----------------------------------------------------------------------------- progress
class Progress:
    """One rich progress bar per arm over its probes (stderr), as ``hpctl run`` shows them."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)

    def __enter__(self) -> "Progress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def callback(self, label: str) -> Callable[[str, dict[str, Any]], None]:
        state: dict[str, Any] = {"id": None}

        def on(kind: str, info: dict[str, Any]) -> None:
            if kind == "start":
                state["id"] = self.bar.add_task(label, total=info["budget"], completed=info.get("done", 0), info="")
            elif state["id"] is None:
                return
            elif kind == "probe":
                val = ", ".join(f"{v:.3f}" for v in info["value"])
                self.bar.update(state["id"], completed=info["probe"], info=f"ratio {val} -> {info['score']:.4g}")
            elif kind == "phase":
                self.bar.update(state["id"], info=f"phase: {info['name']}")

        return on

    def note(self, text: str) -> int:
        return self.bar.add_task(text, total=None, info="")

    def done(self, task_id: int, info: str = "") -> None:
        self.bar.update(task_id, total=1, completed=1, info=info)


def _rel(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies under it (for committed markdown)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hpctl", "torch", "transformers", "peft", "mlflow", "stable-baselines3", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    out["platform"] = platform.platform()
    return out


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grasp_vs_grid",
                                description=(DOC or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Scales:\n" + "\n".join(f"  {s.name}: {s.note}" for s in SCALES.values()))
    p.add_argument("--scale", choices=list(SCALES), default="smoke")
    p.add_argument("--seeds", default="1", help="a count (3 -> seeds 0,1,2), a range (1-2; 1-1: seed 1 alone) or a comma list (0,5)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"),
                   help="where the JSON, markdown and PNGs go")
    p.add_argument("--runs-dir", default=None, help="run folders and the MLflow store (default runs/grasp_vs_grid-<scale>)")
    p.add_argument("--backbone", default=None, help="override the scale's backbone (an HF id or a local path)")
    p.add_argument("--k", type=int, default=None, help="grid points (default 8, as in the paper)")
    p.add_argument("--budget", type=int, default=None, help="probes per GRASP controller run (default: the plugin's)")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a grasp_lora option (repeatable)")
    p.add_argument("--throughput-reps", type=int, default=None, help="A/B alternations (0: skip throughput)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--tag", default=None, help="results as grasp_vs_grid_<scale>_<tag>.* (a variant or a language)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: re-summarise the results file of --scale/--tag (in --out) with this code's "
                        "analysis and rewrite its JSON and markdown (the measurements are kept as they are)")
    return p


#: the results file's keys that are not its meta (what ``markdown`` is given)
DERIVED_KEYS = ("summary", "throughput", "criteria", "plots", "runs")


def summarise_doc(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A results file's summary and checks, as this code computes them from its measurements (the
    ``yardstick`` it was measured with, if any, says which readings it gets)."""
    records = {int(s): r for s, r in doc["runs"].items()}
    adapters = {int(s): a for s, a in doc["adapters"].items()}
    summary = summarise(records, adapters, doc["task"], doc["lang"], int(doc["steps"]), int(doc["controller_steps"]),
                        yardstick=doc.get("yardstick"))
    return summary, criteria(summary, doc.get("throughput"))


def render(doc: dict[str, Any]) -> str:
    """A results file's markdown report, from its measurements (what ``--report-only`` writes)."""
    summary, crit = summarise_doc(doc)
    meta = {k: v for k, v in doc.items() if k not in DERIVED_KEYS}
    return markdown(meta, summary, doc.get("throughput"), crit, doc.get("plots") or [])


def rereport(args: argparse.Namespace, console) -> int:
    """``--report-only``: the committed results file, re-summarised by the current analysis code."""
    from hpctl.errors import ConfigError

    stem = f"grasp_vs_grid_{args.scale}" + (f"_{args.tag}" if args.tag else "")
    js, md = Path(args.out) / f"{stem}.json", Path(args.out) / f"{stem}.md"
    try:
        doc = json.loads(js.read_text())
        records = doc["runs"]
        summary, crit = summarise_doc(doc)
    except FileNotFoundError:
        raise ConfigError(f"no results file {js} to re-report (run the benchmark, or check --scale/--tag/--out)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{js} is not a grasp_vs_grid results file ({type(exc).__name__}: {exc})") from None
    meta = {k: v for k, v in doc.items() if k not in DERIVED_KEYS}
    doc.update(summary=summary, criteria=crit)
    js.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    md.write_text(markdown(meta, summary, doc.get("throughput"), crit, doc.get("plots") or []))
    console.print(f"re-reported {js}, {md} ({len(records)} seed(s); nothing re-run)", highlight=False, markup=False,
                  soft_wrap=True)
    return 0


#: what must match for a part's seeds to join an earlier results file (else the file is replaced)
SAME_RUN_KEYS = ("scale", "k", "budget", "group_size", "steps", "controller_steps", "task", "lang",
                 "resolved_plugin_config")


def earlier_parts(path: Path, meta: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any] | None:
    """The seeds of an earlier results file at ``path`` measured with the same configuration and not
    re-run now (a long benchmark runs a seed per part, each part committing its file), as
    ``{"runs", "adapters", "throughput", "commands"}``; None when there is none.

    A seed re-run now replaces its old records; a file with another configuration is replaced."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    now = json.loads(json.dumps(_jsonable({k: meta.get(k) for k in SAME_RUN_KEYS})))
    if any(old.get(k) != now[k] for k in SAME_RUN_KEYS):
        return None
    keep = [s for s in old.get("seeds", []) if s not in set(seeds) and str(s) in old.get("runs", {})]
    if not keep:
        return None
    commands = old.get("commands") or [old.get("command")]
    return {"runs": {s: old["runs"][str(s)] for s in keep},
            "adapters": {s: old["adapters"][str(s)] for s in keep if str(s) in old.get("adapters", {})},
            "throughput": old.get("throughput"), "commands": [c for c in commands if c]}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from hpctl.errors import HpctlError

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.report_only:
            return rereport(args, console)
        return _main(args, argv, console)
    except HpctlError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)  # one line, never wrapped
        return 2


def _main(args: argparse.Namespace, argv: list[str] | None, console) -> int:
    import torch
    from rich.console import Console

    from hpctl.errors import ConfigError
    from hpctl.runner import steps_per_round as runner_steps_per_round
    from hpctl.tracking import Tracker

    if args.threads:
        torch.set_num_threads(int(args.threads))
    base_scale = SCALES[args.scale]
    scale = dataclasses.replace(base_scale, plugin_config=dict(base_scale.plugin_config))
    if args.k is not None:
        if args.k < 2:
            raise ConfigError(f"--k must be >= 2, got {args.k}")
        scale.k = args.k
    if args.budget is not None:
        scale.budget = args.budget
    if args.group_size is not None:
        scale.group_size = args.group_size
    if args.throughput_reps is not None:
        scale.tp_reps = max(0, args.throughput_reps)
    if args.backbone:
        scale.plugin_config["backbone"] = args.backbone
    scale.plugin_config.update(parse_sets(args.set))
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.tag):
        raise ConfigError(f"--tag may hold letters, digits, - and _ only, got {args.tag!r}")
    cfg = resolved(scale.plugin_config)  # validates every option before anything runs
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ConfigError(f"unknown arm(s) {bad} (choose from {', '.join(ARMS)})")
    seeds = parse_seeds(args.seeds)
    from hpctl.plugins.grasp_lora import GraspLoraPlugin

    plugin = GraspLoraPlugin()
    budget = scale.budget or plugin.default_budget
    group = scale.group_size or plugin.default_group_size
    steps_per_round = runner_steps_per_round(int(cfg.controller_steps), budget, group)
    tp_steps = int(scale.tp_steps) if scale.tp_steps is not None else steps_per_round
    if tp_steps != steps_per_round:
        console.print(f"note: throughput rounds of {tp_steps} step(s), the controller run's are {steps_per_round}",
                      highlight=False, markup=False)
    runs_dir = Path(args.runs_dir or Path("runs") / f"grasp_vs_grid-{scale.name}").resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    tracking_shown = f"sqlite:///{_rel(runs_dir / 'mlflow.db')}"
    command = " ".join(["python -m benchmarks.grasp_vs_grid",
                        *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent = Tracker(tracking_uri, EXPERIMENT, run_name=f"grasp_vs_grid {scale.name}",
                     tags={"hpctl.plugin": "grasp_lora", "hpctl.benchmark": "grasp_vs_grid", "scale": scale.name})
    parent.log_params({"command": command, "seeds": seeds, "scale": scale.name, "k": scale.k, "budget": budget,
                       "group_size": group, "steps_per_round": steps_per_round, "plugin_config": scale.plugin_config, "arms": arms})
    status = "FAILED"
    t_all = time.perf_counter()
    try:
        adapters: dict[int, dict[str, Any]] = {}
        records: dict[int, dict[str, dict[str, Any]]] = {}
        throughput = None
        with Progress(console) as prog:
            for seed in seeds:
                sd = runs_dir / stamp / f"seed{seed}"
                tid = prog.note(f"seed {seed}: shared source + target adapters")
                adapters[seed] = train_shared_adapters(scale.plugin_config, seed, sd / "adapters", tracking_uri,
                                                       parent.run_id)
                prog.done(tid, f"{adapters[seed]['train_s']:.1f} s of training")
                if seed == seeds[0]:
                    warm_up_metrics(cfg.task, cfg.lang)
                records[seed] = {}
                for arm in arms:
                    spec = arm_spec(arm, scale.plugin_config, adapters[seed], seed, scale, sd / arm, tracking_uri)
                    records[seed][arm] = run_arm(arm, spec, prog, parent.run_id)
                    # per-question test scores travel with the results (a later part merges them
                    # after these run folders are gone)
                    records[seed][arm]["test_scores"] = per_example_scores(cfg.task, cfg.lang,
                                                                           records[seed][arm]["out_dir"])
                    # what is done so far, in case a later arm fails (the run folders keep the rest)
                    (runs_dir / stamp / "progress.json").write_text(json.dumps(_jsonable(
                        {"command": command, "adapters": adapters, "runs": records}), indent=1) + "\n")
            if scale.tp_reps > 0:
                tid = prog.note("throughput and probe cost")
                learned = records[seeds[0]].get("grpo", {}).get("learned")
                throughput = measure_throughput(
                    scale.plugin_config, adapters[seeds[0]], seeds[0], rounds=scale.tp_rounds, steps=tp_steps,
                    reps=scale.tp_reps, probe_reps=scale.probe_reps, out_dir=runs_dir / stamp / "throughput",
                    tracking_uri=tracking_uri, parent_run_id=parent.run_id,
                    ratio=None if not learned else float(list(learned.values())[0]), group_size=group,
                    say=lambda s: prog.bar.update(tid, info=s))
                prog.done(tid)
        stem = f"grasp_vs_grid_{scale.name}" + (f"_{args.tag}" if args.tag else "")
        js, md = out / f"{stem}.json", out / f"{stem}.md"
        this_part = {"scale": scale.name, "k": scale.k, "budget": budget, "group_size": group,
                     "steps": int(cfg.steps), "controller_steps": int(cfg.controller_steps), "task": cfg.task,
                     "lang": cfg.lang, "resolved_plugin_config": dataclasses.asdict(cfg)}
        earlier = earlier_parts(js, this_part, seeds)
        commands = [command]
        if earlier:
            records = {**earlier["runs"], **records}
            adapters = {**earlier["adapters"], **adapters}
            throughput = throughput or earlier["throughput"]
            commands = [c for c in earlier["commands"] if c != command] + [command]
            console.print(f"kept seed(s) {', '.join(map(str, earlier['runs']))} of {js} (same configuration)",
                          highlight=False, markup=False)
        records = dict(sorted(records.items()))
        summary = summarise(records, adapters, cfg.task, cfg.lang, int(cfg.steps), int(cfg.controller_steps),
                            yardstick=YARDSTICK)
        crit = criteria(summary, throughput)
        first = next(iter(records.values()))
        backbone_name = next((r["backbone"] for r in first.values() if r.get("backbone")), None)
        meta = {
            "benchmark": "grasp_vs_grid", "scale": scale.name, "scale_note": scale.note, "command": command,
            "argv": list(sys.argv[1:] if argv is None else argv), "seeds": sorted(records), "commands": commands,
            "created_utc": stamp,
            "k": scale.k, "budget": budget, "group_size": group, "steps": int(cfg.steps),
            "controller_steps": int(cfg.controller_steps), "steps_per_round": steps_per_round, "arms": arms,
            "task": cfg.task, "lang": cfg.lang, "plugin_config": scale.plugin_config,
            "resolved_plugin_config": dataclasses.asdict(cfg),
            "arm_specs": {a: arm_spec(a, scale.plugin_config, adapters[seeds[0]], seeds[0], scale, Path("<run>"),
                                      tracking_uri).to_json() for a in arms},
            "throughput_config": {"rounds": scale.tp_rounds, "steps": tp_steps, "reps": scale.tp_reps,
                                  "probe_reps": scale.probe_reps, "controller_steps_per_round": steps_per_round},
            "tracking_uri": tracking_shown, "mlflow_parent_run_id": parent.run_id, "runs_dir": _rel(runs_dir / stamp),
            "versions": versions(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "adapters": {str(s): a for s, a in adapters.items()},
            "grid_points": {str(s): r["grid"]["grid_points"] for s, r in records.items() if "grid" in r},
            "tag": args.tag,
            "backbone_name": backbone_name,
            "yardstick": YARDSTICK,  # issue 36: the report reads the seeds on their mean curve's trend
        }
        plots = []
        for seed, arms_rec in records.items():
            try:
                png = plot_seed(out / f"{stem}_seed{seed}.png", arms_rec,
                                f"grasp_vs_grid {scale.name}, seed {seed}: grid dev score and controller ratios")
                if png:
                    plots.append(str(png))
                    parent.artifact(png)
            except Exception as exc:  # noqa: BLE001 - a plot never costs the results
                console.print(f"plot failed: {exc}", markup=False)
        meta["wall_s"] = time.perf_counter() - t_all
        doc = {**meta, "summary": summary, "throughput": throughput, "criteria": crit, "plots": plots,
               "runs": {str(s): r for s, r in records.items()}}
        js.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
        md.write_text(markdown(meta, summary, throughput, crit, plots))
        parent.artifact(js)
        parent.artifact(md)
        med = summary["median"]
        for arm, m in med.items():
            parent.metrics({f"{arm}/total_s": m["total_s"], f"{arm}/score": m["metrics"].get("score", float("nan"))})
            for k, v in (m.get("time_ratio") or {}).items():
                parent.metric(f"{arm}/time_ratio_{k}", v)
        print_tables(Console(width=max(160, Console().width)), meta, summary, throughput, crit)
        console.print(f"wrote {js}, {md}" + (f", {', '.join(plots)}" if plots else "") +
                      f" in {meta['wall_s']:.0f} s", highlight=False)
        status = "FINISHED"
        return 0
    finally:
        parent.end(status)
