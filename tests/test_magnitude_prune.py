"""The magnitude_prune plugin: masks, the probe contract, snapshots, the objective, a CLI run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hpctl.errors import ConfigError
from hpctl.plugins.magnitude_prune import MagnitudePrunePlugin, MagnitudePruneTask, global_masks

ROOT = Path(__file__).resolve().parents[1]


def small_task(**kw) -> MagnitudePruneTask:
    kw.setdefault("total_steps", 120)
    return MagnitudePruneTask(**kw)


def assert_same_state(a: dict, b: dict) -> None:
    """Two snapshots are bit-for-bit equal: weights, optimizer moments, batch RNG, counters, masks."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(torch.as_tensor(sa[pid][key]), torch.as_tensor(sb[pid][key])), (pid, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert torch.equal(a["batch_rng"], b["batch_rng"])
    assert (a["steps"], a["seed"], a["mask_ratio"], a["mask_step"]) == (b["steps"], b["seed"], b["mask_ratio"],
                                                                        b["mask_step"])
    assert (a["masks"] is None) == (b["masks"] is None)
    if a["masks"] is not None:
        assert all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"]))


# ------------------------------------------------------------------ masks ----
@pytest.mark.parametrize("ratio", [0.0, 0.123, 0.37, 0.5, 0.81, 0.95])
def test_global_mask_hits_ratio_and_ranks_globally(ratio):
    task = small_task()
    task.train(30, np.array([0.3]))
    weights = task.model.weight_matrices()
    masks = global_masks(weights, ratio)
    n = sum(w.numel() for w in weights)
    pruned = sum(int((~m).sum()) for m in masks)
    assert abs(pruned - ratio * n) <= 1  # within one weight of the ratio
    assert [m.shape for m in masks] == [w.shape for w in weights]
    if 0 < pruned < n:
        kept_min = min(float(w.detach().abs()[m].min()) for w, m in zip(weights, masks) if m.any())
        pruned_max = max(float(w.detach().abs()[~m].max()) for w, m in zip(weights, masks) if (~m).any())
        assert pruned_max <= kept_min  # one threshold over all matrices together


def test_global_mask_differs_per_layer():
    task = small_task()
    task.train(60, np.array([0.0]))
    per_layer = task.layer_sparsity(0.7)
    assert len(per_layer) == 3
    assert max(per_layer) - min(per_layer) > 0.05  # global ranking, not 70 % of each matrix
    assert task.sparsity(task.masks(0.7)) == pytest.approx(0.7, abs=1 / task.n_weights)


def test_global_mask_exact_with_ties():
    weights = [torch.ones(4, 5), torch.ones(3, 3)]  # every magnitude tied
    masks = global_masks(weights, 0.5)
    assert sum(int((~m).sum()) for m in masks) == round(0.5 * 29)
    with pytest.raises(ValueError):
        global_masks(weights, 1.5)


# ---------------------------------------------------------- probe contract ----
def test_probe_never_changes_the_state():
    task = small_task()
    task.train(25, np.array([0.4]))
    before = task.snapshot()
    scores = [task.probe(np.array([r])) for r in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95)]
    assert_same_state(before, task.snapshot())
    assert all(np.isfinite(scores))
    assert len(set(scores)) == len(scores)  # the ratio matters
    # evaluating is read-only too, on every split
    for split in ("train", "micro_dev", "dev", "test"):
        task.evaluate(split, np.array([0.7]))
    assert_same_state(before, task.snapshot())


@pytest.mark.parametrize("where", ["relu", "cross_entropy"])
def test_probe_restores_bit_exact_when_it_raises(monkeypatch, where):
    task = small_task()
    task.train(25, np.array([0.4]))
    before = task.snapshot()

    def boom(*args, **kwargs):
        raise RuntimeError(f"injected fault in {where}")

    # `relu` fails mid-forward (after the first masked layer), `cross_entropy` after the forward pass
    monkeypatch.setattr(torch.nn.functional, where, boom)
    with pytest.raises(RuntimeError, match="injected fault"):
        task.probe(np.array([0.9]))
    monkeypatch.undo()
    assert_same_state(before, task.snapshot())
    # and training from here is exactly training from the pre-probe state
    a = task.train(10, np.array([0.4]))
    task.restore(before)
    assert task.train(10, np.array([0.4])) == a


def test_probe_fault_through_the_env_is_recorded_and_state_kept(monkeypatch):
    from hpctl.control_env import ControlEnv

    task = small_task()
    env = ControlEnv(task, group_size=4, steps_per_round=20)
    env.reset(seed=0)
    env.advance(np.array([0.5]))
    before = task.snapshot()
    events = []
    env.listeners.append(events.append)

    def boom(*args, **kwargs):
        raise OSError("disk")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", boom)
    assert np.isnan(env.probe(np.array([0.6])))
    monkeypatch.undo()
    assert [e["event"] for e in events] == ["fault", "probe"]
    assert_same_state(before, task.snapshot())


# ------------------------------------------------------------- snapshots ----
@pytest.mark.parametrize("mask_every", [1, 7])
def test_snapshot_restore_reproduces_training_exactly(mask_every):
    task = small_task(mask_every=mask_every)
    task.train(23, np.array([0.5]))  # mid-way through a mask period when mask_every=7
    snap = task.snapshot()
    buf = io.BytesIO()
    torch.save(snap, buf)  # snapshots are picklable (checkpoints, forks)
    loss_a = [task.train(9, np.array([0.62])), task.train(9, np.array([0.7]))]
    after_a = task.snapshot()
    for _ in range(2):  # restoring twice works: training after a restore never mutates the snapshot
        buf.seek(0)
        task.restore(torch.load(buf, weights_only=False))
        loss_b = [task.train(9, np.array([0.62])), task.train(9, np.array([0.7]))]
        assert loss_b == loss_a
        assert_same_state(after_a, task.snapshot())
    task.restore(snap)
    assert_same_state(snap, task.snapshot())


