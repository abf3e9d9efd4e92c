"""backbone_prune on the tiny backbone: mask math, bit-exact probes, the reward's shape, the CLI
pipeline with its outputs and `hpctl eval`, the task contract (resume), bad input, the Gym ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [pytest.mark.llm,
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

from hpctl.errors import ConfigError  # noqa: E402
from hpctl.plugins.backbone_prune import BackbonePruneConfig, BackbonePrunePlugin, resolve_config  # noqa: E402
from hpctl.plugins.backbone_prune.masks import (  # noqa: E402
    BackbonePruner,
    InputNorms,
    PrunedLinear,
    block_linears,
    global_ranks,
    group_layers,
    install,
    layer_scores,
    load_masks,
    row_ranks,
    save_masks,
    uninstall,
)
from hpctl.plugins.backbone_prune.objective import Objective  # noqa: E402
from hpctl.plugins.grasp_lora.backbone import load_backbone  # noqa: E402


def _make(tmp: Path, backbone=None, **overrides):
    return BackbonePrunePlugin().make_task(BackbonePruneConfig(preset="smoke", **overrides), seed=0, out_dir=tmp,
                                           backbone=backbone)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    task = _make(tmp_path_factory.mktemp("backbone_prune"))
    task.reset(0)
    fresh, _, _ = load_backbone("tiny")  # deterministic: the reference for "never written"
    frozen = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    assert set(frozen) == set(task.backbone_parameters())
    yield task, frozen
    task.close()


def _assert_backbone_unchanged(task, frozen) -> None:
    params = task.backbone_parameters()
    assert params.keys() == frozen.keys()
    for name, p in params.items():
        assert torch.equal(p, frozen[name]), name


def _same(a, b) -> bool:
    from hpctl.testing import state_difference

    return state_difference(a, b) is None


# ----------------------------------------------------------------------------- mask math
def _tiny_pruner(ranking: str, per_group: bool, score: str = "magnitude"):
    model, _, _ = load_backbone("tiny")
    linears = block_linears(model)
    groups = group_layers(list(linears), per_group)
    wrappers = install(model, list(linears))
    scores = {n: layer_scores(m.weight, score, torch.ones(m.in_features) if score == "wanda" else None)
              for n, m in linears.items()}
    if ranking == "row":
        ranks = {n: row_ranks(s) for n, s in scores.items()}
    else:
        ranks = {}
        for names in groups.values():
            ranks.update(zip(names, global_ranks([scores[n] for n in names])))
    return model, wrappers, BackbonePruner(wrappers, groups, ranks, ranking)


def test_block_linears_are_the_blocks_projections_only():
    model, _, _ = load_backbone("tiny")
    linears = block_linears(model)
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(n.startswith("model.layers.") for n in linears)  # not the embeddings, not the LM head
    groups = group_layers(list(linears), per_group=True)
    assert [n.rsplit(".", 1)[-1] for n in groups["attn"][:4]] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert [n.rsplit(".", 1)[-1] for n in groups["mlp"][:3]] == ["gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("ranking", ["row", "global"])
def test_global_and_per_group_sparsity_are_achieved_within_rounding(ranking):
    _, wrappers, pruner = _tiny_pruner(ranking, per_group=False)
    n_all = pruner.n_weights
    for s in (0.0, 0.3, 0.55, 0.9, 1.0):
        masks = pruner.keep_masks(s)
        pruned = sum(int((~m).sum()) for m in masks.values())
        achieved = pruner.achieved(s)
        assert achieved["all"] == pytest.approx(pruned / n_all, abs=0)  # the cheap count is the mask's
        if ranking == "global":
            assert pruned == round(s * n_all)  # exact
        else:  # every row of every layer at round(s * in_features)
            assert abs(achieved["all"] - s) <= 0.5 / min(w.in_features for w in wrappers.values())
            for name, m in masks.items():
                per_row = (~m).sum(dim=1)
                assert torch.all(per_row == round(s * m.shape[1])), name
        assert sum(pruner.pruned_counts(s).values()) == pruned

    _, wrappers, pruner = _tiny_pruner(ranking, per_group=True)
    value = [0.2, 0.7]
    achieved = pruner.achieved(value)
    masks = pruner.keep_masks(value)
    for g, s in zip(("attn", "mlp"), value):
        members = [n for n, l in pruner.layers.items() if l.group == g]
        pruned = sum(int((~masks[n]).sum()) for n in members)
        total = sum(masks[n].numel() for n in members)
        assert achieved[g] == pruned / total
        bound = 0.5 / min(wrappers[n].in_features for n in members) if ranking == "row" else 0.5 / total
        assert abs(achieved[g] - s) <= bound + 1e-12
    with pytest.raises(ConfigError, match="sparsities must be in"):
        pruner.achieved([0.2, 1.2])


def test_wanda_and_magnitude_on_a_hand_made_layer():
    w = torch.tensor([[4.0, -1.0, 2.0, 0.5],
                      [1.0, 3.0, -0.2, 2.0]])
    norms = torch.tensor([0.1, 10.0, 1.0, 1.0])
    mag, wanda = layer_scores(w, "magnitude"), layer_scores(w, "wanda", norms)
    assert torch.equal(wanda, w.abs() * norms)
    keep = {name: row_ranks(s) >= 2 for name, s in (("magnitude", mag), ("wanda", wanda))}
    # magnitude drops each row's two smallest |W|; Wanda drops what the inputs make small
    assert keep["magnitude"].tolist() == [[True, False, True, False], [False, True, False, True]]
    assert keep["wanda"].tolist() == [[False, True, True, False], [False, True, False, True]]
    # globally ranked: the 3 lowest scores of the layer wherever they are (0.1, 0.2 in row 1, 0.4 in row 0)
    (g,) = global_ranks([wanda])
    assert (g >= 3).tolist() == [[False, True, True, True], [False, True, False, True]]
    with pytest.raises(ConfigError, match="unknown score 'l1'"):
        layer_scores(w, "l1")


def test_input_norms_count_real_tokens_only():
    lin = nn.Linear(3, 2)
    x = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]],
                      [[0.0, 1.0, 2.0], [100.0, 100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[True, True], [True, False]])
    with InputNorms({"lin": lin}) as rec:
        rec.token_mask = mask
        lin(x)
    real = x[mask]
    assert torch.allclose(rec.norms()["lin"], real.pow(2).sum(0).sqrt())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_weights_are_the_weights_bit_for_bit_or_plus_zero(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(40, 6, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight[0, :5] = -0.0  # signed zeros and ties stay what they are
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(lin)])
    wrappers = install(model, ["layers.0.0"])
    rank = row_ranks(layer_scores(lin.weight, "magnitude"))
    pruner = BackbonePruner(wrappers, {"all": ["layers.0.0"]}, {"layers.0.0": rank}, "row")
    w = lin.weight.detach().clone()
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[dtype]
    for s in (0.0, 0.25, 0.5, 0.975, 1.0):
        with pruner.applied(s):
            used = wrappers["layers.0.0"].weight_override
            keep = rank >= round(s * 40)
            if s == 0.0:
                assert used is None  # dense: nothing formed
                continue
            assert torch.equal(used.view(bits)[keep], w.view(bits)[keep])
            assert torch.all(used.view(bits)[~keep] == 0)  # +0.0 exactly
        assert wrappers["layers.0.0"].weight_override is None
    assert torch.equal(lin.weight.view(bits), w.view(bits))
    uninstall(model, wrappers)
    assert model.layers[0][0] is lin


def test_masks_round_trip_bit_packed(tmp_path):
    masks = {"a": torch.rand(7, 13) > 0.4, "b": torch.rand(3, 8) > 0.9}
    size = save_masks(tmp_path / "m.safetensors", masks, {"score": "wanda"})
    assert size < 7 * 13 * 4  # a bit per weight plus the header
    back, meta = load_masks(tmp_path / "m.safetensors")
    assert back.keys() == masks.keys() and all(torch.equal(back[k], masks[k]) for k in masks)
    assert meta == {"score": "wanda"}
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(Exception, match="cannot read the backbone masks"):
        load_masks(tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------- the reward
def test_the_reward_has_an_interior_optimum_on_a_synthetic_loss_curve():
    ref = 2.0
    grid = np.linspace(0.0, 0.9, 901)
    loss = ref * (1 + 0.3 * grid ** 2)  # the relative loss grows with sparsity
    star = np.sqrt(0.05 / 0.3)  # where it reaches the 5 % tolerance
    tol = Objective("tolerance", tolerance=0.05, penalty=1.0)
    rewards = np.array([tol(s, l, ref) for s, l in zip(grid, loss)])
    best = grid[int(np.argmax(rewards))]
    assert 0.0 < best < 0.9 and best == pytest.approx(star, abs=2e-3)  # interior: the sparsest within tolerance
    inside = grid <= star
    assert np.allclose(rewards[inside], grid[inside])  # inside the tolerance the reward is the sparsity
    assert np.max(np.abs(np.diff(rewards))) < 0.01  # continuous: no jump between neighbours 0.001 apart
    assert tol(0.5, ref * 1.10, ref) == pytest.approx(0.5 - 1.0)  # a whole tolerance over costs `penalty`
    price = Objective("price", tolerance=0.05, penalty=1.0)
    p = np.array([price(s, l, ref) for s, l in zip(grid, loss)])
    # linear price: optimum where d(L/ref)/ds = tol / penalty, i.e. 0.6 s = 0.05
    assert grid[int(np.argmax(p))] == pytest.approx(0.05 / 0.6, abs=2e-3)
    for kwargs, match in (({"tolerance": 0.0}, "tolerance must be > 0"), ({"tolerance": -0.1}, "tolerance must be > 0"),
                          ({"penalty": 0.0}, "penalty must be > 0"), ({"kind": "best"}, "unknown objective")):
        with pytest.raises(ConfigError, match=match):
            Objective(**kwargs)


# ----------------------------------------------------------------------------- the task
def test_probes_restore_the_backbone_and_state_bit_for_bit(smoke):
    task, frozen = smoke
    task.train(1, np.array([0.3]))
    before, current = task.snapshot(), task.pruner.current()
    rewards = [task.probe(np.array([s])) for s in (0.0, 0.45, 0.9)]
    assert all(np.isfinite(rewards))
    assert _same(before, task.snapshot())
    after = task.pruner.current()
    assert after.keys() == current.keys() and all(after[k] is current[k] for k in current)  # training weights back
    _assert_backbone_unchanged(task, frozen)
    rec = task.landscape[-3:]
    assert [r["step"] for r in rec] == [task.steps_done] * 3
    assert rec[0]["sparsity"] == 0.0 and rec[0]["reward"] == task.objective(0.0, rec[0]["loss"], rec[0]["ref_loss"])
    assert rec[2]["loss"] != rec[0]["loss"]  # the sparsity matters


def test_a_raising_probe_restores_everything(smoke, monkeypatch):
    task, frozen = smoke
    task.train(1, np.array([0.6]))
    task.reference("micro_dev", task.steps_done)  # cached first: the probe's own pruned forward is what raises
    before, current = task.snapshot(), task.pruner.current()
    import hpctl.plugins.backbone_prune.task as task_mod

    real = task_mod.batched_loss

    def explode(model, batches, counter=None):
        real(model, batches, counter)  # the pruned forward runs, then fails
        raise RuntimeError("probe failed")

    monkeypatch.setattr(task_mod, "batched_loss", explode)
    with pytest.raises(RuntimeError, match="probe failed"):
        task.probe(np.array([0.8]))
    monkeypatch.undo()
    assert _same(before, task.snapshot())
    assert all(task.pruner.current()[k] is v for k, v in current.items())
    _assert_backbone_unchanged(task, frozen)


def test_the_dense_reference_is_the_dense_backbones_same_training(smoke):
    task, _ = smoke
    task.reset(0)
    ref2 = task.reference("micro_dev", 2)
    # the same recipe by hand: train 2 steps at sparsity 0 from the start, score micro-dev dense
    task.train(2, np.array([0.0]))
    assert task.loss_at("micro_dev", np.array([0.0])) == ref2
    assert task.reference("micro_dev", 0) != ref2  # a fresh reference from the start when asked for an earlier step
    task.reset(0)


def test_the_task_keeps_the_contract_and_resumes_in_a_fresh_task(tmp_path):
    """hpctl.testing.check_task: snapshots round-trip through the checkpoint format, probes leave the state
    as it was, and a fresh task restored from a snapshot trains on and probes bit for bit (--resume)."""
    from hpctl.testing import check_task

    check_task(lambda: _make(tmp_path), steps=1, value=np.array([0.5]))


def test_finish_outputs_and_hpctl_eval_reproduce_the_pruned_model(smoke, tmp_path):
    task, frozen = smoke
    value = np.array([0.5])
    metrics = task.finish(value)
    for key in ("sparsity", "dev_loss", "dense_dev_loss", "test_loss", "dense_test_loss", "reward", "dev_reward",
                "f1", "exact_match", "dense_f1", "within_tolerance", "masks_bytes"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["sparsity"] == task.sparsity(value)["all"] and abs(metrics["sparsity"] - 0.5) < 0.01
    assert metrics["reward"] == task.objective(metrics["sparsity"], metrics["test_loss"], metrics["dense_test_loss"])
    out = Path(task.out_dir)
    for name in ("final_adapter/adapter_config.json", "dense_adapter/adapter_model.safetensors", "masks.safetensors",
                 "backbone_prune.json", "test_predictions.jsonl"):
        assert (out / name).is_file(), name
    masks, meta = load_masks(out / "masks.safetensors")
    assert masks.keys() == task.pruner.layers.keys() and meta["score"] == "magnitude"
    assert sum(int((~m).sum()) for m in masks.values()) / task.pruner.n_weights == metrics["sparsity"]
    record = json.loads((out / "backbone_prune.json").read_text())
    assert record["metrics"]["reward"] == metrics["reward"] and record["landscape"]

    # hpctl eval on the run's test examples: the saved masks and adapter give the in-memory loss
    data = {"version": "1", "data": [{"title": "t", "paragraphs": [{
        "context": "باريس هي عاصمة فرنسا ومدينة كبيرة.",
        "qas": [{"id": "q1", "question": "ما هي عاصمة فرنسا؟", "answers": [{"text": "باريس", "answer_start": 0}]}]}]}]}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    from hpctl.plugins.grasp_lora.corpora import read_examples
    from hpctl.plugins.grasp_lora.lm import batched_loss
    from hpctl.plugins.grasp_lora.splits import encode_split

    split = encode_split(task.tokenizer, read_examples("xquad", str(path), "ar", max_context_chars=300), task.cfg,
                         task.pad_id)
    with torch.no_grad():
        want = batched_loss(task.model, split.batches)  # the recovered adapter on the backbone pruned at 0.5
    got = BackbonePrunePlugin().eval_run(out, BackbonePruneConfig(preset="smoke"), data=str(path))
    assert got["loss"] == pytest.approx(want, rel=1e-5) and got["sparsity"] == metrics["sparsity"]
    dense = BackbonePrunePlugin().eval_run(out, BackbonePruneConfig(preset="smoke"), data=str(path), adapter="dense")
    assert dense["sparsity"] == 0.0 and dense["loss"] != got["loss"]
    _assert_backbone_unchanged(task, frozen)


def test_per_group_knob_and_wanda(tmp_path):
    task = _make(tmp_path, knob="per_group", score="wanda")
    assert task.knob.dim == 2 and task.knob.labels == ("attn", "mlp")
    task.reset(0)
    assert task.notes["calibration_examples"] == 4
    before = task.snapshot()
    assert np.isfinite(task.probe(np.array([0.2, 0.7])))
    assert _same(before, task.snapshot())
    got = task.evaluate("micro_dev", np.array([0.2, 0.7]))
    assert abs(got["sparsity_attn"] - 0.2) < 0.01 and abs(got["sparsity_mlp"] - 0.7) < 0.01
    assert np.isfinite(task.train(1, np.array([0.1, 0.5])))
    # Wanda's masks differ from magnitude's on the same backbone
    mag = _make(tmp_path / "mag", backbone=None, knob="per_group")
    mag.reset(0)
    w_keep, m_keep = task.pruner.keep_masks([0.5, 0.5]), mag.pruner.keep_masks([0.5, 0.5])
    assert any(not torch.equal(w_keep[n], m_keep[n]) for n in w_keep)
    task.close()
    mag.close()


# ----------------------------------------------------------------------------- the CLI
def test_cli_smoke_run_eval_and_mlflow(hpctl_main, tmp_path):
    code, out, err = hpctl_main("run", "backbone_prune", "--preset", "smoke", "--out", "run", "--json",
                                "--budget", "5", "--group-size", "4", "--no-generate")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= result["learned"]["sparsity"] <= 0.9
    for key in ("sparsity", "dev_loss", "dense_dev_loss", "test_loss", "dense_test_loss", "reward"):
        assert key in result["metrics"], key
    assert {"load_s", "scores_s", "probe_s", "probe_prune_s", "dense_baseline_s", "recovery_s"} <= set(result["phases"])
    run = tmp_path / "run"
    assert (run / "final_adapter" / "adapter_model.safetensors").is_file() and (run / "masks.safetensors").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(result["tracking_uri"])
    exp = client.get_run(result["mlflow_run_id"]).info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'")
    names = {c.info.run_name: c for c in children}
    assert {"dense_baseline", "recovery"} <= set(names) and "controller" not in names
    assert all(c.info.status == "FINISHED" for c in children)
    assert names["recovery"].data.params["steps"] == "4"

    data = {"version": "1", "data": [{"title": "t", "paragraphs": [{
        "context": "القاهرة هي عاصمة مصر.",
        "qas": [{"id": "q1", "question": "ما هي عاصمة مصر؟", "answers": [{"text": "القاهرة", "answer_start": 0}]}]}]}]}
    (tmp_path / "mini.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    code, out, err = hpctl_main("eval", str(run), "--data", str(tmp_path / "mini.json"), "--json")
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["examples"] == 1.0 and np.isfinite(metrics["loss"])
    assert metrics["sparsity"] == pytest.approx(result["metrics"]["sparsity"])
    code, _, err = hpctl_main("eval", str(run), "--data", str(tmp_path / "mini.json"), "--adapter", "source")
    assert code != 0 and "unknown adapter 'source'" in err and "Traceback" not in err


@pytest.mark.parametrize("flags,message", [
    (["--min-sparsity", "0.5", "--max-sparsity", "0.4"], "sparsity bounds must satisfy"),
    (["--max-sparsity", "1.0"], "sparsity bounds must satisfy"),
    (["--min-sparsity", "-0.1"], "sparsity bounds must satisfy"),
    (["--tolerance", "0"], "tolerance must be > 0"),
    (["--tolerance", "-0.05"], "tolerance must be > 0"),
    (["--score", "sparsegpt"], "sparsegpt"),
    (["--ranking", "column"], "column"),
    (["--start-sparsity", "0.95"], "start-sparsity"),
])
def test_bad_input_is_one_line(hpctl_main, flags, message):
    code, out, err = hpctl_main("run", "backbone_prune", "--preset", "smoke", *flags)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_a_backbone_without_linear_layers_in_its_blocks_is_a_config_error(smoke, tmp_path):
    task, _ = smoke

    class Conv1D(nn.Module):  # GPT-2's projections are not nn.Linear
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 4))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = Conv1D()

    class NoLinears(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(4, 10)  # outside the blocks: not prunable

    bad = _make(tmp_path, backbone=(NoLinears(), task.tokenizer, "no-linears"))
    with pytest.raises(ConfigError, match="has no linear layers in its transformer blocks") as info:
        bad.reset(0)
    assert "\n" not in str(info.value)
    flat = _make(tmp_path, backbone=(nn.Sequential(nn.Linear(2, 2)), task.tokenizer, "flat"))
    with pytest.raises(ConfigError, match="has no"):
        flat.reset(0)


def test_presets_and_config_checks():
    cfg = resolve_config(BackbonePruneConfig(preset="smoke"))
    assert cfg.backbone == "tiny" and cfg.start_sparsity == pytest.approx(0.45) and cfg.lora_alpha == 8.0
    default = resolve_config(BackbonePruneConfig())
    grasp = __import__("hpctl.plugins.grasp_lora", fromlist=["PRESETS"]).PRESETS["default"]
    from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

    def ids(**sizes):
        data = load_task_data("xquad", "ar", seed=0, sizes=SplitSizes(source_train=0, **sizes))
        return {split: [e.id for e in getattr(data, split)] for split in ("test", "dev", "micro_dev")}

    ours = ids(**{k: getattr(default, k) for k in ("target_train", "micro_dev", "dev", "test")})
    theirs = ids(**{k: grasp[k] for k in ("target_train", "micro_dev", "dev", "test")})
    assert ours["test"] == theirs["test"] and ours["dev"] == theirs["dev"]  # grasp_lora's default test and dev
    assert len(ours["micro_dev"]) == default.micro_dev
    assert default.controller_steps <= default.steps
    with pytest.raises(ConfigError, match="controller-steps"):
        BackbonePruneConfig(steps=4, controller_steps=8)
    with pytest.raises(ConfigError, match="unknown knob"):
        BackbonePruneConfig(knob="per-group")


# ----------------------------------------------------------------------------- Gymnasium
def test_the_registered_gym_ids_build_the_task_and_pass_the_env_checker(tmp_path):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import hpctl  # noqa: F401  registers the ids
    from hpctl.control_env import ControlEnv
    from hpctl.envs import PLUGIN_IDS

    assert PLUGIN_IDS["hpctl/BackbonePrune-v0"] == {"plugin": "backbone_prune"}
    env = gym.make("hpctl/BackbonePruneSmoke-v0", out_dir=tmp_path / "env", budget=10)
    base = env.unwrapped
    assert isinstance(base, ControlEnv) and base.knob.name == "sparsity" and base.group_size == 4
    env.reset(seed=0)
    _, reward, _, _, _ = env.step(np.array([0.3], dtype=np.float32))
    assert np.isfinite(reward) and base.probes == 1
    check_env(base, skip_render_check=True)
    env.close()


# ----------------------------------------------------------------------------- the benchmark
def test_the_benchmark_runs_a_part_on_the_tiny_backbone(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    from benchmarks.backbone_prune import compare, speed

    part = compare("smoke", 0, ["random"], grid=2, budget=5, out_dir=tmp_path, sets={"generate": False})
    assert json.loads((tmp_path / "part-seed0.json").read_text())["seed"] == 0
    assert [g["value"]["sparsity"] for g in part["grid"]] == [0.0, 0.9]  # the grid spans the knob's range
    assert part["grid_choice"]["value"] in [g["value"] for g in part["grid"]]
    arm = part["controllers"]["random"]
    assert 0.0 <= arm["learned"]["sparsity"] <= 0.9 and np.isfinite(arm["dev"]["dev_reward"])
    assert arm["time_ratio_grid_over_run"] > 0
    fast = speed("smoke", 2, 0, {})
    assert fast["probes"] == 2 and 0.0 < fast["prune_fraction_of_probe"] < 1.0


def test_the_example_config_names_valid_options():
    import yaml

    from hpctl.config import build_dataclass, split_config

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "backbone_prune.yaml"
    data = yaml.safe_load(path.read_text())
    common, options = split_config(data, BackbonePruneConfig, source=str(path))  # raises on an unknown key
    assert common["controller"] == "grpo" and options["score"] == "wanda"
    build_dataclass(BackbonePruneConfig, options, what="backbone_prune")  # types and choices are valid too
