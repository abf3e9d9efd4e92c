"""Seconds per question of `hpctl eval` (grasp_lora) on Gemma 3 270M with the default preset's settings.

Builds a run-like folder holding a full-rank exact export of a random merged adapter (rank 16
on q/k/v/o, pruned at 0.5: the shape of a default run's ``final_adapter``), takes the first N
Arabic XQuAD questions, then times :meth:`GraspLoraPlugin.eval_run` (the adapter merged into
copies of the weights) and, with ``--compare-peft``, the same scoring with the peft adapter
attached (every adapted matmul twice: what ``hpctl eval`` did before). Reports wall seconds
and process CPU seconds per question: on a shared machine the CPU seconds are the steadier
figure (wall time grows with everyone else's load, which is printed too).

    python benchmarks/eval_speed.py --questions 24 --compare-peft --repeats 3
    python benchmarks/eval_speed.py --questions 24 --dtype bfloat16
    python benchmarks/eval_speed.py --questions 24 --set eval_batch_size=24

Appends one line per measurement to ``benchmarks/results/eval_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XQUAD_AR = ROOT / "plugins" / "grasp_lora" / "data" / "xquad" / "xquad.ar.json"


def questions_file(n: int, path: Path) -> Path:
    """The first ``n`` questions of the shipped Arabic XQuAD, as a SQuAD file."""
    data = json.loads(XQUAD_AR.read_text(encoding="utf-8"))
    taken, articles = 0, []
    for art in data["data"]:
        pars = []
        for p in art["paragraphs"]:
            qas = p["qas"][: max(0, n - taken)]
            taken += len(qas)
            if qas:
                pars.append(dict(p, qas=qas))
        if pars:
            articles.append(dict(art, paragraphs=pars))
        if taken >= n:
            break
    path.write_text(json.dumps({"version": "1", "data": articles}, ensure_ascii=False), encoding="utf-8")
    return path


def fake_run(folder: Path, backbone: str, seed: int = 0) -> Path:
    """``folder/final_adapter``: an exact export of a random rank-16 merged adapter pruned at 0.5."""
    import numpy as np
    import torch

    from hpctl.plugins.grasp_lora.backbone import backbone_path, load_backbone
    from hpctl.plugins.grasp_lora.delta import DeltaAdapter
    from hpctl.plugins.grasp_lora.lora import LowRank, export_peft
    from hpctl.plugins.grasp_lora.pruner import GlobalMagnitudePruner

    if (folder / "final_adapter" / "adapter_config.json").is_file():
        return folder
    model, _, _ = load_backbone(backbone)
    g = torch.Generator().manual_seed(seed)
    factors = {name: LowRank(torch.randn(16, m.in_features, generator=g) * 0.01,
                             torch.randn(m.out_features, 16, generator=g) * 0.01, 1.0)
               for name, m in model.named_modules() if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))}
    adapter = DeltaAdapter(model, factors)
    masks = GlobalMagnitudePruner(adapter, None).masks(np.array([0.5]))
    export_peft(adapter, folder / "final_adapter", masks=masks, base_model_name_or_path=backbone_path(model))
    adapter.remove()
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/eval_speed.py", description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backbone", default="gemma3-270m")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="another grasp_lora option for scoring, e.g. eval_batch_size=24")
    ap.add_argument("--compare-peft", action="store_true", help="also time the peft adapter attached")
    ap.add_argument("--repeats", type=int, default=1, help="measurements of each way, alternating")
    ap.add_argument("--work", default="/tmp/hpctl-eval-speed", help="where the fake run folder goes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_speed.md"))
    args = ap.parse_args(argv)
    import torch

    from hpctl.config import build_dataclass
    from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspLoraPlugin, resolve_config
    from hpctl.plugins.grasp_lora.backbone import load_backbone
    from hpctl.plugins.grasp_lora.corpora import read_examples
    from hpctl.plugins.grasp_lora.lora import load_lora
    from hpctl.plugins.grasp_lora.splits import encode_split, split_metrics

    values = {"dtype": args.dtype, "backbone": args.backbone}
    for item in args.sets:
        key, _, value = item.partition("=")
        values[key.strip().replace("-", "_")] = value.strip()
    cfg = build_dataclass(GraspLoraConfig, values, what="plugin 'grasp_lora'")
    rc = resolve_config(cfg)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = fake_run(work / "run", args.backbone)
    data = questions_file(args.questions, work / f"questions{args.questions}.json")
    n = args.questions
    lines: list[str] = []
    settings = (f"{args.backbone}, {args.dtype}, batches of {rc.eval_batch_size}, {rc.max_new_tokens} new tokens, "
                f"{rc.max_context_chars}-char contexts, {n} questions, {torch.get_num_threads()} threads")
    merged_s: list[float] = []
    attached_s: list[float] = []
    peft_model = split = None
    for rep in range(args.repeats):  # alternating, so both ways see the same load on average
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        m = GraspLoraPlugin().eval_run(run, cfg, data=str(data), adapter="final")
        wall, cpu = (time.perf_counter() - t) / n, (time.process_time() - c) / n
        merged_s.append(m["seconds_per_example"])
        lines.append(f"- merged weights, repeat {rep + 1} ({settings}): {m['seconds_per_example']:.2f} s wall per "
                     f"question scoring ({m['generate_seconds_per_example']:.2f} s generating, "
                     f"{m['loss_seconds_per_example']:.2f} s the loss pass), {wall:.2f} s wall and {cpu:.2f} s CPU "
                     f"per question with loading; F1 {m['f1']:.2f}, loss {m['loss']:.4f}; load average {load0:.1f} -> "
                     f"{os.getloadavg()[0]:.1f}")
        if args.compare_peft:
            if peft_model is None:
                model, tok, _ = load_backbone(args.backbone, dtype=args.dtype)
                peft_model = load_lora(model, run / "final_adapter", "final")
                examples = read_examples("xquad", str(data), "ar", max_context_chars=rc.max_context_chars)
                split = encode_split(tok, examples, rc, tok.pad_token_id)
            load0 = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            with torch.no_grad():
                s, _ = split_metrics(peft_model, tok, split, rc, "ar")
            attached_s.append((time.perf_counter() - t) / n)
            lines.append(f"- peft adapter attached, repeat {rep + 1} (same settings): {attached_s[-1]:.2f} s wall, "
                         f"{(time.process_time() - c) / n:.2f} s CPU per question scoring (no loading); F1 "
                         f"{s['f1']:.2f}, loss {s['loss']:.4f}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    summary = f"- median over {args.repeats}: merged {statistics.median(merged_s):.2f} s per question scoring"
    if attached_s:
        summary += f", peft attached {statistics.median(attached_s):.2f} s"
    lines.append(summary)
    command = "python benchmarks/eval_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("# `hpctl eval` speed (grasp_lora)\n\nOne entry per command; written by "
                       "`benchmarks/eval_speed.py`.\n")
    with out.open("a", encoding="utf-8") as fh:
        fh.write(f"\n`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
