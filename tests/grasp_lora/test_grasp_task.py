"""GraspTask on the tiny backbone and smoke data: the Task contract, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# peft 0.21 calls a transformers 5.x API that warns on every PeftModel.from_pretrained
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from hpctl.control_env import ControlEnv  # noqa: E402
from hpctl.errors import ConfigError  # noqa: E402
from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspLoraPlugin, resolve_config  # noqa: E402
from hpctl.plugins.grasp_lora.backbone import load_backbone  # noqa: E402


def _make(tmp: Path, **overrides):
    return GraspLoraPlugin().make_task(GraspLoraConfig(preset="smoke", **overrides), seed=0, out_dir=tmp)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from hpctl.plugins.grasp_lora.backbone import load_backbone

    task = _make(tmp_path_factory.mktemp("grasp_task"))
    task.reset(0)
    # the reference is a fresh load of the (deterministic) tiny backbone, so writes during
    # the adapter-training phase of reset() would be caught too
    fresh, _, _ = load_backbone("tiny")
    frozen = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    assert set(frozen) == set(task.backbone_parameters())
    yield task, frozen
    task.close()


def _assert_same(a, b) -> None:
    """Bitwise equality of nested snapshots (tensors, dicts, lists, scalars)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_knob_and_presets(smoke):
    task, _ = smoke
    assert task.knob.name == "prune_ratio" and task.knob.dim == 1
    assert (task.knob.low, task.knob.high) == (0.0, 0.9)
    assert task.knob.default_value[0] == pytest.approx(0.45)
    cfg = resolve_config(GraspLoraConfig(preset="smoke", steps=7))
    assert cfg.steps == 7 and cfg.backbone == "tiny" and cfg.lora_alpha == 2 * cfg.lora_r
    assert resolve_config(GraspLoraConfig(task="xlsum")).max_new_tokens > resolve_config(GraspLoraConfig()).max_new_tokens


@pytest.mark.parametrize("overrides,match", [
    ({"p_min": 0.5, "p_max": 0.5}, "p_min"),
    ({"task": "xlsum", "probe_metric": "f1"}, "xlsum"),
    ({"probe_metric": "rouge"}, "unknown probe metric 'rouge'"),
    ({"knob": "per-group"}, "unknown knob 'per-group'"),  # choices are spelled with underscores
    ({"baseline": "target-only"}, "unknown baseline 'target-only'"),
    ({"knob": "per_group", "targets": "attn"}, "per_group"),
    ({"steps": 0}, "steps"),
    ({"max_len": 8}, "max-len"),
    ({"merge": "weighted"}, "merge rule 'weighted' needs 2 weights"),
    ({"merge": "weighted", "merge_weights": "0.5,x"}, "merge weights must be numbers"),
    ({"micro_dev": -1}, "split size micro_dev"),
    ({"grad_clip": -1.0}, "grad-clip"),
    ({"lora_dropout": 1.0}, "LoRA dropout"),
])
def test_bad_options_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _make(tmp_path, **overrides)


def test_the_config_checks_itself_before_and_after_the_preset_fills_it():
    with pytest.raises(ConfigError, match="p_min < p_max"):
        GraspLoraConfig(p_min=0.6, p_max=0.2)  # no task needed
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        GraspLoraConfig(steps=0)
    unset = GraspLoraConfig(preset="smoke", max_len=8)  # max-target-len is the preset's: checked once filled in
    with pytest.raises(ConfigError, match="max-len"):
        resolve_config(unset)
    assert resolve_config(GraspLoraConfig(preset="smoke", merge="weighted", merge_weights="0.3;1")).merge == "weighted"


def test_probe_leaves_the_state_bitwise_untouched(smoke):
    task, _ = smoke
    task.train(1, np.array([0.3]))
    before = task.snapshot()
    scores = [task.probe(np.array([r])) for r in (0.0, 0.45, 0.9)]
    assert all(np.isfinite(scores)) and all(s < 0 for s in scores)
    _assert_same(before, task.snapshot())
    assert scores[0] != scores[2]  # the ratio matters


