"""Output: the markdown report, the terminal tables, the per-seed plot and JSON-ready values."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from hpctl.rundir import to_jsonable

from .analysis import TARGET_SCORE_GAP
from .arms import ARM_LABELS, ARMS, CONTROLLER_ARMS, GRASP_ARMS


def _f(x: Any, p: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{p}f}"


def _ratio_text(learned: dict[str, float]) -> str:
    return ", ".join(f"{v:.4f}" for v in learned.values())


def table_rows(seed_summary: dict[str, Any]) -> list[list[str]]:
    """Main table rows (one per arm) for markdown and rich."""
    rows = []
    grid = seed_summary["rows"].get("grid")
    for arm in ARMS:
        r = seed_summary["rows"].get(arm)
        if r is None:
            continue
        t, m, ps = r["times"], r["metrics"], r["passes"]
        vs = seed_summary["vs_grid"].get(arm, {})
        rows.append([
            r["label"], _ratio_text(r["learned"]), _f(r.get("updates"), 0), _f(t["setup_s"], 1), _f(t["search_s"], 1),
            _f(t["final_train_s"], 1), _f(t["export_test_s"], 1), _f(t["other_s"], 1), _f(t["total_s"], 1),
            _f(t["total_with_adapters_s"], 1),
            "1.00x" if arm == "grid" and grid else (f"{vs['time_ratio']['as_measured']:.2f}x" if vs else "-"),
            f"{int(ps['forward_passes'])}/{int(ps['backward_passes'])}/{int(ps['generation_steps'])}",
            _f(m.get("f1", m.get("rougeL")), 2), _f(m.get("exact_match", m.get("bleu4")), 2), _f(m.get("loss"), 4),
            _f(m.get("sparsity"), 3),
        ])
    return rows


MAIN_HEADER = ["arm", "ratio", "updates", "setup s", "search s", "final fine-tune s", "export+test s", "other s", "total s",
               "total + adapters s", "grid time / arm", "fwd/bwd/gen passes", "test F1", "test EM", "test loss",
               "sparsity"]


def phase_table(seed_summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    arms = [a for a in ARMS if a in seed_summary["rows"]]
    keys: list[str] = []
    for a in arms:
        for k in seed_summary["rows"][a]["phases"]:
            if k not in keys:
                keys.append(k)
    rows = [[k] + [_f(seed_summary["rows"][a]["phases"].get(k), 2) for a in arms] for k in keys]
    return ["phase (s)"] + [ARM_LABELS[a] for a in arms], rows


def comparison_rows(seed_summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for arm, c in seed_summary["vs_grid"].items():
        tr, md, b = c["time_ratio"], c["metric_diff"], c.get("score_diff_bootstrap")
        ci = f"{b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] (n={b['n']})" if b else "-"
        pr = c["pass_ratio"]
        rows.append([ARM_LABELS[arm], f"{tr['as_measured']:.2f}x", f"{tr['with_shared_adapters']:.2f}x",
                     f"{tr['grid_without_rerun']:.2f}x", f"{tr['grid_without_rerun_with_shared_adapters']:.2f}x",
                     f"{tr['without_reporting']:.2f}x" if "without_reporting" in tr else "-",
                     f"{_f(pr['forward_passes'])}x / {_f(pr['backward_passes'])}x",
                     f"{md.get('score', float('nan')):+.2f}", ci,
                     f"{md.get('exact_match', md.get('bleu4', float('nan'))):+.2f}", f"{md.get('loss', float('nan')):+.4f}"])
    return rows


COMP_HEADER = ["arm", "grid/arm time (as run)", "incl. shared adapters", "grid w/o re-run", "w/o re-run + adapters",
               "w/o test and dev-loss scoring",
               "grid/arm fwd / bwd passes", "score diff (arm - grid)", "score diff 95% CI (paired bootstrap)",
               "EM diff", "test loss diff"]


def _steps_text(d: dict[str, Any], cm: dict[str, Any], target_text: str, controller: bool = False) -> str:
    """What one accounting of the cost model says about reaching the target by the fine-tune length."""
    m, steps = d["train_multiplier_needed"], cm["steps"]
    ctrl = (f", the controller run {d['controller_steps_needed']} steps instead of {cm['controller_steps']}"
            if controller and m is not None else "")
    if m is None:
        return f"{d['ratio']:.2f}x now; {target_text} is out of reach by longer training alone (limit {d['limit']:.2f}x)"
    if m <= 0:
        return f"{d['ratio']:.2f}x now; {target_text} holds at any fine-tune length (limit {d['limit']:.2f}x)"
    if m <= 1:
        return (f"{d['ratio']:.2f}x now; {target_text} holds down to fine-tunes {m:.2f}x as long (about "
                f"{d['steps_needed']} steps instead of {steps}{ctrl})")
    return (f"{d['ratio']:.2f}x now; {target_text} needs fine-tunes {m:.2f}x longer (about {d['steps_needed']} steps "
            f"instead of {steps}{ctrl})")


def explanation(cm: dict[str, Any], label: str) -> list[str]:
    """Sentences (with the measured numbers) on the time ratio and what would change it."""
    a, sc, fx = cm["as_measured"], cm["scaled"], cm["fixed"]
    tgt = f"{cm['target']:.0f}x"
    lines = [f"{label}: what grows with the fine-tune length ({cm['steps']} steps) is {a['scaled_grid_s']:.1f} s of the "
             f"grid's {a['scaled_grid_s'] + a['fixed_grid_s']:.1f} s (its fine-tunes {sc['grid_fine_tunes_s']:.1f} s + "
             f"the re-run {sc['grid_rerun_s']:.1f} s) and {a['scaled_grasp_s']:.1f} s of GRASP's "
             f"{a['scaled_grasp_s'] + a['fixed_grasp_s']:.1f} s (its final fine-tune); fixed: GRASP's controller run "
             f"({cm['controller_steps']} steps, {fx['grasp_controller_train_s']:.1f} s of training) and its probes "
             f"({fx['grasp_probes_s']:.1f} s), and the rest (loading, dev scoring, export, test, tracking) "
             f"{fx['grid_rest_s']:.1f} s vs {fx['grasp_rest_s']:.1f} s."]
    ps = cm.get("per_step")
    if ps:
        lines.append(f"Per optimizer step: {ps['fine_tune_step_s']:.2f} s in GRASP's final fine-tune "
                     f"({ps['fine_tune_steps']} steps), {ps['controller_step_s']:.2f} s in its controller run "
                     f"({ps['controller_steps']} steps, probes not included).")
    ft = cm.get("fine_tunes")
    if ft:
        lines.append(f"In units of GRASP's final fine-tune the grid trains {ft['grid']:.2f} fine-tunes "
                     f"({ft['grid_points']:.2f} + the re-run {ft['grid_rerun']:.2f}) and GRASP 1 plus a controller run "
                     f"worth {ft['grasp_controller_run']:.2f}; with the fine-tunes dominating the ratio tends to "
                     f"{a['limit']:.2f}x as run, {cm['grid_without_rerun']['limit']:.2f}x without the grid's re-run.")
    pr = cm.get("probes")
    if pr and pr["probe_s"] > 0:
        lines.append(f"GRASP's {pr['probes']} probes took {pr['probe_s']:.1f} s, the time of {pr['train_step_equivalents']:.1f} "
                     f"of its controller-run training steps ({pr['step_s']:.2f} s each; the controller run trained "
                     f"{pr['train_steps']}).")
    for key, text in (("as_measured", "as run"), ("grid_without_rerun", "without the grid's re-run"),
                      ("with_shared_adapters", "with the shared adapters")):
        lines.append(f"{text}: {_steps_text(cm[key], cm, tgt)}, the controller run kept at {cm['controller_steps']} "
                     f"steps and the probes as measured, at these per-step costs.")
    cs = cm.get("controller_scaled")
    if cs:
        parts = [f"{text}: {_steps_text(cs[key], cm, tgt, controller=True)}"
                 for key, text in (("as_measured", "as run"), ("grid_without_rerun", "without the re-run"),
                                   ("with_shared_adapters", "with the shared adapters"))]
        lines.append(f"If the controller run grew with the fine-tunes (kept at {cm['controller_steps']}/{cm['steps']} of "
                     f"their length; probes and the rest as measured): " + "; ".join(parts) + ".")
    g = cm.get("grid_generation_dev")
    if g:
        lines.append(f"If the grid chose its point by generation on dev (the test metric; {g['per_point_s']:.1f} s per point "
                     f"at the measured test-generation cost), it would cost {g['extra_s']:.1f} s more: "
                     f"{g['ratio']:.2f}x as run, {g['ratio_without_rerun']:.2f}x without the re-run.")
    return lines


def score_explanation(b: dict[str, Any] | None, diff: float | None, gap: float = TARGET_SCORE_GAP) -> str:
    if b is None or diff is None:
        return ""
    half = (b["hi"] - b["lo"]) / 2
    need = int(math.ceil((1.96 * b["sd"] / gap) ** 2)) if b["sd"] > 0 else None
    s = (f"score difference {diff:+.2f} points, 95% interval [{b['lo']:+.2f}, {b['hi']:+.2f}] over {b['n']} test examples "
         f"(half-width {half:.2f})")
    if need:
        s += f"; resolving {gap} points would take about {need} test examples at this per-example spread"
    return s + "."


def over_seeds(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: per arm against the grid, every seed's learned ratio, regret and time ratio, and the test
    score difference pooled over seeds with its paired interval (empty without a grid arm)."""
    per_seed, med = summary["per_seed"], summary["median"]
    arms = [a for a in med if any(a in s["vs_grid"] for s in per_seed.values())]
    if not arms:
        return []
    seeds = list(per_seed)
    L = [f"## Over seeds {', '.join(map(str, seeds))}", "",
         "Per arm against the grid in the same seed. Regret: the learned ratio's dev loss after its final fine-tune "
         "minus the best grid point's, as a percentage of the grid curve's range (in brackets: the same read off a "
         "quadratic fitted to the grid points, without one fine-tune's scatter). Time ratio: the grid's wall time "
         "over the arm's, as run (each seed's pair measured one after the other). Test score difference: arm minus "
         "grid, pooled over every (seed, question) pair, with a 95 % paired bootstrap interval.", "",
         "| arm | learned ratio per seed | grid's ratio per seed | regret per seed | time ratio median [min, max] "
         "| without test and dev-loss scoring | test score diff pooled [95 % CI] (pairs) |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        learned, chosen, regrets = [], [], []
        for s in seeds:
            rows, c = per_seed[s]["rows"], per_seed[s]["vs_grid"].get(arm)
            learned.append(_ratio_text(rows[arm]["learned"]) if arm in rows else "-")
            chosen.append(_ratio_text(rows["grid"]["learned"]) if "grid" in rows else "-")
            rg = (c or {}).get("regret")
            regrets.append((f"{100 * rg['fraction']:.1f} %" + (f" ({100 * rg['smoothed_fraction']:.0f} %)"
                                                                if "smoothed_fraction" in rg else "")) if rg else "-")
        m = med[arm]
        def ratio(key: str) -> str:
            tr, rng = (m.get("time_ratio") or {}).get(key), (m.get("time_ratio_range") or {}).get(key)
            return f"{tr:.2f}x [{rng[0]:.2f}, {rng[1]:.2f}]" if tr is not None and rng else "-"

        b = m.get("score_diff_pooled")
        L.append(f"| {ARM_LABELS.get(arm, arm)} | {', '.join(learned)} | {', '.join(chosen)} | {', '.join(regrets)} | "
                 f"{ratio('as_measured')} | {ratio('without_reporting')} | "
                 + (f"{b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] ({b['n']})" if b else "-") + " |")
    L.append("")
    for arm in arms:
        pr = med[arm].get("probe_rounds")
        if pr:
            L += [f"What {ARM_LABELS.get(arm, arm)}'s probes saw: in {pr['best_is_highest']} of its {pr['rounds']} probe "
                  f"rounds the best micro-dev score was at the highest ratio probed; the median Spearman correlation "
                  f"of score against ratio within a round is {pr['spearman_median']:+.2f} (+1: the more pruning, the "
                  f"better; each seed's rounds are listed under its \"Why\" below).", ""]
    return L


def _join(rows: list[dict[str, Any]], key: str, fmt: str, scale: float = 1.0) -> str:
    """``rows``' values of ``key`` (where present), formatted and comma-joined; ``-`` when none has it."""
    return ", ".join(fmt.format(scale * r[key]) for r in rows if r.get(key) is not None) or "-"


def _ci(b: dict[str, Any] | None) -> str:
    return f"{b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] ({b['n']})" if b else "-"


def seed_averaged_lines(summary: dict[str, Any], lang: str) -> list[str]:
    """Markdown lines of issue 36's per-language reading (:func:`.analysis.seed_averaged`); empty without it."""
    sa = summary.get("seed_averaged")
    if not sa:
        return []
    seeds, arms, cv = sa["seeds"], sa["arms"], sa["curve"]
    pct = f"{100 * sa['target']:.0f} %"
    L = [f"## Language {lang}: seeds {', '.join(map(str, seeds))} on their seed-averaged landscape", ""]
    if cv:
        L += [f"The seed-averaged landscape is the mean of the grid curves of seed(s) "
              f"{', '.join(map(str, cv['seeds']))} "
              "(ratio: dev loss after that point's fine-tune): "
              + ", ".join(f"{x:.3f}: {v:.4f}" for x, v in cv["points"])
              + f". Its trend (the quadratic through those points) is lowest at ratio {cv['trend_min']:.3f} and "
              f"spans {cv['trend_range']:.4f} over the grid's ratios; the mean's points lie "
              + (f"{100 * cv['scatter']:.0f} % of that range (std) about it." if np.isfinite(cv["scatter"] or np.nan)
                 else "on it (too few points to say how far).")
              + f" Each learned ratio is read on the trend as a percentage of its range above its minimum "
              f"(0 %: at the minimum; target at most {pct} in every part); the grid's row reads its chosen points.",
              "", "| arm | learned ratio per seed | % of the trend's range per seed | within " + pct + " |",
              "|---|---|---|---|"]
        for arm, row in arms.items():
            if "trend" in row:
                L.append(f"| {ARM_LABELS.get(arm, arm)} | {_join(row['trend'], 'ratio', '{:.4f}')} | "
                         f"{_join(row['trend'], 'fraction', '{:.1f} %', 100)} | "
                         f"{row['within']} of {row['parts']} |")
        L.append("")
    elif sa.get("curve_error"):
        L += [f"No seed-averaged landscape: {sa['curve_error']}.", ""]
    else:
        L += ["No seed-averaged landscape: no seed has a grid scored by the dev loss.", ""]
    L += ["Time to the final adapter: each arm's wall time as run less the scoring of the finished adapter that "
          "every arm pays alike (generation on the test split; its dev loss), listed apart: the search (the grid's "
          "fine-tunes, their dev scoring and its re-run of the winner; a controller's run and probes) and the final "
          "fine-tune, loading and tracking included, the shared adapters not (trained once per seed). Ratio: the "
          "grid's time over the arm's in the same seed.", "",
          "| arm | time to adapter s per seed | grid / arm per seed | median [min, max] | with the scoring: grid / arm "
          "per seed | test scoring s per seed | dev-loss scoring s per seed |", "|---|---|---|---|---|---|---|"]
    for arm, row in arms.items():
        t = row["time"]
        r = row.get("ratio_range")
        L.append(f"| {ARM_LABELS.get(arm, arm)} | {_join(t, 'adapter_s', '{:.0f}')} | "
                 f"{_join(t, 'ratio', '{:.2f}x')} | "
                 + (f"{row['ratio_median']:.2f}x [{r[0]:.2f}, {r[1]:.2f}]" if r else "-") + " | "
                 f"{_join(t, 'wall_ratio', '{:.2f}x')} | "
                 f"{_join(t, 'test_s', '{:.0f}')} | {_join(t, 'dev_loss_s', '{:.0f}')} |")
    L += ["", "Test score (F1 for XQuAD) of each arm minus the grid's and minus target-only's, paired over every "
          "(seed, question) both answered, with a 95 % bootstrap interval (pairs in brackets):", "",
          "| arm | minus the grid | minus target-only |", "|---|---|---|"]
    for arm, row in arms.items():
        L.append(f"| {ARM_LABELS.get(arm, arm)} | {_ci(row.get('vs_grid')) if arm != 'grid' else '-'} | "
                 f"{_ci(row.get('vs_target_only')) if arm != 'target-only' else '-'} |")
    L.append("")
    return L


def markdown(meta: dict[str, Any], summary: dict[str, Any], throughput: dict[str, Any] | None,
             crit: dict[str, Any], plots: list[str]) -> str:
    L = [f"# GRASP LoRA vs the {meta['k']}-point grid ({meta['scale']} scale)", "",
         " ; ".join(f"`{c}`" for c in (meta.get("commands") or [meta["command"]])), "",
         f"Scale: {meta['scale_note']}. Backbone: {meta.get('backbone_name', meta['plugin_config'].get('backbone'))}. "
         f"Task {meta['task']} ({meta['lang']}), seeds {meta['seeds']}, {meta['steps']} optimizer steps per fine-tune "
         f"(every grid point, every final run, target-only), "
         + (f"a controller run of {meta['controller_steps']} steps ({meta['steps_per_round']} per round) for GRASP, "
            if meta.get("controller_steps") is not None and meta.get("steps_per_round") is not None else "")
         + f"controller budget {meta['budget']} probes (groups of {meta['group_size']}), grid k = {meta['k']}.", "",
         "**The source and target adapters are trained once per seed and shared by every arm** (loaded through "
         "`source_adapter`/`target_adapter`); their training time is listed once below, excluded from each arm's "
         "`total s` and added in `total + adapters s`. The grid's final phase re-trains the chosen point (the grid "
         "keeps no adapters); `grid w/o re-run` removes that repeat. Times are wall-clock seconds of this run, "
         "same machine, one arm after the other.", ""]
    if meta["scale"] == "smoke":
        L += ["> smoke scale: a tiny *random* backbone; every test score is expected to be ~0 and the times are "
              "dominated by fixed costs. It checks the machinery, not the method.", ""]
    L += seed_averaged_lines(summary, meta["lang"])
    L += over_seeds(summary)
    for seed, s in summary["per_seed"].items():
        ap = meta["adapters"][str(seed)]["passes"]
        L += [f"## Seed {seed}", "", f"Shared adapters: {s['adapters_train_s']:.1f} s of training "
              f"(source + target; {int(ap['forward_passes'])} forward / {int(ap['backward_passes'])} backward passes).", "",
              "| " + " | ".join(MAIN_HEADER) + " |", "|" + "---|" * len(MAIN_HEADER)]
        L += ["| " + " | ".join(r) + " |" for r in table_rows(s)]
        L += ["", "`search s`: the controller phase (grid: its full fine-tunes and dev scoring; GRASP: interleaved "
              "training and probes; target-only: one probe). Passes: teacher-forced forwards / backwards / "
              "generation steps of the backbone.", ""]
        if s["vs_grid"]:
            L += ["### Against the grid", "", "| " + " | ".join(COMP_HEADER) + " |", "|" + "---|" * len(COMP_HEADER)]
            L += ["| " + " | ".join(r) + " |" for r in comparison_rows(s)]
            L += [""]
            for arm in GRASP_ARMS:
                c = s["vs_grid"].get(arm)
                if c and "cost_model" in c:
                    L += [f"**Why {ARM_LABELS[arm]} is at {c['time_ratio']['as_measured']:.2f}x** (from the phases above):", ""]
                    L += [f"- {x}" for x in explanation(c["cost_model"], ARM_LABELS[arm])]
                    rg = c.get("regret")
                    if rg:
                        L += [f"- Regret: at its learned ratio the final fine-tune's dev loss is {rg['learned_dev_loss']:.4f}, "
                              f"the best grid point's (ratio {rg['best_grid_ratio']:.3f}) {rg['best_grid_dev_loss']:.4f}: "
                              f"{rg['regret']:+.4f}, {100 * rg['fraction']:+.1f} % of the grid curve's range "
                              f"{rg['grid_range']:.4f} (target at most {100 * rg['target']:.0f} %)"]
                        if "roughness" in rg:
                            L += [f"- Scatter: the grid points lie {rg['roughness']:.4f} (std) about a quadratic fitted "
                                  f"to them, {100 * rg['roughness'] / rg['grid_range']:.0f} % of the range; the "
                                  f"{100 * rg['target']:.0f} % target is {rg['target_in_roughness']:.2f} of that scatter"
                                  + (" (below 1: one fine-tune cannot resolve it)" if rg['target_in_roughness'] < 1
                                     else "")
                                  + (f"; on the fitted trend the learned ratio {rg['learned_ratio']:.3f} has a regret "
                                     f"of {100 * rg['smoothed_fraction']:.0f} % of the trend's range"
                                     if "smoothed_fraction" in rg else "")]
                        if "oracle_pass_rate" in rg:
                            L += [f"- Attainable: a perfect controller, on the trend's minimum ({rg['oracle_ratio']:.3f}) "
                                  f"with a final fine-tune that scatters like a grid point, would score a raw regret of "
                                  f"{100 * rg['oracle_fraction_median']:.0f} % (median; 90th percentile "
                                  f"{100 * rg['oracle_fraction_p90']:.0f} %) against a re-run grid and meet the "
                                  f"{100 * rg['target']:.0f} % target in {100 * rg['oracle_pass_rate']:.0f} % of draws"
                                  + (f"; a controller at the learned ratio in {100 * rg['learned_pass_rate']:.0f} %"
                                     if "learned_pass_rate" in rg else "")]
                    if c.get("probe_rounds"):
                        L += ["- Probes: per round (controller step: Spearman of micro-dev score against ratio over "
                              "the round's probes, the best ratio; * where it is the highest probed): " + "; ".join(
                                  f"{r['step']}: {r['spearman']:+.2f}, {r['best_ratio']:.3f}"
                                  + ("*" if r["best_is_highest"] else "") for r in c["probe_rounds"])]
                    se = score_explanation(c.get("score_diff_bootstrap"), c["metric_diff"].get("score"))
                    if se:
                        L += [f"- Test score: {se}"]
                    L += [""]
            for arm in [a for a in CONTROLLER_ARMS if a not in GRASP_ARMS]:
                c = s["vs_grid"].get(arm)
                if c and c.get("probe_rounds"):
                    L += [f"**What {ARM_LABELS[arm]} saw**: its probes all score the same training state (a search "
                          "controller never trains); per state (step: Spearman of micro-dev score against ratio, the "
                          "best ratio; * where it is the highest probed): " + "; ".join(
                              f"{r['step']}: {r['spearman']:+.2f}, {r['best_ratio']:.3f}"
                              + ("*" if r["best_is_highest"] else "") for r in c["probe_rounds"]), ""]
        head, rows = phase_table(s)
        L += ["### Every phase", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        L += ["| " + " | ".join(r) + " |" for r in rows]
        grid = next((r for a, r in s["rows"].items() if a == "grid"), None)
        if grid is not None:
            pts = meta["grid_points"].get(str(seed), [])
            if pts:
                L += ["", "Grid points (ratio: dev score): " + ", ".join(f"{p['value'][0]:.3f}: {p['dev_score']:.4f}"
                                                                        for p in pts)]
        L += [""]
    if throughput:
        L += ["## Training throughput and probe cost", "",
              f"Same process, alternating ({throughput['alternations']} alternations, order flipped every other one), "
              f"same batches (batch {throughput['batch_size']}, max length {throughput['max_len']}), "
              f"{throughput['rounds']} rounds x {throughput['steps_per_round']} steps per measurement"
              + (" (= the controller run's steps per round)"
                 if meta.get("steps_per_round") == throughput["steps_per_round"] else
                 f" (NOT the controller run's rounds of {meta['steps_per_round']} steps)"
                 if meta.get("steps_per_round") is not None else "")
              + ", backbone "
              f"{throughput['backbone']}. grasp loop = `ControlEnv.advance` rounds at ratio {throughput['ratio']:.3f} "
              f"(training masks every {throughput['mask_every']} step(s), MLflow logging, the runner's checkpoint; "
              f"a candidate and a baseline probe between rounds, not timed). Plain = peft LoRA r={throughput['lora_rank_plain']} + "
              "transformers, AdamW, same clip. Ratios of tokens/s, median [min, max]."
              + (" On the tiny backbone the 262k-entry LM head and per-step Python overheads dominate; these ratios "
                 "do not transfer to a real backbone (the cpu scale measures them on Gemma 3 270M)."
                 if meta["scale"] == "smoke" else ""), "",
              "| comparison | tokens/s ratio |", "|---|---|"]
        for key, text in (("ratio_vs_plain_hf_loss", "grasp loop / plain peft (`labels=` loss, logits at every position)"),
                          ("ratio_vs_plain_label_only", "grasp loop / plain peft (logits at label positions only, like for like)")):
            st = throughput[key]
            L.append(f"| {text} | {st['median']:.3f} [{st['min']:.3f}, {st['max']:.3f}] |")
        pc = throughput["probe_cost"]
        L += ["", "| probe prune+restore / its forward pass | median [min, max] |", "|---|---|"]
        for key, text in (("cold_fraction", "first probe at a new training state (threshold index rebuilt)"),
                          ("warm_fraction", "later probes at the same state"),
                          ("amortised_fraction", f"a round of {throughput['group_size'] + 1} probes")):
            st = pc[key]
            L.append(f"| {text} | {100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}] |")
        sc = pc.get("scaling")
        if sc:
            lg = pc["large"]
            st = lg["amortised_fraction"]
            need = sc["min_examples_for_target"]
            L += ["", f"Prune+restore does not depend on the examples a probe scores; the forward does. The same "
                  f"measurement against a forward over the {sc['large_examples']} {sc['large_split']} examples "
                  f"(instead of the run's {sc['micro_dev_examples']} micro-dev examples) gives:", "",
                  "| probe cost | value |", "|---|---|",
                  f"| forward per example ({sc['large_split']} split; micro-dev) | {1e3 * sc['forward_per_example_s']:.1f} ms; "
                  f"{1e3 * sc['forward_per_example_micro_dev_s']:.1f} ms |",
                  f"| prune+restore per probe, first at a state / later / a round's mean (both measurements) | "
                  f"{1e3 * sc['prune_restore_cold_s']:.1f} / {1e3 * sc['prune_restore_warm_s']:.1f} / "
                  f"{1e3 * sc['prune_restore_amortised_s']:.1f} ms |",
                  f"| prune+restore on micro-dev / on {sc['large_split']} (first at a state; later) | "
                  f"{1e3 * sc['prune_restore_cold_s_micro_dev']:.1f} / {1e3 * sc['prune_restore_cold_s_large']:.1f} ms; "
                  f"{1e3 * sc['prune_restore_warm_s_micro_dev']:.1f} / {1e3 * sc['prune_restore_warm_s_large']:.1f} ms |",
                  f"| a round of {throughput['group_size'] + 1} probes over the {sc['large_split']} split "
                  f"(median [min, max]) | {100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}] |",
                  f"| a round on the micro-dev, predicted from the two figures above (measured above) | "
                  f"{100 * sc['predicted_fraction_at_micro_dev']:.2f} % ({100 * pc['amortised_fraction']['median']:.2f} %) |",
                  f"| smallest micro-dev for prune+restore < {100 * sc['target']:.0f} % of a round's forwards "
                  f"(first probe at a state alone; later probes alone) | "
                  f"{need if need is not None else '-'} examples ({sc['min_examples_for_target_cold'] or '-'}; "
                  f"{sc['min_examples_for_target_warm'] or '-'}) |"]
        L += [""]
    if crit:
        L += ["## Checks against the issue's targets", ""]
        for k, c in crit.items():
            mark = "pass" if c["pass"] else "FAIL"
            val = f"{100 * c['value']:.2f} %" if k == "prune_restore_fraction" else f"{c['value']:.3f}"
            tgt = f"{100 * c['target']:.0f} %" if k == "prune_restore_fraction" else f"{c['target']}"
            extra = f" ({c['accounting']})" if "accounting" in c else ""
            L.append(f"- {k}: {val} (target {tgt}){extra}: **{mark}**")
        L += [""]
    if plots:
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    L += [f"MLflow: `{meta['tracking_uri']}` (parent run `{meta['mlflow_parent_run_id']}`); run folders under "
          f"`{meta['runs_dir']}`.", "",
          f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", ""]
    return "\n".join(L)


def print_tables(console, meta: dict[str, Any], summary: dict[str, Any], throughput: dict[str, Any] | None,
                 crit: dict[str, Any]) -> None:
    from rich.table import Table

    for seed, s in summary["per_seed"].items():
        t = Table(title=f"grasp_vs_grid {meta['scale']} seed {seed} (shared adapters: {s['adapters_train_s']:.1f} s, "
                        f"not in 'total s')")
        for h in MAIN_HEADER:
            t.add_column(h, justify="left" if h == "arm" else "right")
        for r in table_rows(s):
            t.add_row(*r)
        console.print(t)
        if s["vs_grid"]:
            c = Table(title="against the grid")
            for h in COMP_HEADER:
                c.add_column(h, justify="left" if h == "arm" else "right")
            for r in comparison_rows(s):
                c.add_row(*r)
            console.print(c)
            for arm in GRASP_ARMS:
                cc = s["vs_grid"].get(arm)
                if cc and "cost_model" in cc:
                    for line in explanation(cc["cost_model"], ARM_LABELS[arm]):
                        console.print(f"  {line}", highlight=False)
    if throughput:
        t = Table(title=f"throughput ({throughput['alternations']} alternations) and probe cost")
        t.add_column("comparison")
        t.add_column("median [min, max]", justify="right")
        for key in ("ratio_vs_plain_hf_loss", "ratio_vs_plain_label_only"):
            st = throughput[key]
            t.add_row(key, f"{st['median']:.3f} [{st['min']:.3f}, {st['max']:.3f}]")
        for key in ("cold_fraction", "warm_fraction", "amortised_fraction"):
            st = throughput["probe_cost"][key]
            t.add_row(f"prune+restore / forward, {key}",
                      f"{100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}]")
        sc = throughput["probe_cost"].get("scaling")
        if sc:
            t.add_row(f"forward per example ({sc['large_split']} split)", f"{1e3 * sc['forward_per_example_s']:.1f} ms")
            t.add_row("prune+restore per probe (round mean)", f"{1e3 * sc['prune_restore_amortised_s']:.1f} ms")
            t.add_row(f"micro-dev examples for < {100 * sc['target']:.0f} % (run: {sc['micro_dev_examples']})",
                      str(sc["min_examples_for_target"] if sc["min_examples_for_target"] is not None else "-"))
        console.print(t)
    for k, c in crit.items():
        console.print(f"  check {k}: {c['value']:.4g} vs target {c['target']}: {'pass' if c['pass'] else 'FAIL'}",
                      highlight=False)


def plot_seed(path: Path, arms: dict[str, dict[str, Any]], title: str) -> Path | None:
    """Grid dev score vs ratio; the controllers' committed ratios over training drawn over it (twin axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = arms.get("grid")
    fig, ax = plt.subplots(figsize=(8.5, 5))
    if grid and grid["grid_points"]:
        x = [p["value"][0] for p in grid["grid_points"]]
        y = [p["dev_score"] for p in grid["grid_points"]]
        ax.plot(x, y, "o-", color="0.25", label="grid: dev score per full run")
        best = int(np.nanargmax(y))
        ax.plot([x[best]], [y[best]], "*", ms=16, color="gold", mec="k", label=f"grid choice {x[best]:.3f}")
    ax.set_xlabel("global prune ratio")
    ax.set_ylabel("dev score (grid points; higher is better)")
    ax2 = ax.twinx()
    colors = {"grpo": "C0", "ppo": "C3", "tpe": "C2", "gp": "C1", "random": "C4"}
    for arm in CONTROLLER_ARMS:
        rec = arms.get(arm)
        if not rec:
            continue
        c = colors[arm]
        probes = [p for p in rec["probe_trace"] if p["kind"] == "candidate"]
        if probes:
            ax2.scatter([p["value"][0] for p in probes], [p["step"] for p in probes], s=12, alpha=0.35, color=c,
                        label=f"{ARM_LABELS[arm]} probes")
        traj = rec["trajectory"]
        if traj:  # each round trains at its committed ratio from the previous commit's step to its own
            xs, ys, prev = [], [], 0
            for t in traj:
                xs += [t["value"][0], t["value"][0]]
                ys += [prev, t["step"]]
                prev = t["step"]
            ax2.plot(xs, ys, color=c, lw=2, label=f"{ARM_LABELS[arm]} committed ratio (training)")
        learned = list(rec["learned"].values())[0]
        ax.axvline(learned, color=c, ls="--", lw=1, label=f"{ARM_LABELS[arm]} learned {learned:.3f}")
    ax2.set_ylabel("training step (controller run)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _jsonable(obj: Any) -> Any:
    """Plain JSON for the results file; a non-finite number is a null there."""
    return to_jsonable(obj, nonfinite=lambda x: None)
