"""Benchmark: what KnobCallback costs a ``transformers.Trainer`` run, probes excluded.

Run::

    python benchmarks/trainer_callback.py                              # tiny Gemma 3 (real tokenizer), CPU
    python benchmarks/trainer_callback.py --backbone gemma3-270m --steps 24 --batch-size 4 --max-len 256

Two runs of the same peft LoRA fine-tune with the same seed (the data and model of
``examples/trainer_callback.py``: XQuAD Arabic, LoRA r=8 on q/k/v/o): a plain Trainer run,
and the same run with ``KnobCallback(LoraPruneKnob())`` every ``--every`` steps (GRPO,
``--budget`` probes in groups of ``--group-size``). The callback times itself
(``KnobCallback.seconds``): the probes; the recurring rest - ``rounds`` (the controller and
committing a value), ``steps`` (the per-step hooks, including the mask refreshes of a pruned
LoRA every ``mask_every`` steps) and ``saves`` (the session into Trainer checkpoints); and
the one-time ``setup`` (MLflow run, probe batches) and ``finish`` (result, plot, uploads).

Reported: the recurring overhead as a fraction of the training time (the callback run's
``train_runtime`` minus everything the callback spent), per round and per step; the
one-time seconds; and, for context only, the plain run's ``train_runtime`` and the step
time at the learned ratio (training through ``W + M * dW`` is the price of a pruned
adapter, not of the callback). Times are measured in one process on a shared machine:
the fraction compares two quantities of the same run; the plain run is not subtracted.

Writes ``trainer_callback.json`` and ``trainer_callback.md`` to ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("example_trainer_callback", ROOT / "examples" / "trainer_callback.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_once(a, *, with_callback: bool, work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from hpctl.integrations.transformers import KnobCallback, LoraPruneKnob
    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

    ex = _example()
    torch.manual_seed(a.seed)
    model, tokenizer, name = load_backbone(a.backbone, device=a.device)
    data = load_task_data("xquad", "ar", seed=a.seed, sizes=SplitSizes(source_train=0, target_train=a.train,
                                                                        micro_dev=a.micro_dev, dev=0, test=0),
                          max_context_chars=a.max_context_chars)
    train = ex.features(data.target_train, tokenizer, max_len=a.max_len, max_target_len=24)
    micro_dev = ex.features(data.micro_dev, tokenizer, max_len=a.max_len, max_target_len=24)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    callbacks, cb, knob = [], None, None
    if with_callback:
        knob = LoraPruneKnob(high=0.9)
        cb = KnobCallback(knob, micro_dev, every_steps=a.every, budget=a.budget, group_size=a.group_size,
                          seed=a.seed, data_collator=collator, eval_batch_size=8, out_dir=str(work / "session"))
        callbacks.append(cb)
    step_times: list[float] = []

    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    callbacks.insert(0, StepClock())  # first: its on_step_end runs before the callback's round
    args = TrainingArguments(output_dir=str(work / "trainer"), max_steps=a.steps,
                             per_device_train_batch_size=a.batch_size, learning_rate=5e-4,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=a.device == "cpu", disable_tqdm=True, seed=a.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=callbacks)
    out = trainer.train()
    row = {"train_runtime_s": float(out.metrics["train_runtime"]), "backbone": name, "steps": a.steps,
           "step_s": step_times}
    if cb is not None:
        sec = dict(cb.seconds)
        spent = sum(sec.values())
        recurring = sec["rounds"] + sec["steps"] + sec["saves"]
        training = row["train_runtime_s"] - spent
        last_commit = max((e["step"] for e in cb.session.history if e["event"] == "commit"), default=0)
        row.update({"seconds": sec, "rounds": cb.rounds, "probes": cb.session.probes,
                    "learned": cb.session.learned, "training_s": training, "recurring_s": recurring,
                    "overhead_fraction": recurring / training, "per_round_ms": 1e3 * sec["rounds"] / max(1, cb.rounds),
                    "per_step_ms": 1e3 * sec["steps"] / a.steps, "controller_until_step": last_commit})
    return row


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def report(res: dict) -> str:
    plain, cb = res["plain"], res["callback"]
    sec = cb["seconds"]
    a = res["args"]
    lines = [
        "# KnobCallback overhead in a transformers.Trainer run",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']}; torch {res['versions']['torch']}, transformers {res['versions']['transformers']}",
        "",
        f"{cb['backbone']}, peft LoRA r=8 on q/k/v/o, {a['steps']} steps of batch {a['batch_size']} "
        f"(max {a['max_len']} tokens); KnobCallback(LoraPruneKnob) every {a['every']} steps, GRPO with "
        f"{a['budget']} probes in groups of {a['group_size']} on {a['micro_dev']} micro-dev examples.",
        "",
        "| | seconds |",
        "|---|---|",
        f"| plain run: train_runtime | {plain['train_runtime_s']:.1f} |",
        f"| callback run: train_runtime | {cb['train_runtime_s']:.1f} |",
        f"| - probes ({cb['probes']} in {cb['rounds']} rounds) | {sec['probes']:.1f} |",
        f"| - recurring: rounds (controller, commit) | {sec['rounds']:.3f} |",
        f"| - recurring: per-step hooks (mask refreshes included) | {sec['steps']:.3f} |",
        f"| - recurring: session saves | {sec['saves']:.3f} |",
        f"| - once: setup (MLflow run, probe batches) | {sec['setup']:.2f} |",
        f"| - once: finish (result, plot, uploads) | {sec['finish']:.2f} |",
        f"| = training time of the callback run | {cb['training_s']:.1f} |",
        "",
        f"**Recurring overhead: {100 * cb['overhead_fraction']:.2f} % of the training time** "
        f"({cb['per_round_ms']:.1f} ms per round, {cb['per_step_ms']:.2f} ms per step); the one-time "
        f"{sec['setup'] + sec['finish']:.1f} s are paid once per run.",
        "",
        f"Context: median step time {1e3 * _median(plain['step_s']):.0f} ms in the plain run, "
        f"{1e3 * _median(cb['step_s'][cb['controller_until_step']:]):.0f} ms in the callback run after the "
        f"controller finished (training at the learned ratio {cb['learned']:.4f}; a ratio > 0 trains through "
        "W + M * dW, the pruned adapter's own cost).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=160)
    ap.add_argument("--max-context-chars", type=int, default=400)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--micro-dev", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(tempfile.mkdtemp()) / 'mlflow.db'}")
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        plain = run_once(a, with_callback=False, work=Path(tmp) / "plain")
        cb = run_once(a, with_callback=True, work=Path(tmp) / "cb")
    res = {"command": " ".join(["python benchmarks/trainer_callback.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {a.device}",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "args": vars(a), "plain": plain, "callback": cb}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer_callback.json").write_text(json.dumps(res, indent=2) + "\n")
    text = report(res)
    (out / "trainer_callback.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
