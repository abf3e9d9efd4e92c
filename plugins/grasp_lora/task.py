"""GraspTask: the GRASP LoRA training loop with the global prune ratio as the knob.

Setup (lazily, on the first call that needs the model; each part is timed):

1. load the frozen backbone (:mod:`.backbone`) and the task data (:mod:`.corpora`),
   tokenised per split (:mod:`.splits`);
2. train (or load) the *source* adapter on English ``source_train`` and the *target*
   adapter on ``target_train`` with peft, saving both in peft format under ``out_dir``
   (a later run in the same ``out_dir`` with the same settings, e.g. ``--resume``, loads
   them instead of retraining; :mod:`.sources`);
3. merge them (:func:`.lora.merge_adapters`, exact for every rule) and install the
   merged adapter as dense-delta wrappers with a :class:`hpctl.integrations.pruner.GlobalMagnitudePruner`.

Then the :class:`hpctl.task.Task` protocol:

``train(steps, value)``
    AdamW steps on ``target_train`` batches through ``W + M(value) * dW``; the masks are
    recomputed from the current adapter every ``mask_every`` steps.
``probe(value)``
    minus the mean teacher-forced loss on the answer tokens of the fixed micro-dev
    batches, with the adapter masked at ``value`` (masks set, evaluated, undone in a
    ``finally``; parameters are never written). Another ``probe_metric`` (``"f1"``, ``"rougeL"``, ...) scores
    greedy generations instead.
``snapshot()``/``restore()``
    the adapter factors, the AdamW state and the data-order RNG (a few MB).
``evaluate(split, value)``
    greedy generation + :func:`.metrics.compute_metrics` (EM and F1 for QA; ROUGE-1/2/L,
    BLEU-4 and the semantic F1 for XL-Sum, its encoder the frozen backbone's last hidden
    layer, named in ``notes["metrics"]``), plus the mean loss and ``score`` (F1 for QA,
    ROUGE-L for XL-Sum).
``full_run(value)``
    a whole fine-tune from the merged start at a fixed value, then the dev score (the
    same measure as a probe, on the dev split): one grid-search point.
``finish(value)``
    the final merge-and-prune fine-tune from the merged start at the fixed learned value,
    the final adapter saved (exactly as ``final_delta.safetensors``, and as ``final_adapter``: a
    peft LoRA of the smallest rank of a short ladder whose dev loss is within
    ``export_tolerance`` of the exact one's; ``export_*`` metrics say which rank, how close
    and how many bytes), test metrics and ``dev_loss`` (the teacher-forced
    dev loss at that ratio: what a grid point is scored by, so a learned ratio's regret against
    the grid can be measured); with ``baseline="target_only"`` also the target adapter alone,
    fine-tuned for the same steps on the same batches, no merging or pruning, tested the same
    way (``target_only_*`` keys) and saved with its own factors. What lands in the run folder
    is in :mod:`.outputs`. Under ``--controller grid`` the final run *is* the chosen grid
    point's fine-tune, redone from the same start, seed and batches (bit-identical on the CPU).

Why one class of ~450 lines: every protocol method above shares the same state (the model
with its wrappers, the merged adapter, the pruner, the optimiser and the data order) and the
phase timer; the pieces without that state are already their own modules (:mod:`.lora`,
:mod:`hpctl.integrations.delta`, :mod:`hpctl.integrations.pruner`, :mod:`.training`,
:mod:`.lm`, :mod:`.splits`, :mod:`.sources`, :mod:`.outputs`). Splitting the methods further would pass that state around.

Device and dtype (``device``/``dtype``, default ``cpu``/``float32``): the config checks the
dtype's name, the constructor whether the device is available here (one-line ConfigError,
before anything loads), then the frozen backbone is loaded in ``dtype`` on ``device``. Batches are built on the CPU and moved to the model where it runs
(:mod:`.lm`); every loss is a float32 cross-entropy on upcast logits. The trainable LoRA
factors are *float32 master weights* whatever ``dtype`` is, cast to the backbone's dtype in
the forward, so AdamW steps and its state stay float32: peft keeps the source/target adapters
in float32 (``autocast_adapter_dtype``), and :class:`hpctl.integrations.delta.DeltaLinear` does the same for the
merged adapter. Snapshots hold the factors on ``device``; exported adapters are written from
CPU tensors. The ``dtype`` is part of a reused adapter's fingerprint (except float32).

Wall time per phase is in :attr:`GraspTask.phase_seconds` (merged into the run result) and
backbone passes per phase in :attr:`GraspTask.phase_passes`; both are also written to
``out_dir/grasp_phases.json`` at the end.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from hpctl.errors import ConfigError
from hpctl.integrations.delta import DeltaAdapter, merged_into_copies
from hpctl.integrations.peft_export import DELTA_FILE, TruncatedDeltas, export_lowrank, save_pruned_delta
from hpctl.integrations.pruner import GlobalMagnitudePruner
from hpctl.knob import Knob
from hpctl.plugins.grasp_lora.backbone import (
    adapter_base,
    backbone_path,
    load_backbone,
    model_device,
    resolve_device,
    resolve_dtype,
    say,
)
from hpctl.plugins.grasp_lora.lm import PassCounter, batched_loss, collate, embed_texts, greedy_generate
from hpctl.plugins.grasp_lora.lora import (
    GROUPS,
    export_peft,
    lora_factors,
    merge_adapters,
    merge_error,
    merge_weights,
    parse_merge_weights,
    unload_lora,
)
from hpctl.plugins.grasp_lora.metrics import SEMANTIC_KEY, describe_metrics
from hpctl.plugins.grasp_lora.outputs import (
    ADAPTER_FOLDERS,
    adapter_metadata,
    artifact_paths,
    encoder_name,
    saved_adapters,
    write_phases,
    write_predictions,
)
from hpctl.plugins.grasp_lora.sources import prepare_adapter
from hpctl.plugins.grasp_lora.splits import EVAL_SPLITS, Split, encode_split, primary_metric, split_metrics
from hpctl.plugins.grasp_lora.training import DataOrder, adamw_step
from hpctl.task import Task

#: rungs of the compact final adapter's rank ladder (:meth:`GraspTask.export_ladder`)
EXPORT_RUNGS = 6
#: phases long enough to get a nested MLflow run each (through ``Task.phase_listener``)
NESTED_PHASES = ("source_adapter", "target_adapter", "final_train", "target_only")


class GraspTask(Task):
    """GRASP LoRA on one task and target language; the knob is the global prune ratio.

    ``config`` is a resolved :class:`hpctl.plugins.grasp_lora.GraspLoraConfig` (no None
    left where a preset fills in). ``backbone`` optionally passes an already loaded
    ``(model, tokenizer, name)`` (tests share one); it is modified in place (wrappers)
    but its parameters are never written, and it must already be in the config's dtype on
    its device type (else ConfigError).
    """

    def __init__(self, config: Any, *, seed: int = 0, out_dir: str | Path = ".",
                 backbone: tuple[Any, Any, str] | None = None) -> None:
        self.cfg = config
        self.seed = int(seed)
        self.out_dir = Path(out_dir)
        # the config checked its values; whether the device is usable here is checked before anything loads
        self.dtype = resolve_dtype(config.dtype)
        self.device = resolve_device(config.device)
        # a hub dataset the hub cannot give (offline, unreachable, not cached) is told now, in seconds
        from hpctl.plugins.grasp_lora.corpora import check_data_source

        check_data_source(config.task, config.lang, config.data_dir)
        self.lora_spec = config.lora_spec()
        labels: tuple[str, ...] = ()
        dim = 1
        if config.knob == "per_group":
            dim, labels = 2, tuple(GROUPS)
        start = float(np.clip(config.start_ratio, config.p_min, config.p_max))
        self.knob = Knob("prune_ratio", low=float(config.p_min), high=float(config.p_max),
                         default=start if dim == 1 else (start,) * dim, dim=dim, labels=labels,
                         units="fraction of merged-adapter delta entries pruned")
        #: the controller run (the env's episode); every fine-tune (final, grid point, baseline) is ``fine_tune_steps``
        self.total_steps = int(config.controller_steps if config.controller_steps is not None else config.steps)
        self.fine_tune_steps = int(config.steps)
        self.phase_seconds: dict[str, float] = {}
        self.phase_passes: dict[str, dict[str, int]] = {}
        self.counter = PassCounter()
        self.notes: dict[str, Any] = {}
        self._given_backbone = backbone
        self._ready = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.backbone_name = ""
        self.adapter: DeltaAdapter | None = None
        self.pruner: GlobalMagnitudePruner | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.order: DataOrder | None = None
        self.steps_done = 0
        self.splits: dict[str, Split] = {}
        #: (split, predictions) of the last evaluation, for :meth:`_write_predictions`
        self._last_predictions: tuple[str, list[str]] | None = None
        #: the adapter wrappers currently on the backbone (suspended to embed texts with the plain backbone)
        self._installed: DeltaAdapter | None = None

    def describe(self) -> dict[str, Any]:
        cfg = asdict(self.cfg) if is_dataclass(self.cfg) else dict(vars(self.cfg))
        return {"config": cfg, "resolved": self.resolved_options(),
                "knob": {"name": self.knob.name, "low": self.knob.low, "high": self.knob.high,
                         "dim": self.knob.dim, "labels": list(self.knob.labels)},
                "backbone": self.backbone_name or self.cfg.backbone, **self.notes}

    def resolved_options(self) -> dict[str, Any]:
        """What the run chose for the options its config leaves unset (None), for the run's
        MLflow parameters: the data and cache folders it read, the controller run's learning
        rate, the merge's weights. An adapter folder not given (trained) stays unset."""
        from hpctl.plugins.grasp_lora.backbone import default_cache_dir
        from hpctl.plugins.grasp_lora.corpora import default_data_dir
        from hpctl.plugins.grasp_lora.readers import HUB_IDS

        c = self.cfg
        data = default_data_dir(c.task) if c.data_dir is None else c.data_dir
        weights = merge_weights(c.merge, parse_merge_weights(c.merge_weights))
        return {"data_dir": data if data is not None else f"hub:{HUB_IDS[c.task]}",
                "cache_dir": str(default_cache_dir() if c.cache_dir is None else Path(c.cache_dir).expanduser()),
                "controller_lr": c.lr if c.controller_lr is None else c.controller_lr,
                "merge_weights": ",".join(f"{side}={w:g}" for side, w in zip(("source", "target"), weights)
                                          if w is not None)}

    # ------------------------------------------------------------------ bookkeeping ----
    @contextlib.contextmanager
    def _phase(self, name: str, params: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Time ``name`` and count its passes; a nested phase (:data:`NESTED_PHASES`) also gets a
        child run through ``phase_listener`` with ``params`` (its settings)."""
        before = PassCounter(**vars(self.counter))
        t0 = time.perf_counter()
        listener = self.phase_listener if name in NESTED_PHASES else None
        if listener is not None:
            listener(name, "start", {"params": dict(params or {})})
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        finally:
            key = f"{name}_s"
            seconds = time.perf_counter() - t0
            self.phase_seconds[key] = self.phase_seconds.get(key, 0.0) + seconds
            done = {k: v - getattr(before, k) for k, v in vars(self.counter).items()}
            acc = self.phase_passes.setdefault(name, {k: 0 for k in done})
            for k, v in done.items():
                acc[k] = acc.get(k, 0) + v
            if listener is not None:
                listener(name, "end", {"seconds": seconds, "status": status, **done})

    # ------------------------------------------------------------------ setup ----------
    def prepare(self) -> None:
        """Backbone and data only: the adapters may still be in training by the run's own task."""
        if self.model is None:
            with self._phase("load"):
                self._load()

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        self.prepare()
        self._build_adapters()
        self._ready = True
        self.reset(self.seed)

    def _load(self) -> None:
        from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

        c = self.cfg
        # the data first: a data problem (a missing folder, an unreachable hub) is told in seconds,
        # before the backbone loads
        sizes = SplitSizes(source_train=int(c.source_train), target_train=int(c.target_train),
                           micro_dev=int(c.micro_dev), dev=int(c.dev), test=int(c.test))
        if c.source_adapter:
            sizes.source_train = 0
        data = load_task_data(c.task, c.lang, data_dir=c.data_dir, seed=int(c.data_seed), sizes=sizes,
                              max_context_chars=c.max_context_chars)
        if self._given_backbone is not None:
            self.model, self.tokenizer, self.backbone_name = self._given_backbone
            dtype, device = next(self.model.parameters()).dtype, model_device(self.model)
            if dtype != self.dtype or device.type != self.device.type:
                raise ConfigError(f"the given backbone is {str(dtype).replace('torch.', '')} on {device}, "
                                  f"but the config asks for {str(self.dtype).replace('torch.', '')} on {self.device}")
        else:
            self.model, self.tokenizer, self.backbone_name = load_backbone(c.backbone, cache_dir=c.cache_dir,
                                                                           dtype=self.dtype, device=self.device)
        self._backbone_params = dict(self.model.named_parameters())
        self.data = data
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for name in EVAL_SPLITS:
            self.splits[name] = self._encode(getattr(data, name))
        for name in ("target_train", "micro_dev", "test"):
            if not self.splits[name].encoded:
                raise ConfigError(f"the {name.replace('_', '-')} split is empty; raise --{name.replace('_', '-')}")
        self.notes["split_sizes"] = data.sizes()
        self.notes["split_articles"] = data.articles()

    def _encode(self, examples: Sequence[Any]) -> Split:
        return encode_split(self.tokenizer, examples, self.cfg, self.pad_id)

    def _adapter_params(self, role: str) -> dict[str, Any]:
        """The settings of the ``role`` adapter's training (its nested run's params)."""
        c = self.cfg
        given = c.source_adapter if role == "source" else c.target_adapter
        return {"role": role, "steps": int(c.source_steps if role == "source" else c.target_steps),
                "lr": float(c.adapter_lr), "batch_size": int(c.batch_size), "lora_r": int(c.lora_r),
                "lora_alpha": float(c.lora_alpha), "targets": c.targets,
                "examples": int(c.source_train if role == "source" else c.target_train),
                "weight_decay": float(c.weight_decay), "grad_clip": float(c.grad_clip), "seed": self.seed,
                "given_adapter": given or "none"}

    def _fine_tune_params(self, ratio: np.ndarray | None) -> dict[str, Any]:
        """The settings of a fine-tune (final run, target-only baseline): its nested run's params."""
        c = self.cfg
        out = {"steps": self.fine_tune_steps, "lr": float(c.lr), "batch_size": int(c.batch_size),
               "weight_decay": float(c.weight_decay), "grad_clip": float(c.grad_clip), "seed": self.seed}
        if ratio is None:  # the target adapter alone
            out.update({"adapter": "target", "lora_r": int(c.lora_r), "prune_ratio": 0.0})
        else:
            out.update({"adapter": f"merged ({c.merge})", "merged_rank": self.notes.get("merged_rank"),
                        "mask_every": int(c.mask_every), **{k if len(ratio) > 1 else "prune_ratio": v
                                                            for k, v in self.knob.to_dict(ratio).items()}})
        return out

    def _adapter(self, base: Any, role: str) -> Any:
        """The source/target adapter as peft adapter ``role`` on ``base`` (:func:`.sources.prepare_adapter`)."""
        data = self.splits["source_train" if role == "source" else "target_train"].encoded
        model, how, losses = prepare_adapter(
            base, role, self.cfg, seed=self.seed, spec=self.lora_spec, dtype=self.dtype, out_dir=self.out_dir,
            data=data, pad_id=self.pad_id, counter=self.counter,
            progress=lambda label, steps: self._progress(label, steps, phase=f"{role}_adapter"),
            base_model_name_or_path=self._adapter_base(), metadata=self._adapter_metadata(role))
        if losses:
            self.notes[f"{role}_adapter_loss"] = [round(losses[0], 4), round(float(np.mean(losses[-3:])), 4)]
        self.notes[f"{role}_adapter"] = how
        return model

    def _build_adapters(self) -> None:
        c = self.cfg
        with self._phase("source_adapter", self._adapter_params("source")):
            peft_model = self._adapter(self.model, "source")
        with self._phase("target_adapter", self._adapter_params("target")):
            peft_model = self._adapter(peft_model, "target")
        with self._phase("merge"):
            weights = parse_merge_weights(c.merge_weights)
            merge_adapters(peft_model, ["source", "target"], c.merge, weights=weights)
            merged = lora_factors(peft_model, "merged")
            source = lora_factors(peft_model, "source")
            target = lora_factors(peft_model, "target")
            self.notes["merge_check_max_abs_error"] = merge_error(merged, source, target, c.merge, weights)
            self.model = unload_lora(peft_model)
            self.target_factors = target
            self.merged_start = {k: f.clone() for k, f in merged.items()}
            self.adapter = DeltaAdapter(self.model, self.merged_start)
            self._installed = self.adapter
            groups = {g: list(t) for g, t in GROUPS.items()} if c.knob == "per_group" else None
            self.pruner = GlobalMagnitudePruner(self.adapter, groups)
            self.notes["merged_rank"] = int(next(iter(merged.values())).A.shape[0])
            self.notes["adapter_entries"] = int(sum(m.out_features * m.in_features for m in self.adapter.modules.values()))

    # ------------------------------------------------------------------ protocol -------
    def reset(self, seed: int | None = None, *, fine_tune: bool = False) -> None:
        """Back to the merged start with a fresh optimizer: the controller run's (``controller_lr``), or with
        ``fine_tune`` a fine-tune's (``lr``: a grid point, the final run)."""
        if not self._ready:
            self._ensure_ready()  # ends by calling reset(self.seed): the controller run's start
            if (seed is None or int(seed) == self.seed) and not fine_tune:
                return
        self.optimizer, self.order = self._merged_start(self.seed if seed is None else int(seed), fine_tune)
        self.steps_done = 0

    def _merged_start(self, seed: int, fine_tune: bool) -> tuple[torch.optim.Optimizer, DataOrder]:
        """Load the merged start into the adapter; a fresh optimizer (a fine-tune's with ``fine_tune``,
        else the controller run's) and data order for ``seed``, for the caller to keep or drop."""
        assert self.adapter is not None and self.pruner is not None
        start = {}
        for name, fac in self.merged_start.items():
            start[f"{name}.lora_A"], start[f"{name}.lora_B"] = fac.A, fac.B
        self.adapter.load_state_tensors(start)
        params = self.adapter.parameters()
        for p in params:
            p.requires_grad_(True)
        lr = self.cfg.lr if fine_tune or self.cfg.controller_lr is None else self.cfg.controller_lr
        optimizer = torch.optim.AdamW(params, lr=float(lr), weight_decay=float(self.cfg.weight_decay))
        order = DataOrder([len(e.ids) for e in self.splits["target_train"].encoded],
                          int(self.cfg.batch_size), seed * 1000 + 21)
        self.pruner.clear_training_masks()
        self.pruner.invalidate()
        return optimizer, order

    def _progress(self, label: str, steps: int, phase: str | None = None):
        """An ``on_step(step, loss)`` that reports about four times per phase on stderr and, for a
        nested ``phase``, logs every step's training loss to its run (``phase_listener``)."""
        every = max(1, int(steps) // 4)
        t0 = time.perf_counter()
        listener = self.phase_listener if phase in NESTED_PHASES else None

        def on_step(step: int, loss: float) -> None:
            if listener is not None:
                listener(phase, "log", {"step": step, "train_loss": float(loss)})
            if (step + 1) % every == 0 or step + 1 == steps:
                rate = (time.perf_counter() - t0) / (step + 1)
                say(f"{label}: step {step + 1}/{steps}, loss {loss:.4f} ({rate:.1f} s/step)")

        return on_step

    def _train_steps(self, steps: int, ratio: np.ndarray | None, adapter: DeltaAdapter,
                     pruner: GlobalMagnitudePruner | None, optimizer: torch.optim.Optimizer,
                     order: DataOrder, label: str | None = None, phase: str | None = None) -> float:
        params = adapter.parameters()
        data = self.splits["target_train"].encoded
        losses = []
        report = self._progress(label, steps, phase) if label else None
        try:
            for i in range(int(steps)):
                if pruner is not None and ratio is not None and i % int(self.cfg.mask_every) == 0:
                    pruner.set_training_masks(ratio)
                batch = collate([data[j] for j in order.next()], self.pad_id)
                losses.append(adamw_step(self.model, batch, optimizer, params,
                                         grad_clip=float(self.cfg.grad_clip) or None, counter=self.counter))
                if report is not None:
                    report(i, losses[-1])
        finally:
            if pruner is not None:
                pruner.clear_training_masks()
                pruner.invalidate()
        return float(np.mean(losses)) if losses else float("nan")

    def train(self, steps: int, value: np.ndarray) -> float:
        self._ensure_ready()
        ratio = self.knob.validate(value)
        with self._phase("train"):
            loss = self._train_steps(steps, ratio, self.adapter, self.pruner, self.optimizer, self.order)
        self.steps_done += int(steps)
        return loss

    def _split_loss(self, split: str) -> float:
        return batched_loss(self.model, self.splits[split].batches, self.counter)

    def _generate(self, split: str) -> list[str]:
        s = self.splits[split]
        return greedy_generate(self.model, self.tokenizer, s.prompts, max_new_tokens=int(self.cfg.max_new_tokens),
                               batch_size=int(self.cfg.eval_batch_size), counter=self.counter)

    def _score(self, split: str, value: np.ndarray) -> float:
        """The probe measure on ``split`` at ``value`` (higher is better)."""
        ratio = self.knob.validate(value)
        with torch.no_grad(), self.pruner.applied(ratio):
            if self.cfg.probe_metric == "loss":
                return -self._split_loss(split)
            from hpctl.plugins.grasp_lora.metrics import compute_metrics

            preds = self._generate(split)
            name, embed = self._encoder() if self.cfg.probe_metric == SEMANTIC_KEY else (None, None)
            scores = compute_metrics(self.cfg.task, self.cfg.lang, preds, self.splits[split].references,
                                     embed_fn=embed, encoder_name=name)
            return float(scores[self.cfg.probe_metric])

    def loss_at(self, split: str, value: np.ndarray) -> float:
        """The mean teacher-forced answer loss on ``split`` with the adapter masked at ``value``
        (nothing written; the measure of a loss probe and of a grid point, on any split)."""
        self._ensure_ready()
        if split not in EVAL_SPLITS or not self.splits[split].encoded:
            raise ConfigError(f"no {split!r} split to score (choose from a non-empty one of {', '.join(EVAL_SPLITS)})")
        with torch.no_grad(), self.pruner.applied(self.knob.validate(value)):
            return self._split_loss(split)

    def probe(self, value: np.ndarray) -> float:
        self._ensure_ready()
        with self._phase("probe"):
            steps = int(self.cfg.probe_steps)
            if not steps:
                return self._score("micro_dev", value)
            # look-ahead: the candidate's own short fine-tune, then back to this state bit for bit; from
            # this state (its optimizer and data order), or from the merged start with a fine-tune's optimizer
            # and data order (``probe_from="start"``: the first steps of that ratio's grid fine-tune, bit for bit)
            ratio = self.knob.validate(value)
            state = self.snapshot()
            try:
                if self.cfg.probe_from == "start":
                    optimizer, order = self._merged_start(self.seed, fine_tune=True)
                else:
                    optimizer, order = self.optimizer, self.order
                self._train_steps(steps, ratio, self.adapter, self.pruner, optimizer, order)
                return self._score("micro_dev", value)
            finally:
                self.restore(state)

    def snapshot(self) -> dict[str, Any]:
        self._ensure_ready()
        return {"adapter": self.adapter.state_tensors(), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "order": copy.deepcopy(self.order.state()), "steps_done": self.steps_done}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._ensure_ready()
        self.adapter.load_state_tensors(state["adapter"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.order.set_state(copy.deepcopy(state["order"]))
        self.steps_done = int(state["steps_done"])
        self.pruner.invalidate()

    def _encoder(self) -> tuple[str, Any]:
        """The semantic F1's encoder: the frozen backbone's last hidden layer, with no adapter installed."""
        def embed(texts: list[str]) -> list[torch.Tensor]:
            with self._installed.suspended() if self._installed is not None else contextlib.nullcontext():
                return embed_texts(self.model, self.tokenizer, texts, batch_size=int(self.cfg.eval_batch_size))

        return encoder_name(self.backbone_name), embed

    def _metrics(self, split: str) -> tuple[dict[str, float], list[str]]:
        s = self.splits[split]
        if not s.encoded:
            raise ConfigError(f"the {split} split is empty; raise --{split.replace('_', '-')}")
        scores, preds = split_metrics(self.model, self.tokenizer, s, self.cfg, self.cfg.lang, self.counter,
                                      encoder=self._encoder())
        scores["score"] = float(scores[primary_metric(self.cfg.task)])
        return scores, preds

    def evaluate(self, split: str, value: np.ndarray) -> dict[str, float]:
        """Generation metrics, mean loss and ``score`` on ``split`` with the adapter masked at ``value``."""
        self._ensure_ready()
        if split not in EVAL_SPLITS:
            raise ConfigError(f"unknown split {split!r} (choose from {', '.join(EVAL_SPLITS)})")
        ratio = self.knob.validate(value)
        with self._phase(f"eval_{split}"), torch.no_grad(), self.pruner.applied(ratio) as masks:
            scores, preds = self._metrics(split)
            scores.update({f"sparsity_{k}" if len(self.pruner.members) > 1 else "sparsity": v
                           for k, v in self.pruner.sparsity(masks).items()})
        self._last_predictions = (split, preds)
        return scores

    def full_run(self, value: np.ndarray) -> float:
        """One grid point: fine-tune from the merged start at ``value``, return the dev score."""
        self._ensure_ready()
        self.reset(fine_tune=True)
        self.train(self.fine_tune_steps, value)
        split = "dev" if self.splits["dev"].encoded else "micro_dev"
        with self._phase("grid_dev_eval"):
            return self._score(split, value)

    def finish(self, value: np.ndarray) -> dict[str, float]:
        """Final merge-and-prune fine-tune at ``value`` from the merged start; test metrics."""
        self._ensure_ready()
        ratio = self.knob.validate(value)
        self.reset(self.seed, fine_tune=True)
        with self._phase("final_train", self._fine_tune_params(ratio)):
            final_loss = self._train_steps(self.fine_tune_steps, ratio, self.adapter, self.pruner, self.optimizer,
                                           self.order, label=f"final run at {self.knob.format(ratio)}",
                                           phase="final_train")
        self.steps_done = self.fine_tune_steps
        split = "dev" if self.splits["dev"].encoded else "micro_dev"
        with self._phase("eval_dev"), torch.no_grad(), self.pruner.applied(ratio):
            exact = self._split_loss(split)  # the grid's measure, and the compact adapter's yardstick
        with self._phase("export"):
            export = self._export_final(ratio, split, exact)
        metrics = self.evaluate("test", ratio)
        self._write_predictions("test_predictions.jsonl")
        if self.splits["dev"].encoded:  # the grid's measure, so a learned ratio compares with every grid point
            metrics["dev_loss"] = export["export_exact_loss"]  # = loss_at("dev", ratio), measured by the export
        metrics["final_train_loss"] = final_loss
        metrics.update(export)
        if self.cfg.baseline == "target_only":
            metrics.update({f"target_only_{k}": v for k, v in self.target_only().items()})
        metrics.update({k: float(v) for k, v in self.counter.as_dict().items()})
        self.notes["adapters"] = {role: str(path) for role, path in saved_adapters(self.out_dir).items()}
        self.notes["metrics"] = describe_metrics(self.cfg.task, self.cfg.lang, encoder_name(self.backbone_name)
                                                 if self.cfg.task == "xlsum" else None)
        write_phases(self.out_dir, self.phase_seconds, self.phase_passes, self.notes, self.backbone_name)
        return metrics

    def export_ladder(self) -> list[int]:
        """The ranks the compact final adapter is chosen from: ``r, 2r, 4r, ...`` (``r`` the trained
        LoRA rank), :data:`EXPORT_RUNGS` of them, the last one capped at the largest module's full rank."""
        full = max(min(m.out_features, m.in_features) for m in self.adapter.modules.values())
        ladder = []
        for i in range(EXPORT_RUNGS):
            k = min(int(self.cfg.lora_r) * 2 ** i, full)
            if not ladder or k > ladder[-1]:
                ladder.append(k)
        return ladder

    def _export_final(self, ratio: np.ndarray, split: str, exact: float) -> dict[str, float]:
        """Save the final adapter at ``ratio``: the exact pruned delta (:data:`DELTA_FILE`) and a compact
        peft LoRA (a truncated SVD of it per module) of the rank :meth:`export_ladder` and
        ``export_tolerance`` choose (or ``export_rank``). Returns the ``export_*`` metrics.

        The compact adapter's rank is the smallest rung whose loss on dev (micro-dev when there
        is no dev split) is at most ``(1 + export_tolerance)`` times the exact pruned adapter's
        (``exact``, that loss on ``split``); when none is, the largest rung
        (``export_within_tolerance`` 0). Every rung costs one loss pass; nothing the run learned changes.
        """
        c = self.cfg
        masks = self.pruner.masks(ratio)
        sparsity = self.pruner.sparsity(masks)
        meta = {**self._adapter_metadata("final"), "prune_ratio": self.knob.to_dict(ratio), "sparsity": sparsity,
                "merge": c.merge, "lora": asdict(self.lora_spec)}
        delta_bytes = save_pruned_delta(self.adapter, self.out_dir / DELTA_FILE, masks, metadata=meta)
        ladder = [int(c.export_rank)] if int(c.export_rank) else self.export_ladder()
        svd = TruncatedDeltas(self.adapter, masks, seed=self.seed)
        del masks
        losses: dict[int, float] = {}
        chosen = ladder[-1]
        for k in ladder:
            with self.adapter.suspended(), merged_into_copies(self.model, svd.factors(k)), torch.no_grad():
                losses[k] = self._split_loss(split)
            if losses[k] <= exact * (1.0 + float(c.export_tolerance)):
                chosen = k
                break
        gap = (losses[chosen] - exact) / exact if exact else 0.0
        within = losses[chosen] <= exact * (1.0 + float(c.export_tolerance))
        if not within and not int(c.export_rank):
            say(f"final adapter: no rank up to {chosen} keeps the {split} loss within {c.export_tolerance:.2%} "
                f"of the exact pruned adapter's ({gap:+.2%} at rank {chosen}); {DELTA_FILE} holds the exact one")
        self.notes["export"] = {"split": split, "exact_loss": exact, "ladder": {str(k): v for k, v in losses.items()},
                                "rank": chosen, "tolerance": float(c.export_tolerance)}
        rel_error = svd.rel_error(chosen)
        adapter_bytes = export_lowrank(
            svd.factors(chosen), self.out_dir / ADAPTER_FOLDERS["final"], transposed=svd.transposed,
            base_model_name_or_path=self._adapter_base(),
            metadata={**meta, "export": f"svd-rank-{chosen}", "rel_error": rel_error,
                      "loss_split": split, "loss": losses[chosen], "exact_loss": exact, "loss_gap": gap,
                      "tolerance": float(c.export_tolerance), "exact_delta": DELTA_FILE})
        return {"export_rank": float(chosen), "export_tolerance": float(c.export_tolerance),
                "export_exact_loss": exact, "export_adapter_loss": losses[chosen], "export_loss_gap": gap,
                "export_within_tolerance": float(within), "export_rel_error": rel_error,
                "final_adapter_bytes": float(adapter_bytes), "final_delta_bytes": float(delta_bytes)}

    # ------------------------------------------------------------------ baseline -------
    def target_only(self) -> dict[str, float]:
        """The target-only baseline: the target adapter alone, fine-tuned like the final run, tested.

        The merged adapter is suspended (its wrappers taken out, untouched) meanwhile.
        """
        self._ensure_ready()
        with self._phase("target_only", self._fine_tune_params(None)), self.adapter.suspended():
            tmp = DeltaAdapter(self.model, self.target_factors)
            self._installed = tmp
            try:
                params = tmp.parameters()
                for p in params:
                    p.requires_grad_(True)
                opt = torch.optim.AdamW(params, lr=float(self.cfg.lr), weight_decay=float(self.cfg.weight_decay))
                order = DataOrder([len(e.ids) for e in self.splits["target_train"].encoded],
                                  int(self.cfg.batch_size), self.seed * 1000 + 21)
                loss = self._train_steps(self.fine_tune_steps, None, tmp, None, opt, order,
                                         label="target-only baseline", phase="target_only")
                for p in params:
                    p.requires_grad_(False)
                # its own low-rank factors: exact and small, and `hpctl eval --adapter target_only` scores it
                export_peft(tmp, self.out_dir / ADAPTER_FOLDERS["target_only"], factors=True,
                            base_model_name_or_path=self._adapter_base(),
                            metadata={**self._adapter_metadata("target_only"), "lora": asdict(self.lora_spec)})
                with torch.no_grad():
                    scores, preds = self._metrics("test")
                    if self.splits["dev"].encoded:
                        scores["dev_loss"] = self._split_loss("dev")
                scores["train_loss"] = loss
                self._last_predictions = ("test", preds)
                self._write_predictions("target_only_test_predictions.jsonl")
            finally:
                tmp.remove()
                self._installed = self.adapter
        return scores

    # ------------------------------------------------------------------ outputs (:mod:`.outputs`)
    def _write_predictions(self, filename: str) -> None:
        if self._last_predictions is not None:
            split, preds = self._last_predictions
            s = self.splits[split]
            write_predictions(self.out_dir / filename, s.ids, preds, s.references)

    def _adapter_base(self) -> str | None:
        """What every saved adapter names as its base model (:func:`.backbone.adapter_base`), once per task."""
        if not hasattr(self, "_base_name"):
            self._base_name = adapter_base(self.cfg.backbone, self.model)
        return self._base_name

    def _adapter_metadata(self, role: str) -> dict[str, Any]:
        return {**adapter_metadata(role, self.cfg, self.backbone_name, self.seed),
                "backbone_path": backbone_path(self.model)}

    def artifacts(self) -> list[Path]:
        """Every saved adapter folder, the test predictions and the phase record."""
        return artifact_paths(self.out_dir)

    def backbone_parameters(self) -> dict[str, torch.Tensor]:
        """The frozen backbone's parameters by their original names (for checks)."""
        self._ensure_ready()
        return dict(self._backbone_params)

    def close(self) -> None:
        self.optimizer = None
