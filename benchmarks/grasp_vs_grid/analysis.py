"""Pure analysis of the arms' records: time breakdowns and ratios, the cost model, bootstrap, summaries, checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .arms import ARMS, CONTROLLER_ARMS, GRASP_ARMS

#: the issue's targets (checked and printed, never used to compute anything)
TARGET_SPEEDUP = 4.0
TARGET_SCORE_GAP = 0.5
TARGET_THROUGHPUT = 0.95
TARGET_PRUNE_FRACTION = 0.01
#: issue 12: a learned ratio's dev loss at most this fraction of the grid curve's range above the best point's
TARGET_REGRET_FRACTION = 0.10
#: issue 12: ... while GRASP's end-to-end time stays at least this many times below the grid's, as run
TARGET_SPEEDUP_WITH_REGRET = 4.5
#: issue 36: results files measured by this code carry ``"yardstick": YARDSTICK``; their summary adds
#: :func:`seed_averaged` (files without it, the 64-step history, are summarised as they were)
YARDSTICK = "seed_averaged_trend"
#: Monte Carlo draws of :func:`oracle_regret` (its quantiles to about 0.005 of a range)
ORACLE_DRAWS = 20000
METRIC_KEYS = ("score", "f1", "exact_match", "rougeL", "rouge1", "rouge2", "bleu4", "loss", "sparsity")


def breakdown(rec: dict[str, Any], adapters_s: float) -> dict[str, float]:
    """An arm's wall time cut into setup / search / final fine-tune / export+test / other."""
    p = rec["phases"]
    g = lambda k: float(p.get(k, 0.0))  # noqa: E731
    setup = g("load_s") + g("source_adapter_s") + g("target_adapter_s") + g("merge_s")
    search = g("controller_s")
    final = g("final_s")
    return {
        "setup_s": setup, "search_s": search, "search_train_s": g("train_s"),
        "search_scoring_s": g("probe_s") + g("grid_dev_eval_s"), "final_train_s": g("final_train_s"),
        "export_test_s": final - g("final_train_s"), "other_s": rec["wall_s"] - setup - search - final,
        "total_s": rec["wall_s"], "total_with_adapters_s": rec["wall_s"] + adapters_s,
    }


def per_example_scores(task: str, lang: str, out_dir: str, filename: str = "test_predictions.jsonl") -> dict[str, float]:
    """The primary metric per test example (id -> percent) from a run's predictions file."""
    from hpctl.plugins.grasp_lora.metrics import compute_metrics

    path = Path(out_dir) / filename
    if not path.is_file():
        return {}
    key = "rougeL" if task == "xlsum" else "f1"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = float(compute_metrics(task, lang, [row["prediction"]], [row["references"]])[key])
    return out


