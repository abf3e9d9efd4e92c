"""hpctl inside a ``transformers.Trainer`` run: :class:`KnobCallback` and the knobs that ship with it.

::

    from hpctl.integrations.transformers import KnobCallback, LoraPruneKnob

    knob = LoraPruneKnob(high=0.9)                    # GRASP's global magnitude prune of the LoRA delta
    cb = KnobCallback(knob, eval_data=micro_dev, every_steps=10, controller="grpo",
                      budget=40, group_size=4, data_collator=collator)
    Trainer(model=peft_model, args=args, train_dataset=train, data_collator=collator,
            callbacks=[cb]).train()
    cb.session.learned                                # the learned ratio; training ended at it

Every ``every_steps`` optimizer steps (and once before the first) the callback pauses the
Trainer at that state (``on_step_end``: after the optimizer step, gradients zeroed),
scores the controller's group of values on ``eval_data`` and commits; training then
continues at the committed value. Scoring, by default, is the teacher-forced loss (the
model's own ``loss`` with the batch's ``labels``, weighted by label tokens; the score is
minus it); ``compute_metrics`` + ``metric`` (the Trainer's conventions) or a ``score``
function of the model replace it. Probes run in eval mode without gradients, and the
process-wide random generators are restored after every round, so the Trainer's own
random stream (dropout, data order) is the one it would have been without the callback.

The round is an :class:`hpctl.Session` (:mod:`hpctl.session`): the same controllers,
commit rules, guard, budget, MLflow records and run folder as ``hpctl run``. With
``report_to="mlflow"`` the callback logs into the Trainer's MLflow run (keys prefixed
``hpctl/`` and ``hpctl.``); otherwise it opens its own run. After every round it also
writes into the Trainer's own logs (``trainer.log``: ``state.log_history`` and every
reporter of ``report_to``, TensorBoard, W&B, the console): ``hpctl/knob/<name>`` (the
value training continues with), ``hpctl/best_probe/<name>`` and ``hpctl/best_probe_score``
(the round's best probe), ``hpctl/state/<key>`` (the controller's state, e.g. GRPO's
``sigma``) and ``hpctl/probes``. A ``train()`` that raises ends the session's run then
(FAILED; KILLED for Ctrl-C), its checkpoint saved, not at the end of the process. The session is saved into every
Trainer checkpoint (``checkpoint-N/hpctl_session.safetensors``), so
``trainer.train(resume_from_checkpoint=...)`` resumes the controller where that checkpoint
left it.

Knobs (a :class:`~hpctl.integrations.base.TrainerKnob` says how to set a value and how to
probe one; they live in :mod:`.lora_prune`, :mod:`.learning_rate` and :mod:`.base` and are
re-exported here):

* :class:`LoraPruneKnob` - GRASP LoRA's global magnitude pruning of a peft LoRA model's
  delta ``dW = B A * scale`` at one ratio ranked across all adapted modules, with the
  pruner grasp_lora uses (:class:`hpctl.integrations.pruner.GlobalMagnitudePruner`):
  masks are separate tensors, parameters are never written, a probe is undone bit for bit.
* :class:`LearningRateKnob` - the learning rate on a log scale. A probe forks the trainable
  state (the trainable parameters, their gradients, buffers, the optimizer state and
  the random generators), trains ``lookahead_steps`` steps at the candidate, scores, and
  restores all of it bit for bit.
* :class:`FunctionKnob` - any knob from two functions: ``apply(value)`` and
  ``probe(value) -> score``.

Cost: outside the probes the callback does a counter check per step, one controller round
per ``every_steps`` steps and, for a pruned LoRA, a mask refresh every ``mask_every``
steps; ``KnobCallback.seconds`` splits the time it took into the probes, that recurring
work and the one-time setup and finish (``benchmarks/trainer_callback.py`` measures it
against training time).

This module (the scorer and the callback) is the only one of hpctl that imports transformers.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import TrainerCallback

from hpctl.errors import ConfigError, HpctlError, ResumeError
from hpctl.integrations.base import (FunctionKnob, TrainerContext, TrainerKnob, autocast_for, model_device,
                                     preserved_rng, to_device)
from hpctl.integrations.learning_rate import LearningRateKnob, TrainingFork
from hpctl.integrations.lora_prune import LoraPruneKnob, PeftDeltaAdapter
from hpctl.session import Session

__all__ = ["FunctionKnob", "KnobCallback", "LearningRateKnob", "LoraPruneKnob", "PeftDeltaAdapter", "Scorer",
           "TrainerContext", "TrainerKnob", "TrainingFork", "preserved_rng"]

#: the session's file inside a Trainer checkpoint folder
SESSION_FILE = "hpctl_session.safetensors"


def collate(data: Sequence[Any], collator: Callable | None, batch_size: int) -> list[dict[str, Any]]:
    """``data`` (feature dicts, or a ``datasets.Dataset`` of them) as collated batches; text columns dropped."""
    if collator is None:
        from transformers import default_data_collator as collator
    rows = [data[i] for i in range(len(data))]
    if not rows:
        raise ConfigError("the evaluation data for the probes is empty")
    if not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError(f"probe data must be feature dicts (input_ids, attention_mask, labels, ...), "
                          f"got {type(rows[0]).__name__}")
    rows = [{k: v for k, v in r.items() if not isinstance(v, str)} for r in rows]
    batches = []
    for i in range(0, len(rows), batch_size):
        try:
            batches.append(dict(collator(rows[i:i + batch_size])))
        except Exception as exc:  # noqa: BLE001 - a collator that cannot batch this data is a user error
            raise ConfigError(f"the data collator cannot batch the probe data: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return batches


class Scorer:
    """The probe score of the model's current state on fixed batches (higher is better).

    Default: minus the teacher-forced loss (the model's ``loss`` for the batch's
    ``labels``), averaged over batches weighted by their label tokens; for a causal LM whose
    forward takes ``logits_to_keep`` it is computed with logits at the label positions only
    (the same cross-entropies, without the LM head's cost elsewhere). With
    ``compute_metrics`` (a function of a ``transformers.EvalPrediction`` returning a dict,
    as for the Trainer) the score is ``metrics[metric]`` (sign by ``greater_is_better``,
    default: lower is better when the name contains "loss"). With ``score`` (a function of
    the model) it is whatever that returns. Runs in eval mode without gradients; the
    model's train/eval mode is put back afterwards.
    """

    def __init__(self, batches: list[dict[str, Any]] | None, *, compute_metrics: Callable | None = None,
                 metric: str | None = None, greater_is_better: bool | None = None,
                 preprocess_logits_for_metrics: Callable | None = None, score: Callable | None = None,
                 args: Any = None) -> None:
        self.batches = batches or []
        self.compute_metrics = compute_metrics
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.preprocess = preprocess_logits_for_metrics
        self.score_fn = score
        self.args = args
        self._on: tuple[torch.device, list[dict[str, Any]]] | None = None

    def _batches_on(self, device: torch.device) -> list[dict[str, Any]]:
        if self._on is None or self._on[0] != device:
            self._on = (device, [to_device(b, device) for b in self.batches])
        return self._on[1]

    def __call__(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.score_fn is not None:
                    return float(self.score_fn(model))
                device = model_device(model)
                with autocast_for(self.args, device):
                    if self.compute_metrics is not None:
                        return self._metric(model, device)
                    return -self._loss(model, device)
        finally:
            model.train(was_training)

    def _loss(self, model: nn.Module, device: torch.device) -> float:
        total, weight = 0.0, 0.0
        label_only = _takes_logits_to_keep(model)
        for batch in self._batches_on(device):
            labels = batch.get("labels")
            if label_only and torch.is_tensor(labels) and labels.dim() == 2:
                summed, n = _label_only_loss(model, batch)
                if summed is not None:
                    total += summed
                    weight += n
                    continue
            out = model(**batch)
            loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
            if loss is None:
                raise ConfigError("the probe data has no labels: the default probe score is the teacher-forced "
                                  "loss; give labels, or compute_metrics with metric, or score")
            labels = batch.get("labels")
            w = float((labels != -100).sum()) if torch.is_tensor(labels) else 1.0
            total += float(loss) * w
            weight += w
        return total / max(weight, 1e-12)

    def _metric(self, model: nn.Module, device: torch.device) -> float:
        from transformers import EvalPrediction
        from transformers.trainer_pt_utils import nested_concat, nested_numpify

        preds = labels = None
        for batch in self._batches_on(device):
            out = model(**batch)
            logits = out["logits"] if isinstance(out, Mapping) else out.logits
            lab = batch.get("labels")
            if self.preprocess is not None:
                logits = self.preprocess(logits, lab)
            preds = logits.detach() if preds is None else nested_concat(preds, logits.detach(), padding_index=-100)
            if lab is not None:
                labels = lab if labels is None else nested_concat(labels, lab, padding_index=-100)
        result = self.compute_metrics(EvalPrediction(predictions=nested_numpify(preds),
                                                     label_ids=None if labels is None else nested_numpify(labels)))
        key = self.metric
        if key is None:
            raise ConfigError("compute_metrics needs metric=<the key of its result to score by>")
        if key not in result and f"eval_{key}" in result:
            key = f"eval_{key}"
        if key not in result:
            raise ConfigError(f"compute_metrics returned no {self.metric!r} (it returned: {', '.join(sorted(result))})")
        higher = self.greater_is_better if self.greater_is_better is not None else "loss" not in key
        value = float(result[key])
        return value if higher else -value


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def _label_only_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[float | None, int]:
    """A causal LM's teacher-forced loss, summed over the label tokens, with logits at those positions only.

    The model's own ``loss`` averages the same cross-entropies (labels shifted by one, -100
    ignored) but computes logits everywhere, which for a 262k-token vocabulary is most of a
    probe's cost. Returns ``(None, 0)`` when the model does not give one logit row per label.
    """
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]
    if targets.numel() == 0:
        return 0.0, 0
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, logits_to_keep=keep)
    logits = out["logits"] if isinstance(out, Mapping) else out.logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        return None, 0
    return float(F.cross_entropy(logits.float(), targets, reduction="sum")), int(targets.numel())


# --------------------------------------------------------------------- callback ----
def _calling_trainer() -> Any | None:
    """The ``transformers.Trainer`` whose method is calling the current callback event (found up
    the stack: Trainer -> CallbackHandler -> callback), or None."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        for _ in range(16):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer):
                return owner
        return None
    finally:
        del frame


