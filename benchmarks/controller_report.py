"""The controller benchmark's output (:mod:`benchmarks.controllers` runs it): the Markdown
report, the rich tables printed at the end, and ``controllers.json`` with its runs stored as a
table (one row per run, floats to 8 significant digits)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

SUCCESS = 0.02  # "within 0.02": success, and the warm-start target
TRAPPED = 0.1  # "more than 0.1 away": trapped

def versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    from importlib.metadata import version

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "hpctl": version("hpctl"), "platform": platform.platform()}


def _fmt_iqr(m: float, lo: float, hi: float, p: int = 3) -> str:
    return f"{m:.{p}f} [{lo:.{p}f}, {hi:.{p}f}]"


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _probes(x: float) -> str:
    return "never" if not np.isfinite(x) else f"{x:.0f}"


def markdown(doc: dict[str, Any]) -> str:
    meta, rows, totals, runs = doc, doc["summary"], doc["overall"], doc["runs"]
    commands = meta.get("commands") or [meta["command"]]
    lines = [
        "# Controllers on synthetic landscapes",
        "",
        " ; ".join(f"`{c}`" for c in commands),
        "",
        f"Budget {meta['budget']} probes, group size {meta['group_size']}, seeds {_seed_text(meta['seeds'])} "
        f"({len(meta['seeds'])} per controller and scenario). The learned value is what the final phase uses "
        "(GRPO and the SB3 agents: the committed value; grid and random search: their best probe), scored at "
        f"the end of training. Error = distance to the optimal set; p90 = its 90th percentile; trapped = error > "
        f"{TRAPPED}; success = error <= {SUCCESS}; best probe = median error of the single best-scoring probe; "
        "updates = gradient steps on the policy (median). Time: total wall time relative to grpo, given only for "
        "controllers run in the same process (part) as grpo.",
        "",
        "## Overall",
        "",
        "| controller | runs | error median [IQR] | p90 | trapped | success | updates | time vs grpo |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in totals:
        tv = "" if t["time_vs_grpo"] is None else f"{t['time_vs_grpo']:.1f}x"
        lines.append(f"| {t['controller']} | {t['runs']} | {_fmt_iqr(t['dist_median'], t['dist_q25'], t['dist_q75'])} "
                     f"| {t['dist_p90']:.3f} | {_pct(t['trapped'])} | {_pct(t['success'])} | "
                     f"{t['updates_median']:.0f} | {tv} |")
    tg = doc.get("targets") or []
    if tg:
        names = list(dict.fromkeys(k for t in tg for k in t["checks"]))
        met = {k: sum(t["checks"][k] for t in tg if k in t["checks"]) for k in names}
        cnt = {k: sum(k in t["checks"] for t in tg) for k in names}
        lines += ["", "## Targets (GRPO)", "",
                  "Per scenario, GRPO against random search. " + "; ".join(f"{k}: met in {met[k]} of {cnt[k]}"
                                                                          for k in names) + ".", "",
                  "| scenario | grpo median | random median | grpo trapped | random trapped | not met |",
                  "|---|---|---|---|---|---|"]
        for t in tg:
            miss = ", ".join(k for k, ok in t["checks"].items() if not ok) or "-"
            lines.append(f"| {t['scenario']} | {t['grpo_median']:.4f} | {t['random_median']:.4f} | "
                         f"{_pct(t['grpo_trapped'])} | {_pct(t['random_trapped'])} | {miss} |")
    pin = doc.get("ppo_pinned")
    if pin:
        lines += ["", f"PPO (one rollout per probe group, gamma 0): in {pin['runs']} 1-D runs whose optimum is more "
                      f"than 0.05 from the start, it ended within 0.01 of its start value in {_pct(pin['pinned'])}, "
                      f"made a median {pin['updates_median']:.0f} updates and ended a median "
                      f"{pin['dist_median']:.3f} from the optimum."]
    reg = doc.get("regulariser")
    if reg:
        lines += ["", f"Regulariser: GRPO with the default lambda_reg and with lambda_reg=0, paired by scenario and "
                      f"seed ({reg['pairs']} pairs): the learned values differ by more than 0.002 in "
                      f"{_pct(reg['differ_by_more_than_0.002'])} of pairs (median difference "
                      f"{reg['median_abs_difference']:.4f})."]
    abl = [t for t in totals if t["controller"].startswith("grpo[")]
    if abl:
        ref = next((t for t in totals if t["controller"] == "grpo"), None)
        lines += ["", "## GRPO ablations", "",
                  "Each row switches one choice of the default back, on every scenario and seed above. "
                  "Worst trapped = the highest trapped rate over the scenarios; then where each choice matters: "
                  "two peaks (trapped), optima near a bound (0.03, 0.97: median error), noise 0.1 (median error), "
                  "drift (median error).", "",
                  "| variant | error median [IQR] | p90 | trapped | worst trapped | two peaks: trapped "
                  "| near a bound | noise 0.1 | drift | success |", "|---|---|---|---|---|---|---|---|---|---|"]
        for t in ([ref] if ref else []) + abl:
            worst = max(r["trapped"] for r in rows if r["controller"] == t["controller"])
            mine = [r for r in runs if r["controller"] == t["controller"]]
            lines.append(f"| {t['controller']} | {_fmt_iqr(t['dist_median'], t['dist_q25'], t['dist_q75'])} | "
                         f"{t['dist_p90']:.3f} | {_pct(t['trapped'])} | {_pct(worst)} | "
                         f"{_sub(mine, 'two-peaked', trapped=True)} | {_sub(mine, 'peaked 0.03', 'peaked 0.97')} | "
                         f"{_sub(mine, ' n0.1')} | {_sub(mine, 'drift')} | {_pct(t['success'])} |")
    ws = doc.get("warm_summary") or []
    if ws:
        lines += ["", "## Warm start (GRPO)", "",
                  f"Source run on a landscape with the first optimum, then the second landscape learned from scratch "
                  f"(cold) and from the source run's policy (warm), same seed. Probes until the committed value is "
                  f"within {SUCCESS} of the optimum (median; never: not within the budget in most runs).", "",
                  "| optimum source -> target | noise | runs | cold: probes | warm: probes | warm faster | "
                  "cold reached | warm reached | final error cold / warm |", "|---|---|---|---|---|---|---|---|---|"]
        for w in ws:
            lines.append(f"| {w['pair'][0]} -> {w['pair'][1]} | {w['noise']} | {w['n']} | "
                         f"{_probes(w['cold_probes_median'])} | {_probes(w['warm_probes_median'])} | "
                         f"{_pct(w['warm_faster'])} | {_pct(w['cold_reached'])} | {_pct(w['warm_reached'])} | "
                         f"{w['cold_dist_median']:.3f} / {w['warm_dist_median']:.3f} |")
    lines += ["", "## Per scenario", "",
              "| scenario | controller | error median [IQR] | p90 | trapped | best probe | updates | "
              "probes (median / max) | success |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["controller"].startswith("grpo["):
            continue
        dist = _fmt_iqr(r["dist_median"], r["dist_q25"], r["dist_q75"])
        lines.append(f"| {r['scenario']} | {r['controller']} | {dist} | {r['dist_p90']:.3f} | {_pct(r['trapped'])} "
                     f"| {r['best_probe_median']:.3f} | {r['updates_median']:.0f} "
                     f"| {r['probes_median']:.0f} / {r['probes_max']} | {_pct(r['success'])} |")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", ""]
    return "\n".join(lines)


def _sub(runs: list[dict[str, Any]], *keys: str, trapped: bool = False) -> str:
    """Median error (or trapped rate) of the runs whose scenario name contains one of ``keys``."""
    d = [r["distance"] for r in runs if any(k in r["scenario"] for k in keys)]
    if not d:
        return "-"
    return _pct(float(np.mean([x > TRAPPED for x in d]))) if trapped else f"{float(np.median(d)):.3f}"


def _seed_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 2 else ", ".join(map(str, seeds))
    return ", ".join(map(str, seeds))


def print_tables(rows: list[dict[str, Any]], totals: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True)
    if console.width < 130:  # not a wide terminal (a pipe, a log): do not wrap the cells
        console = Console(stderr=True, width=130)
    o = Table(title=title)
    for col in ("controller", "runs", "error med [IQR]", "p90", "trapped", "success", "updates", "time vs grpo"):
        o.add_column(col, justify="left" if col == "controller" else "right", no_wrap=True)
    for x in totals:
        o.add_row(escape(x["controller"]), str(x["runs"]), _fmt_iqr(x["dist_median"], x["dist_q25"], x["dist_q75"]),
                  f"{x['dist_p90']:.3f}", _pct(x["trapped"]), _pct(x["success"]), f"{x['updates_median']:.0f}",
                  "" if x["time_vs_grpo"] is None else f"{x['time_vs_grpo']:.1f}x")
    console.print(o)


#: the columns of the runs table in controllers.json
RUN_FIELDS = ("controller", "scenario", "seed", "learned", "optimum_end", "distance", "true_reward",
              "best_probe_distance", "probes", "updates", "wall_s", "process")


def pack_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs as a table: controller and scenario names stored once, one row of values per run."""
    ctrls = list(dict.fromkeys(r["controller"] for r in runs))
    scens = list(dict.fromkeys(r["scenario"] for r in runs))
    ci, si = {c: i for i, c in enumerate(ctrls)}, {s: i for i, s in enumerate(scens)}
    rows = [[ci[r["controller"]], si[r["scenario"]], *[r.get(f) for f in RUN_FIELDS[2:]]] for r in runs]
    return {"fields": list(RUN_FIELDS), "controllers": ctrls, "scenarios": scens, "rows": rows}


