"""KnobCallback in a real transformers.Trainer run on a tiny model: it sets the value training uses,
probes leave the model and optimizer bit-identical, a killed run resumes the session, and the
learning-rate knob picks the better of two learning rates where the answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import hpctl  # noqa: E402
from hpctl.errors import ConfigError, ResumeError  # noqa: E402
from hpctl.integrations.transformers import (  # noqa: E402
    SESSION_FILE,
    FunctionKnob,
    KnobCallback,
    LearningRateKnob,
    LoraPruneKnob,
    TrainingFork,
)


# ------------------------------------------------------------------ tiny setups ----
def _lora_model(seed: int = 0, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=dropout))


def _tokens(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences with a learnable rule (every odd token = previous + 16)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 16, (12,), generator=g)
        ids[1::2] = ids[::2] + 16
        rows.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": ids.clone()})
    return rows


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                learning_rate=5e-3, lr_scheduler_type="constant", logging_steps=1, report_to="none",
                save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def _state(model, optimizer) -> dict[str, torch.Tensor]:
    """Every trainable parameter, gradient and optimizer tensor, cloned (optimizer hyperparameters too)."""
    out = {f"p/{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out.update({f"g/{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    opt = getattr(optimizer, "optimizer", optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"o/{names[id(p)]}/{k}"] = v.clone() if torch.is_tensor(v) else torch.tensor(v)
    for i, g in enumerate(opt.param_groups):
        for k, v in g.items():
            if k not in ("params", "lr", "initial_lr") and isinstance(v, (int, float)):
                out[f"h/{i}/{k}"] = torch.tensor(float(v))
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Around(TrainerCallback):
    """Placed before (``_Before``) and after (``_After``) KnobCallback: the state before its round,
    compared after it."""

    role = ""

    def __init__(self, shared: dict, every: int) -> None:
        self.shared, self.every = shared, every

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        if state.global_step % self.every:
            return
        if self.role == "before":
            self.shared["before"] = _state(model, optimizer)
            self.shared["rng"] = torch.get_rng_state()
        else:
            self.shared.setdefault("checked", 0)
            assert _same(self.shared["before"], _state(model, optimizer)), f"state changed at {state.global_step}"
            assert torch.equal(self.shared["rng"], torch.get_rng_state())
            self.shared["checked"] += 1


class _Before(_Around):
    role = "before"


class _After(_Around):
    role = "after"


# ---------------------------------------------------------------------- tests ----
def test_lora_prune_callback_trains_at_the_committed_ratio_and_probes_restore_bit_exactly(tmp_path, tracking_uri):
    model = _lora_model()
    train, dev = _tokens(64, 1), _tokens(8, 2)
    knob = LoraPruneKnob(high=0.9, mask_every=1)
    cb = KnobCallback(knob, dev, every_steps=2, budget=15, group_size=4, seed=0, tracking_uri=tracking_uri,
                      controller_config={"sigma_init": 0.3})
    shared: dict = {}
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=10), train_dataset=train,
                      callbacks=[_Before(shared, 2), cb, _After(shared, 2)])
    trainer.train()
    s = cb.session
    assert shared["checked"] >= 3  # every round at a step left weights, gradients and AdamW state bit-identical
    assert s.done and s.probes <= 15
    commits = [e for e in s.history if e["event"] == "commit"]
    assert any(e["value"][0] > 0 for e in commits), "GRPO never moved the ratio; the check below would be vacuous"
    # training runs W + M(ratio) * dW at the learned ratio: the forward equals the probe's masked forward, bit for bit
    ratio = knob.ratio[0]
    assert ratio == pytest.approx(s.learned)
    knob.ctx.step = -1  # a new state for the knob: the masks as the next training step would refresh them
    knob.on_step_begin(0)
    batch = {k: torch.stack([r[k] for r in dev]) for k in ("input_ids", "attention_mask")}
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
        with knob.pruner.applied(ratio):
            probed = model(**batch).logits
        n = sum(v.lora_B.shape[0] * v.lora_A.shape[1] for v in knob.adapter.modules.values())
        assert knob.sparsity()["all"] == pytest.approx(round(ratio * n) / n)  # exactly round(ratio * N) pruned
        knob.remove()  # peft's unpruned forward back
        unpruned = model(**batch).logits
    assert torch.equal(trained, probed)
    assert not torch.equal(trained, unpruned)
    with pytest.raises(ConfigError, match="LoraPruneKnob is not set up"):
        knob.sparsity()


def test_lora_prune_probe_is_exact_also_when_the_score_raises(tmp_path):
    from hpctl.integrations.transformers import Scorer, TrainerContext

    model = _lora_model(dropout=0.1)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)  # a nonzero delta
    calls = {"n": 0}

    def score(m):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("evaluation broke")
        return -float(m(**{k: torch.stack([r[k] for r in _tokens(4, 3)]) for k in ("input_ids", "labels")}).loss)

    knob = LoraPruneKnob()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    knob.setup(TrainerContext(model=model, optimizer=opt, lr_scheduler=None, args=None, scorer=Scorer(None, score=score)))
    knob.apply(np.array([0.5]))
    model.train()
    before = _state(model, opt)
    assert math.isfinite(knob.probe(np.array([0.2])))
    with pytest.raises(RuntimeError, match="evaluation broke"):
        knob.probe(np.array([0.8]))
    assert _same(before, _state(model, opt)) and model.training
    views = knob.adapter.modules.values()
    assert all(v.weight_override is None and v.dense for v in views)  # the training masks are back
    assert knob.sparsity()["all"] == pytest.approx(0.5, abs=1e-3)
    # with LoRA dropout, training through the mask matches W + M*dW in eval mode (dropout off)
    batch = {k: torch.stack([r[k] for r in _tokens(4, 3)]) for k in ("input_ids", "attention_mask")}
    model.eval()
    with torch.no_grad():
        masked = model(**batch).logits
        with knob.pruner.applied(0.5):
            assert torch.equal(model(**batch).logits, masked)


def _gpt2_lora_model(seed: int = 0, **lora):
    """A tiny GPT-2 (its attention and MLP layers are transformers' Conv1D, weight stored (in, out))
    with a LoRA on all of them."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "fan_in_fan_out is set to False ... Setting it to True"
        return get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "fan_in_fan_out": True,
                                                   "target_modules": ["c_attn", "c_proj", "c_fc"], **lora}))