def test_a_look_ahead_probe_fine_tunes_the_candidate_then_restores_the_state(smoke, monkeypatch):
    """probe_steps=k: the score after k steps at the candidate's own ratio from the probe state
    (the same k batches for every candidate), and the state back bit for bit."""
    task, _ = smoke
    task.train(1, np.array([0.3]))
    before = task.snapshot()
    plain = task.probe(np.array([0.6]))
    monkeypatch.setattr(task.cfg, "probe_steps", 2)
    ahead = [task.probe(np.array([r])) for r in (0.6, 0.2, 0.6)]
    _assert_same(before, task.snapshot())
    assert ahead[0] == ahead[2] != ahead[1] and ahead[0] != plain
    task.train(2, np.array([0.6]))  # what the probe did, done for real
    assert task.loss_at("micro_dev", np.array([0.6])) == -ahead[0]
    task.restore(before)
    with pytest.raises(ConfigError, match="probe-steps must be >= 0"):
        GraspLoraConfig(probe_steps=-1)


def test_a_look_ahead_from_the_start_scores_the_first_steps_of_the_candidates_own_fine_tune(smoke, monkeypatch):
    """probe_from="start": whatever state the controller run is in, a k-step probe scores what k steps of
    that ratio's grid fine-tune (merged start, a fine-tune's optimizer and data order) score, bit for bit,
    and puts the controller run's state back."""
    task, _ = smoke
    monkeypatch.setattr(task.cfg, "probe_steps", 2)
    monkeypatch.setattr(task.cfg, "probe_from", "start")
    monkeypatch.setattr(task.cfg, "controller_lr", 3 * task.cfg.lr)  # a probe must use the fine-tune's lr
    try:
        task.reset(0)
        early = task.probe(np.array([0.6]))
        task.train(3, np.array([0.3]))
        before = task.snapshot()
        later = [task.probe(np.array([r])) for r in (0.6, 0.2)]
        _assert_same(before, task.snapshot())
        assert later[0] == early != later[1]  # the controller run's 3 steps changed nothing it sees
        monkeypatch.setattr(task.cfg, "probe_from", "state")
        assert task.probe(np.array([0.6])) != early  # from this state it is another look-ahead
        task.reset(0, fine_tune=True)  # the grid point at 0.6, stopped after 2 steps
        task.train(2, np.array([0.6]))
        assert -task.loss_at("micro_dev", np.array([0.6])) == early
    finally:
        monkeypatch.undo()
        task.reset(0)
    with pytest.raises(ConfigError, match="probe-from 'start' needs --probe-steps"):
        GraspLoraConfig(probe_from="start")
    with pytest.raises(ConfigError, match="unknown probe-from 'end'"):
        GraspLoraConfig(probe_from="end", probe_steps=2)


def test_a_fine_tunes_reset_on_a_task_not_yet_ready_gets_the_fine_tunes_lr(tmp_path):
    task = _make(tmp_path, controller_lr=1e-2)
    try:
        task.reset(0, fine_tune=True)  # the first call loads and merges (ending at the controller run's start)
        assert [g["lr"] for g in task.optimizer.param_groups] == [task.cfg.lr] != [1e-2]
    finally:
        task.close()


def test_controller_lr_is_the_controller_runs_and_fine_tunes_keep_lr(smoke, monkeypatch):
    task, _ = smoke
    monkeypatch.setattr(task.cfg, "controller_lr", 3 * task.cfg.lr)
    try:
        task.reset(0)  # the controller run's start (ControlEnv.reset)
        assert [g["lr"] for g in task.optimizer.param_groups] == [3 * task.cfg.lr]
        task.reset(0, fine_tune=True)  # a grid point's or the final run's start
        assert [g["lr"] for g in task.optimizer.param_groups] == [task.cfg.lr]
    finally:
        monkeypatch.undo()
        task.reset(0)
    for bad in (0, -1e-3, float("nan")):
        with pytest.raises(ConfigError, match="controller-lr must be > 0"):
            GraspLoraConfig(controller_lr=bad)


