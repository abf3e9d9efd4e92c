"""BackbonePruneTask: how far to prune the frozen backbone while a LoRA adapter recovers.

Setup (lazily, on the first call that needs the model; each part timed in ``phase_seconds``):

1. load the frozen backbone (:func:`hpctl.plugins.grasp_lora.backbone.load_backbone`: ``tiny``,
   ``gemma3-270m``, a ``.gguf`` file, a folder or a hub id) and the target-language data
   (:func:`hpctl.plugins.grasp_lora.corpora.load_task_data`: the same article splits as grasp_lora
   for the same sizes and ``data_seed``), tokenised as grasp_lora tokenises them;
2. the LoRA adapter's initial factors from peft (``get_peft_model`` on the backbone under a
   fixed seed; A Kaiming-uniform, B zero), installed as plain-LoRA
   :class:`hpctl.integrations.delta.DeltaAdapter` wrappers (float32 factors on any backbone dtype);
3. the pruning scores of every block linear, computed once on the dense backbone (magnitude, or
   Wanda over ``calibration`` target-train examples), turned into ranks
   (:mod:`.masks`); the linears become :class:`.masks.PrunedLinear` wrappers.

Then the :class:`hpctl.task.Task` protocol, with the knob the backbone's sparsity:

``train(steps, value)``
    AdamW steps of the adapter (grasp_lora's :func:`~hpctl.plugins.grasp_lora.training.adamw_step`
    on length-bucketed target-train batches) with the backbone pruned at ``value``.
``probe(value)``
    the reward (:mod:`.objective`) of the backbone pruned at ``value`` with the current adapter:
    its micro-dev loss against the *dense reference* at the same step (below). The mask is
    formed from the stored ranks into reused buffers and the previous weights are put back in a
    ``finally``; parameters are never written.
``snapshot()``/``restore()``
    the adapter's factors, the AdamW state, the data order and the step count (a few MB).
``full_run(value)``
    one grid point: the adapter fine-tuned ``steps`` steps from its initial factors at
    ``value``, scored like a probe on the dev split.
``finish(value)``
    the dense baseline (below) tested and saved, then the recovery: the adapter fine-tuned from
    its initial factors for ``steps`` steps with the backbone pruned at ``value``, tested on dev
    and test against the dense baseline, and saved with its masks (:mod:`.outputs`).

The dense reference ("the dense backbone with the same adapter training"): the same adapter
initialisation, data order, learning rate and optimizer, trained on the *dense* backbone. The
controller run is the first ``controller_steps`` steps of that recipe with the backbone pruned,
so the reference of a probe at step ``t`` is the dense-trained adapter after ``t`` steps on the
same examples. It is trained on demand in the same wrappers (its factors and AdamW state are
swapped in and out; :meth:`BackbonePruneTask.reference`), each loss cached, and is the dense
baseline of the final phase once it reaches ``steps``. It is a deterministic function of the
step, so it is not part of a snapshot: a resumed or forked task recomputes what it needs.

The probes' records (step, value, sparsity, loss, reference, reward) are kept in
:attr:`BackbonePruneTask.landscape` and written to ``backbone_prune.json`` at the end: how the
landscape moves as the adapter recovers (a resumed run holds the probes since the resume).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from hpctl.errors import ConfigError
from hpctl.integrations.delta import DeltaAdapter
from hpctl.knob import Knob
from hpctl.plugins.backbone_prune.masks import (
    GROUP_NAMES,
    BackbonePruner,
    InputNorms,
    block_linears,
    global_ranks,
    group_layers,
    install,
    layer_scores,
    row_ranks,
)
from hpctl.plugins.backbone_prune.objective import Objective
from hpctl.plugins.backbone_prune.outputs import (
    ADAPTER_FOLDERS,
    MASKS_FILE,
    RECORD_FILE,
    artifact_paths,
    say,
)
from hpctl.plugins.grasp_lora.backbone import backbone_path, load_backbone, model_device, resolve_device, resolve_dtype
from hpctl.plugins.grasp_lora.lm import PassCounter, batched_loss, collate, takes_logits_to_keep
from hpctl.plugins.grasp_lora.lora import LoraSpec, attach_lora, export_peft, lora_factors, parse_targets, unload_lora
from hpctl.plugins.grasp_lora.outputs import write_predictions
from hpctl.plugins.grasp_lora.splits import Split, encode_split, split_metrics
from hpctl.plugins.grasp_lora.training import DataOrder, adamw_step
from hpctl.task import Task

#: phases long enough to get a nested MLflow run each (through ``Task.phase_listener``)
NESTED_PHASES = ("dense_baseline", "recovery")
#: the splits the task encodes
SPLITS = ("target_train", "micro_dev", "dev", "test")


class _Twin:
    """The dense reference's training state: factors, its own AdamW and data order, steps done, losses."""

    def __init__(self, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, order: DataOrder) -> None:
        self.tensors, self.optimizer, self.order = tensors, optimizer, order
        self.steps = 0
        self.losses: list[float] = []