def test_lora_prune_on_gpt2_conv1d_layers_trains_at_the_ratio_and_probes_restore_bit_exactly(tmp_path, tracking_uri):
    from peft import PeftModel
    from transformers.pytorch_utils import Conv1D

    model = _gpt2_lora_model()
    train, dev = _tokens(64, 1), _tokens(8, 2)
    knob = LoraPruneKnob(high=0.9, mask_every=1)
    cb = KnobCallback(knob, dev, every_steps=2, budget=15, group_size=4, seed=0, tracking_uri=tracking_uri,
                      controller_config={"sigma_init": 0.3})
    shared: dict = {}
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=10), train_dataset=train,
                      callbacks=[_Before(shared, 2), cb, _After(shared, 2)])
    trainer.train()
    views = knob.adapter.modules
    assert len(views) == 8 and all(v.transposed and isinstance(v.base, Conv1D) for v in views.values())
    assert shared["checked"] >= 3  # every round left weights, gradients and AdamW state bit-identical
    assert any(e["value"][0] > 0 for e in cb.session.history if e["event"] == "commit")
    ratio = knob.ratio[0]
    knob.ctx.step = -1
    knob.on_step_begin(0)  # the masks as the next training step would refresh them
    batch = {k: torch.stack([r[k] for r in dev]) for k in ("input_ids", "attention_mask")}
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
        with knob.pruner.applied(ratio) as masks:
            probed = model(**batch).logits
            # the delta in the Conv1D's own layout is peft's transposed B @ A * scale, masked
            name, view = next(iter(views.items()))
            layer = model.get_base_model().get_submodule(name)
            peft_delta = layer.get_delta_weight("default")  # (in, out), as the Conv1D stores its weight
            assert peft_delta.shape == layer.get_base_layer().weight.shape
            torch.testing.assert_close(view.weight_override.t(), layer.get_base_layer().weight
                                       + masks[name].t() * peft_delta, rtol=0, atol=1e-6)
        knob.export(tmp_path / "pruned")
        knob.remove()
        unpruned = model(**batch).logits
        config = json.loads((tmp_path / "pruned" / "adapter_config.json").read_text())
        assert config["fan_in_fan_out"] is True
        reloaded = PeftModel.from_pretrained(model.unload(), str(tmp_path / "pruned")).eval()
        exported = reloaded(**batch).logits
    assert torch.equal(trained, probed)  # training's masked forward is the probe's, bit for bit
    assert not torch.equal(trained, unpruned)
    torch.testing.assert_close(exported, trained, rtol=1e-4, atol=1e-5)  # the exported adapter is the pruned one


