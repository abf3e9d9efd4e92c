"""The ``backbone_prune`` plugin: how far to prune the frozen backbone while a LoRA adapter recovers.

The knob is the unstructured sparsity of the backbone's linear layers inside its transformer
blocks (attention and MLP projections; never the embeddings or the LM head): one global value
(``--knob global``) or one per module group (``--knob per_group``: attention, MLP). The weights
pruned at a sparsity come from scores computed once on the dense backbone (``--score
magnitude``: ``|W|``; ``--score wanda``: ``|W|`` times the L2 norm of the layer's input
channel over ``--calibration`` target-train examples), ranked within each output row
(``--ranking row``, Wanda's comparison group, the default) or over a whole group (``--ranking
global``); see :mod:`.masks`. A LoRA adapter trains on the target data (XQuAD Arabic by
default, grasp_lora's splits) on the backbone pruned at the committed sparsity; each round the
controller probes sparsities on the micro-dev split at the current state; the final phase
prunes to the learned sparsity and fine-tunes a fresh adapter for ``--steps`` steps (the
recovery), next to the dense baseline: the same adapter training on the unpruned backbone.

The objective (``--objective tolerance``, the default; :mod:`.objective`) is the sparsest
backbone whose loss stays within ``--tolerance`` of the dense backbone with the same adapter
training, as a reward every controller can use::

    reward(s) = s - penalty * max(0, L(s) / L_ref - 1 - tolerance) / tolerance

``s`` is the achieved fraction of block-linear weights pruned, ``L(s)`` the adapter's mean
answer-token loss on the backbone pruned at ``s``, ``L_ref`` the dense reference's loss after
as many training steps on the same examples (micro-dev for probes, dev for grid points and the
final ``dev_reward``, test for ``reward``), and ``penalty`` (``--penalty``, default 1) the
sparsity a whole tolerance of excess loss costs. Inside the tolerance the reward is the sparsity;
past it the reward falls, so the optimum is the interior sparsity where the loss reaches the
tolerance. ``--objective price`` drops the free zone: ``s - penalty * (L/L_ref - 1) / tolerance``.

::

    hpctl run backbone_prune --preset smoke          # tiny random backbone, the whole pipeline in seconds
    hpctl run backbone_prune                         # Gemma 3 270M, XQuAD Arabic
    hpctl run backbone_prune --score wanda --knob per_group --tolerance 0.1
    hpctl eval RUN_DIR --data xquad.ar.json          # the pruned backbone with its adapter, on any file
    hpctl eval RUN_DIR --data xquad.ar.json --adapter dense   # the dense baseline

Presets fill every option left unset: ``smoke`` (tiny backbone and data), ``default`` (Gemma 3
270M with grasp_lora's default splits, sized for under 10 minutes on two CPU cores once the
backbone is cached) and ``full`` (longer training, larger splits).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpctl.errors import ConfigError, DataError
from hpctl.plugins.backbone_prune.masks import RANKINGS, SCORES
from hpctl.plugins.backbone_prune.objective import OBJECTIVES, Objective
from hpctl.plugins.backbone_prune.outputs import ADAPTER_FOLDERS, MASKS_FILE
from hpctl.plugins.backbone_prune.task import BackbonePruneTask
from hpctl.plugins.grasp_lora.backbone import AUTO_DTYPE, DTYPES, auto_dtype, resolve_dtype
from hpctl.plugins.grasp_lora.corpora import LANGS, TASKS, check_lang, check_max_chars, check_task
from hpctl.plugins.grasp_lora.lora import parse_targets
from hpctl.task import Plugin

__all__ = ["BackbonePruneConfig", "BackbonePrunePlugin", "BackbonePruneTask", "PRESETS", "resolve_config"]

PRESET_NAMES = ("smoke", "default", "full")
KNOBS = ("global", "per_group")
#: options that must be >= 1 / >= 0 when set
POSITIVE = ("steps", "controller_steps", "batch_size", "eval_batch_size", "max_len", "max_target_len",
            "max_new_tokens", "lora_r", "calibration", "target_train", "micro_dev", "test", "threads")
NON_NEGATIVE = ("dev",)

#: values a preset gives the options the user left unset (None). The default preset's test and dev splits are
#: grasp_lora's (allocated first, they do not depend on the later sizes); its micro-dev is 16 questions, not 48:
#: a probe's forward is the run's largest cost (63 CPU-seconds per probe at 48 on Gemma 3 270M in bfloat16, 2 cores)
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(backbone="tiny", target_train=8, micro_dev=4, dev=4, test=4, steps=4, controller_steps=4,
                  lr=1e-3, lora_r=4, batch_size=2, eval_batch_size=4, max_len=160, max_target_len=12,
                  max_new_tokens=6, max_context_chars=300, calibration=4, dtype="float32", threads=1),
    "default": dict(backbone="gemma3-270m", target_train=192, micro_dev=16, dev=16, test=48, steps=12,
                    controller_steps=6, lr=5e-4, lora_r=8, batch_size=4, eval_batch_size=8, max_len=320,
                    max_target_len=24, max_new_tokens=16, max_context_chars=700, calibration=16, dtype=AUTO_DTYPE),
    "full": dict(backbone="gemma3-270m", target_train=256, micro_dev=32, dev=64, test=128, steps=64,
                 controller_steps=32, lr=2e-4, lora_r=8, batch_size=4, eval_batch_size=8, max_len=512,
                 max_target_len=32, max_new_tokens=24, max_context_chars=1200, calibration=64, dtype=AUTO_DTYPE),
}


@dataclass
class BackbonePruneConfig:
    """Options of ``hpctl run backbone_prune`` (None = filled in by the preset)."""

    task: str = field(default="xquad", metadata={"help": "task data", "choices": list(TASKS)})
    lang: str = field(default="ar", metadata={"help": "target language", "choices": list(LANGS)})
    preset: str = field(default="default", metadata={
        "help": "sizes for unset options: smoke (tiny model, seconds), default (Gemma 3 270M, minutes on a CPU "
                "with the backbone cached), full (longer, larger splits)", "choices": list(PRESET_NAMES)})
    backbone: str | None = field(default=None, metadata={
        "help": "frozen backbone: gemma3-270m (offline, from PyPI), tiny (random test model), a .gguf file, "
                "a local model folder or a hub id (preset: tiny for smoke, else gemma3-270m)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "task data folder (default: the shipped XQuAD subset; $HPCTL_MLQA_DIR / $HPCTL_XLSUM_DIR)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "where the dequantised backbone is cached (default $HPCTL_CACHE or ~/.cache/hpctl)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or mps; checked before anything loads"})
    dtype: str | None = field(default=None, metadata={
        "help": "dtype of the frozen backbone; auto: bfloat16 where the device computes it in hardware, else "
                "float32 (the adapter, its AdamW state and the loss stay float32)",
        "choices": [*DTYPES, AUTO_DTYPE]})
    knob: str = field(default="global", metadata={
        "help": "one sparsity for every block linear, or one per module group (attn, mlp)", "choices": list(KNOBS)})
    score: str = field(default="magnitude", metadata={
        "help": "pruning score: magnitude |W|, or wanda |W| x the input channel's L2 norm over --calibration "
                "examples", "choices": list(SCORES)})
    ranking: str = field(default="row", metadata={
        "help": "where scores compete: within each output row (every layer at the same sparsity; Wanda's "
                "choice), or over the whole group (layers end up with different sparsities)",
        "choices": list(RANKINGS)})
    calibration: int | None = field(default=None, metadata={
        "help": "target-train examples whose activations give Wanda's input norms"})
    objective: str = field(default="tolerance", metadata={
        "help": "the reward: tolerance = s - penalty*max(0, L/L_ref - 1 - tol)/tol (the sparsest backbone within "
                "the tolerance), price = s - penalty*(L/L_ref - 1)/tol", "choices": list(OBJECTIVES)})
    tolerance: float = field(default=0.05, metadata={
        "help": "relative loss increase over the dense backbone (same adapter training) that is tolerated, "
                "e.g. 0.05 = 5 percent"})
    penalty: float = field(default=1.0, metadata={
        "help": "sparsity a whole tolerance of excess loss costs in the reward"})
    min_sparsity: float = field(default=0.0, metadata={"help": "lowest sparsity the controller may pick"})
    max_sparsity: float = field(default=0.9, metadata={"help": "highest sparsity the controller may pick (< 1)"})
    start_sparsity: float | None = field(default=None, metadata={
        "help": "sparsity training starts at (default: the middle of [min-sparsity, max-sparsity])"})
    targets: str = field(default="attn+mlp", metadata={
        "help": "LoRA target modules: attn (q/k/v/o), mlp (gate/up/down), attn+mlp or a comma list"})
    lora_r: int | None = field(default=None, metadata={"help": "LoRA rank"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)"})
    steps: int | None = field(default=None, metadata={
        "help": "AdamW steps of a fine-tune: the recovery, the dense baseline, each grid point"})
    controller_steps: int | None = field(default=None, metadata={
        "help": "AdamW steps of the controller run (the first steps of the same recipe), probes interleaved"})
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate of the adapter"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip (0: none)"})
    batch_size: int | None = field(default=None, metadata={"help": "training batch size (examples)"})
    eval_batch_size: int | None = field(default=None, metadata={"help": "batch size of probes and generation"})
    max_len: int | None = field(default=None, metadata={"help": "max tokens per example (prompts cut from the left)"})
    max_target_len: int | None = field(default=None, metadata={"help": "max target tokens trained per example"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "greedy generation length at evaluation"})
    max_context_chars: int | None = field(default=None, metadata={"help": "QA context / article window in characters"})
    target_train: int | None = field(default=None, metadata={"help": "target-language training examples"})
    micro_dev: int | None = field(default=None, metadata={"help": "micro-dev examples the probes score"})
    dev: int | None = field(default=None, metadata={"help": "dev examples (grid points and dev_reward)"})
    test: int | None = field(default=None, metadata={"help": "test examples"})
    data_seed: int = field(default=0, metadata={"help": "seed of the article split (fixed across run seeds)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch intra-op threads while the task runs (default: torch's own; the smoke preset's tiny model "
                "runs fastest on 1)"})
    generate: bool = field(default=True, metadata={
        "help": "also score greedy answers on test (exact match, F1) for the recovered and the dense adapter"})

    def __post_init__(self) -> None:
        """Check every option that is set (None: the preset fills it in); a one-line ConfigError."""
        check_task(self.task)
        check_lang(self.lang)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESET_NAMES)})")
        if self.dtype is not None and self.dtype != AUTO_DTYPE:
            resolve_dtype(self.dtype)
        for name, choices in (("knob", KNOBS), ("score", SCORES), ("ranking", RANKINGS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r} (choose from {', '.join(choices)})")
        Objective(self.objective, float(self.tolerance), float(self.penalty))  # objective, tolerance, penalty
        lo, hi = float(self.min_sparsity), float(self.max_sparsity)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi < 1.0):
            raise ConfigError(f"sparsity bounds must satisfy 0 <= min-sparsity < max-sparsity < 1, "
                              f"got min-sparsity={self.min_sparsity}, max-sparsity={self.max_sparsity}")
        if self.start_sparsity is not None and not lo <= float(self.start_sparsity) <= hi:
            raise ConfigError(f"start-sparsity {self.start_sparsity} is outside [{lo}, {hi}]")
        for names, least in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
            for name in names:
                value = getattr(self, name)
                if value is not None and int(value) < least:
                    raise ConfigError(f"{name.replace('_', '-')} must be >= {least}, got {value}")
        if None not in (self.steps, self.controller_steps) and int(self.controller_steps) > int(self.steps):
            raise ConfigError(f"controller-steps ({self.controller_steps}) must not exceed steps ({self.steps}): "
                              "the controller run is the first steps of the recovery's recipe")
        if None not in (self.max_len, self.max_target_len, self.max_new_tokens) and (
                self.max_target_len >= self.max_len or self.max_new_tokens >= self.max_len):
            raise ConfigError(f"max-len ({self.max_len}) must exceed max-target-len ({self.max_target_len}) "
                              f"and max-new-tokens ({self.max_new_tokens})")
        if self.lr is not None and not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.lora_alpha is not None and not float(self.lora_alpha) > 0:
            raise ConfigError(f"lora-alpha must be > 0, got {self.lora_alpha}")
        for name in ("weight_decay", "grad_clip"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        check_max_chars(self.max_context_chars)
        parse_targets(self.targets)


def resolve_config(config: BackbonePruneConfig) -> BackbonePruneConfig:
    """A copy with every unset option filled in from the preset."""
    fill = PRESETS[config.preset]
    values = {f.name: (fill.get(f.name) if getattr(config, f.name) is None else getattr(config, f.name))
              for f in dataclasses.fields(config)}
    if values["dtype"] == AUTO_DTYPE:
        values["dtype"] = auto_dtype(values["device"])
    if values["lora_alpha"] is None:
        values["lora_alpha"] = 2.0 * float(values["lora_r"])
    if values["start_sparsity"] is None:
        values["start_sparsity"] = 0.5 * (float(values["min_sparsity"]) + float(values["max_sparsity"]))
    values["controller_steps"] = min(int(values["controller_steps"]), int(values["steps"]))
    return BackbonePruneConfig(**values)


class BackbonePrunePlugin(Plugin):
    name = "backbone_prune"
    description = ("backbone sparsity (magnitude or Wanda) of Gemma 3 270M's block linears while a LoRA adapter "
                   "recovers; reward: the sparsest backbone within a loss tolerance of the dense one")
    Config = BackbonePruneConfig
    #: the controller its Gemma benchmark (benchmarks/results/backbone_prune.md) measures best at this
    #: budget (issue 32; tests/test_defaults.py checks it against the committed results)
    default_controller = "tpe"
    #: 4 rounds of 4 candidates + 1 baseline probe
    default_budget = 20
    default_group_size = 4
    primary_metric = "reward"
    #: a grid point is a whole recovery fine-tune, chosen on dev
    controller_defaults = {"grid": {"full_runs": True}}
    preset_defaults = PRESETS["default"]

    def make_task(self, config: BackbonePruneConfig, *, seed: int, out_dir: Path,
                  backbone: tuple[Any, Any, str] | None = None) -> BackbonePruneTask:
        return BackbonePruneTask(resolve_config(config), seed=seed, out_dir=out_dir, backbone=backbone)

    def eval_run(self, run_dir: Path, config: BackbonePruneConfig, *, data: str, lang: str | None = None,
                 adapter: str = "final") -> dict[str, Any]:
        """Score the run's pruned backbone with its adapter (``final``) or the dense baseline (``dense``).

        The backbone is loaded in the run's dtype on its device, the saved masks applied to its
        block linears (``final`` only; :mod:`.masks`, parameters never written), the adapter's
        factors installed as plain LoRA wrappers, and the file scored exactly as the task scores
        its test split (:func:`hpctl.plugins.grasp_lora.splits.split_metrics`: greedy answers'
        exact match and F1, and the mean answer loss). Returns those, ``sparsity`` (of the block
        linears), ``examples`` and ``seconds_per_example``.
        """
        import time

        import torch

        from hpctl.integrations.delta import DeltaAdapter
        from hpctl.plugins.backbone_prune.masks import block_linears, installed, load_masks
        from hpctl.plugins.grasp_lora.backbone import load_backbone, resolve_device
        from hpctl.plugins.grasp_lora.corpora import read_examples
        from hpctl.plugins.grasp_lora.lora import load_lora, lora_factors, unload_lora
        from hpctl.plugins.grasp_lora.splits import encode_split, split_metrics

        if adapter not in ADAPTER_FOLDERS:
            raise ConfigError(f"unknown adapter {adapter!r} (choose from {', '.join(ADAPTER_FOLDERS)})")
        cfg = resolve_config(config)
        dtype, device = resolve_dtype(cfg.dtype), resolve_device(cfg.device)
        run_dir = Path(run_dir)
        folder = run_dir / ADAPTER_FOLDERS[adapter]
        if not (folder / "adapter_config.json").is_file():
            raise ConfigError(f"{str(run_dir)!r} has no {adapter} adapter ({ADAPTER_FOLDERS[adapter]}/"
                              "adapter_config.json); did the run finish?")
        masks: dict[str, Any] = {}
        if adapter == "final":
            masks, _ = load_masks(run_dir / MASKS_FILE)
        lang = lang or cfg.lang
        examples = read_examples(cfg.task, data, lang, max_context_chars=cfg.max_context_chars)
        if not examples:
            raise DataError(f"{data}: no examples")
        model, tok, _ = load_backbone(cfg.backbone, cache_dir=cfg.cache_dir, dtype=dtype, device=device)
        peft_model = load_lora(model, folder, adapter)
        factors = lora_factors(peft_model, adapter)
        model = unload_lora(peft_model)
        del peft_model
        linears = block_linears(model, f"backbone {str(cfg.backbone)!r}")
        for name, m in masks.items():
            if name not in linears or tuple(linears[name].weight.shape) != tuple(m.shape):
                raise ConfigError(f"the run's masks do not fit backbone {cfg.backbone!r} (layer {name!r})")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        split = encode_split(tok, examples, cfg, pad)
        t0 = time.perf_counter()
        pruned = total = 0
        with installed(model, list(masks)) as wrappers:
            with torch.no_grad():
                for name, w in wrappers.items():
                    keep = masks[name].to(w.weight.device)
                    w.weight_override = torch.where(keep, w.weight, w.weight.new_zeros(()))
                    pruned += int((~keep).sum())
            total = sum(m.weight.numel() for m in linears.values())
            delta = DeltaAdapter(model, factors)
            try:
                metrics: dict[str, Any] = dict(split_metrics(model, tok, split, cfg, lang)[0])
            finally:
                delta.remove()
        metrics["sparsity"] = pruned / max(1, total)
        metrics["examples"] = float(len(examples))
        metrics["seconds_per_example"] = (time.perf_counter() - t0) / len(examples)
        return metrics
