"""grasp_lora adapters: exact merging, global magnitude pruning, exact undo, peft export."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# peft 0.21 calls a transformers 5.x API that warns on every PeftModel.from_pretrained
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from hpctl.errors import ConfigError  # noqa: E402
from hpctl.plugins.grasp_lora.backbone import load_backbone  # noqa: E402
from hpctl.plugins.grasp_lora.delta import DeltaAdapter, DeltaLinear, _MaskedDeltaLinear  # noqa: E402
from hpctl.plugins.grasp_lora.lm import collate, encode_example  # noqa: E402
from hpctl.plugins.grasp_lora.lora import (  # noqa: E402
    ATTN_TARGETS,
    MLP_TARGETS,
    LoraSpec,
    LowRank,
    attach_lora,
    export_peft,
    load_lora,
    lora_deltas,
    lora_factors,
    merge_adapters,
    parse_targets,
    save_lora,
    unload_lora,
)
from hpctl.plugins.grasp_lora.pruner import GlobalMagnitudePruner  # noqa: E402
from hpctl.plugins.grasp_lora.training import DataOrder  # noqa: E402

TARGETS = ATTN_TARGETS + MLP_TARGETS


def _randomise(model, name: str, seed: int) -> None:
    """Give adapter ``name`` a non-zero B so its delta is not zero (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"lora_B.{name}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def peft_pair():
    """A tiny backbone with a source (r=4) and a target (r=2) adapter on attn+mlp."""
    model, tok, _ = load_backbone("tiny")
    torch.manual_seed(0)
    pm = attach_lora(model, "source", LoraSpec(r=4, alpha=8, targets=TARGETS))
    pm = attach_lora(pm, "target", LoraSpec(r=2, alpha=6, targets=TARGETS))
    _randomise(pm, "source", 1)
    _randomise(pm, "target", 2)
    return pm, tok


@pytest.mark.parametrize("rule,weights,expect", [
    ("sum", None, (1.0, 1.0)), ("mean", None, (0.5, 0.5)), ("weighted", [0.3, 1.7], (0.3, 1.7)),
    ("target_only", None, (0.0, 1.0)), ("source_only", None, (1.0, 0.0)),
])
def test_merged_delta_is_the_weighted_sum_per_module(peft_pair, rule, weights, expect):
    pm, _ = peft_pair
    src, tgt = lora_deltas(pm, "source"), lora_deltas(pm, "target")
    name = merge_adapters(pm, ["source", "target"], rule, weights=weights, new_name=f"m_{rule}")
    merged = lora_deltas(pm, name)
    assert set(merged) == set(src) == set(tgt) and len(merged) == 2 * 7
    for mod in merged:
        want = expect[0] * src[mod] + expect[1] * tgt[mod]
        torch.testing.assert_close(merged[mod], want, rtol=1e-5, atol=1e-6)
    pm.delete_adapter(name)


def test_merge_rejects_unknown_rule_and_bad_weights(peft_pair):
    pm, _ = peft_pair
    with pytest.raises(ConfigError):
        merge_adapters(pm, ["source", "target"], "svd")
    with pytest.raises(ConfigError):
        merge_adapters(pm, ["source", "target"], "weighted", weights=[1.0])


def test_save_and_load_lora_round_trip(peft_pair, tmp_path):
    pm, _ = peft_pair
    path = save_lora(pm, "target", tmp_path / "target")
    assert (path / "adapter_config.json").is_file()
    base, _, _ = load_backbone("tiny")
    loaded = load_lora(base, path, "t2")
    want, got = lora_deltas(pm, "target"), lora_deltas(loaded, "t2")
    for mod in want:
        assert torch.equal(want[mod], got[mod])
    with pytest.raises(ConfigError, match="not a peft adapter"):
        load_lora(base, tmp_path, "nope")


@pytest.fixture
def installed():
    """A plain tiny backbone with a merged (sum) attn+mlp adapter installed as dense-delta wrappers."""
    model, tok, _ = load_backbone("tiny")
    torch.manual_seed(0)
    pm = attach_lora(model, "source", LoraSpec(r=4, alpha=8, targets=TARGETS))
    pm = attach_lora(pm, "target", LoraSpec(r=4, alpha=8, targets=TARGETS))
    _randomise(pm, "source", 3)
    _randomise(pm, "target", 4)
    merge_adapters(pm, ["source", "target"], "sum")
    factors = lora_factors(pm, "merged")
    base = unload_lora(pm)
    originals = {n: p.detach().clone() for n, p in base.named_parameters()}
    adapter = DeltaAdapter(base, factors)
    yield base, tok, adapter, originals
    adapter.remove()


def _pruned_count(masks) -> int:
    return sum(int((~m).sum()) for m in masks.values() if m is not None)


@pytest.mark.parametrize("ratio", [0.0, 0.013, 0.25, 0.37, 0.5, 0.777, 0.9, 1.0])
def test_global_prune_hits_the_ratio_within_one_weight(installed, ratio):
    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    masks = pruner.masks(ratio)
    total = sum(m.out_features * m.in_features for m in adapter.modules.values())
    assert abs(_pruned_count(masks) - ratio * total) <= 1
    # magnitude order: every kept |dW| >= every pruned |dW|, across modules
    if 0 < ratio < 1:
        idx = pruner.index()
        kept = torch.cat([idx.delta[n].abs()[masks[n]] for n in masks])
        pruned = torch.cat([idx.delta[n].abs()[~masks[n]] for n in masks])
        assert float(kept.min()) >= float(pruned.max())


def test_prune_is_global_not_per_matrix(installed):
    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    masks = pruner.masks(0.5)
    per_module = [1 - float(m.float().mean()) for m in masks.values()]
    assert max(per_module) - min(per_module) > 0.05  # modules get different sparsity
    assert pruner.sparsity(masks)["all"] == pytest.approx(0.5, abs=1e-6)


def test_ties_at_the_threshold_still_hit_the_count(installed):
    _, _, adapter, _ = installed
    with torch.no_grad():  # two modules with an all-zero delta: thousands of ties at |dW| = 0
        list(adapter.modules.values())[0].lora_B.zero_()
        list(adapter.modules.values())[5].lora_B.zero_()
    pruner = GlobalMagnitudePruner(adapter)
    total = sum(m.out_features * m.in_features for m in adapter.modules.values())
    for ratio in (0.01, 0.05, 0.3):
        assert abs(_pruned_count(pruner.masks(ratio)) - ratio * total) <= 1


def test_per_group_ratios_are_global_within_each_group(installed):
    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter, {"attn": ATTN_TARGETS, "mlp": MLP_TARGETS})
    masks = pruner.masks([0.2, 0.7])
    sp = pruner.sparsity(masks)
    assert sp["attn"] == pytest.approx(0.2, abs=1e-3) and sp["mlp"] == pytest.approx(0.7, abs=1e-3)
    for group, ratio in (("attn", 0.2), ("mlp", 0.7)):
        n = sum(adapter.modules[m].out_features * adapter.modules[m].in_features for m in pruner.members[group])
        assert abs(sum(int((~masks[m]).sum()) for m in pruner.members[group]) - ratio * n) <= 1
    with pytest.raises(ConfigError):
        pruner.masks([0.1, 0.2, 0.3])
    with pytest.raises(ConfigError):
        GlobalMagnitudePruner(adapter, {"attn": ATTN_TARGETS})  # mlp modules in no group