def test_a_model_the_knob_cannot_steer_is_refused_when_the_trainer_is_built(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    plain = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    dora = _gpt2_lora_model(use_dora=True)
    for model, msg in ((plain, "no active peft LoRA adapter on Linear or Conv1D layers"),
                       (dora, "needs a plain LoRA adapter")):
        cb = KnobCallback(LoraPruneKnob(), _tokens(4, 2), every_steps=2, budget=8)
        with pytest.raises(ConfigError, match=msg) as e:
            Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_tokens(8, 1), callbacks=[cb])
        assert "\n" not in str(e.value)
        assert cb.session is None  # refused before training: no session, no run folder
    # the check leaves a model it accepts as it was: peft's own forward, no view attached
    model = _gpt2_lora_model()
    before = model.get_base_model().transformer.h[0].attn.c_attn.forward
    knob = LoraPruneKnob()
    Trainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_tokens(8, 1),
            callbacks=[KnobCallback(knob, _tokens(4, 2), every_steps=2, budget=8)])
    assert knob.adapter is None
    assert "forward" not in vars(model.get_base_model().transformer.h[0].attn.c_attn)
    assert model.get_base_model().transformer.h[0].attn.c_attn.forward == before


def test_learning_rate_knob_probes_restore_and_the_trainer_trains_at_the_committed_rate(tmp_path, tracking_uri):
    model = _lora_model()
    train, dev = _tokens(64, 1), _tokens(8, 2)
    knob = LearningRateKnob(1e-4, 5e-2, lookahead_steps=2)
    cb = KnobCallback(knob, dev, every_steps=3, budget=10, group_size=4, seed=1, tracking_uri=tracking_uri)
    shared: dict = {}
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=9, learning_rate=1e-3), train_dataset=train,
                      callbacks=[_Before(shared, 3), cb, _After(shared, 3)])
    trainer.train()
    s = cb.session
    assert shared["checked"] >= 1
    # the Trainer's logged learning rate at every step is the value committed before it (constant schedule):
    # a commit event at session step k covers the Trainer's steps k-2 .. k (every_steps = 3), the learned
    # value the steps after the last one
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    committed = {e["step"]: float(e["value"][0]) for e in s.history if e["event"] == "commit"}
    assert sorted(logged) == list(range(1, 10)) and committed
    for step, lr in logged.items():
        assert lr == pytest.approx(committed.get(-(-step // 3) * 3, s.learned), rel=1e-9), (step, lr, committed)
    assert any(abs(v - 1e-3) > 1e-6 for v in committed.values()), "the rate never moved; the check is vacuous"


class _Regression(nn.Module):
    """y = w . x, trained by the Trainer (forward returns the MSE loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def forward(self, x, labels=None):
        pred = x @ self.w
        return {"loss": ((pred - labels) ** 2).mean(), "logits": pred}


def _regression_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w_true = torch.tensor([1.0, -2.0, 0.5, 3.0])
    rows = []
    for _ in range(n):
        x = torch.randn(4, generator=g)
        rows.append({"x": x, "labels": (x @ w_true).reshape(())})
    return rows


@pytest.mark.parametrize("low, high, better", [(1e-4, 0.1, "high"), (0.1, 4.0, "low")])
def test_learning_rate_knob_finds_the_better_of_two_rates(low, high, better, tmp_path, tracking_uri):
    # SGD on least squares: 1e-4 barely moves and 0.1 converges (high is better); 4.0 diverges (low is better)
    torch.manual_seed(0)
    model = _Regression()
    knob = LearningRateKnob(low, high, default=low, lookahead_steps=5)
    cb = KnobCallback(knob, _regression_data(32, 2), every_steps=5, controller="grid", controller_config={"k": 2},
                      budget=2, group_size=2, tracking_uri=tracking_uri)
    args = _args(tmp_path, max_steps=10, optim="sgd", learning_rate=low, per_device_train_batch_size=16,
                 max_grad_norm=0.0)
    Trainer(model=model, args=args, train_dataset=_regression_data(128, 1), callbacks=[cb]).train()
    probes = [e for e in cb.session.history if e["event"] == "probe"]
    assert sorted(float(e["value"][0]) for e in probes) == pytest.approx([low, high])
    assert cb.session.learned == pytest.approx(high if better == "high" else low)


def test_function_knob_sets_what_training_uses_and_logs_into_the_trainers_mlflow_run(tmp_path, tracking_uri,
                                                                                   monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trainer-runs")
    mlflow.set_tracking_uri(tracking_uri)
    used: list[tuple[int, float]] = []
    current = {"v": None}

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            used.append((state.global_step, current["v"]))

    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5),
                        apply=lambda v: current.update(v=v), probe=lambda v: -abs(v - 0.8))
    cb = KnobCallback(knob, every_steps=2, budget=12, group_size=3, seed=0)
    model = _lora_model()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=8, report_to=["mlflow"]),
                      train_dataset=_tokens(32, 1), callbacks=[cb, Record()])
    trainer.train()
    s = cb.session
    assert s.attached
    # each step trained at the value of the round before it: a commit event at session step k covers the
    # steps that start at global steps k-2 and k-1; after the last commit, the learned value
    committed = {e["step"]: float(e["value"][0]) for e in s.history if e["event"] == "commit"}
    assert len(used) == 8 and len(committed) >= 2
    for step, v in used:
        assert v == pytest.approx(committed.get((step // 2 + 1) * 2, s.learned)), (step, v, committed)
    assert s.learned > 0.55  # towards the best gain, 0.8
    client = MlflowClient(tracking_uri)
    run = client.get_run(s.tracker.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("trainer-runs").experiment_id
    assert "learning_rate" in run.data.params and run.data.params["hpctl.controller"] == "grpo"
    assert len(client.get_metric_history(run.info.run_id, "hpctl/probe/gain")) == s.probes
    assert "loss" in run.data.metrics  # the Trainer's own metrics, in the same run
    assert run.info.status == "FINISHED"  # ended by the Trainer, not by hpctl


class _Kill(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt("killed")


def _run(tmp_path, *, kill_at=None, resume=False, tracking_uri):
    model = _lora_model()
    knob = LoraPruneKnob(high=0.9, mask_every=2)
    cb = KnobCallback(knob, _tokens(8, 2), every_steps=2, budget=24, group_size=3, seed=3, tracking_uri=tracking_uri,
                      controller_config={"sigma_init": 0.3})
    callbacks = [cb] + ([_Kill(kill_at)] if kill_at else [])
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=12, save_strategy="steps", save_steps=4),
                      train_dataset=_tokens(64, 1), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if resume else None)
    return cb


def test_a_killed_trainer_run_resumes_the_session(tmp_path, tracking_uri):
    whole = _run(tmp_path / "whole", tracking_uri=tracking_uri)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", kill_at=6, tracking_uri=tracking_uri)
    assert (tmp_path / "killed" / "trainer" / "checkpoint-4" / SESSION_FILE).is_file()
    resumed = _run(tmp_path / "killed", resume=True, tracking_uri=tracking_uri)

    def events(cb):
        return [(e["event"], e.get("kind"), np.asarray(e.get("value", [])).tolist(), e.get("score"))
                for e in cb.session.history]

    assert events(resumed) == events(whole)
    assert resumed.session.learned == whole.session.learned
    assert resumed.session.out_dir != whole.session.out_dir
    result = json.loads((resumed.session.out_dir / "result.json").read_text())
    assert result["probes"] == whole.session.probes

    # resuming a Trainer checkpoint that has no session is refused in one line
    (tmp_path / "killed" / "trainer" / "checkpoint-12" / SESSION_FILE).unlink()
    with pytest.raises(ResumeError, match=r"resumes at step 12 but .*hpctl_session.safetensors' does not exist"):
        _run(tmp_path / "killed", resume=True, tracking_uri=tracking_uri)


def test_training_fork_restores_everything_bit_for_bit():
    model = _lora_model(dropout=0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {k: torch.stack([r[k] for r in _tokens(4, 3)]) for k in ("input_ids", "labels")}
    model.train()
    model(**batch).loss.backward()
    opt.step()  # AdamW state exists; keep a gradient around too
    model(**batch).loss.backward()
    before = _state(model, opt)
    fork = TrainingFork(model, opt)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.param_groups[0]["lr"] = 0.5
        opt.step()
    model.eval()
    assert not _same(before, _state(model, opt))
    fork.restore()
    assert _same(before, _state(model, opt)) and model.training and opt.param_groups[0]["lr"] == 1e-2


def test_bad_callback_arguments_are_one_line_errors(tmp_path):
    cases = [
        (lambda: KnobCallback("prune", []), "knob must be a TrainerKnob"),
        (lambda: KnobCallback(LoraPruneKnob(), [], every_steps=0), "every_steps must be a positive integer"),
        (lambda: KnobCallback(LoraPruneKnob()), "needs eval_data"),
        (lambda: KnobCallback(LoraPruneKnob(), [], compute_metrics=len), "compute_metrics needs metric="),
        (lambda: LoraPruneKnob(high=1.5), "0 <= low < high <= 1"),
        (lambda: LoraPruneKnob(mask_every=0), "mask_every must be a positive integer"),
        (lambda: LearningRateKnob(0.0, 1.0), "0 < low < high"),
        (lambda: LearningRateKnob(lookahead_steps=0), "lookahead_steps must be a positive integer"),
        (lambda: FunctionKnob(hpctl.Knob("x", 0, 1), apply=None, probe=len), "two functions"),
    ]
    for make, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            make()
        assert "\n" not in str(e.value)
    from hpctl.integrations.transformers import PeftDeltaAdapter

    torch.manual_seed(0)
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ConfigError, match="no active peft LoRA adapter"):
        PeftDeltaAdapter(plain)


def test_default_score_is_minus_the_models_own_teacher_forced_loss():
    from transformers import default_data_collator

    from hpctl.integrations.transformers import Scorer

    model = _lora_model()
    model.train()
    rows = _tokens(8, 2)
    for r in rows[:4]:
        r["labels"][:5] = -100  # a prompt without labels, as in instruction data
    batches = [default_data_collator(rows[:4]), default_data_collator(rows[4:])]
    score = Scorer(batches)(model)  # label positions only (logits_to_keep)
    assert model.training  # the mode is put back
    model.eval()
    with torch.no_grad():
        sums = [(float(model(**b).loss) * int((b["labels"][:, 1:] != -100).sum()), int((b["labels"][:, 1:] != -100).sum()))
                for b in batches]
    assert score == pytest.approx(-sum(a for a, _ in sums) / sum(n for _, n in sums), rel=1e-6)
    with pytest.raises(ConfigError, match="the probe data has no labels"):
        Scorer([{k: v for k, v in b.items() if k != "labels"} for b in batches])(model)


def _gain_callback(probe, tracking_uri, **kw) -> KnobCallback:
    knob = FunctionKnob(hpctl.Knob("gain", 0.0, 1.0, default=0.5), apply=lambda v: None, probe=probe)
    return KnobCallback(knob, every_steps=2, budget=12, group_size=3, seed=0, tracking_uri=tracking_uri, **kw)


def test_the_trainers_logs_show_the_knob_the_rounds_best_probe_and_the_controller(tmp_path, tracking_uri,
                                                                                 monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trainer-logs")
    mlflow.set_tracking_uri(tracking_uri)
    cb = _gain_callback(lambda v: -abs(v - 0.8), tracking_uri)
    trainer = Trainer(model=_lora_model(), args=_args(tmp_path, max_steps=8, report_to=["mlflow"]),
                      train_dataset=_tokens(32, 1), callbacks=[cb])
    trainer.train()
    s = cb.session
    rows = [h for h in trainer.state.log_history if "hpctl/knob/gain" in h]
    assert [h["step"] for h in rows] == [0, 2, 4, 6]  # a round at the start and every 2 steps, until done
    commits = [e for e in s.history if e["event"] == "commit"]
    assert [h["hpctl/knob/gain"] for h in rows[:3]] == pytest.approx([float(e["value"][0]) for e in commits])
    assert rows[-1]["hpctl/knob/gain"] == pytest.approx(s.learned)  # the last round finished the session
    for h, n in zip(rows[:3], range(3)):
        probes = [e for e in s.history if e["event"] == "probe" and e["round"] == n]
        best = max(probes, key=lambda e: e["score"])
        assert h["hpctl/best_probe/gain"] == pytest.approx(float(best["value"][0]))
        assert h["hpctl/best_probe_score"] == pytest.approx(best["score"])
        assert h["hpctl/probes"] == probes[-1]["probe"]
    assert rows[1]["hpctl/state/sigma"] < rows[0]["hpctl/state/sigma"]  # GRPO's sigma, as it shrinks
    assert all(k.startswith("hpctl/") for h in rows for k in h if k not in ("epoch", "step"))
    # a reporter of report_to (MLflow here) got them at the Trainer's steps
    history = MlflowClient(tracking_uri).get_metric_history(s.tracker.run_id, "hpctl/knob/gain")
    assert sorted(m.step for m in history) == [0, 2, 4, 6]


@pytest.mark.parametrize("raised, status", [(RuntimeError("boom in training"), "FAILED"),
                                            (KeyboardInterrupt(), "KILLED")])
def test_a_trainer_aborted_by_an_exception_ends_the_callbacks_run(raised, status, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise raised

    cb = _gain_callback(lambda v: -abs(v - 0.8), tracking_uri)
    trainer = Trainer(model=_lora_model(), args=_args(tmp_path, max_steps=8), train_dataset=_tokens(32, 1),
                      callbacks=[cb, Boom()])
    with pytest.raises(type(raised)):
        trainer.train()
    run = MlflowClient(tracking_uri).get_run(cb.session.tracker.run_id)
    assert run.info.status == status  # now, not when the process ends
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom in training"
    # its checkpoint was saved and its folder let go: the session resumes where the round left it
    again = hpctl.Session(cb.knob.knob, "grpo", budget=12, group_size=3, seed=0, out_dir=cb.session.out_dir,
                          steps_per_round=2, total_steps=8, resume=True, tracking_uri=tracking_uri)
    assert again.value == cb.session.value and again.tracker.run_id == run.info.run_id
    again.close()


@pytest.mark.parametrize("probe, error, message", [
    (lambda v: float("nan"), hpctl.HpctlError, r"all \d+ probes failed, so nothing was learned"),
    (lambda v: "abc", ConfigError, r"FunctionKnob 'gain': probe\(0.5\) returned 'abc', not a number"),
    (lambda v: True, ConfigError, r"returned True, not a number"),
])
def test_a_function_knob_whose_probes_give_no_scores_fails_in_one_line(probe, error, message, tmp_path,
                                                                       tracking_uri):
    from mlflow.tracking import MlflowClient

    cb = _gain_callback(probe, tracking_uri)
    trainer = Trainer(model=_lora_model(), args=_args(tmp_path, max_steps=8), train_dataset=_tokens(32, 1),
                      callbacks=[cb])
    with pytest.raises(error, match=message) as e:
        trainer.train()
    assert "\n" not in str(e.value)
    assert not (cb.session.out_dir / "result.json").exists()  # no result at the default value
    assert MlflowClient(tracking_uri).get_run(cb.session.tracker.run_id).info.status == "FAILED"


@pytest.mark.parametrize("make, message", [
    (lambda: LoraPruneKnob(low="a"), "low must be a number .*got 'a'"),
    (lambda: LoraPruneKnob(high=None), "high must be a number .*got None"),
    (lambda: LoraPruneKnob(groups=[1, 2]), r"groups must map a group name to module-name suffixes.*got \[1, 2\]"),
    (lambda: LoraPruneKnob(groups={"attn": "q_proj"}), "groups must map.*got {'attn': 'q_proj'}"),
    (lambda: LoraPruneKnob(groups={"attn": [1]}), "groups must map"),
    (lambda: LearningRateKnob(low="a"), "low must be a number, got 'a'"),
    (lambda: LearningRateKnob(default="1e-3"), "default must be a number, got '1e-3'"),
])
def test_bad_knob_values_are_one_line_errors_naming_them(make, message):
    with pytest.raises(ConfigError, match=message) as e:
        make()
    assert "\n" not in str(e.value)