def test_a_warm_up_trains_the_start_ratio_before_the_first_probe_round(tmp_path):
    """--warmup-steps W: the controller run's first W steps at the start ratio, the probe rounds share the rest."""
    from hpctl.envs import make_plugin_env

    env = make_plugin_env("grasp_lora", out_dir=tmp_path, budget=10, group_size=4, preset="smoke",
                          controller_steps=6, warmup_steps=4)
    try:
        events = []
        env.listeners.append(events.append)
        env.reset(seed=0)
        assert env.warmup_steps == 4 and env.steps_done == 4 and env.steps_per_round == 1  # (6 - 4) // 2 rounds
        env.probe_group(np.array([[0.2], [0.6]]))
        assert [e["step"] for e in events if e["event"] == "probe"] == [4, 4]
        assert [e["event"] for e in events][:2] == ["reset", "warmup"]
    finally:
        env.close()
    with pytest.raises(ConfigError, match=r"warmup-steps \(6\) must be below controller-steps \(6\)"):
        GraspLoraConfig(controller_steps=6, warmup_steps=6)
    with pytest.raises(ConfigError, match="warmup-steps must be >= 0"):
        GraspLoraConfig(warmup_steps=-1)


def test_probe_raising_inside_restores_everything(smoke, monkeypatch):
    task, _ = smoke
    before = task.snapshot()
    real = task._split_loss

    def explode(split):
        real(split)  # run the masked forward, then fail
        raise RuntimeError("probe failed")

    monkeypatch.setattr(task, "_split_loss", explode)
    with pytest.raises(RuntimeError, match="probe failed"):
        task.probe(np.array([0.6]))
    _assert_same(before, task.snapshot())
    for m in task.adapter.modules.values():
        assert m.weight_override is None and m.mask is None


def test_snapshot_restore_round_trips_training_exactly(smoke):
    task, _ = smoke
    value = np.array([0.35])
    snap = task.snapshot()
    first_loss = task.train(2, value)
    first = task.snapshot()
    task.restore(snap)
    _assert_same(snap, task.snapshot())
    second_loss = task.train(2, value)
    assert first_loss == second_loss
    _assert_same(first, task.snapshot())
    torch.save(snap, Path(task.out_dir) / "snap.pt")  # picklable


def test_control_env_probe_group_leaves_state_untouched(smoke):
    task, _ = smoke
    env = ControlEnv(task, group_size=3, steps_per_round=1)
    env.reset(seed=0)
    before = task.snapshot()
    scores = env.probe_group([[0.1], [0.5], [0.8]])
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    _assert_same(before, task.snapshot())
    env.baseline()
    _assert_same(before, task.snapshot())
    loss = env.advance()
    assert np.isfinite(loss) and task.steps_done == 1
    assert min(abs(env.current[0] - v) for v in (0.1, 0.5, 0.8, task.knob.default_value[0])) < 1e-9


def test_evaluate_and_full_run(smoke):
    task, _ = smoke
    task.reset(0)
    metrics = task.evaluate("dev", np.array([0.2]))
    assert {"exact_match", "f1", "loss", "score", "sparsity"} <= set(metrics)
    assert metrics["sparsity"] == pytest.approx(0.2, abs=1e-3)
    score = task.full_run(np.array([0.2]))
    assert np.isfinite(score) and score < 0
    assert task.steps_done == task.fine_tune_steps  # a grid point is a whole fine-tune
    with pytest.raises(ConfigError):
        task.evaluate("nope", np.array([0.2]))