def _batch(tok):
    items = [encode_example(tok, f"Context: text {i}\nQuestion: q{i}?\nAnswer:", f" a{i}", max_len=48,
                            max_target_len=4) for i in range(3)]
    return collate(items, tok.pad_token_id)


def test_masked_forward_uses_exactly_w_plus_m_times_dw(installed):
    model, tok, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    name, mod = next(iter(adapter.modules.items()))
    x = torch.randn(2, 5, mod.in_features)
    with pruner.applied(0.4) as masks, torch.no_grad():
        want = F.linear(x, mod.base.weight + masks[name] * (mod.lora_B @ mod.lora_A) * mod.scale)
        torch.testing.assert_close(mod(x), want, rtol=0, atol=1e-6)
    # the training path (autograd through the factors) computes the same function
    pruner.set_training_masks(0.4)
    torch.testing.assert_close(mod(x), want, rtol=0, atol=1e-6)
    pruner.clear_training_masks()
    # unpruned: the plain LoRA path
    with torch.no_grad():
        lora = mod.base(x) + (x @ mod.lora_A.T @ mod.lora_B.T) * mod.scale
        torch.testing.assert_close(mod(x), lora)


def test_probe_and_training_paths_see_bit_identical_weights(installed):
    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    x = torch.randn(3, 4, next(iter(adapter.modules.values())).in_features)
    for ratio in (0.0, 0.3, 0.8, 1.0):
        with pruner.applied(ratio) as masks, torch.no_grad():
            probe = {n: m(x) for n, m in adapter.modules.items() if m.in_features == x.shape[-1]}
            kept = {n: masks[n] for n in probe}
        train_masks = pruner.set_training_masks(ratio)
        with torch.no_grad():
            for n, want in probe.items():
                assert torch.equal(adapter.modules[n](x), want), (ratio, n)
                if kept[n] is not None:  # the float training mask is the probe's keep-mask
                    assert torch.equal(train_masks[n].bool(), kept[n])
        pruner.clear_training_masks()