class KnobCallback(TrainerCallback):
    """Steer ``knob`` during ``Trainer.train()`` with an hpctl controller (module docstring).

    Args:
        knob: a :class:`TrainerKnob` (:class:`LoraPruneKnob`, :class:`LearningRateKnob`,
            :class:`FunctionKnob`).
        eval_data: the probes' evaluation subset (feature dicts or a tokenised
            ``datasets.Dataset``: ``input_ids``, ``attention_mask``, ``labels``), collated
            with ``data_collator`` (default ``transformers.default_data_collator``) in
            batches of ``eval_batch_size`` (default the Trainer's eval batch size). Not
            needed with ``score``.
        every_steps: optimizer steps between two rounds (the first round is at step 0).
        controller, budget, group_size, seed, controller_config, commit_rule, reward,
            max_move: the :class:`hpctl.Session`'s.
        compute_metrics, metric, greater_is_better, preprocess_logits_for_metrics: score by
            a metric instead of the loss (see :class:`Scorer`).
        score: a function of the model returning the probe score (replaces the above).
        out_dir: the session's run folder (default ``<output_dir>/hpctl-<time>``).
        tracking_uri, experiment: the MLflow store and experiment of the session's own run
            (when the Trainer does not report to MLflow).
        resume: ``None`` (default): resume the session saved in the Trainer checkpoint the
            Trainer resumes from; ``False``: always start a fresh session; a path: resume
            that session checkpoint.

    After training, ``session`` holds the :class:`hpctl.Session` (``session.learned``,
    ``session.result``) and ``seconds`` the time spent in probes and in the rest of the
    callback.
    """

    def __init__(self, knob: TrainerKnob, eval_data: Sequence[Any] | None = None, *, every_steps: int = 10,
                 controller: str = "grpo", budget: int = 40, group_size: int = 4, seed: int = 0,
                 controller_config: dict[str, Any] | None = None, commit_rule: str = "best", reward: str = "score",
                 max_move: float = 1.0, data_collator: Callable | None = None, eval_batch_size: int | None = None,
                 compute_metrics: Callable | None = None, metric: str | None = None,
                 greater_is_better: bool | None = None, preprocess_logits_for_metrics: Callable | None = None,
                 score: Callable[[nn.Module], float] | None = None, out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, experiment: str = "hpctl-trainer",
                 resume: bool | str | Path | None = None) -> None:
        if not isinstance(knob, TrainerKnob):
            raise ConfigError(f"knob must be a TrainerKnob (LoraPruneKnob, LearningRateKnob, FunctionKnob), "
                              f"got {type(knob).__name__}")
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ConfigError(f"every_steps must be a positive integer, got {every_steps!r}")
        if score is None and eval_data is None and not isinstance(knob, FunctionKnob):
            raise ConfigError("KnobCallback needs eval_data (the probes' evaluation subset) or a score function")
        if score is not None and not callable(score):
            raise ConfigError("score must be a function of the model returning a number")
        if compute_metrics is not None and metric is None:
            raise ConfigError("compute_metrics needs metric=<the key of its result to score by>")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ConfigError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
        self.knob = knob
        self.eval_data, self.data_collator, self.eval_batch_size = eval_data, data_collator, eval_batch_size
        self.every_steps = every_steps
        self.session_kwargs = dict(controller=controller, budget=budget, group_size=group_size, seed=seed,
                                   controller_config=controller_config, commit_rule=commit_rule, reward=reward,
                                   max_move=max_move)
        self.scoring = dict(compute_metrics=compute_metrics, metric=metric, greater_is_better=greater_is_better,
                            preprocess_logits_for_metrics=preprocess_logits_for_metrics, score=score)
        self.out_dir, self.tracking_uri, self.experiment, self.resume = out_dir, tracking_uri, experiment, resume
        self.session: Session | None = None
        self.ctx: TrainerContext | None = None
        #: wall seconds inside the callback: ``probes`` (scoring candidates), the recurring rest
        #: (``rounds``: the controller and committing; ``steps``: the per-step hooks, mask
        #: refreshes included; ``saves``: the session into Trainer checkpoints) and the one-time
        #: ``setup`` (MLflow run, probe batches) and ``finish`` (result, plot, uploads)
        self.seconds = dict.fromkeys(("probes", "rounds", "steps", "saves", "setup", "finish"), 0.0)
        self.rounds = 0
        self._losses: list[float] = []
        self._trainer: weakref.ref | None = None  # the Trainer running this callback (for its log)
        self._guarded: weakref.ref | None = None  # the Trainer whose train() ends the session if it raises
        self._seen_events = 0  # session history events already summarised in the Trainer's logs

    # -- setup ----------------------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        """The Trainer is built: a knob that cannot steer its model fails here, before ``train()``;
        its ``train()`` is guarded so that an exception ends the session's run (see :meth:`_aborted`)."""
        if model is not None:
            self.knob.check(model)
        trainer = _calling_trainer()
        if trainer is not None:
            self._trainer = weakref.ref(trainer)
            self._guard(trainer)

    def _guard(self, trainer) -> None:
        """Wrap ``trainer.train`` (on the instance) so an exception leaving it ends the session's
        MLflow run at once. Without it (a callback added after the Trainer was built) the run
        still ends when the process does (:class:`hpctl.Session`'s exit hook), not before."""
        if self._guarded is not None and self._guarded() is trainer:
            return
        original = trainer.train
        me = weakref.ref(self)

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                cb = me()
                if cb is not None:
                    cb._aborted(exc)
                raise

        trainer.train = train
        self._guarded = weakref.ref(trainer)

    def _aborted(self, exc: BaseException) -> None:
        """``train()`` raised: an unfinished session saves its checkpoint, lets its folder go and
        ends its run, FAILED with the exception's line (KILLED for Ctrl-C or SIGTERM); the
        Trainer checkpoints keep their session files for ``resume_from_checkpoint``."""
        s = self.session
        if s is None or s.done or s._failed or s._closed:
            return
        try:
            if isinstance(exc, KeyboardInterrupt):
                s.close()
            else:
                s.__exit__(type(exc), exc, exc.__traceback__)
        except Exception:  # noqa: BLE001 - never hide the training's own exception
            pass

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        t0 = time.perf_counter()
        trainer = _calling_trainer()
        if trainer is not None:
            self._trainer = weakref.ref(trainer)
        batches = None
        if self.scoring["score"] is None and self.eval_data is not None:
            batches = collate(self.eval_data, self.data_collator,
                               self.eval_batch_size or int(getattr(args, "per_device_eval_batch_size", 8)))
        scorer = Scorer(batches, args=args, **self.scoring)
        seed = int(self.session_kwargs["seed"])
        self.ctx = TrainerContext(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, args=args,
                                  scorer=scorer, train_dataloader=train_dataloader, seed=seed,
                                  step=int(state.global_step), collate=collate)
        self.knob.setup(self.ctx)
        resume = self._resume_path(args, state)
        run_id, uri = self._trainer_mlflow_run(args)
        out_dir = self.out_dir
        if out_dir is None and resume is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            out_dir = os.path.join(args.output_dir, f"hpctl-{stamp}")
        self.session = Session(self.knob.knob, out_dir=out_dir, steps_per_round=self.every_steps,
                               total_steps=int(state.max_steps) if state.max_steps and state.max_steps > 0 else None,
                               resume=resume if resume is not None else False,
                               tracking_uri=uri or self.tracking_uri, experiment=self.experiment,
                               mlflow_run_id=run_id, autosave=False, **self.session_kwargs)
        self._seen_events = len(self.session.recorder.history)  # a resumed session's earlier rounds were logged
        if resume is None:
            try:
                self.session.tracker.log_params({"trainer": {"every_steps": self.every_steps, **self.knob.describe()}})
            except HpctlError:
                pass
        self.seconds["setup"] += time.perf_counter() - t0
        if resume is None and state.global_step % self.every_steps == 0:
            self._round(state)  # the first round, at the starting state
        else:
            self.knob.apply(self.session._value.copy())  # resumed: training continues at the committed value

    def _resume_path(self, args, state) -> Path | None:
        if self.resume is False:
            return None
        if self.resume not in (None, True):
            return Path(self.resume)
        if state.global_step <= 0:
            return None
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / SESSION_FILE
        if not path.is_file():
            raise ResumeError(f"the Trainer resumes at step {state.global_step} but {str(path)!r} does not exist: "
                              "the controller cannot resume (pass resume=False to KnobCallback to start it afresh)")
        return path

    @staticmethod
    def _trainer_mlflow_run(args) -> tuple[str | None, str | None]:
        """The Trainer's active MLflow run when it reports to MLflow, else (None, None)."""
        report_to = getattr(args, "report_to", None) or []
        if isinstance(report_to, str):
            report_to = [report_to]
        if "mlflow" not in report_to and "all" not in report_to:
            return None, None
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return None, None
        return run.info.run_id, mlflow.get_tracking_uri()

    # -- rounds ---------------------------------------------------------------------------
    def _round(self, state) -> None:
        s = self.session
        t0 = time.perf_counter()
        probe_s, finish_before = 0.0, s.finish_seconds
        self.ctx.step = int(state.global_step)
        with preserved_rng():
            if self._losses:
                s.report_loss(float(np.mean(self._losses)))
                self._losses.clear()
            for value in s.ask():
                t1 = time.perf_counter()
                score = self.knob.probe(np.atleast_1d(np.asarray(value, dtype=np.float64)))
                probe_s += time.perf_counter() - t1
                s.tell(value, score)
            self.knob.apply(np.atleast_1d(np.asarray(s.value, dtype=np.float64)))
        self.rounds += 1
        self._log_to_trainer(state)
        finishing = s.finish_seconds - finish_before  # the session finished in this round (result, plot)
        self.seconds["probes"] += probe_s
        self.seconds["finish"] += finishing
        self.seconds["rounds"] += time.perf_counter() - t0 - probe_s - finishing

    def trainer_logs(self) -> dict[str, float]:
        """What the last round adds to the Trainer's logs (module docstring): the value training
        continues with, the round's best probe and the controller's state, keys ``hpctl/...``."""
        s = self.session
        names = self.knob.knob.component_names
        logs = {f"hpctl/knob/{n}": float(v) for n, v in zip(names, np.atleast_1d(s._value))}
        events = s.recorder.history
        probes = [e for e in events[self._seen_events:] if e["event"] == "probe" and math.isfinite(e["score"])]
        self._seen_events = len(events)
        if probes:
            pick = max if s.direction == "maximize" else min
            best = pick(probes, key=lambda e: e["score"])
            logs.update({f"hpctl/best_probe/{n}": float(v) for n, v in zip(names, np.atleast_1d(best["value"]))})
            logs["hpctl/best_probe_score"] = float(best["score"])
        for key, value in s._user_state(s.controller.state()).items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
                logs[f"hpctl/state/{key}"] = float(value)
        logs["hpctl/probes"] = float(s.probes)
        return logs

    def _log_to_trainer(self, state) -> None:
        """The round's summary into the Trainer's logs: through ``trainer.log`` (log_history and every
        reporter); without the Trainer at hand, into ``state.log_history`` only."""
        logs = self.trainer_logs()
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None and getattr(trainer, "state", None) is state:
            due = trainer.control.should_log  # on_log clears it: the step's own logging (loss, lr) must still happen
            trainer.log(logs)
            trainer.control.should_log = due
        else:
            state.log_history.append({**logs, "step": int(state.global_step)})

    def on_step_begin(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        if self.ctx is not None:
            self.ctx.step = int(state.global_step)
        self.knob.on_step_begin(int(state.global_step))
        self.seconds["steps"] += time.perf_counter() - t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self._losses.append(float(loss))

    def on_step_end(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        due = self.session is not None and not self.session.done and state.global_step % self.every_steps == 0
        self.seconds["steps"] += time.perf_counter() - t0
        if due:
            self._round(state)

    def on_save(self, args, state, control, **kwargs):
        if self.session is None:
            return
        t0 = time.perf_counter()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.session.save(folder / SESSION_FILE)
        self.seconds["saves"] += time.perf_counter() - t0

    def on_train_end(self, args, state, control, **kwargs):
        s = self.session
        if s is None:
            return
        if not s.done:
            s.tracker.metrics({f"callback/{k}_s": v for k, v in self.seconds.items()}, s.probes)
            s.finish()  # training is over: the learned value is the one it ended at
            self.seconds["finish"] += s.finish_seconds
        from hpctl.rundir import atomic_write_json

        atomic_write_json(s.out_dir / "callback.json", {"rounds": self.rounds, "every_steps": self.every_steps,
                                                         "seconds": self.seconds, "steps": int(state.global_step)})