def test_scores(rec: dict[str, Any], task: str, lang: str) -> dict[str, float]:
    """An arm's per-question test scores: kept in its record, else read from its run folder."""
    kept = rec.get("test_scores")
    return {k: float(v) for k, v in kept.items()} if kept else per_example_scores(task, lang, rec["out_dir"])


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 2000, seed: int = 0) -> dict[str, float] | None:
    """Mean of a - b over shared ids and a 95 % percentile bootstrap interval."""
    ids = sorted(set(a) & set(b))
    if not ids:
        return None
    d = np.array([a[i] - b[i] for i in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": len(ids), "sd": float(d.std(ddof=1))
            if len(d) > 1 else 0.0}


#: phases that only report on a finished adapter (test metrics, the dev loss a regret is read from):
#: the same work for every arm, none of it needed to choose the ratio or to train the adapter
REPORTING_PHASES = ("eval_test_s", "eval_dev_s")


def time_ratios(grid: dict[str, Any], other: dict[str, Any], adapters_s: float) -> dict[str, float]:
    """grid time / arm time in five accountings (>1: the arm is faster); ``without_reporting``
    removes :data:`REPORTING_PHASES` from both sides (a 300-question test set costs every arm
    the same minutes of generation and would otherwise dilute the ratio of the searches)."""
    rerun = float(grid["phases"].get("final_train_s", 0.0))
    g, o = grid["wall_s"], other["wall_s"]
    rep = lambda rec: sum(float(rec["phases"].get(k, 0.0)) for k in REPORTING_PHASES)  # noqa: E731
    return {
        "as_measured": g / o,
        "with_shared_adapters": (g + adapters_s) / (o + adapters_s),
        "grid_without_rerun": (g - rerun) / o,
        "grid_without_rerun_with_shared_adapters": (g - rerun + adapters_s) / (o + adapters_s),
        "without_reporting": (g - rep(grid)) / (o - rep(other)),
    }


def _needed(scaled_grid: float, fixed_grid: float, scaled_grasp: float, fixed_grasp: float,
            target: float) -> dict[str, Any]:
    """``ratio(m) = (m * S_grid + F_grid) / (m * S_grasp + F_grasp)``: now (m = 1), its limit, the m that gives ``target``.

    ``train_multiplier_needed`` is the m at which the ratio reaches ``target`` (below 1: it is reached already and
    holds down to that length; <= 0: at any length), None when the limit is not above ``target``.
    """
    now = scaled_grasp + fixed_grasp
    d: dict[str, Any] = {"scaled_grid_s": scaled_grid, "fixed_grid_s": fixed_grid, "scaled_grasp_s": scaled_grasp,
                         "fixed_grasp_s": fixed_grasp,
                         "ratio": (scaled_grid + fixed_grid) / now if now > 0 else float("nan"),
                         "limit": scaled_grid / scaled_grasp if scaled_grasp > 0 else float("nan")}
    den = scaled_grid - target * scaled_grasp
    d["train_multiplier_needed"] = (target * fixed_grasp - fixed_grid) / den if scaled_grasp > 0 and den > 0 else None
    return d


def cost_model(grid: dict[str, Any], grasp: dict[str, Any], adapters_s: float, steps: int,
               controller_steps: int | None = None, target: float = TARGET_SPEEDUP) -> dict[str, Any]:
    """Why the time ratio is what it is, from the measured phases.

    What grows with the fine-tune length ``steps`` (*scaled*): the grid's ``k`` fine-tunes (its
    ``train_s``), the grid's re-run of the winner (its ``final_train_s``) and GRASP's final
    fine-tune (``final_train_s``). What does not (*fixed*): GRASP's controller run
    (``controller_steps`` of training, its ``train_s``), its probes, and the rest of both arms
    (loading, dev scoring, export, test, tracking). Fine-tunes ``m`` times longer give
    ``ratio(m) = (m * S_grid + F_grid) / (m * S_grasp + F_grasp)``, limit ``S_grid / S_grasp``
    (the grid's fine-tunes in units of GRASP's one). The main figures (``as_measured``,
    ``grid_without_rerun``, ``with_shared_adapters``) keep the controller run at
    ``controller_steps``; ``controller_scaled`` repeats them with the controller run growing
    with the fine-tunes (``controller_steps`` kept at its fraction of ``steps``, as the
    plugin's default ``steps // 4`` does). The target-only arm's fine-tune grows with ``steps``
    too; it is not part of these grid/GRASP ratios. Every figure comes from the phases as
    measured; ``steps``/``controller_steps`` only turn multipliers into step counts.
    """
    steps = int(steps)
    controller_steps = int(controller_steps if controller_steps is not None else steps)
    p_g, p_r = grid["phases"], grasp["phases"]
    g = lambda p, k: float(p.get(k, 0.0))  # noqa: E731
    grid_points, rerun = g(p_g, "train_s"), g(p_g, "final_train_s")
    ctrl_train, final = g(p_r, "train_s"), g(p_r, "final_train_s")
    s_grid = grid_points + rerun
    f_grid = grid["wall_s"] - s_grid
    f_grasp = grasp["wall_s"] - final
    probe_s = g(p_r, "probe_s")
    out: dict[str, Any] = {
        "steps": steps, "controller_steps": controller_steps, "target": target,
        "scaled": {"grid_fine_tunes_s": grid_points, "grid_rerun_s": rerun, "grasp_final_s": final},
        "fixed": {"grasp_controller_train_s": ctrl_train, "grasp_probes_s": probe_s,
                  "grid_rest_s": f_grid, "grasp_rest_s": f_grasp - ctrl_train - probe_s, "adapters_s": adapters_s},
    }
    variants = (("as_measured", s_grid, f_grid, 0.0), ("grid_without_rerun", s_grid - rerun, f_grid, 0.0),
                ("with_shared_adapters", s_grid, f_grid, adapters_s))
    for name, sg, fg, extra in variants:
        d = _needed(sg, fg + extra, final, f_grasp + extra, target)
        m = d["train_multiplier_needed"]
        d["steps_needed"] = None if m is None else max(0, int(math.ceil(m * steps)))
        out[name] = d
    # the controller run growing with the fine-tunes (its training moves from fixed to scaled)
    cs: dict[str, Any] = {}
    for name, sg, fg, extra in variants:
        d = _needed(sg, fg + extra, final + ctrl_train, f_grasp - ctrl_train + extra, target)
        m = d["train_multiplier_needed"]
        d["steps_needed"] = None if m is None else max(0, int(math.ceil(m * steps)))
        d["controller_steps_needed"] = None if m is None else max(0, int(math.ceil(m * controller_steps)))
        cs[name] = d
    out["controller_scaled"] = cs
    # the grid scored on dev by generation (as the test metric is), at the measured generation cost
    sizes = (grid.get("notes") or {}).get("split_sizes") or {}
    n_test, n_dev = sizes.get("test"), sizes.get("dev")
    eval_test = g(p_g, "eval_test_s")
    k = len(grid.get("grid_points") or [])
    if n_test and n_dev and eval_test > 0 and k:
        per_point = eval_test * n_dev / n_test
        extra = k * per_point
        out["grid_generation_dev"] = {"per_point_s": per_point, "points": k, "extra_s": extra,
                                      "ratio": (grid["wall_s"] + extra) / grasp["wall_s"],
                                      "ratio_without_rerun": (grid["wall_s"] - rerun + extra) / grasp["wall_s"]}
    # per-step costs (steps counted by the backward passes of each phase where recorded) and the probes in
    # units of the controller run's training steps
    pp = grasp.get("phase_passes") or {}
    n_ctrl = int((pp.get("train") or {}).get("backward", 0)) or controller_steps
    n_final = int((pp.get("final_train") or {}).get("backward", 0)) or steps
    out["per_step"] = {"controller_steps": n_ctrl, "fine_tune_steps": n_final,
                       "controller_step_s": ctrl_train / n_ctrl if n_ctrl else float("nan"),
                       "fine_tune_step_s": final / n_final if n_final else float("nan")}
    if ctrl_train > 0 and n_ctrl:
        step_s = ctrl_train / n_ctrl
        out["probes"] = {"probe_s": probe_s, "probes": grasp.get("probes"), "train_steps": n_ctrl,
                         "step_s": step_s, "train_step_equivalents": probe_s / step_s}
    # fine-tunes each side pays, in units of the grasp final fine-tune
    if final > 0:
        out["fine_tunes"] = {"grid": s_grid / final, "grid_points": grid_points / final, "grid_rerun": rerun / final,
                             "grasp": 1.0, "grasp_controller_run": ctrl_train / final,
                             "grasp_with_controller_run": (final + ctrl_train) / final}
    return out


def grid_loss_curve(grid: dict[str, Any]) -> list[tuple[float, float]] | None:
    """The grid's curve as ``(ratio, dev loss)`` pairs sorted by ratio; None when it is not a dev-loss curve.

    A grid point's ``dev_score`` is the plugin's probe measure on the dev split after that
    point's whole fine-tune: minus the teacher-forced dev loss when the probe metric is the loss.
    That is checked rather than assumed: the grid's final run repeats its best point's
    fine-tune bit for bit, so the ``dev_loss`` it reports must equal the best point's loss.
    One-dimensional knobs only.
    """
    points = grid.get("grid_points") or []
    if len(points) < 2 or any(len(p["value"]) != 1 for p in points):
        return None
    curve = sorted((float(p["value"][0]), -float(p["dev_score"])) for p in points if np.isfinite(p["dev_score"]))
    dev = (grid.get("metrics") or {}).get("dev_loss")
    if len(curve) < 2 or dev is None or not np.isfinite(dev):
        return None
    best = min(loss for _, loss in curve)
    if not math.isclose(float(dev), best, rel_tol=1e-4, abs_tol=1e-6):
        return None  # the grid was scored by another measure (a generation metric)
    return curve


def regret(curve: Sequence[tuple[float, float]], learned_dev_loss: float,
           target: float = TARGET_REGRET_FRACTION, learned_ratio: float | None = None) -> dict[str, Any]:
    """A learned ratio's dev loss after its final fine-tune against the grid's curve.

    ``regret`` = learned dev loss minus the best grid point's; ``fraction`` = regret over the
    curve's range (max minus min dev loss over the grid points): 0 means as good as the best
    point, 1 as bad as the worst, negative better than every point. ``pass``: ``fraction <=
    target``. A flat curve (range 0) gives fraction 0 for a regret <= 0 and +inf otherwise. With 5 or
    more points it adds :func:`curve_roughness` (with ``learned_ratio``: the smoothed regret too).
    """
    if len(curve) < 2:
        raise ValueError("a grid curve needs at least two points")
    losses = np.array([float(loss) for _, loss in curve], dtype=np.float64)
    best_i = int(np.argmin(losses))
    best, span = float(losses[best_i]), float(losses.max() - losses.min())
    value = float(learned_dev_loss) - best
    fraction = value / span if span > 0 else (0.0 if value <= 0 else float("inf"))
    return {"learned_dev_loss": float(learned_dev_loss), "best_grid_dev_loss": best,
            "best_grid_ratio": float(curve[best_i][0]), "grid_range": span, "regret": value,
            "fraction": fraction, "target": target, "pass": bool(fraction <= target + 1e-9),  # 1e-9: float noise
            **curve_roughness(curve, learned_ratio, target)}


def quadratic_trend(curve: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid curve's trend: the least-squares quadratic through its points (``coef``, highest power
    first), and its values at 1001 ratios over the grid's span (``dense_r``, ``dense``)."""
    r = np.array([float(x) for x, _ in curve], dtype=np.float64)
    coef = np.polyfit(r, np.array([float(v) for _, v in curve], dtype=np.float64), 2)
    dense_r = np.linspace(float(r.min()), float(r.max()), 1001)
    return coef, dense_r, np.polyval(coef, dense_r)


def on_trend(curve: Sequence[tuple[float, float]], ratio: float) -> float:
    """Where ``ratio`` lies on ``curve``'s trend: 0 at the trend's minimum over the grid's span, 1 at its
    maximum (:func:`curve_roughness`'s ``smoothed_fraction``, without its oracle simulation), clipped at 0:
    a ratio a hair outside the span (a re-drawn grid's 0 against 1e-7) is at the minimum, not below it."""
    coef, _, dense = quadratic_trend(curve)
    span = float(dense.max() - dense.min())
    return max(0.0, (float(np.polyval(coef, float(ratio))) - float(dense.min())) / span) if span > 0 else 0.0


def trend_min(curve: Sequence[tuple[float, float]]) -> float:
    """The ratio where ``curve``'s trend is lowest over the grid's span (:func:`curve_roughness`'s ``oracle_ratio``)."""
    _, dense_r, dense = quadratic_trend(curve)
    return float(dense_r[int(np.argmin(dense))])


def curve_roughness(curve: Sequence[tuple[float, float]], learned_ratio: float | None = None,
                    target: float = TARGET_REGRET_FRACTION) -> dict[str, Any]:
    """How far one fine-tune's dev loss strays from the grid curve's trend, and the regret read off that trend.

    A quadratic in the ratio is fitted to the grid points by least squares (it bends once: an interior
    minimum or a slope to one bound, the shapes the measured curves have). ``roughness`` is the std of
    the points about it (``ddof=3``), an estimate of what one fine-tune's dev loss scatters by at a
    fixed ratio (ratios 0.01 apart can differ by half a curve's range:
    benchmarks/results/ratio_landscape_default_fine12.md); ``target_in_roughness`` is how many of those
    the regret target (``target`` times the range) is: below 1, one fine-tune at the
    learned ratio cannot show the target met or missed. With ``learned_ratio``, ``smoothed_fraction``
    is the trend's value there minus its minimum over the grid's span, over the trend's range there:
    the regret of the learned ratio's place on the curve, without the scatter of its one fine-tune.
    ``oracle_*``: what the raw regret of a perfect controller would be on this curve (see
    :func:`oracle_regret`); with ``learned_ratio``, ``learned_pass_rate`` is the same draw for a
    controller that lands where this one did. Fewer than 5 points (no residual to estimate from): ``{}``.
    """
    if len(curve) < 5:
        return {}
    r = np.array([float(x) for x, _ in curve], dtype=np.float64)
    y = np.array([float(v) for _, v in curve], dtype=np.float64)
    coef, _, dense = quadratic_trend(curve)
    rough = float(np.std(y - np.polyval(coef, r), ddof=3))
    rough = 0.0 if rough <= 1e-12 * max(1.0, float(np.abs(y).max())) else rough  # float noise of an exact fit
    span = float(y.max() - y.min())
    out: dict[str, Any] = {"roughness": rough,
                           "target_in_roughness": (target * span / rough) if rough > 0 else float("inf")}
    if learned_ratio is not None:
        trend_span = float(dense.max() - dense.min())
        at = float(np.polyval(coef, float(learned_ratio)))
        out.update(learned_ratio=float(learned_ratio), trend_at_learned=at,
                   smoothed_fraction=(at - float(dense.min())) / trend_span if trend_span > 0 else 0.0)
    out.update(oracle_regret(coef, r, rough, target, learned_ratio))
    return out


def oracle_regret(coef: np.ndarray, ratios: np.ndarray, scatter: float, target: float = TARGET_REGRET_FRACTION,
                  learned_ratio: float | None = None, draws: int = ORACLE_DRAWS, seed: int = 0) -> dict[str, Any]:
    """The raw regret a perfect controller would score on a curve whose fine-tunes scatter.

    Model: the dev loss after one fine-tune at ratio ``p`` is the trend (the quadratic ``coef``) at
    ``p`` plus independent noise of std ``scatter`` (the curve's :func:`curve_roughness`). Each draw
    re-runs the grid (one noisy fine-tune at each of ``ratios``) and an *oracle* controller that
    lands exactly on the trend's minimum over the grid's span (one noisy final fine-tune), and
    scores the oracle as :func:`regret` scores a learned ratio: minus the best drawn grid point,
    over the drawn grid's range. The best of several noisy points is biased low (the winner's
    curse), so even the oracle's regret is positive on average once the scatter is comparable to
    the range. Returns its median and 90th percentile over ``draws`` and ``oracle_pass_rate``, how
    often it meets ``target``; with ``learned_ratio``, ``learned_pass_rate``: the same for a
    controller at that ratio. Fixed ``seed``: a report regenerates the same figures.
    """
    rng = np.random.default_rng(seed)
    dense_r = np.linspace(float(ratios.min()), float(ratios.max()), 1001)
    best_r = float(dense_r[int(np.argmin(np.polyval(coef, dense_r)))])
    grid = np.polyval(coef, ratios)[None, :] + scatter * rng.standard_normal((draws, len(ratios)))
    lo, span = grid.min(axis=1), grid.max(axis=1) - grid.min(axis=1)

    def fractions(at: float) -> np.ndarray:
        final = float(np.polyval(coef, at)) + scatter * rng.standard_normal(draws)
        regret = final - lo
        safe = np.where(span > 0, span, 1.0)
        return np.where(span > 0, regret / safe, np.where(regret <= 0, 0.0, np.inf))

    oracle = fractions(best_r)
    out = {"oracle_ratio": best_r, "oracle_fraction_median": float(np.median(oracle)),
           "oracle_fraction_p90": float(np.quantile(oracle, 0.9)),
           "oracle_pass_rate": float(np.mean(oracle <= target + 1e-9))}
    if learned_ratio is not None:
        out["learned_pass_rate"] = float(np.mean(fractions(float(learned_ratio)) <= target + 1e-9))
    return out


def probe_rounds(trace: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """What the controller saw in each probe round of a 1-D run (its ``probe_trace``): per training state
    (controller step), the ratios probed there (candidates, the baseline at the committed value and any guard
    probe) with their micro-dev scores, Spearman's rank correlation of score against ratio (+1: every higher
    ratio scored better), the best-scoring ratio and whether it is the highest ratio probed in that round.
    None for a trace of another knob shape."""
    from benchmarks.ratio_landscape import spearman

    rounds: dict[int, list[tuple[float, float]]] = {}
    for p in trace:
        value = p.get("value")
        if not isinstance(value, (list, tuple)) or len(value) != 1:
            return None
        rounds.setdefault(int(p["step"]), []).append((float(value[0]), float(p["score"])))
    out = []
    for step, pts in sorted(rounds.items()):
        ratios, scores = [r for r, _ in pts], [s for _, s in pts]
        best = ratios[int(np.argmax(scores))]
        out.append({"step": step, "n": len(pts), "spearman": spearman(ratios, scores) if len(pts) > 1 else float("nan"),
                    "best_ratio": best, "best_is_highest": bool(best == max(ratios))})
    return out


def pooled_difference(records: dict[int, dict[str, dict[str, Any]]], arm: str, ref: str, task: str,
                      lang: str) -> dict[str, float] | None:
    """``arm``'s test score minus ``ref``'s, paired over every (seed, question) both answered, with
    :func:`paired_bootstrap`'s 95 % interval (seed 0); None when no seed has both."""
    pooled_a: dict[str, float] = {}
    pooled_b: dict[str, float] = {}
    for s, arms_s in records.items():
        if arm in arms_s and ref in arms_s:
            a, b = test_scores(arms_s[arm], task, lang), test_scores(arms_s[ref], task, lang)
            pooled_a.update({f"{s}/{k}": v for k, v in a.items()})
            pooled_b.update({f"{s}/{k}": v for k, v in b.items()})
    return paired_bootstrap(pooled_a, pooled_b)


def adapter_time(rec: dict[str, Any]) -> dict[str, float]:
    """An arm's time to its final adapter, as run: its wall time less :data:`REPORTING_PHASES` (the
    search, the grid's dev scoring of its points and re-run included; loading and tracking too), and
    those reporting phases apart: ``test_s`` (generation on the test split) and ``dev_loss_s`` (the
    finished adapter's dev loss), the same work for every arm."""
    ph = rec["phases"]
    test, dev = float(ph.get("eval_test_s", 0.0)), float(ph.get("eval_dev_s", 0.0))
    return {"adapter_s": float(rec["wall_s"]) - test - dev, "test_s": test, "dev_loss_s": dev,
            "wall_s": float(rec["wall_s"])}


def mean_curve(curves: dict[int, Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The seed-averaged landscape: per ratio, the mean over seeds of the grid curves' dev losses. Every
    curve must have the same ratios (the same grid: ``k`` points over the same bounds), else ValueError."""
    if not curves:
        raise ValueError("no grid curve to average")
    first = [float(x) for x, _ in next(iter(curves.values()))]
    for seed, c in curves.items():
        if len(c) != len(first) or not np.allclose([float(x) for x, _ in c], first, rtol=0, atol=1e-9):
            raise ValueError(f"seed {seed}'s grid has other ratios than seed {next(iter(curves))}'s")
    mean = np.mean([[float(v) for _, v in c] for c in curves.values()], axis=0)
    return [(x, float(v)) for x, v in zip(first, mean)]


def seed_averaged(records: dict[int, dict[str, dict[str, Any]]], task: str, lang: str,
                  target: float = TARGET_REGRET_FRACTION) -> dict[str, Any]:
    """Issue 36's per-language reading of a file's seeds (each seed one part of the same configuration).

    - ``curve``: the mean of the seeds' grid curves (:func:`mean_curve` of :func:`grid_loss_curve`), its
      quadratic trend's minimum (``trend_min``) and range over the grid's span (``trend_range``), and the
      scatter of the mean's points about the trend (``scatter``, a share of ``trend_range``); None without a
      dev-loss grid of 3 or more points in any seed.
    - per arm, ``trend``: every seed's learned ratio (the grid's: its chosen point) on that trend as a share
      of its range above its minimum (:func:`on_trend`), ``pass`` at most ``target``; ``within`` of
      ``parts``, ``worst``. Target-only has no ratio on this curve (no source adapter) and is not read.
    - per arm, ``time``: per seed :func:`adapter_time` and ``ratio``, the grid's time to its adapter over the
      arm's, as run (the grid's re-run of its winner included), and ``wall_ratio``, the same with the test and
      dev-loss scoring both pay; ``ratio_median``/``ratio_range`` over seeds.
    - per arm, ``vs_grid`` and ``vs_target_only``: :func:`pooled_difference` of the test score.
    """
    grids = {s: grid_loss_curve(arms["grid"]) for s, arms in records.items() if "grid" in arms}
    grids = {s: c for s, c in grids.items() if c is not None and len(c) >= 3}
    out: dict[str, Any] = {"target": target, "seeds": sorted(records), "curve": None, "arms": {}}
    curve = None
    try:
        curve = mean_curve(grids) if grids else None
    except ValueError as exc:  # seeds of different grids: no mean (never costs the rest of the report)
        out["curve_error"] = str(exc)
    if curve is not None:
        coef, _, dense = quadratic_trend(curve)
        span = float(dense.max() - dense.min())
        r = np.array([x for x, _ in curve])
        y = np.array([v for _, v in curve])
        resid = float(np.std(y - np.polyval(coef, r), ddof=3)) if len(curve) > 3 else float("nan")
        out["curve"] = {"points": [[x, v] for x, v in curve], "seeds": sorted(grids), "trend_min": trend_min(curve),
                        "trend_range": span, "range": float(y.max() - y.min()),
                        "scatter": resid / span if span > 0 and np.isfinite(resid) else float("nan")}
    for arm in [a for a in ARMS if any(a in arms for arms in records.values())]:
        row: dict[str, Any] = {}
        if curve is not None and arm != "target-only":
            reads = []
            for s, arms in records.items():
                learned = list(((arms.get(arm) or {}).get("learned") or {}).values())
                if len(learned) == 1:
                    f = on_trend(curve, float(learned[0]))
                    reads.append({"seed": s, "ratio": float(learned[0]), "fraction": f,
                                  "pass": bool(f <= target + 1e-9)})
            if reads:
                row["trend"] = reads
                row.update(within=sum(r["pass"] for r in reads), parts=len(reads),
                           worst=float(max(r["fraction"] for r in reads)))
        times = []
        for s, arms in records.items():
            if arm in arms:
                t = {"seed": s, **adapter_time(arms[arm])}
                if "grid" in arms and arm != "grid":
                    g = adapter_time(arms["grid"])
                    t["ratio"] = g["adapter_s"] / t["adapter_s"] if t["adapter_s"] > 0 else float("nan")
                    t["wall_ratio"] = g["wall_s"] / t["wall_s"] if t["wall_s"] > 0 else float("nan")
                times.append(t)
        row["time"] = times
        ratios = [t["ratio"] for t in times if "ratio" in t]
        if ratios:
            row["ratio_median"] = _med(ratios)
            row["ratio_range"] = [float(min(ratios)), float(max(ratios))]
        row["adapter_s_median"] = _med([t["adapter_s"] for t in times])
        for ref, key in (("grid", "vs_grid"), ("target-only", "vs_target_only")):
            if arm != ref:
                row[key] = pooled_difference(records, arm, ref, task, lang)
        out["arms"][arm] = row
    return out


def summarise(records: dict[int, dict[str, dict[str, Any]]], adapters: dict[int, dict[str, Any]],
              task: str, lang: str, steps: int, controller_steps: int | None = None,
              yardstick: str | None = None) -> dict[str, Any]:
    """Tables and comparisons per seed, plus medians over seeds (``controller_steps`` None: ``steps``);
    with ``yardstick`` :data:`YARDSTICK` (a file measured by this code) also :func:`seed_averaged`."""
    per_seed: dict[int, dict[str, Any]] = {}
    for seed, arms in records.items():
        a_s = float(adapters[seed]["train_s"]) if seed in adapters else 0.0
        rows = {}
        for arm, rec in arms.items():
            rows[arm] = {"arm": arm, "label": rec["label"], "learned": rec["learned"],
                         "times": breakdown(rec, a_s), "passes": rec["passes"],
                         "metrics": {k: rec["metrics"][k] for k in METRIC_KEYS if k in rec["metrics"]},
                         "probes": rec["probes"], "phases": rec["phases"],
                         "updates": (rec.get("controller_state") or {}).get("updates")}
        comps = {}
        if "grid" in arms:
            grid = arms["grid"]
            grid_scores = test_scores(grid, task, lang)
            for arm in [a for a in arms if a != "grid"]:
                rec = arms[arm]
                c = {"time_ratio": time_ratios(grid, rec, a_s),
                     "pass_ratio": {k: (grid["passes"][k] / rec["passes"][k]) if rec["passes"].get(k) else None
                                    for k in ("forward_passes", "backward_passes")},
                     "metric_diff": {k: rec["metrics"][k] - grid["metrics"][k] for k in METRIC_KEYS
                                     if k in rec["metrics"] and k in grid["metrics"]},
                     "score_diff_bootstrap": paired_bootstrap(test_scores(rec, task, lang), grid_scores, seed=seed)}
                if arm in GRASP_ARMS:
                    c["cost_model"] = cost_model(grid, rec, a_s, steps, controller_steps)
                if arm in CONTROLLER_ARMS:
                    curve = grid_loss_curve(grid)
                    learned_loss = rec["metrics"].get("dev_loss")
                    if curve is not None and learned_loss is not None and np.isfinite(learned_loss):
                        learned = list((rec.get("learned") or {}).values())
                        c["regret"] = regret(curve, learned_loss,
                                             learned_ratio=float(learned[0]) if len(learned) == 1 else None)
                    rounds = probe_rounds(rec.get("probe_trace") or [])
                    if rounds:
                        c["probe_rounds"] = rounds
                comps[arm] = c
        per_seed[seed] = {"rows": rows, "vs_grid": comps, "adapters_train_s": a_s}
    # medians over seeds
    med: dict[str, Any] = {}
    seeds = list(per_seed)
    arms_all = [a for a in ARMS if any(a in per_seed[s]["rows"] for s in seeds)]
    for arm in arms_all:
        rs = [per_seed[s]["rows"][arm] for s in seeds if arm in per_seed[s]["rows"]]
        med[arm] = {"n": len(rs),
                    "total_s": _med([r["times"]["total_s"] for r in rs]),
                    "total_with_adapters_s": _med([r["times"]["total_with_adapters_s"] for r in rs]),
                    "learned": {n: _med([r["learned"][n] for r in rs]) for n in rs[0]["learned"]},
                    "metrics": {k: _med([r["metrics"].get(k) for r in rs]) for k in rs[0]["metrics"]}}
        cs = [per_seed[s]["vs_grid"][arm] for s in seeds if arm in per_seed[s]["vs_grid"]]
        if cs:
            med[arm]["time_ratio"] = {k: _med([c["time_ratio"][k] for c in cs]) for k in cs[0]["time_ratio"]}
            med[arm]["metric_diff"] = {k: _med([c["metric_diff"].get(k) for c in cs]) for k in cs[0]["metric_diff"]}
            # the test score difference pooled over seeds: one paired interval over every (seed, question)
            med[arm]["score_diff_pooled"] = pooled_difference(records, arm, "grid", task, lang)
            med[arm]["time_ratio_range"] = {k: [float(min(c["time_ratio"][k] for c in cs)),
                                                float(max(c["time_ratio"][k] for c in cs))] for k in cs[0]["time_ratio"]}
            fractions = [c["regret"]["fraction"] for c in cs if "regret" in c]
            if fractions:
                med[arm]["regret_fraction"] = _med(fractions)
                med[arm]["regret_fraction_worst"] = float(max(fractions))
                med[arm]["regret_seeds"] = len(fractions)
            trend = [c["regret"]["smoothed_fraction"] for c in cs if "smoothed_fraction" in c.get("regret", {})]
            if trend:
                med[arm]["regret_trend_worst"] = float(max(trend))
                med[arm]["regret_trend_seeds"] = len(trend)
            rounds = [r for c in cs for r in c.get("probe_rounds", [])]
            if rounds:  # how often a round's best probe was its highest ratio, and the median rank correlation
                med[arm]["probe_rounds"] = {"rounds": len(rounds),
                                            "best_is_highest": sum(r["best_is_highest"] for r in rounds),
                                            "spearman_median": _med([r["spearman"] for r in rounds])}
            oracle = [c["regret"]["oracle_pass_rate"] for c in cs if "oracle_pass_rate" in c.get("regret", {})]
            if oracle:  # independent seeds: how likely a perfect controller meets the target in every one
                med[arm]["oracle_pass_every_seed"] = float(np.prod(oracle))
                med[arm]["oracle_seeds"] = len(oracle)
    out = {"per_seed": per_seed, "median": med}
    if yardstick == YARDSTICK:
        out["seed_averaged"] = seed_averaged(records, task, lang)
    return out


def _med(values: Sequence[float | None]) -> float:
    arr = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(arr)) if arr else float("nan")


def criteria(summary: dict[str, Any], throughput: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's done-when checks, evaluated on the medians (GRPO arm)."""
    out: dict[str, Any] = {}
    med = summary["median"].get("grpo", {})
    sa = summary.get("seed_averaged")
    if sa:  # issue 36's yardstick replaces issue 12's per-seed regret and its as-run wall-time ratio
        med = {k: v for k, v in med.items() if not k.startswith("regret") and not k.startswith("oracle")}
        med["time_ratio_range"] = {k: v for k, v in (med.get("time_ratio_range") or {}).items() if k != "as_measured"}
    tr = med.get("time_ratio") or {}
    if tr:
        out["speedup_headline"] = {"value": tr["with_shared_adapters"], "target": TARGET_SPEEDUP,
                                   "accounting": "end to end incl. the shared adapters' training, grid as run",
                                   "pass": tr["with_shared_adapters"] >= TARGET_SPEEDUP}
        worst = min(tr.values())
        out["speedup_conservative"] = {"value": worst, "target": TARGET_SPEEDUP,
                                       "accounting": "the lowest of the four accountings",
                                       "pass": worst >= TARGET_SPEEDUP}
        low = (med.get("time_ratio_range") or {}).get("as_measured")
        if low:
            out["speedup_as_run_every_seed"] = {
                "value": low[0], "target": TARGET_SPEEDUP_WITH_REGRET, "pass": low[0] >= TARGET_SPEEDUP_WITH_REGRET,
                "accounting": "issue 12: the lowest over seeds of the grid's wall time over GRASP's, both as run"}
    if "regret_fraction_worst" in med:
        worst = med["regret_fraction_worst"]
        out["regret"] = {"value": worst, "target": TARGET_REGRET_FRACTION, "pass": worst <= TARGET_REGRET_FRACTION,
                         "accounting": f"the worst of {med['regret_seeds']} seed(s): the learned ratio's dev loss after "
                                       "its final fine-tune minus the best grid point's, over the grid curve's range"}
        if "oracle_pass_every_seed" in med:
            p = med["oracle_pass_every_seed"]
            out["regret"]["oracle_pass_every_seed"] = p
            out["regret"]["accounting"] += (
                f"; a perfect controller (on each trend's minimum, its fine-tune scattering like a grid point's) "
                f"would meet it in all {med['oracle_seeds']} seed(s) with probability {100 * p:.1f} %")
    if "regret_trend_worst" in med:
        worst = med["regret_trend_worst"]
        out["regret_on_trend"] = {
            "value": worst, "target": TARGET_REGRET_FRACTION, "pass": worst <= TARGET_REGRET_FRACTION,
            "accounting": f"the worst of {med['regret_trend_seeds']} seed(s): the regret read off a quadratic fitted "
                          "to the grid points (where the learned ratio lies on the curve's trend, without the "
                          "scatter of its one fine-tune), over the trend's range"}
    grpo = ((sa or {}).get("arms") or {}).get("grpo") or {}
    if grpo.get("ratio_range"):
        low = grpo["ratio_range"][0]
        out["adapter_speedup_every_seed"] = {
            "value": low, "target": TARGET_SPEEDUP_WITH_REGRET, "pass": low >= TARGET_SPEEDUP_WITH_REGRET,
            "accounting": f"issue 36: the lowest over {len(grpo['time'])} seed(s) of the grid's time to its final "
                          "adapter over GRASP's, as run (search and final fine-tune, the grid's dev scoring and "
                          "re-run included; the test and dev-loss scoring both pay left out)"}
    if "worst" in grpo:
        out["trend_every_part"] = {
            "value": grpo["worst"], "target": sa["target"], "pass": grpo["worst"] <= sa["target"] + 1e-9,
            "accounting": f"issue 36: the worst of {grpo['parts']} part(s) ({grpo['within']} within): the learned "
                          "ratio on the trend of the seeds' mean grid curve, above the trend's minimum, over its range"}
    diff = (med.get("metric_diff") or {}).get("score")
    if diff is not None and np.isfinite(diff):
        out["score_gap"] = {"value": diff, "target": -TARGET_SCORE_GAP, "pass": diff >= -TARGET_SCORE_GAP}
    if throughput:
        r = throughput.get("ratio_vs_plain_label_only", {}).get("median")
        r2 = throughput.get("ratio_vs_plain_hf_loss", {}).get("median")
        if r is not None:
            out["throughput_like_for_like"] = {"value": r, "target": TARGET_THROUGHPUT, "pass": r >= TARGET_THROUGHPUT}
        if r2 is not None:
            out["throughput_vs_hf_loss"] = {"value": r2, "target": TARGET_THROUGHPUT, "pass": r2 >= TARGET_THROUGHPUT}
        pc = throughput.get("probe_cost") or {}
        if pc:
            v = pc["amortised_fraction"]["median"]
            group = throughput.get("group_size")
            n = pc.get("micro_dev_examples")
            acc = (f"a round of {group + 1} probes" if group else "a round of probes") + \
                (f" on the run's {n} micro-dev examples" if n else " on the run's micro-dev")
            sc = pc.get("scaling") or {}
            c: dict[str, Any] = {"value": v, "target": TARGET_PRUNE_FRACTION, "pass": v < TARGET_PRUNE_FRACTION,
                                 "cold": pc["cold_fraction"]["median"], "warm": pc["warm_fraction"]["median"]}
            if sc:
                c["min_examples_for_target"] = sc.get("min_examples_for_target")
                c["forward_per_example_s"] = sc.get("forward_per_example_s")
                c["prune_restore_amortised_s"] = sc.get("prune_restore_amortised_s")
                need = sc.get("min_examples_for_target")
                acc += (f"; prune+restore is a fixed {1e3 * sc['prune_restore_amortised_s']:.1f} ms per probe over a "
                        f"round (first at a state {1e3 * sc['prune_restore_cold_s']:.1f}, later "
                        f"{1e3 * sc['prune_restore_warm_s']:.1f}) "
                        f"vs {1e3 * sc['forward_per_example_s']:.1f} ms of forward per example (on the "
                        f"{sc['large_examples']} {sc['large_split']} examples)")
                if need is not None:
                    acc += f": under {100 * TARGET_PRUNE_FRACTION:.0f} % from {need} micro-dev examples"
            c["accounting"] = acc
            out["prune_restore_fraction"] = c
    return out


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max()),
            "values": [float(v) for v in arr]}
