"""Throughput: the grasp_lora training loop against plain peft loops, and a probe's prune+restore cost."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .analysis import TARGET_PRUNE_FRACTION, _stats
from .arms import EXPERIMENT, resolved


def hf_labels(batch) -> "Any":
    """``labels`` for the usual transformers loss: the target tokens, -100 elsewhere (the model shifts)."""
    import torch

    labels = torch.full_like(batch.input_ids, -100)
    tgt = torch.zeros_like(batch.keep)
    tgt[:, 1:] = batch.keep[:, :-1]  # keep[t] predicts token t + 1
    labels[tgt] = batch.input_ids[tgt]
    return labels


def measure_throughput(base: dict[str, Any], adapters: dict[str, Any], seed: int, *, rounds: int, steps: int,
                       reps: int, probe_reps: int, out_dir: Path, tracking_uri: str,
                       parent_run_id: str | None = None, ratio: float | None = None, group_size: int = 4,
                       say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tokens/s of the grasp_lora training loop vs plain peft loops, alternating; probe prune+restore cost.

    A: ``ControlEnv.advance`` rounds of ``steps`` steps (the loop the controller run drives),
       a candidate probe and the baseline probe before each round (untimed), after each round what the runner's
       :class:`hpctl.runner.RoundHook` does (MLflow metrics; a checkpoint at most every ``CHECKPOINT_EVERY_S``),
       timed, as the runner pays it.
    B1: plain peft LoRA + transformers ``labels=`` loss; B2: the same with logits only at the
       label positions (``logits_to_keep``), i.e. the grasp loop's loss without masks/wrappers.
    All three see the same batches (same ``DataOrder`` seed per alternation). Pass ``steps`` = the controller
    run's steps per round (:func:`hpctl.runner.steps_per_round`) to time the loop the controller run executes.

    Probe cost: one probe's prune+restore (``applied`` enter + exit) against its forward pass, first on the
    micro-dev batches (what a probe of the run pays; the ``probe_cost`` fractions), then on the test split's
    batches. Prune+restore does not depend on the examples, the forward does; ``probe_cost["scaling"]`` has
    the forward's cost per example (test split), the fixed prune+restore cost (both measurements pooled) and
    the smallest micro-dev size at which the round's prune+restore would be under ``TARGET_PRUNE_FRACTION``
    of its forwards.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from hpctl.controllers.base import get_controller
    from hpctl.control_env import ControlEnv
    from hpctl.plugins.grasp_lora import GraspTask
    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.lm import batched_loss, collate
    from hpctl.plugins.grasp_lora.lora import parse_targets
    from hpctl.plugins.grasp_lora.training import DataOrder
    from hpctl.runner import RoundHook, seed_everything
    from hpctl.tracking import RunRecorder, Tracker

    say = say or (lambda s: None)
    # the env's episode (the controller run) is exactly the measured rounds
    cfg = resolved(dict(base, baseline="none", source_adapter=adapters["source_adapter"],
                        target_adapter=adapters["target_adapter"], steps=rounds * steps,
                        controller_steps=rounds * steps))
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    task = GraspTask(cfg, seed=seed, out_dir=out_dir)
    group = int(group_size)
    env = ControlEnv(task, group_size=group, steps_per_round=steps)
    tracker = Tracker(tracking_uri, EXPERIMENT, run_name=f"throughput / seed{seed}", parent_run_id=parent_run_id,
                      tags={"hpctl.plugin": "grasp_lora", "hpctl.benchmark": "grasp_vs_grid", "arm": "throughput"})
    status = "FAILED"
    try:
        recorder = RunRecorder(task.knob.component_names, tracker)
        env.listeners.append(recorder)
        ctrl_cls = get_controller("grpo")
        ctrl = ctrl_cls(env, ctrl_cls.make_config({}), seed=seed)
        env.reset(seed=seed)
        rho = float(cfg.start_ratio if ratio is None else ratio)
        lengths = [len(e.ids) for e in task.splits["target_train"].encoded]
        rng = np.random.default_rng(seed)
        say("loading a second copy of the backbone for the plain peft loop ...")
        # the same device and dtype as the grasp loop, or the comparison is of two machines
        plain_model, _, _ = load_backbone(cfg.backbone, cache_dir=cfg.cache_dir, dtype=task.dtype, device=task.device)
        rank = int(task.notes.get("merged_rank", 2 * int(cfg.lora_r)))
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = get_peft_model(plain_model, LoraConfig(r=rank, lora_alpha=float(rank), lora_dropout=0.0,
                                                                target_modules=list(parse_targets(cfg.targets)),
                                                                bias="none", task_type="CAUSAL_LM"))
        peft_model.train(False)  # eval mode (no dropout), as the grasp loop runs the backbone
        plain_params = [p for p in peft_model.parameters() if p.requires_grad]
        plain_opt = torch.optim.AdamW(plain_params, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        clip = float(cfg.grad_clip) or None
        pad = task.pad_id
        data = task.splits["target_train"].encoded

        on_round = RoundHook(out_dir, env, recorder, tracker)  # what the runner calls after every round

        def grasp_loop(order_seed: int, n_rounds: int, n_steps: int) -> tuple[float, int]:
            if env.done or env.steps_done + n_rounds * n_steps > task.total_steps:
                env.reset(seed=seed)
            task.order = DataOrder(lengths, int(cfg.batch_size), order_seed)
            elapsed, tokens = 0.0, 0
            for _ in range(n_rounds):
                lo, hi = task.knob.low, task.knob.high
                # the interleaved probes (run, not timed): what they leave behind for training (cleared
                # overrides, a threshold index of this state) does not depend on how many there are
                cand = np.clip(rho + rng.normal(0.0, 0.1, size=1), lo, hi)
                env.probe_group(cand[:, None])
                env.baseline()
                before = task.counter.tokens
                t0 = time.perf_counter()
                env.advance(np.array([rho]))
                on_round(ctrl)
                elapsed += time.perf_counter() - t0
                tokens += task.counter.tokens - before
            return elapsed, tokens

        def plain_loop(order_seed: int, n: int, label_only: bool) -> tuple[float, int]:
            order = DataOrder(lengths, int(cfg.batch_size), order_seed)
            batches = [collate([data[j] for j in order.next()], pad).to(task.device) for _ in range(n)]
            tokens = sum(int(b.attention_mask.sum()) for b in batches)
            t0 = time.perf_counter()
            for b in batches:
                plain_opt.zero_grad(set_to_none=True)
                if label_only:
                    out = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                     logits_to_keep=b.keep, use_cache=False)
                    logits = out.logits
                    if logits.dim() == 3:
                        logits = logits.reshape(-1, logits.shape[-1])
                    loss = torch.nn.functional.cross_entropy(logits.float(), b.labels)
                else:
                    loss = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=hf_labels(b),
                                      use_cache=False).loss
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(plain_params, clip)
                plain_opt.step()
                plain_opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0, tokens

        say("throughput: warm-up ...")
        grasp_loop(10_000 + seed, 1, steps)
        plain_loop(10_000 + seed, 1, True)
        plain_loop(10_000 + seed, 1, False)
        runs: list[dict[str, Any]] = []
        for rep in range(reps):
            order_seed = 20_000 + 100 * seed + rep
            order = ["A", "B1", "B2"] if rep % 2 == 0 else ["B2", "B1", "A"]
            got: dict[str, tuple[float, int]] = {}
            for which in order:
                if which == "A":
                    got[which] = grasp_loop(order_seed, rounds, steps)
                else:
                    got[which] = plain_loop(order_seed, rounds * steps, label_only=(which == "B2"))
            if not got["A"][1] == got["B1"][1] == got["B2"][1]:
                raise RuntimeError(f"throughput loops saw different tokens: {got}")
            tps = {k: v[1] / v[0] for k, v in got.items()}
            runs.append({"order": order, "seconds": {k: v[0] for k, v in got.items()}, "tokens": got["A"][1],
                         "tokens_per_s": tps, "ratio_vs_plain_hf_loss": tps["A"] / tps["B1"],
                         "ratio_vs_plain_label_only": tps["A"] / tps["B2"]})
            say(f"throughput alternation {rep + 1}/{reps}: grasp/plain(labels=) {runs[-1]['ratio_vs_plain_hf_loss']:.3f}, "
                f"grasp/plain(label-only) {runs[-1]['ratio_vs_plain_label_only']:.3f}")
        del peft_model, plain_model, plain_opt

        # one probe: prune+restore (applied() enter + exit) vs its forward pass, on the micro-dev batches (the
        # run's probe) and on the test split's (a larger forward; prune+restore does not depend on the examples)
        pruner = task.pruner

        def probe_cost(batches: Sequence[Any], n_reps: int) -> list[dict[str, float]]:
            out = []
            for _ in range(n_reps):
                r = float(np.clip(rho + rng.normal(0.0, 0.1), task.knob.low, task.knob.high))
                row = {}
                for kind in ("cold", "warm"):  # cold: first probe at a new training state (index rebuilt)
                    if kind == "cold":
                        pruner.invalidate()
                    t0 = time.perf_counter()
                    ctx = pruner.applied(np.array([r]))
                    ctx.__enter__()
                    t1 = time.perf_counter()
                    try:
                        batched_loss(task.model, batches)
                    finally:
                        t2 = time.perf_counter()
                        ctx.__exit__(None, None, None)
                        t3 = time.perf_counter()
                    row[f"{kind}_prune_restore_s"] = (t1 - t0) + (t3 - t2)
                    row[f"{kind}_forward_s"] = t2 - t1
                row["cold_fraction"] = row["cold_prune_restore_s"] / row["cold_forward_s"]
                row["warm_fraction"] = row["warm_prune_restore_s"] / row["warm_forward_s"]
                # a round probes group + 1 values at one state: one cold, the rest warm
                row["amortised_fraction"] = ((row["cold_prune_restore_s"] + group * row["warm_prune_restore_s"])
                                             / (row["cold_forward_s"] + group * row["warm_forward_s"]))
                out.append(row)
            return out

        def examples(batches: Sequence[Any]) -> tuple[int, int]:
            return (sum(int(b.input_ids.shape[0]) for b in batches),
                    sum(int(b.attention_mask.sum()) for b in batches))

        batches = task.splits["micro_dev"].batches
        probe_runs = probe_cost(batches, probe_reps)
        large_name = "test" if task.splits["test"].batches else "dev"
        large = task.splits[large_name].batches
        say(f"probe cost: prune+restore vs a forward over the {large_name} split ...")
        large_runs = probe_cost(large, probe_reps)
        n_micro, tok_micro = examples(batches)
        n_large, tok_large = examples(large)
        fwd = lambda rows: float(np.median([r[f"{k}_forward_s"] for r in rows for k in ("cold", "warm")]))  # noqa: E731
        pr = lambda k: float(np.median([r[f"{k}_prune_restore_s"] for r in probe_runs + large_runs]))  # noqa: E731
        per_example = fwd(large_runs) / max(1, n_large)
        cold_s, warm_s = pr("cold"), pr("warm")
        amortised_s = (cold_s + group * warm_s) / (group + 1)  # per probe, over a round of group + 1 probes

        def min_examples(fixed_s: float) -> int | None:
            # fraction(n) = fixed / (n * per_example) < target  <=>  n > fixed / (target * per_example)
            if not per_example > 0:
                return None
            return int(math.floor(fixed_s / (TARGET_PRUNE_FRACTION * per_example))) + 1

        scaling = {
            "large_split": large_name, "large_examples": n_large, "large_tokens": tok_large,
            "micro_dev_examples": n_micro, "micro_dev_tokens": tok_micro,
            "forward_per_example_s": per_example,
            "forward_per_example_micro_dev_s": fwd(probe_runs) / max(1, n_micro),
            "forward_per_token_s": fwd(large_runs) / max(1, tok_large),
            "prune_restore_cold_s": cold_s, "prune_restore_warm_s": warm_s, "prune_restore_amortised_s": amortised_s,
            "prune_restore_cold_s_micro_dev": float(np.median([r["cold_prune_restore_s"] for r in probe_runs])),
            "prune_restore_cold_s_large": float(np.median([r["cold_prune_restore_s"] for r in large_runs])),
            "prune_restore_warm_s_micro_dev": float(np.median([r["warm_prune_restore_s"] for r in probe_runs])),
            "prune_restore_warm_s_large": float(np.median([r["warm_prune_restore_s"] for r in large_runs])),
            "target": TARGET_PRUNE_FRACTION,
            "min_examples_for_target": min_examples(amortised_s),
            "min_examples_for_target_cold": min_examples(cold_s),
            "min_examples_for_target_warm": min_examples(warm_s),
            "predicted_fraction_at_micro_dev": (amortised_s / (n_micro * per_example)
                                                if n_micro and per_example > 0 else float("nan")),
        }
        result = {
            "seed": seed, "ratio": rho, "rounds": rounds, "steps_per_round": steps, "alternations": reps,
            "batch_size": int(cfg.batch_size), "max_len": int(cfg.max_len), "lora_rank_plain": rank,
            "mask_every": int(cfg.mask_every), "group_size": group, "backbone": task.backbone_name,
            "runs": runs,
            "ratio_vs_plain_hf_loss": _stats([r["ratio_vs_plain_hf_loss"] for r in runs]),
            "ratio_vs_plain_label_only": _stats([r["ratio_vs_plain_label_only"] for r in runs]),
            "probe_cost": {"runs": probe_runs, "micro_dev_batches": len(batches), "micro_dev_examples": n_micro,
                           **{k: _stats([r[k] for r in probe_runs])
                              for k in ("cold_fraction", "warm_fraction", "amortised_fraction")},
                           "large": {"split": large_name, "batches": len(large), "examples": n_large,
                                     "runs": large_runs,
                                     **{k: _stats([r[k] for r in large_runs])
                                        for k in ("cold_fraction", "warm_fraction", "amortised_fraction")}},
                           "scaling": scaling},
            "mlflow_run_id": tracker.run_id,
        }
        tracker.metrics({"throughput/ratio_vs_plain_hf_loss": result["ratio_vs_plain_hf_loss"]["median"],
                         "throughput/ratio_vs_plain_label_only": result["ratio_vs_plain_label_only"]["median"],
                         "probe/amortised_fraction": result["probe_cost"]["amortised_fraction"]["median"],
                         "probe/forward_per_example_s": per_example, "probe/prune_restore_amortised_s": amortised_s,
                         **({"probe/min_micro_dev_for_target": scaling["min_examples_for_target"]}
                            if scaling["min_examples_for_target"] is not None else {})})
        status = "FINISHED"
        return result
    finally:
        task.close()
        tracker.end(status)
