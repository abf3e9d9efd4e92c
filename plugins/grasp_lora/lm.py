"""Running the frozen causal LM cheaply: tokenising, batching, the label-only loss, generation.

* :func:`encode_example` / :func:`encode_prompt` tokenise ``prompt + target`` (BOS, target
  tokens, EOS), truncating long prompts from the left (after BOS) so the question and the
  ``Answer:`` cue stay in.
* :func:`collate` right-pads a batch and marks the *label positions* (CPU tensors: batches
  are built once and kept); :func:`answer_loss` moves the batch to the model's device, runs
  the model with ``logits_to_keep`` set to that boolean mask, so the 262k-way LM head is
  applied only where a target token is predicted, and returns the summed token
  cross-entropy, computed in float32 whatever the model's dtype. On Gemma 3 270M the
  grasp_lora training loop runs at 3.16x the tokens/s of a peft loop that computes logits at
  every position, 0.95x one with the same label-only loss
  (``benchmarks/results/grasp_vs_grid_cpu.md``).
* :func:`length_batches` groups examples of similar length; :func:`greedy_generate`
  left-pads prompts and decodes greedily.
* :class:`PassCounter` counts backbone forward/backward passes for benchmarks.

Loading the model is :mod:`.backbone`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from hpctl.errors import ConfigError
from hpctl.plugins.grasp_lora.backbone import model_device


@dataclass
class PassCounter:
    """Backbone passes, for benchmarks: teacher-forced forwards, backwards, generation steps."""

    forward: int = 0
    backward: int = 0
    generation_steps: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"forward_passes": self.forward, "backward_passes": self.backward,
                "generation_steps": self.generation_steps, "tokens": self.tokens}


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ``ids = prompt ids + target ids`` (the target ends with EOS)."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.ids[: self.n_prompt]


def encode_prompt(tokenizer, prompt: str, max_prompt_len: int) -> list[int]:
    """Prompt ids with BOS; longer prompts lose tokens from the left (after BOS)."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) > max_prompt_len:
        bos = tokenizer.bos_token_id
        head = [ids[0]] if bos is not None and ids and ids[0] == bos else []
        ids = head + ids[len(ids) - (max_prompt_len - len(head)):]
    return list(ids)


def encode_example(tokenizer, prompt: str, target: str, *, max_len: int, max_target_len: int,
                   add_eos: bool = True) -> Encoded:
    """Tokenise ``prompt`` and ``target`` separately (as generation sees them) and join them."""
    if max_target_len < 1 or max_len <= max_target_len:
        raise ConfigError(f"need 1 <= max_target_len < max_len, got {max_target_len} and {max_len}")
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"]
    tgt = list(tgt[: max_target_len - (1 if add_eos else 0)])
    if add_eos and tokenizer.eos_token_id is not None:
        tgt.append(tokenizer.eos_token_id)
    if not tgt:
        tgt = [tokenizer.eos_token_id]
    prompt_ids = encode_prompt(tokenizer, prompt, max_len - len(tgt))
    return Encoded(ids=tuple(prompt_ids + tgt), n_prompt=len(prompt_ids))