def test_masked_delta_gradient_is_the_chain_rule():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    A = torch.randn(2, 5, dtype=torch.double, requires_grad=True)
    B = torch.randn(4, 2, dtype=torch.double, requires_grad=True)
    W = torch.randn(4, 5, dtype=torch.double)
    for mask in ((torch.rand(4, 5) > 0.5).double(), None):
        assert torch.autograd.gradcheck(lambda x, A, B: _MaskedDeltaLinear.apply(x, A, B, W, None, mask, 1.7),
                                        (x, A, B))
        # and it matches autograd through the plain expression
        out = _MaskedDeltaLinear.apply(x, A, B, W, None, mask, 1.7).sum()
        ref = F.linear(x, W + (1 if mask is None else mask) * ((B * 1.7) @ A)).sum()
        g1 = torch.autograd.grad(out, (x, A, B))
        g2 = torch.autograd.grad(ref, (x, A, B))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


def test_apply_and_undo_is_bit_exact_also_on_exceptions(installed):
    model, tok, adapter, originals = installed
    pruner = GlobalMagnitudePruner(adapter)
    batch = _batch(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        out_before = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with pytest.raises(RuntimeError, match="boom"):
        with pruner.applied(0.6), torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            raise RuntimeError("boom")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for m in adapter.modules.values():
        assert m.weight_override is None and m.mask is None and not m.dense
    with torch.no_grad():
        out_after = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(out_before, out_after)
    # the backbone's own weights were never written
    adapter.remove()
    for n, p in model.named_parameters():
        assert torch.equal(p, originals[n]), n


def test_probes_at_one_training_state_reuse_the_index_and_buffers(installed):
    """What keeps a probe's prune+restore cheap: one threshold index per training state, and the
    effective weights written into the same buffers probe after probe (no allocation per probe)."""
    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    pruner.index()
    builds = pruner.index_builds
    where = []
    for r in (0.1, 0.5, 0.8):
        with pruner.applied(r):
            where.append([m.weight_override.data_ptr() for m in adapter.modules.values()])
    assert pruner.index_builds == builds  # the index is reused at the same training state
    assert where[0] == where[1] == where[2]
    with torch.no_grad():
        next(iter(adapter.modules.values())).lora_A.add_(1e-3)
    pruner.masks(0.5)
    assert pruner.index_builds == builds + 1  # and rebuilt once the factors changed


@pytest.mark.parametrize("rank", [None, 3])
def test_exported_adapter_loads_with_peft_and_matches(installed, tmp_path, rank):
    from peft import PeftModel

    model, tok, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    batch = _batch(tok)
    with pruner.applied(0.45) as masks, torch.no_grad():
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        info = export_peft(adapter, tmp_path / "final", masks=masks, rank=rank)
    fresh, _, _ = load_backbone("tiny")
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "final"))
    with torch.no_grad():
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    if rank is None:
        assert info["rel_error"] == 0.0
        # exact re-factorisation: equal up to float rounding of the two-matmul LoRA path
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert 0.0 < info["rel_error"] < 1.0
        assert (got - want).abs().max() > 0  # a truncated SVD is an approximation