@pytest.mark.slow
def test_finish_saves_a_peft_adapter_that_reproduces_the_model(smoke):
    from peft import PeftModel

    task, frozen = smoke
    value = np.array([0.4])
    metrics = task.finish(value)
    for key in ("exact_match", "f1", "score", "loss", "sparsity", "target_only_f1", "target_only_exact_match",
                "forward_passes", "backward_passes"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["sparsity"] == pytest.approx(0.4, abs=1e-3)
    out = Path(task.out_dir)
    assert (out / "final_adapter" / "adapter_config.json").is_file()
    assert (out / "test_predictions.jsonl").is_file() and (out / "grasp_phases.json").is_file()
    assert {"load_s", "final_train_s", "export_s", "eval_test_s", "target_only_s"} <= set(task.phase_seconds)

    # the exact pruned delta on a fresh copy of the backbone = the in-memory masked model, bit for bit
    from hpctl.integrations.delta import merged_into_copies
    from hpctl.integrations.peft_export import load_pruned_delta

    batch = task.splits["test"].batches[0]
    with torch.no_grad(), task.pruner.applied(value):
        want = task.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    fresh, _, _ = load_backbone("tiny")
    exact = load_pruned_delta(out / "final_delta.safetensors")
    with merged_into_copies(fresh, {n: f for n, (f, _, _) in exact.items()},
                            {n: keep for n, (_, keep, _) in exact.items()}), torch.no_grad():
        assert torch.equal(fresh(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, want)
    # the compact final_adapter: a rank-k LoRA whose dev loss is within the tolerance of the exact one's
    assert metrics["export_within_tolerance"] == 1.0 and metrics["export_tolerance"] == 0.005
    assert metrics["export_adapter_loss"] <= metrics["export_exact_loss"] * 1.005
    assert metrics["export_exact_loss"] == pytest.approx(task.loss_at("dev", value), rel=1e-12)
    assert metrics["export_rank"] in task.export_ladder()
    from hpctl.plugins.grasp_lora.lm import PassCounter, batched_loss
    from hpctl.plugins.grasp_lora.lora import lora_factors, unload_lora

    loaded = PeftModel.from_pretrained(fresh, str(out / "final_adapter"), adapter_name="final")
    assert {m.r["final"] for m in loaded.modules() if hasattr(m, "r") and "final" in m.r} \
        == {int(metrics["export_rank"])}
    factors = lora_factors(loaded, "final")
    fresh = unload_lora(loaded)
    with merged_into_copies(fresh, factors), torch.no_grad():  # the compact adapter's dev loss, measured anew
        assert batched_loss(fresh, task.splits["dev"].batches, PassCounter()) == pytest.approx(
            metrics["export_adapter_loss"], rel=1e-5)
    assert metrics["final_adapter_bytes"] == sum(f.stat().st_size for f in (out / "final_adapter").iterdir())
    assert metrics["final_delta_bytes"] == (out / "final_delta.safetensors").stat().st_size

    # the frozen backbone was never written: train, probe, finish, target-only
    for name, p in task.backbone_parameters().items():
        assert torch.equal(p, frozen[name]), name
    assert not any(p.requires_grad for p in task.backbone_parameters().values())


def test_per_group_knob(tmp_path):
    task = _make(tmp_path, knob="per_group")
    assert task.knob.dim == 2 and task.knob.labels == ("attn", "mlp")
    task.reset(0)
    before = task.snapshot()
    assert np.isfinite(task.probe(np.array([0.2, 0.7])))
    _assert_same(before, task.snapshot())
    metrics = task.evaluate("micro_dev", np.array([0.2, 0.7]))
    assert metrics["sparsity_attn"] == pytest.approx(0.2, abs=1e-3)
    assert metrics["sparsity_mlp"] == pytest.approx(0.7, abs=1e-3)
    assert np.isfinite(task.train(1, np.array([0.1, 0.5])))


def test_registered_gymnasium_id_builds_the_smoke_task(smoke):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import hpctl  # noqa: F401  registers the ids

    task, _ = smoke
    env = gym.make("hpctl/GraspLoraSmoke-v0", out_dir=task.out_dir)  # the fixture's adapters are reused
    base = env.unwrapped
    assert isinstance(base, ControlEnv) and base.task.cfg == task.cfg  # the smoke preset, resolved
    assert base.knob.name == task.knob.name and base.group_size == 4  # the plugin's group size
    env.reset(seed=0)
    assert base.task.notes["source_adapter"].startswith("reused")
    _, reward, _, _, info = env.step(np.array([0.3], dtype=np.float32))
    assert np.isfinite(reward) and base.probes == 1
    check_env(base, skip_render_check=True)
    env.close()


def test_same_out_dir_reuses_the_trained_adapters(smoke):
    task, _ = smoke
    again = _make(Path(task.out_dir))
    again.reset(0)
    assert again.notes["source_adapter"].startswith("reused")
    assert again.notes["target_adapter"].startswith("reused")
    _assert_same(task.merged_start and {k: (f.A, f.B) for k, f in task.merged_start.items()},
                 {k: (f.A, f.B) for k, f in again.merged_start.items()})


def test_cli_smoke_pipeline_and_eval(grasp_smoke_run, hpctl_main, tmp_path):
    run, result, _ = grasp_smoke_run  # `hpctl run grasp_lora --preset smoke`, once per session
    assert 0.0 <= result["learned"]["prune_ratio"] <= 0.9
    for key in ("f1", "exact_match", "target_only_f1", "sparsity"):
        assert key in result["metrics"]
    assert {"load_s", "source_adapter_s", "probe_s", "final_train_s"} <= set(result["phases"])
    assert (run / "final_adapter" / "adapter_model.safetensors").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(result["tracking_uri"])
    exp = client.get_run(result["mlflow_run_id"]).info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'")
    names = {c.info.run_name: c for c in children}
    assert {"source_adapter", "target_adapter", "final_train", "target_only"} <= set(names) and "controller" not in names
    assert names["source_adapter"].data.metrics["backward"] > 0
    assert all(c.info.status == "FINISHED" for c in children)

    data = {"version": "1", "data": [{"title": "t", "paragraphs": [{
        "context": "باريس هي عاصمة فرنسا.",
        "qas": [{"id": "q1", "question": "ما هي عاصمة فرنسا؟", "answers": [{"text": "باريس", "answer_start": 0}]}]}]}]}
    (tmp_path / "mini.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    code, out, err = hpctl_main("eval", str(run), "--data", str(tmp_path / "mini.json"), "--json",
                                "-o", "device=cpu", "--option", "max-new-tokens=3")
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["examples"] == 1.0 and "f1" in metrics and np.isfinite(metrics["loss"])
    code, out, err = hpctl_main("eval", str(run), "--data", str(tmp_path / "mini.json"), "-o", "nope=1")
    assert code != 0 and "no option 'nope'" in err and "Traceback" not in err


@pytest.mark.slow
def test_controller_run_and_fine_tunes_have_their_own_lengths(tmp_path):
    assert resolve_config(GraspLoraConfig(preset="default", steps=64)).controller_steps == 16
    assert resolve_config(GraspLoraConfig(preset="smoke", steps=2)).controller_steps == 2  # never above steps
    task = _make(tmp_path, steps=6, controller_steps=3, baseline="none")
    assert (task.total_steps, task.fine_tune_steps) == (3, 6)
    env = ControlEnv(task, group_size=2, steps_per_round=1)
    env.reset(seed=0)
    while not env.done:
        env.advance(np.array([0.3]))
    assert env.steps_done == 3 and task.phase_passes["train"]["backward"] == 3
    task.finish(np.array([0.3]))
    # the final run is a whole fine-tune (6 steps), not the controller run's 3
    phases = json.loads((tmp_path / "grasp_phases.json").read_text())
    assert phases["passes"]["final_train"]["backward"] == task.fine_tune_steps == 6
    assert task.phase_passes["final_train"]["backward"] == 6
    with pytest.raises(ConfigError, match="controller-steps"):
        _make(tmp_path, controller_steps=0)


def test_generation_based_probe(tmp_path):
    task = _make(tmp_path, probe_metric="f1")
    task.reset(0)
    before = task.snapshot()
    score = task.probe(np.array([0.3]))
    assert 0.0 <= score <= 100.0
    _assert_same(before, task.snapshot())
