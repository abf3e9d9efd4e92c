"""The ``grasp_lora`` plugin: GRASP LoRA's global prune ratio, learned online.

A frozen causal LM (default Gemma 3 270M, offline from PyPI) gets a *source* LoRA adapter
trained on English task data and a *target* adapter trained on a small Arabic or Chinese
set; the two are merged (exactly: the deltas add up) and the merged adapter is pruned by
global magnitude at a ratio the controller learns while the merged adapter is fine-tuned
on the target data. The final phase repeats that fine-tune once at the learned ratio and
reports test metrics (EM/F1 for XQuAD/MLQA; ROUGE-1/2/L, BLEU-4 and a semantic F1 for
XL-Sum), next to the target-only baseline. Every adapter the run makes is saved in peft
format (``final_adapter``, ``target_only_adapter``, ``source_adapter``, ``target_adapter``;
``final_adapter`` is an ordinary-rank LoRA within ``--export-tolerance`` of the exact pruned
adapter, which is saved beside it as ``final_delta.safetensors``) and ``hpctl eval --adapter``
scores any of them on any file (``final``: the exact delta). Adapters of ``gemma3-270m`` name
``google/gemma-3-270m`` as their base model (loadable offline here: :func:`.backbone.adapter_base`).
See :mod:`.task` for the phases, :mod:`.lora` for the adapters and
their merge, :mod:`hpctl.integrations.pruner` for the global pruning, :mod:`.backbone` for loading and
:mod:`.lm` for the fast label-only loss::

    hpctl run grasp_lora --preset smoke            # tiny random model, whole pipeline in seconds
    hpctl run grasp_lora --task xquad --lang ar     # Gemma 3 270M, ~9 min on 2 CPU cores
    hpctl eval RUN_DIR --data xquad.ar.json         # score the saved final adapter on any file
    hpctl eval RUN_DIR --data xquad.ar.json --adapter target_only   # or the baseline's

Presets fill every option left unset: ``smoke`` (tiny backbone and data: the whole
pipeline, for tests), ``default`` (Gemma 3 270M sized for about 9 minutes on two CPU
cores, about 9 including the first-time model caching) and ``full`` (:mod:`.corpora`'s
default split sizes and longer training; hours on a CPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpctl.errors import ConfigError, DataError
from hpctl.plugins.grasp_lora.backbone import AUTO_DTYPE, DTYPES, auto_dtype, resolve_dtype
from hpctl.plugins.grasp_lora.corpora import LANGS, TASKS, SplitSizes, check_lang, check_max_chars, check_task
from hpctl.plugins.grasp_lora.lora import GROUPS, MERGE_RULES, LoraSpec, merge_weights, parse_merge_weights, parse_targets
from hpctl.plugins.grasp_lora.outputs import ADAPTER_FOLDERS, DELTA_FILE, saved_adapters
from hpctl.plugins.grasp_lora.task import GraspTask
from hpctl.task import Plugin

__all__ = ["GraspLoraConfig", "GraspLoraPlugin", "GraspTask", "PRESETS", "resolve_config"]

PRESET_NAMES = ("smoke", "default", "full")
#: what a probe may score: the answer loss, or a generation metric of the task (the keys of compute_metrics)
QA_PROBE_METRICS = ("exact_match", "f1")
SUMMARY_PROBE_METRICS = ("rouge1", "rouge2", "rougeL", "bleu4", "semantic_f1")
PROBE_METRICS = ("loss", *QA_PROBE_METRICS, *SUMMARY_PROBE_METRICS)
# choices are spelled with underscores throughout (as --merge target_only, the metric keys and
# the adapter names are); the older hyphenated 'per-group' / 'target-only' are not accepted
KNOBS = ("global", "per_group")
PROBE_FROM = ("state", "start")
BASELINES = ("none", "target_only")
#: what ``hpctl eval --adapter`` scores (the folders are in :data:`.outputs.ADAPTER_FOLDERS`)
EVAL_ADAPTERS = tuple(ADAPTER_FOLDERS)
#: options that must be >= 1 / >= 0 when set
POSITIVE = ("steps", "controller_steps", "batch_size", "eval_batch_size", "max_len", "max_target_len",
            "max_new_tokens", "mask_every", "lora_r")
NON_NEGATIVE = ("source_steps", "target_steps", "export_rank", "probe_steps", "warmup_steps")

#: values a preset gives the options the user left unset (None)
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="tiny", source_train=8, target_train=8, micro_dev=4, dev=4, test=4,
                  steps=4, source_steps=2, target_steps=2, lr=1e-3, adapter_lr=1e-3, lora_r=4,
                  batch_size=2, eval_batch_size=4, max_len=160, max_target_len=12, max_new_tokens=6,
                  max_context_chars=300, baseline="target_only", dtype="float32"),
    "default": dict(backbone="gemma3-270m", source_train=96, target_train=192, micro_dev=48, dev=16, test=48,
                    steps=24, source_steps=24, target_steps=16, lr=5e-4, adapter_lr=5e-4, lora_r=8,
                    batch_size=4, eval_batch_size=8, max_len=320, max_target_len=24, max_new_tokens=16,
                    max_context_chars=700, baseline="target_only", dtype=AUTO_DTYPE),
    "full": dict(backbone="gemma3-270m", source_train=256, target_train=64, micro_dev=32, dev=64, test=128,
                 steps=120, source_steps=200, target_steps=100, lr=2e-4, adapter_lr=2e-4, lora_r=8,
                 batch_size=4, eval_batch_size=8, max_len=512, max_target_len=32, max_new_tokens=24,
                 max_context_chars=1200, baseline="target_only", dtype=AUTO_DTYPE),
}
#: per-task changes on top of a preset (summaries are longer than answers)
TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "xlsum": {"max_target_len": 64, "max_new_tokens": 48},
}


@dataclass
class GraspLoraConfig:
    """Options of ``hpctl run grasp_lora`` (None = filled in by the preset)."""

    task: str = field(default="xquad", metadata={"help": "task data", "choices": list(TASKS)})
    lang: str = field(default="ar", metadata={"help": "target language", "choices": list(LANGS)})
    preset: str = field(default="default", metadata={
        "help": "sizes for unset options: smoke (tiny model, seconds), default (Gemma 3 270M, ~9 min on "
                "2 CPU cores), full (paper-like sizes, hours)", "choices": list(PRESET_NAMES)})
    backbone: str | None = field(default=None, metadata={
        "help": "frozen backbone: gemma3-270m (offline, from PyPI), tiny (random test model), a .gguf file, "
                "a local model folder or a hub id (preset: tiny for smoke, else gemma3-270m)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "task data folder (default: the shipped XQuAD subset; $HPCTL_MLQA_DIR / $HPCTL_XLSUM_DIR)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "where the dequantised backbone is cached (default $HPCTL_CACHE or ~/.cache/hpctl)"})
    device: str = field(default="cpu", metadata={
        "help": "where the backbone and adapters run: cpu, cuda, cuda:N (one GPU) or mps; checked before "
                "anything loads"})
    dtype: str | None = field(default=None, metadata={
        "help": "dtype of the frozen backbone; auto: bfloat16 where the device computes it in hardware (a CPU "
                "with AVX512-BF16 or AMX, a CUDA GPU), else float32, resolved once and recorded in the run's "
                "config; the LoRA factors, their AdamW state and the loss stay float32",
        "choices": [*DTYPES, AUTO_DTYPE]})
    p_min: float = field(default=0.0, metadata={"help": "lowest prune ratio the controller may pick"})
    p_max: float = field(default=0.9, metadata={"help": "highest prune ratio the controller may pick"})
    start_ratio: float | None = field(default=None, metadata={
        "help": "prune ratio training starts at (default: the middle of [p-min, p-max])"})
    knob: str = field(default="global", metadata={
        "help": "one global ratio, or one ratio per module group (attn, mlp)", "choices": list(KNOBS)})
    merge: str = field(default="sum", metadata={
        "help": "how the source and target adapters merge (exact in every case): sum of deltas, mean, "
                "weighted (see --merge-weights), target_only, source_only", "choices": list(MERGE_RULES)})
    merge_weights: str | None = field(default=None, metadata={
        "help": "weights of source,target for --merge weighted, e.g. '0.3,1.0'"})
    targets: str | None = field(default=None, metadata={
        "help": "LoRA target modules: attn (q/k/v/o), mlp (gate/up/down), attn+mlp or a comma list "
                "(default attn; attn+mlp for --knob per_group)"})
    lora_r: int | None = field(default=None, metadata={"help": "rank of the source and target adapters"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout while training the adapters"})
    steps: int | None = field(default=None, metadata={
        "help": "optimizer steps of a fine-tune: the final run, each grid point, the target-only baseline"})
    controller_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps of the controller run, the probes interleaved (default: a quarter of "
                "--steps, at least 4; the paper's 3.9x-7.45x speed-ups over an 8-point grid imply a "
                "controller run shorter than a fine-tune)"})
    warmup_steps: int = field(default=0, metadata={
        "help": "steps of the controller run trained at the start ratio before its first probe round, so no probe "
                "scores the untrained merge; the rounds share the other controller steps. At the regret scale 16 "
                "and 48 did not fix the learned ratio (issue 12, benchmarks/results/probe_levers.md)"})
    controller_lr: float | None = field(default=None, metadata={
        "help": "AdamW learning rate of the controller run (default: --lr, which every fine-tune uses)"})
    source_steps: int | None = field(default=None, metadata={"help": "steps training the source adapter"})
    target_steps: int | None = field(default=None, metadata={"help": "steps training the target adapter"})
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate of the merged adapter"})
    adapter_lr: float | None = field(default=None, metadata={
        "help": "AdamW learning rate of the source and target adapters"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0: none)"})
    batch_size: int | None = field(default=None, metadata={"help": "training batch size (examples)"})
    eval_batch_size: int | None = field(default=None, metadata={"help": "batch size of probes and generation"})
    max_len: int | None = field(default=None, metadata={"help": "max tokens per example (prompts cut from the left)"})
    max_target_len: int | None = field(default=None, metadata={"help": "max target tokens trained per example"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "greedy generation length at evaluation"})
    max_context_chars: int | None = field(default=None, metadata={"help": "QA context / article window in characters"})
    source_train: int | None = field(default=None, metadata={"help": "English source training examples"})
    target_train: int | None = field(default=None, metadata={"help": "target-language training examples"})
    micro_dev: int | None = field(default=None, metadata={"help": "micro-dev examples the probes score"})
    dev: int | None = field(default=None, metadata={"help": "dev examples (grid-search points are chosen on it)"})
    test: int | None = field(default=None, metadata={"help": "test examples"})
    data_seed: int = field(default=0, metadata={"help": "seed of the article split (fixed across run seeds)"})
    probe_metric: str = field(default="loss", metadata={
        "help": "what a probe scores: minus the micro-dev answer loss (fast), or a generation metric of the "
                "task: exact_match, f1 (QA); rouge1, rouge2, rougeL, bleu4, semantic_f1 (xlsum)",
        "choices": list(PROBE_METRICS)})
    probe_steps: int = field(default=0, metadata={
        "help": "look-ahead probes: fine-tune this many steps at the candidate's ratio from the probe state "
                "(then restore it) before scoring; 0 scores the state as it is (the paper). Each probe then "
                "costs this many training steps more; on the default preset 4 did not help (issue 12, "
                "benchmarks/results/ratio_landscape_default.md)"})
    probe_from: str = field(default="state", metadata={
        "help": "where a look-ahead probe (--probe-steps K) starts: the controller run's state (its optimizer and "
                "data order), or the merged start with a fine-tune's optimizer and data order, so the probe scores "
                "the first K steps of that ratio's own fine-tune; at the regret scale K=8 still favoured pruning "
                "(issue 12, benchmarks/results/probe_levers.md)",
        "choices": list(PROBE_FROM)})
    mask_every: int = field(default=4, metadata={
        "help": "recompute the training masks from the adapter's magnitudes every this many steps (and at "
                "the start of every controller round); 1 costs ~4 percent more time per step on Gemma 3 270M"})
    source_adapter: str | None = field(default=None, metadata={
        "help": "peft adapter folder to use as the source adapter instead of training one"})
    target_adapter: str | None = field(default=None, metadata={
        "help": "peft adapter folder to use as the target adapter instead of training one"})
    baseline: str | None = field(default=None, metadata={
        "help": "also run the target-only baseline in the final phase (preset: target_only)",
        "choices": list(BASELINES)})
    export_rank: int = field(default=0, metadata={
        "help": "rank of the saved final_adapter (a truncated SVD of the pruned delta per module): 0 = the "
                "smallest of lora_r, 2 lora_r, 4 lora_r, ... (6 rungs) whose dev loss is within --export-tolerance "
                "of the exact pruned adapter's; k = rank k. The exact pruned delta is saved beside it "
                "(final_delta.safetensors), and hpctl eval scores that"})
    export_tolerance: float = field(default=0.005, metadata={
        "help": "how much higher (relative) the final_adapter's dev loss may be than the exact pruned "
                "adapter's when --export-rank 0 chooses its rank (0.005 = 0.5 percent)"})

    def __post_init__(self) -> None:
        """Check every option that is set (None: the preset fills it in); a one-line ConfigError.

        Runs on the config as given and again on :func:`resolve_config`'s filled-in copy, so
        the task gets a valid config and checks nothing itself. Only whether ``device`` is
        available on this machine is left to where it is used (the task, ``hpctl eval``): a
        config is also read back on other machines.
        """
        check_task(self.task)
        check_lang(self.lang)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESET_NAMES)})")
        if self.dtype is not None and self.dtype != AUTO_DTYPE:
            resolve_dtype(self.dtype)
        if not 0.0 <= self.p_min < self.p_max < 1.0:
            raise ConfigError(f"prune ratio bounds must satisfy 0 <= p_min < p_max < 1, "
                              f"got p_min={self.p_min}, p_max={self.p_max}")
        if self.probe_from not in PROBE_FROM:
            raise ConfigError(f"unknown probe-from {self.probe_from!r} (choose from {', '.join(PROBE_FROM)})")
        if self.probe_from == "start" and not int(self.probe_steps):
            raise ConfigError("probe-from 'start' needs --probe-steps K > 0: a probe of the merged start "
                              "untrained scores every candidate from the same weights")
        if self.knob not in KNOBS:
            raise ConfigError(f"unknown knob {self.knob!r} (choose from {', '.join(KNOBS)})")
        merge_weights(self.merge, parse_merge_weights(self.merge_weights))
        self._check_probe_metric()
        self._check_counts()
        if self.controller_steps is not None and int(self.warmup_steps) >= int(self.controller_steps):
            raise ConfigError(f"warmup-steps ({self.warmup_steps}) must be below controller-steps "
                              f"({self.controller_steps}): the probe rounds need steps too")
        for name in ("lr", "adapter_lr", "controller_lr"):
            value = getattr(self, name)
            if value is not None and not (float(value) > 0 and math.isfinite(float(value))):
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if not (math.isfinite(float(self.export_tolerance)) and float(self.export_tolerance) >= 0):
            raise ConfigError(f"export-tolerance must be >= 0 (a relative loss increase), got {self.export_tolerance}")
        for name in ("weight_decay", "grad_clip"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ConfigError(f"unknown baseline {self.baseline!r} (choose from {', '.join(BASELINES)})")
        check_max_chars(self.max_context_chars)
        if self.targets is not None:
            targets = parse_targets(self.targets)
            if self.knob == "per_group":
                for group, names in GROUPS.items():
                    if not set(names) & set(targets):
                        raise ConfigError(f"knob 'per_group' needs {group} modules among the LoRA targets "
                                          f"(got {','.join(targets)}; use --targets attn+mlp)")
        if None not in (self.lora_r, self.lora_alpha, self.targets):
            self.lora_spec()

    def _check_probe_metric(self) -> None:
        if self.probe_metric not in PROBE_METRICS:
            raise ConfigError(f"unknown probe metric {self.probe_metric!r} (choose from {', '.join(PROBE_METRICS)})")
        fits = SUMMARY_PROBE_METRICS if self.task == "xlsum" else QA_PROBE_METRICS
        if self.probe_metric != "loss" and self.probe_metric not in fits:
            raise ConfigError(f"probe metric {self.probe_metric!r} is not a {self.task} metric "
                              f"(choose from loss, {', '.join(fits)})")

    def _check_counts(self) -> None:
        for names, least in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
            for name in names:
                value = getattr(self, name)
                if value is not None and int(value) < least:
                    raise ConfigError(f"{name.replace('_', '-')} must be >= {least}, got {value}")
        if None not in (self.max_len, self.max_target_len, self.max_new_tokens) and (
                self.max_target_len >= self.max_len or self.max_new_tokens >= self.max_len):
            raise ConfigError(f"max-len ({self.max_len}) must exceed max-target-len ({self.max_target_len}) "
                              f"and max-new-tokens ({self.max_new_tokens})")
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(SplitSizes)}
        if None not in sizes.values():
            SplitSizes(**sizes).validate()

    def lora_spec(self) -> LoraSpec:
        """The shape of the source and target adapters (needs ``lora_r``, ``lora_alpha``, ``targets`` set)."""
        return LoraSpec(r=int(self.lora_r), alpha=float(self.lora_alpha), targets=parse_targets(self.targets),
                        dropout=float(self.lora_dropout))


def resolve_config(config: GraspLoraConfig) -> GraspLoraConfig:
    """A copy with every unset option filled in from the preset (and the task's overrides)."""
    fill = dict(PRESETS[config.preset])
    fill.update(TASK_OVERRIDES.get(config.task, {}))
    values = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if v is None and f.name in fill:
            v = fill[f.name]
        values[f.name] = v
    if values["dtype"] == AUTO_DTYPE:  # every preset sets a dtype; the run's config records what ran
        values["dtype"] = auto_dtype(values["device"])
    if values["lora_alpha"] is None:
        values["lora_alpha"] = 2.0 * float(values["lora_r"])
    if values["targets"] is None:
        values["targets"] = "attn+mlp" if values["knob"] == "per_group" else "attn"
    if values["controller_steps"] is None and values["steps"] is not None:
        values["controller_steps"] = min(int(values["steps"]), max(4, int(values["steps"]) // 4))
    if values["start_ratio"] is None:
        values["start_ratio"] = 0.5 * (float(values["p_min"]) + float(values["p_max"]))
    return GraspLoraConfig(**values)


class GraspLoraPlugin(Plugin):
    name = "grasp_lora"
    description = ("GRASP LoRA: learn the global prune ratio of merged source+target LoRA adapters "
                   "(Gemma 3 270M offline; XQuAD/MLQA/XL-Sum, Arabic/Chinese)")
    Config = GraspLoraConfig
    default_controller = "grpo"
    #: 4 rounds of 4 candidates + 1 baseline probe
    default_budget = 20
    default_group_size = 4
    primary_metric = "score"
    #: the paper's grid baseline: every grid point is one full merge-and-prune fine-tune, chosen on dev
    controller_defaults = {"grid": {"full_runs": True}}
    preset_defaults = PRESETS["default"]

    def env_kwargs(self, config: GraspLoraConfig) -> dict[str, Any]:
        return {"warmup_steps": int(config.warmup_steps)}

    def make_task(self, config: GraspLoraConfig, *, seed: int, out_dir: Path,
                  backbone: tuple[Any, Any, str] | None = None) -> GraspTask:
        return GraspTask(resolve_config(config), seed=seed, out_dir=out_dir, backbone=backbone)

    def eval_run(self, run_dir: Path, config: GraspLoraConfig, *, data: str, lang: str | None = None,
                 adapter: str = "final") -> dict[str, Any]:
        """Score one of the run's saved adapters on a data file (SQuAD JSON or XL-Sum JSON lines).

        ``adapter``: ``final`` (the pruned merged adapter), ``target_only`` (the baseline's),
        ``source`` or ``target`` (:data:`EVAL_ADAPTERS`). ``final`` is scored with the run's exact
        pruned delta (``final_delta.safetensors``, the weights the run tested with), not the compact
        ``final_adapter`` LoRA. Encoded and scored exactly as the task
        scores a split (:func:`.splits.encode_split`, :func:`.splits.split_metrics`), on the run's
        ``device`` in its ``dtype``, with the adapter merged into copies of the adapted weights
        (:func:`hpctl.integrations.delta.merged_into_copies`: one matmul per layer). A progress bar
        (plain lines when stderr is not a terminal)
        follows generation and the loss pass. Returns the metrics (XL-Sum: with the semantic F1
        and ``semantic_f1_encoder`` naming its encoder), ``examples``, ``seconds_per_example`` and
        the wall seconds per example of generation and of the loss pass.
        """
        import time

        from hpctl.plugins.grasp_lora.backbone import load_backbone, resolve_device, resolve_dtype
        from hpctl.plugins.grasp_lora.corpora import read_examples
        from hpctl.integrations.delta import merged_into_copies
        from hpctl.integrations.peft_export import load_pruned_delta
        from hpctl.plugins.grasp_lora.lm import embed_texts
        from hpctl.plugins.grasp_lora.lora import load_lora, lora_factors, unload_lora
        from hpctl.plugins.grasp_lora.progress import eval_progress
        from hpctl.plugins.grasp_lora.splits import encode_split, split_metrics
        from hpctl.plugins.grasp_lora.outputs import encoder_name

        if adapter not in ADAPTER_FOLDERS:
            raise ConfigError(f"unknown adapter {adapter!r} (choose from {', '.join(ADAPTER_FOLDERS)})")
        cfg = resolve_config(config)
        dtype, device = resolve_dtype(cfg.dtype), resolve_device(cfg.device)  # before anything loads
        run_dir = Path(run_dir)
        adapter_dir = run_dir / ADAPTER_FOLDERS[adapter]
        if not (adapter_dir / "adapter_config.json").is_file():
            saved = list(saved_adapters(run_dir))
            raise ConfigError(f"{str(run_dir)!r} has no {adapter} adapter ({ADAPTER_FOLDERS[adapter]}/adapter_config.json"
                              f"); saved: {', '.join(saved) if saved else 'none (did the run finish?)'}")
        lang = lang or cfg.lang
        examples = read_examples(cfg.task, data, lang, max_context_chars=cfg.max_context_chars)
        if not examples:
            raise DataError(f"{data}: no examples")
        model, tok, name = load_backbone(cfg.backbone, cache_dir=cfg.cache_dir, dtype=dtype, device=device)
        masks = None
        if adapter == "final" and (run_dir / DELTA_FILE).is_file():  # the exact pruned delta the run tested
            exact = load_pruned_delta(run_dir / DELTA_FILE)
            factors = {n: fac for n, (fac, _, _) in exact.items()}
            masks = {n: keep for n, (_, keep, _) in exact.items()}
        else:
            peft_model = load_lora(model, adapter_dir, adapter)
            factors = lora_factors(peft_model, adapter)
            model = unload_lora(peft_model)  # the plain backbone again: the factors run merged below
            del peft_model
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        split = encode_split(tok, examples, cfg, pad)
        t0 = time.perf_counter()
        stages: dict[str, list[float]] = {}  # stage -> [start, last update] (wall clock)
        with merged_into_copies(model, factors, masks) as installed, eval_progress(f"{adapter} adapter") as bar:
            def progress(stage: str, done: int, total: int) -> None:
                stages.setdefault(stage, [time.perf_counter(), 0.0])[1] = time.perf_counter()
                bar(stage, done, total)

            def embed(texts: list[str]):
                with installed.suspended():  # the semantic F1's encoder: the backbone without the adapter
                    return embed_texts(model, tok, texts, batch_size=int(cfg.eval_batch_size))

            metrics: dict[str, Any] = dict(split_metrics(model, tok, split, cfg, lang,
                                                         encoder=(encoder_name(name), embed),
                                                         progress=progress)[0])
        metrics["examples"] = float(len(examples))
        metrics["seconds_per_example"] = (time.perf_counter() - t0) / len(examples)
        for stage, (start, end) in stages.items():  # generate_seconds_per_example, loss_seconds_per_example
            metrics[f"{stage}_seconds_per_example"] = (end - start) / len(examples)
        if cfg.task == "xlsum":
            metrics["semantic_f1_encoder"] = encoder_name(name)
        return metrics