def test_reset_is_the_same_initial_state_and_seeds_differ():
    task = small_task(seed=3)
    first = task.snapshot()
    task.train(15, np.array([0.5]))
    task.reset()
    assert_same_state(first, task.snapshot())
    other = small_task(seed=4).snapshot()
    assert not torch.equal(first["model"]["layers.0.weight"], other["model"]["layers.0.weight"])


# ------------------------------------------------------------- objective ----
def test_default_sparsity_weight_makes_the_best_ratio_interior():
    """With the default price of sparsity a middle ratio beats both ends; without it, dense wins."""
    task = MagnitudePruneTask(seed=0)
    dev = {}
    for r in (0.0, 0.75, 0.95):
        task.full_run(np.array([r]))
        dev[r] = task.evaluate("dev", np.array([r]))
    score = {r: -m["loss"] + 0.5 * m["sparsity"] for r, m in dev.items()}
    assert score[0.75] > score[0.0] and score[0.75] > score[0.95]
    assert dev[0.0]["loss"] < dev[0.95]["loss"]  # sparsity alone costs loss: the trade-off is real
    assert dev[0.75]["score"] == pytest.approx(score[0.75])


def test_accuracy_metric_and_bad_options():
    task = small_task(probe_metric="accuracy", sparsity_weight=0.0)
    task.train(60, np.array([0.0]))
    m = task.evaluate("micro_dev", np.array([0.0]))
    assert task.probe(np.array([0.0])) == pytest.approx(m["accuracy"])
    assert 0.0 <= m["accuracy"] <= 1.0 and m["sparsity"] == 0.0
    with pytest.raises(ConfigError, match="unknown split"):
        task.evaluate("validation", np.array([0.5]))
    for kw, msg in [({"high": 1.0}, "0 <= low < high < 1"), ({"default": 0.99}, "outside the bounds"),
                    ({"probe_metric": "f1"}, "unknown probe metric"), ({"sparsity_weight": -1.0}, ">= 0"),
                    ({"dev_size": 1500}, "leaves"), ({"hidden": 0}, "hidden must be >= 1")]:
        with pytest.raises(ConfigError, match=msg):
            small_task(**kw)


def test_finish_modes_and_thread_setting(tmp_path):
    before_threads = torch.get_num_threads()
    task = small_task(final="continue", out_dir=tmp_path, threads=1)
    assert torch.get_num_threads() == 1
    task.train(40, np.array([0.6]))
    snap = task.snapshot()
    res = task.finish(np.array([0.6]))
    assert_same_state(snap, task.snapshot())  # "continue" evaluates the trained network as is
    assert res["sparsity"] == pytest.approx(0.6, abs=1 / task.n_weights)
    saved = torch.load(tmp_path / "pruned_mlp.pt")
    zeros = sum(int((saved["state_dict"][f"layers.{i}.weight"] == 0).sum()) for i in range(3))
    assert zeros >= round(0.6 * task.n_weights)
    assert task.artifacts() == [tmp_path / "pruned_mlp.pt"]
    task.close()
    assert torch.get_num_threads() == before_threads

    retrain = small_task(final="retrain")
    retrain.train(40, np.array([0.1]))
    res_r = retrain.finish(np.array([0.6]))
    fresh = small_task()
    fresh.train(fresh.total_steps, np.array([0.6]))
    assert res_r["test_accuracy"] == fresh.evaluate("test", np.array([0.6]))["accuracy"]
    assert set(res_r) >= {"test_score", "test_accuracy", "test_loss", "sparsity", "dev_score"}


# ------------------------------------------------------------------ wiring ----
def test_registered_only_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="hpctl.plugins")}
    assert eps["magnitude_prune"] == "hpctl.plugins.magnitude_prune:MagnitudePrunePlugin [prune]"  # its extra
    mentions = [p for p in (ROOT / "hpctl").rglob("*.py") if "magnitude_prune" in p.read_text(encoding="utf-8")]
    assert mentions == []  # the core knows nothing of it, as of a third-party plugin
    plugin = MagnitudePrunePlugin()
    assert plugin.primary_metric in ("test_score", "test_accuracy")


def test_cli_run_grpo(hpctl_main):
    code, out, err = hpctl_main("run", "magnitude_prune", "-c", "grpo", "--budget", "16", "--total-steps", "160",
                                "--json", "--out", "mp")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    ratio = res["learned"]["prune_ratio"]
    assert 0.0 <= ratio <= 0.95
    m = res["metrics"]
    assert 0.5 < m["test_accuracy"] <= 1.0  # a trained network, not chance (0.1)
    assert m["sparsity"] == pytest.approx(ratio, abs=1e-3)
    assert MagnitudePrunePlugin.primary_metric in m
    assert res["probes"] <= 16 + 8  # a round in flight may finish
    assert Path("mp/pruned_mlp.pt").is_file() and Path("mp/result.json").is_file()


def test_cli_rejects_bad_ratio_bounds(hpctl_main):
    code, _, err = hpctl_main("run", "magnitude_prune", "--max-ratio", "1.0", "-c", "random")
    assert code == 2
    assert "0 <= low < high < 1" in err and "Traceback" not in err