class BackbonePruneTask(Task):
    """Backbone sparsity with LoRA recovery on one task and target language.

    ``config`` is a resolved :class:`hpctl.plugins.backbone_prune.BackbonePruneConfig`.
    ``backbone`` optionally passes a loaded ``(model, tokenizer, name)`` (tests share one); its
    linears are wrapped in place (parameters shared, never written) and it must be in the
    config's dtype on its device type.
    """

    def __init__(self, config: Any, *, seed: int = 0, out_dir: str | Path = ".",
                 backbone: tuple[Any, Any, str] | None = None) -> None:
        self.cfg = config
        self.seed = int(seed)
        self.out_dir = Path(out_dir)
        self.dtype = resolve_dtype(config.dtype)
        self.device = resolve_device(config.device)
        self.lora_spec = LoraSpec(r=int(config.lora_r), alpha=float(config.lora_alpha),
                                  targets=parse_targets(config.targets), dropout=0.0)
        self.objective = Objective(config.objective, float(config.tolerance), float(config.penalty))
        per_group = config.knob == "per_group"
        start = float(np.clip(config.start_sparsity, config.min_sparsity, config.max_sparsity))
        self.knob = Knob("sparsity", low=float(config.min_sparsity), high=float(config.max_sparsity),
                         default=(start,) * 2 if per_group else start, dim=2 if per_group else 1,
                         labels=GROUP_NAMES if per_group else (),
                         units="fraction of the backbone's block-linear weights pruned")
        #: the controller run (the env's episode); every fine-tune (recovery, grid point, dense baseline) is ``steps``
        self.total_steps = int(config.controller_steps)
        self.fine_tune_steps = int(config.steps)
        self.phase_seconds: dict[str, float] = {}
        self.phase_passes: dict[str, dict[str, int]] = {}
        self.counter = PassCounter()
        self.notes: dict[str, Any] = {}
        #: one record per probe: step, value, achieved sparsity, loss, reference loss, reward
        self.landscape: list[dict[str, Any]] = []
        self._given_backbone = backbone
        self._ready = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.backbone_name = ""
        self.splits: dict[str, Split] = {}
        self.adapter: DeltaAdapter | None = None
        self.pruner: BackbonePruner | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.order: DataOrder | None = None
        self.steps_done = 0
        self._twin: _Twin | None = None
        #: (split, step) -> the dense reference's loss
        self._ref: dict[tuple[str, int], float] = {}
        self._artifacts: list[Path] = []
        self._threads_before: int | None = None
        if config.threads is not None:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(config.threads))

    def describe(self) -> dict[str, Any]:
        cfg = asdict(self.cfg) if is_dataclass(self.cfg) else dict(vars(self.cfg))
        return {"config": cfg, "knob": {"name": self.knob.name, "low": self.knob.low, "high": self.knob.high,
                                        "dim": self.knob.dim, "labels": list(self.knob.labels)},
                "objective": asdict(self.objective), "backbone": self.backbone_name or self.cfg.backbone,
                **self.notes}

    # ------------------------------------------------------------------ bookkeeping ----
    @contextlib.contextmanager
    def _phase(self, name: str, params: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Time ``name`` (``<name>_s``) and count its backbone passes; a nested phase
        (:data:`NESTED_PHASES`) also gets a child MLflow run through ``phase_listener``."""
        before = dict(vars(self.counter))
        t0 = time.perf_counter()
        listener = self.phase_listener if name in NESTED_PHASES else None
        if listener is not None:
            listener(name, "start", {"params": dict(params or {})})
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        finally:
            seconds = time.perf_counter() - t0
            self.phase_seconds[f"{name}_s"] = self.phase_seconds.get(f"{name}_s", 0.0) + seconds
            done = {k: v - before[k] for k, v in vars(self.counter).items()}
            acc = self.phase_passes.setdefault(name, {k: 0 for k in done})
            for k, v in done.items():
                acc[k] = acc.get(k, 0) + v
            if listener is not None:
                listener(name, "end", {"seconds": seconds, "status": status, **done})

    # ------------------------------------------------------------------ setup ----------
    def prepare(self) -> None:
        """Backbone and data only (nothing written to the run folder)."""
        if self.model is None:
            with self._phase("load"):
                self._load()

    def _load(self) -> None:
        from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

        c = self.cfg
        if self._given_backbone is not None:
            model, tok, name = self._given_backbone
            dtype, device = next(model.parameters()).dtype, model_device(model)
            if dtype != self.dtype or device.type != self.device.type:
                raise ConfigError(f"the given backbone is {str(dtype).replace('torch.', '')} on {device}, "
                                  f"but the config asks for {str(self.dtype).replace('torch.', '')} on {self.device}")
        else:
            model, tok, name = load_backbone(c.backbone, cache_dir=c.cache_dir, dtype=self.dtype, device=self.device)
        # the pruned linears first: a backbone without any is refused before the data is read
        self.linears = block_linears(model, f"backbone {str(c.backbone)!r}")
        self.groups = group_layers(list(self.linears), c.knob == "per_group")
        self.model, self.tokenizer, self.backbone_name = model, tok, name
        self._backbone_params = dict(model.named_parameters())
        sizes = SplitSizes(source_train=0, target_train=int(c.target_train), micro_dev=int(c.micro_dev),
                           dev=int(c.dev), test=int(c.test))
        data = load_task_data(c.task, c.lang, data_dir=c.data_dir, seed=int(c.data_seed), sizes=sizes,
                              max_context_chars=c.max_context_chars)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for split in SPLITS:
            self.splits[split] = encode_split(tok, getattr(data, split), c, self.pad_id)
        for split in ("target_train", "micro_dev", "test"):
            if not self.splits[split].encoded:
                raise ConfigError(f"the {split.replace('_', '-')} split is empty; raise --{split.replace('_', '-')}")
        self.notes["split_sizes"] = {s: len(self.splits[s].encoded) for s in SPLITS}
        self.notes["block_linears"] = len(self.linears)
        self.notes["block_weights"] = int(sum(m.weight.numel() for m in self.linears.values()))
        self.notes["groups"] = {g: len(n) for g, n in self.groups.items()}

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        self.prepare()
        c = self.cfg
        with self._phase("adapter_init"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + 3)
                try:
                    peft_model = attach_lora(self.model, "adapter", self.lora_spec)
                except (ValueError, KeyError) as exc:  # peft: no target module found
                    raise ConfigError(f"LoRA targets {','.join(self.lora_spec.targets)} do not fit the backbone: "
                                      f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            factors = lora_factors(peft_model, "adapter")
            self.model = unload_lora(peft_model)
        self.wrappers = install(self.model, list(self.linears))
        with self._phase("scores"):
            ranks = self._ranks()
        self.pruner = BackbonePruner(self.wrappers, self.groups, ranks, c.ranking)
        self.adapter = DeltaAdapter(self.model, factors)
        self.init_tensors = self.adapter.state_tensors()
        for p in self.adapter.parameters():
            p.requires_grad_(True)
        self.notes["adapter_modules"] = len(self.adapter.modules)
        self._ready = True
        self.reset(self.seed)

    def _calibration_batches(self) -> list[Any]:
        data = self.splits["target_train"].encoded[: int(self.cfg.calibration)]
        size = int(self.cfg.eval_batch_size)
        return [collate(data[i:i + size], self.pad_id) for i in range(0, len(data), size)]

    def _ranks(self) -> dict[str, torch.Tensor]:
        """Scores of every block linear (on the dense backbone), as ranks (:mod:`.masks`)."""
        c = self.cfg
        norms: dict[str, torch.Tensor] = {}
        if c.score == "wanda":
            device = model_device(self.model)
            kwargs = {"logits_to_keep": 1} if takes_logits_to_keep(self.model) else {}
            with torch.no_grad(), InputNorms(self.wrappers) as rec:
                for b in self._calibration_batches():
                    rec.token_mask = b.attention_mask.bool()
                    self.model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device),
                               use_cache=False, **kwargs)
                    self.counter.forward += 1
                norms = rec.norms()
            missing = [n for n in self.linears if n not in norms]
            if missing:
                raise ConfigError(f"wanda: block linear {missing[0]!r} saw no calibration input; use --score magnitude")
            self.notes["calibration_examples"] = min(int(c.calibration), len(self.splits["target_train"].encoded))
        scores = {n: layer_scores(m.weight, c.score, norms.get(n)) for n, m in self.linears.items()}
        if c.ranking == "row":
            return {n: row_ranks(s) for n, s in scores.items()}
        ranks: dict[str, torch.Tensor] = {}
        for names in self.groups.values():
            ranks.update(zip(names, global_ranks([scores.pop(n) for n in names])))
        return ranks

    # ------------------------------------------------------------------ training -------
    def _fresh(self, seed: int) -> tuple[torch.optim.Optimizer, DataOrder]:
        """The adapter's initial factors loaded; a fresh AdamW and data order for ``seed``."""
        assert self.adapter is not None
        self.adapter.load_state_tensors(self.init_tensors)
        optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=float(self.cfg.lr),
                                      weight_decay=float(self.cfg.weight_decay))
        order = DataOrder([len(e.ids) for e in self.splits["target_train"].encoded], int(self.cfg.batch_size),
                          seed * 1000 + 21)
        return optimizer, order

    def reset(self, seed: int | None = None) -> None:
        """The adapter back to its initial factors, with a fresh AdamW and data order."""
        if not self._ready:
            self._ensure_ready()  # ends by calling reset(self.seed)
            if seed is None or int(seed) == self.seed:
                return
        self.optimizer, self.order = self._fresh(self.seed if seed is None else int(seed))
        self.steps_done = 0

    def _train_steps(self, steps: int, value: np.ndarray | None, optimizer: torch.optim.Optimizer,
                     order: DataOrder, on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """``steps`` AdamW steps of the adapter with the backbone pruned at ``value`` (None: dense)."""
        assert self.adapter is not None and self.pruner is not None
        params = self.adapter.parameters()
        data = self.splits["target_train"].encoded
        losses: list[float] = []
        with self.pruner.dense() if value is None else contextlib.nullcontext():
            if value is not None:
                self.pruner.set_training(value)
            for i in range(int(steps)):
                batch = collate([data[j] for j in order.next()], self.pad_id)
                losses.append(adamw_step(self.model, batch, optimizer, params,
                                         grad_clip=float(self.cfg.grad_clip) or None, counter=self.counter))
                if on_step is not None:
                    on_step(i, losses[-1])
        return losses

    def train(self, steps: int, value: np.ndarray) -> float:
        self._ensure_ready()
        sparsity = self.knob.validate(value)
        with self._phase("train"):
            losses = self._train_steps(steps, sparsity, self.optimizer, self.order)
        self.steps_done += int(steps)
        return float(np.mean(losses)) if losses else float("nan")

    # ------------------------------------------------------------------ the dense reference
    def _with_dense_twin(self, step: int, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the dense reference's adapter after ``step`` steps on the dense backbone.

        The reference is trained on (from its start when it is past ``step``) in the same
        wrappers; the live adapter's factors and the backbone's pruning are back afterwards,
        also on error (the live AdamW and data order are separate objects, never touched).
        """
        assert self.adapter is not None and self.pruner is not None
        live = self.adapter.state_tensors()
        twin = self._twin
        try:
            if twin is None or twin.steps > step:
                optimizer, order = self._fresh(self.seed)
                twin = self._twin = _Twin(self.adapter.state_tensors(), optimizer, order)
            self.adapter.load_state_tensors(twin.tensors)
            with self.pruner.dense():
                if step > twin.steps:
                    twin.losses += self._train_steps(step - twin.steps, None, twin.optimizer, twin.order)
                    twin.steps = step
                    twin.tensors = self.adapter.state_tensors()
                with torch.no_grad():
                    return fn()
        except BaseException:
            self._twin = None  # possibly half-trained: rebuilt on the next use
            raise
        finally:
            self.adapter.load_state_tensors(live)

    def reference(self, split: str, step: int) -> float:
        """The dense reference's mean loss on ``split`` after ``step`` training steps (cached)."""
        self._ensure_ready()
        key = (split, int(step))
        if key not in self._ref:
            with self._phase("dense_reference"):
                self._ref[key] = self._with_dense_twin(int(step), lambda: self._split_loss(split))
        return self._ref[key]

    # ------------------------------------------------------------------ scoring --------
    def _split_loss(self, split: str) -> float:
        return batched_loss(self.model, self.splits[split].batches, self.counter)

    def _dev_split(self) -> str:
        return "dev" if self.splits["dev"].encoded else "micro_dev"

    def loss_at(self, split: str, value: np.ndarray) -> float:
        """The adapter's mean answer loss on ``split`` with the backbone pruned at ``value`` (nothing written)."""
        self._ensure_ready()
        if split not in SPLITS or not self.splits[split].encoded:
            raise ConfigError(f"no {split!r} split to score (choose from a non-empty one of {', '.join(SPLITS)})")
        sparsity = self.knob.validate(value)
        with torch.no_grad(), self.pruner.applied(sparsity):
            return self._split_loss(split)

    def sparsity(self, value: np.ndarray) -> dict[str, float]:
        """The achieved fraction pruned at ``value``: ``"all"`` and, for the per-group knob, per group."""
        self._ensure_ready()
        return self.pruner.achieved(self.knob.validate(value))

    def _score(self, split: str, value: np.ndarray, step: int, record: bool = False) -> dict[str, float]:
        """One pass over ``split`` at ``value``: its loss, the dense reference's, the achieved sparsity, the reward."""
        ref = self.reference(split, step)
        with self._phase("probe" if record else f"score_{split}"):
            loss = self.loss_at(split, value)
        achieved = self.sparsity(value)["all"]
        reward = self.objective(achieved, loss, ref)
        if record:
            self.landscape.append({"step": int(step), "value": self.knob.to_dict(value), "sparsity": achieved,
                                   "loss": loss, "ref_loss": ref, "reward": reward})
        return {"loss": loss, "ref_loss": ref, "sparsity": achieved, "reward": reward}

    def _reward(self, split: str, value: np.ndarray, step: int, record: bool = False) -> float:
        return self._score(split, value, step, record)["reward"]

    def probe(self, value: np.ndarray) -> float:
        """The reward at ``value`` on the micro-dev split, against the dense reference at this step."""
        self._ensure_ready()
        return self._reward("micro_dev", self.knob.validate(value), self.steps_done, record=True)

    def evaluate(self, split: str, value: np.ndarray) -> dict[str, float]:
        """Loss, reference loss, achieved sparsity and reward on ``split`` at ``value`` and this step."""
        self._ensure_ready()
        sparsity = self.knob.validate(value)
        loss, ref = self.loss_at(split, sparsity), self.reference(split, self.steps_done)
        achieved = self.sparsity(sparsity)
        out = {"loss": loss, "ref_loss": ref, "loss_ratio": loss / ref, "sparsity": achieved["all"],
               "reward": self.objective(achieved["all"], loss, ref)}
        out.update({f"sparsity_{g}": v for g, v in achieved.items() if g not in ("all",) and len(achieved) > 2})
        return out

    def full_run(self, value: np.ndarray) -> float:
        """One grid point: the adapter fine-tuned ``steps`` steps at ``value``, its reward on dev."""
        return self.full_run_scores(value)["reward"]

    def full_run_scores(self, value: np.ndarray) -> dict[str, float]:
        """:meth:`full_run` with what its one dev pass measured: ``loss``, ``ref_loss`` (the dense
        reference's), ``sparsity`` (achieved) and ``reward`` (a benchmark reads them without a second pass)."""
        self._ensure_ready()
        sparsity = self.knob.validate(value)
        self.reset()
        self.train(self.fine_tune_steps, sparsity)
        return self._score(self._dev_split(), sparsity, self.fine_tune_steps)

    # ------------------------------------------------------------------ snapshots -----
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

    # ------------------------------------------------------------------ the final phase -
    def _progress(self, label: str, steps: int, phase: str) -> Callable[[int, float], None]:
        every = max(1, int(steps) // 4)
        t0 = time.perf_counter()
        listener = self.phase_listener

        def on_step(step: int, loss: float) -> None:
            if listener is not None:
                listener(phase, "log", {"step": step, "train_loss": float(loss)})
            if (step + 1) % every == 0 or step + 1 == steps:
                say(f"{label}: step {step + 1}/{steps}, loss {loss:.4f} "
                    f"({(time.perf_counter() - t0) / (step + 1):.1f} s/step)")

        return on_step

    def _test_scores(self, prefix: str) -> tuple[dict[str, float], list[str]]:
        """Generation metrics (EM, F1) and loss on test as the model runs now (``generate``), else the loss."""
        s = self.splits["test"]
        t0 = time.perf_counter()
        try:
            if not self.cfg.generate:
                return {f"{prefix}test_loss": self._split_loss("test")}, []
            scores, preds = split_metrics(self.model, self.tokenizer, s, self.cfg, self.cfg.lang, self.counter)
        finally:  # inside the dense_baseline and eval phases: what a benchmark's time to the adapter leaves out
            self.phase_seconds["test_scoring_s"] = (self.phase_seconds.get("test_scoring_s", 0.0)
                                                    + time.perf_counter() - t0)
        out = {f"{prefix}test_loss": float(scores.pop("loss"))}
        out.update({f"{prefix}{k}": float(v) for k, v in scores.items()})
        return out, preds

    def _export_adapter(self, role: str, extra: Mapping[str, Any]) -> None:
        export_peft(self.adapter, self.out_dir / ADAPTER_FOLDERS[role], factors=True,
                    base_model_name_or_path=backbone_path(self.model),
                    metadata={"role": role, "plugin": "backbone_prune", "backbone_spec": self.cfg.backbone,
                              "backbone": self.backbone_name, "task": self.cfg.task, "lang": self.cfg.lang,
                              "seed": self.seed, "lora": asdict(self.lora_spec), **dict(extra)})

    def _dense_baseline(self) -> dict[str, float]:
        """The dense reference after ``steps`` steps: dev and test losses (cached), test metrics, saved."""
        n = self.fine_tune_steps
        dev = self._dev_split()
        params = {"steps": n, "lr": float(self.cfg.lr), "batch_size": int(self.cfg.batch_size),
                  "lora_r": int(self.cfg.lora_r), "targets": self.cfg.targets, "seed": self.seed, "sparsity": 0.0}

        def measure() -> dict[str, float]:
            out, preds = self._test_scores("dense_")
            self._ref[("test", n)] = out["dense_test_loss"]
            if (dev, n) not in self._ref:
                self._ref[(dev, n)] = self._split_loss(dev)
            out["dense_dev_loss"] = self._ref[(dev, n)]
            self._export_adapter("dense", {"sparsity": 0.0, "steps": n})
            if preds:
                s = self.splits["test"]
                write_predictions(self.out_dir / "dense_test_predictions.jsonl", s.ids, preds, s.references)
            return out

        with self._phase("dense_baseline", params):
            out = self._with_dense_twin(n, measure)
            if self.phase_listener is not None:
                for i, loss in enumerate(self._twin.losses if self._twin is not None else []):
                    self.phase_listener("dense_baseline", "log", {"step": i, "train_loss": float(loss)})
        return out

    def finish(self, value: np.ndarray) -> dict[str, float]:
        """The dense baseline, then the recovery at ``value``: losses against it, the reward, outputs."""
        self._ensure_ready()
        sparsity = self.knob.validate(value)
        achieved = self.sparsity(sparsity)
        metrics: dict[str, float] = dict(self._dense_baseline())
        n = self.fine_tune_steps
        self.reset()
        params = {"steps": n, "lr": float(self.cfg.lr), "batch_size": int(self.cfg.batch_size),
                  "lora_r": int(self.cfg.lora_r), "targets": self.cfg.targets, "seed": self.seed,
                  "score": self.cfg.score, "ranking": self.cfg.ranking, "achieved_sparsity": achieved["all"],
                  **{k if self.knob.dim > 1 else "sparsity": v for k, v in self.knob.to_dict(sparsity).items()}}
        with self._phase("recovery", params):
            losses = self._train_steps(n, sparsity, self.optimizer, self.order,
                                       on_step=self._progress(f"recovery at {self.knob.format(sparsity)}", n,
                                                              "recovery"))
        self.steps_done = n
        dev = self._dev_split()
        with self._phase("eval"), torch.no_grad():  # the training weights are the pruned ones already
            dev_loss = self._split_loss(dev)
            test, preds = self._test_scores("")
        with self._phase("export"):
            self._export_adapter("final", {"sparsity": self.knob.to_dict(sparsity), "achieved_sparsity": achieved,
                                           "score": self.cfg.score, "ranking": self.cfg.ranking, "steps": n})
            masks_bytes = self.pruner.export(self.out_dir / MASKS_FILE, sparsity, {
                "value": self.knob.to_dict(sparsity), "score": self.cfg.score, "backbone": self.backbone_name,
                "backbone_spec": self.cfg.backbone, "calibration": int(self.cfg.calibration)
                if self.cfg.score == "wanda" else 0})
            if preds:
                s = self.splits["test"]
                write_predictions(self.out_dir / "test_predictions.jsonl", s.ids, preds, s.references)
        dense_dev, dense_test = metrics["dense_dev_loss"], metrics["dense_test_loss"]
        metrics.update(test)
        metrics.update({
            "sparsity": achieved["all"], "dev_loss": dev_loss, "dev_loss_ratio": dev_loss / dense_dev,
            "dev_reward": self.objective(achieved["all"], dev_loss, dense_dev),
            "within_tolerance": float(self.objective.within(dev_loss, dense_dev)),
            "test_loss_ratio": test["test_loss"] / dense_test,
            "reward": self.objective(achieved["all"], test["test_loss"], dense_test),
            "recovery_train_loss": float(np.mean(losses[-max(1, len(losses) // 4):])) if losses else float("nan"),
            "masks_bytes": float(masks_bytes), "block_weights": float(self.pruner.n_weights),
        })
        if self.knob.dim > 1:
            metrics.update({f"sparsity_{g}": achieved[g] for g in self.knob.labels})
        metrics.update({k: float(v) for k, v in self.counter.as_dict().items()})
        self.phase_seconds["probe_prune_s"] = self.pruner.apply_seconds
        self.notes["probe_prunes"] = self.pruner.applies
        self._write_record(metrics)
        self._artifacts = artifact_paths(self.out_dir)
        return metrics

    def _write_record(self, metrics: Mapping[str, float]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / RECORD_FILE).write_text(json.dumps(
            {"backbone": self.backbone_name, "objective": asdict(self.objective), "metrics": dict(metrics),
             "seconds": self.phase_seconds, "passes": self.phase_passes, "notes": self.notes,
             "dense_reference": [{"split": s, "step": t, "loss": v} for (s, t), v in sorted(self._ref.items())],
             "landscape": self.landscape}, indent=2, default=str) + "\n")

    def artifacts(self) -> list[Path]:
        """The saved adapters, the masks, the predictions and the run record."""
        return list(self._artifacts)

    def backbone_parameters(self) -> dict[str, torch.Tensor]:
        """The frozen backbone's parameters by their original names (for checks)."""
        self.prepare()
        return dict(self._backbone_params)

    def close(self) -> None:
        """Drop the optimizers; give the process its torch thread count back."""
        self.optimizer = None
        self._twin = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