def unpack_runs(table: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of ``controllers.json`` (or of a part) as one dict per run."""
    if isinstance(table, list):
        return table
    fields = table["fields"]
    return [{**dict(zip(fields[2:], row[2:])), "controller": table["controllers"][row[0]],
             "scenario": table["scenarios"][row[1]]} for row in table["rows"]]


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.8g}") if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def dumps(doc: dict[str, Any]) -> str:
    """The document as JSON: summaries indented, then one line per warm-start run and a runs
    table (:func:`pack_runs`) with one line per run; floats to 8 significant digits."""
    lists = {k: doc[k] for k in ("warm_runs", "runs") if k in doc}
    head = json.dumps(_round({k: v for k, v in doc.items() if k not in lists}), indent=1, default=float)
    parts = [head[:-2]] if len(head) > 2 else ["{"]
    for k, items in lists.items():
        if k == "runs":
            table = pack_runs(items)
            rows = ",\n".join("   " + json.dumps(_round(x), default=float) for x in table.pop("rows"))
            meta = json.dumps(table)[1:-1]
            parts.append(f' "runs": {{{meta}, "rows": [\n{rows}\n ]}}')
            continue
        body = ",\n".join("  " + json.dumps(_round(x), default=float) for x in items)
        parts.append(f' "{k}": [\n{body}\n ]' if items else f' "{k}": []')
    sep = ",\n" if len(head) > 2 else "\n"
    return parts[0] + (sep if len(parts) > 1 else "") + ",\n".join(parts[1:]) + "\n}\n"


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "controllers.json").write_text(dumps(doc))
    (out / "controllers.md").write_text(markdown(doc))
    print(f"wrote {out / 'controllers.json'} and {out / 'controllers.md'}", file=sys.stderr)