def test_truncated_deltas_are_seeded_leave_the_random_state_and_are_exact_at_full_rank(installed):
    from hpctl.integrations.peft_export import TruncatedDeltas

    _, _, adapter, _ = installed
    pruner = GlobalMagnitudePruner(adapter)
    masks = {n: m.clone() if m is not None else None for n, m in pruner.masks(0.45).items()}
    state = torch.get_rng_state()
    svd = TruncatedDeltas(adapter, masks)
    low = svd.factors(2)  # randomized (rank 2 + 8 < the full rank of the tiny model's 64-wide modules)
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream is untouched
    again = TruncatedDeltas(adapter, masks).factors(2)
    assert all(torch.equal(low[n].A, again[n].A) and torch.equal(low[n].B, again[n].B) for n in low)
    full = max(min(d.shape) for d in svd.deltas.values())
    errors = [svd.rel_error(k) for k in (1, 2, 4, full)]
    assert errors[0] >= errors[1] >= errors[2] > 0 and errors[-1] < 1e-5  # full rank: the exact SVD
    for name, fac in svd.factors(3).items():
        assert fac.A.shape[0] == min(3, *svd.deltas[name].shape) and fac.scale == 1.0


def test_delta_adapter_rejects_mismatched_factors(installed):
    model, _, adapter, _ = installed
    name = next(iter(adapter.modules))
    bad = LowRank(torch.zeros(2, 3), torch.zeros(4, 2), 1.0)
    adapter.remove()
    with pytest.raises(ConfigError, match="do not fit"):
        DeltaAdapter(model, {name: bad})
    # nothing stays installed after the failure
    assert not any(isinstance(m, DeltaLinear) for m in model.modules())


def test_suspended_adapter_gives_the_plain_layers_back_and_returns(installed):
    model, tok, adapter, _ = installed
    batch = _batch(tok)
    wrapped = dict(adapter.modules)
    with torch.no_grad():
        with_adapter = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with pytest.raises(RuntimeError, match="inside"):
        with adapter.suspended():
            assert not any(isinstance(m, DeltaLinear) for m in model.modules())
            raise RuntimeError("inside")
    assert {n: m for n, m in model.named_modules() if isinstance(m, DeltaLinear)} == wrapped
    with adapter.suspended(), torch.no_grad():
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with torch.no_grad():
        again = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert not torch.equal(plain, with_adapter) and torch.equal(again, with_adapter)


def test_parse_targets():
    assert parse_targets("attn") == ATTN_TARGETS
    assert parse_targets("attn+mlp") == ATTN_TARGETS + MLP_TARGETS
    assert parse_targets("q_proj, v_proj") == ("q_proj", "v_proj")
    with pytest.raises(ConfigError):
        parse_targets(" ")


def test_data_order_state_round_trip():
    order = DataOrder([3, 1, 2, 5, 4], 2, seed=7)
    order.next()
    state = order.state()
    a = [order.next() for _ in range(6)]
    order.set_state(state)
    assert [order.next() for _ in range(6)] == a
    # 5 examples in batches of 2: epochs of 3 batches; a[2:5] is the second epoch, every example once
    assert sorted(i for b in a[2:5] for i in b) == [0, 1, 2, 3, 4]
