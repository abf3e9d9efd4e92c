"""grasp_lora backbone: the tiny test model, errors, label-only loss, batched generation."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hpctl.errors import ConfigError  # noqa: E402
from hpctl.plugins.grasp_lora.backbone import load_backbone  # noqa: E402
from hpctl.plugins.grasp_lora.lm import (  # noqa: E402
    Encoded,
    answer_loss,
    collate,
    encode_example,
    encode_prompt,
    greedy_generate,
    label_logits,
    length_batches,
    takes_logits_to_keep,
)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny")


def test_tiny_is_deterministic_and_frozen(tiny):
    model, tok, name = tiny
    again, tok2, _ = load_backbone("tiny")
    assert "tiny" in name
    assert tok2 is tok
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert not p.requires_grad
        assert torch.equal(p, q), n
    assert len(tok) == model.config.vocab_size


@pytest.mark.parametrize("spec", ["/no/such/model", "./missing-folder", ""])
def test_missing_backbone_is_a_one_line_config_error(spec, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_backbone(spec, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    if spec:
        assert spec in str(err.value)


def test_unreadable_backbone_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_backbone(str(tmp_path))


def test_encode_truncates_prompt_from_the_left_and_ends_with_eos(tiny):
    _, tok, _ = tiny
    prompt = "Context: " + "word " * 400 + "\nQuestion: who?\nAnswer:"
    e = encode_example(tok, prompt, " Paris", max_len=64, max_target_len=8)
    assert len(e.ids) <= 64
    assert e.ids[0] == tok.bos_token_id
    assert e.ids[-1] == tok.eos_token_id
    assert tok.decode(e.ids[e.n_prompt:], skip_special_tokens=True) == " Paris"
    assert tok.decode(e.prompt).endswith("Answer:")
    p = encode_prompt(tok, prompt, 32)
    assert len(p) == 32 and p[0] == tok.bos_token_id


def test_label_logits_equal_full_logits_and_padding_is_neutral(tiny):
    model, tok, _ = tiny
    items = [encode_example(tok, f"Question {i}: {'x ' * (3 * i)}\nAnswer:", f" answer {i}", max_len=64,
                            max_target_len=6) for i in range(3)]
    batch = collate(items, tok.pad_token_id)
    with torch.no_grad():
        kept = label_logits(model, batch)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[batch.keep]
        assert kept.shape == (batch.n_labels, model.config.vocab_size)
        torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-5)
        # the summed loss of the padded batch = the sum of each example alone
        alone = sum(float(answer_loss(model, collate([e], tok.pad_token_id))) for e in items)
        assert float(answer_loss(model, batch)) == pytest.approx(alone, rel=1e-5)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: full logits from the wrapped model."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_label_logits_without_logits_to_keep_index_the_full_logits(tiny):
    model, tok, _ = tiny
    assert takes_logits_to_keep(model)
    plain = _NoLogitsToKeep(model)
    assert not takes_logits_to_keep(plain)
    items = [encode_example(tok, f"Question {i}?\nAnswer:", f" a{i}", max_len=32, max_target_len=4) for i in range(2)]
    batch = collate(items, tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(label_logits(plain, batch), label_logits(model, batch), rtol=1e-5, atol=1e-5)


def test_errors_inside_a_forward_are_not_retried(tiny, monkeypatch):
    """A TypeError raised by the model itself propagates (no silent second forward without logits_to_keep)."""
    model, tok, _ = tiny
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs)
        raise TypeError("a bug inside the model")

    monkeypatch.setattr(model, "forward", broken)
    batch = collate([encode_example(tok, "Q?\nAnswer:", " a", max_len=16, max_target_len=4)], tok.pad_token_id)
    with pytest.raises(TypeError, match="a bug inside the model"):
        label_logits(model, batch)
    assert len(calls) == 1 and "logits_to_keep" in calls[0]


def test_length_batches_cover_everything_once():
    import random

    lengths = [5, 1, 9, 3, 7, 2, 8]
    fixed = length_batches(lengths, 3)
    assert [lengths[i] for b in fixed for i in b] == sorted(lengths)
    shuffled = length_batches(lengths, 3, random.Random(0))
    assert sorted(i for b in shuffled for i in b) == list(range(len(lengths)))


def test_batched_greedy_generation_matches_one_by_one(tiny):
    model, tok, _ = tiny
    prompts = [encode_prompt(tok, p, 64) for p in ("Question: a?\nAnswer:", "Context: long " * 5 + "\nAnswer:",
                                                   "س: ما؟\nAnswer:")]
    together = greedy_generate(model, tok, prompts, max_new_tokens=5, batch_size=3, stop_at_newline=False)
    alone = [greedy_generate(model, tok, [p], max_new_tokens=5, batch_size=1, stop_at_newline=False)[0]
             for p in prompts]
    assert together == alone


def test_encoded_properties():
    e = Encoded(ids=(2, 5, 6, 7, 1), n_prompt=3)
    assert e.n_target == 2 and e.prompt == (2, 5, 6)
    b = collate([e], pad_id=0)
    assert b.labels.tolist() == [7, 1]
    assert b.keep[0].tolist() == [False, False, True, True, False]
    assert F.one_hot(b.labels, 8).shape == (2, 8)


def test_local_model_folder_loads_frozen(tiny, tmp_path):
    model, tok, _ = tiny
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    again, tok2, name = load_backbone(str(tmp_path / "m"))
    assert name == str(tmp_path / "m")
    assert not any(p.requires_grad for p in again.parameters())
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n
    assert tok2("Answer:")["input_ids"] == tok("Answer:")["input_ids"]
    from hpctl.plugins.grasp_lora.backbone import backbone_path

    assert backbone_path(again) == str((tmp_path / "m").resolve())  # what saved adapters name as their base


def test_tiny_backbone_path_loads_the_same_model(tiny):
    from transformers import AutoModelForCausalLM

    from hpctl.plugins.grasp_lora.backbone import backbone_path

    model, _, _ = tiny
    path = backbone_path(model)
    assert path is not None and os.path.isabs(path) and os.path.isdir(path)
    again = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_a_cold_cache_assembles_the_gguf_file_once(tmp_path, monkeypatch):
    """Tokenizer and weights come from one assembled GGUF file (it was assembled twice, printed twice)."""
    from hpctl.plugins.grasp_lora import backbone as B

    calls = []

    def source(tmp):
        calls.append(tmp)
        path = tmp / "model.gguf"
        path.write_bytes(b"gguf")
        return path

    def fake_tokenizer(gguf, out):
        assert gguf.is_file()
        (out / "tokenizer.json").write_text("{}")

    def fake_model(gguf, out):
        assert gguf.is_file()  # still there after the tokenizer was built from it
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(B, "_gguf_tokenizer", fake_tokenizer)
    monkeypatch.setattr(B, "_gguf_model", fake_model)
    folder = B._model_dir(tmp_path, source, "key")
    assert len(calls) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["hpctl-cache.json", "model.safetensors", "tokenizer.json"]
    assert (tmp_path / "key-tokenizer" / "tokenizer.json").is_file()
    assert not list(tmp_path.rglob("*.gguf"))  # the assembled file is gone
    B._model_dir(tmp_path, source, "key")
    assert len(calls) == 1  # cached: nothing assembled again