@dataclass
class Batch:
    """A right-padded teacher-forcing batch; ``keep`` marks positions whose next token is a label."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep: torch.Tensor
    labels: torch.Tensor

    @property
    def n_labels(self) -> int:
        return int(self.labels.numel())

    def to(self, device: torch.device | str) -> "Batch":
        """This batch on ``device`` (``self`` when it is there already)."""
        device = torch.device(device)
        if self.input_ids.device == device:
            return self
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.keep, self.labels)))


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad ``items``; labels are the target tokens in row-major order of ``keep``.

    The tensors are on the CPU; the functions that run the model move a batch to its device.
    """
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(items), width), dtype=torch.long)
    keep = torch.zeros((len(items), width), dtype=torch.bool)
    labels: list[int] = []
    for row, e in enumerate(items):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids, dtype=torch.long)
        att[row, :n] = 1
        keep[row, e.n_prompt - 1: n - 1] = True
        labels.extend(e.ids[e.n_prompt:])
    return Batch(ids, att, keep, torch.tensor(labels, dtype=torch.long))


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random | None = None,
                   pool: int = 8) -> list[list[int]]:
    """Indices grouped into batches of similar length.

    Without ``rng``: sorted by length, cut into batches (deterministic; for evaluation).
    With ``rng``: shuffled, then sorted by length within pools of ``pool`` batches, cut, and
    the batch order shuffled (one training epoch).
    """
    idx = list(range(len(lengths)))
    if rng is None:
        idx.sort(key=lambda i: (lengths[i], i))
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    batches: list[list[int]] = []
    span = batch_size * max(1, pool)
    for start in range(0, len(idx), span):
        chunk = sorted(idx[start:start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward has a ``logits_to_keep`` parameter (checked once per model class).

    A peft model passes its keyword arguments on, so its base model's forward is checked.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


def label_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits at the label positions only, shape ``(n_labels, vocab)``.

    Passes the boolean ``keep`` mask as ``logits_to_keep`` so the LM head runs only there;
    a model whose forward has no such parameter (:func:`takes_logits_to_keep`) computes
    logits everywhere, indexed afterwards. The batch is moved to the model's device first;
    the logits are in the model's dtype.
    """
    batch = batch.to(model_device(model))
    kwargs = {"logits_to_keep": batch.keep} if takes_logits_to_keep(model) else {}
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **kwargs)
    logits = out.logits
    if logits.dim() == 3:
        logits = logits[batch.keep] if logits.shape[1] == batch.keep.shape[1] else logits.reshape(-1, logits.shape[-1])
    if logits.shape[0] != batch.n_labels:
        raise RuntimeError(f"expected logits for {batch.n_labels} label positions, got {tuple(logits.shape)}")
    return logits


def answer_loss(model: torch.nn.Module, batch: Batch, counter: PassCounter | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (divide by ``batch.n_labels`` for the mean).

    A float32 scalar on the model's device (the logits are upcast before the cross-entropy).
    """
    logits = label_logits(model, batch)
    if counter is not None:
        counter.forward += 1
        counter.tokens += int(batch.attention_mask.sum())
    return F.cross_entropy(logits.float(), batch.labels.to(logits.device), reduction="sum")


def batched_loss(model: torch.nn.Module, batches: Sequence[Batch], counter: PassCounter | None = None,
                 on_batch: Callable[[int], None] | None = None) -> float:
    """Mean token loss over fixed batches, without gradients (float32 sums per batch, whatever the model's dtype).

    ``on_batch(n)`` is called after each batch with its number of examples (progress bars).
    """
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            total += float(answer_loss(model, b, counter))
            n += b.n_labels
            if on_batch is not None:
                on_batch(int(b.input_ids.shape[0]))
    return total / max(1, n)


def embed_texts(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                max_tokens: int = 256) -> list[torch.Tensor]:
    """Token embeddings of ``texts`` from ``model``'s last hidden layer: one ``(n_tokens, d)`` float32 CPU tensor each.

    The encoder of the semantic F1 (:mod:`.metrics.semantic_f1`): each text is tokenised
    without special tokens (at most ``max_tokens``), run after a BOS token (the context a
    decoder's states expect), and the BOS position dropped; the decoder runs without the LM
    head. An empty text gives a ``(0, d)`` tensor.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"])[:max_tokens] for t in texts]
    head = [bos] if bos is not None else []
    out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    device = model_device(model)
    with torch.no_grad():
        for idx in length_batches([len(i) for i in ids], batch_size):
            width = len(head) + max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), width), int(pad), dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = head + ids[i]
                x[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                att[row, :len(seq)] = 1
            hidden = decoder(input_ids=x.to(device), attention_mask=att.to(device), use_cache=False).last_hidden_state
            hidden = hidden.float().cpu()
            for row, i in enumerate(idx):
                out[i] = hidden[row, len(head):len(head) + len(ids[i])].clone()
    return out


@contextlib.contextmanager
def _contiguous_lm_head_input(model: torch.nn.Module) -> Iterator[None]:
    """Make the LM head's input contiguous while generating (a forward pre-hook, removed after).

    At the prompt's forward, ``generate`` asks for the last position's logits only and the
    model slices ``hidden[:, -1:, :]``, a non-contiguous view; ``F.linear`` on it broadcasts
    the (262k x d) head to a batched matmul, copying the whole head once per row (measured:
    7.2 of 11.8 s generating 8 answers on Gemma 3 270M in bfloat16 here). The same values laid
    out contiguously go through one plain matmul.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        yield
        return
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def greedy_generate(model: torch.nn.Module, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    batch_size: int, counter: PassCounter | None = None, stop_at_newline: bool = True,
                    on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy continuations of tokenised prompts (left-padded batches of similar length).

    The decoded text is stripped; with ``stop_at_newline`` it is cut at the first newline
    (the prompts are line-structured, an answer or summary is one line). Runs on the model's
    device. ``on_batch(n)`` is called after each batch with its number of prompts.
    """
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_config = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                                  pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True)
    out: list[str] = [""] * len(prompts)
    order = length_batches([len(p) for p in prompts], batch_size)
    device = model_device(model)
    with torch.no_grad(), _contiguous_lm_head_input(model):
        for idx in order:
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), int(pad), dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                p = list(prompts[i])
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                att[row, width - len(p):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                 generation_config=gen_config)
            new = gen[:, width:].cpu()
            if counter is not None:
                counter.generation_steps += int(new.shape[1])
                counter.tokens += int(att.sum()) + int(new.numel())
            for row, i in enumerate(idx):
                text = tokenizer.decode(new[row], skip_special_tokens=True)
                if stop_at_newline:
                    text = text.split("\n", 1)[0]
                out[i] = text.strip()
            if on_batch is not None:
                on_batch(len(idx))
    return out
