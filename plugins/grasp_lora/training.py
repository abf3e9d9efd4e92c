"""Training loops over the peft adapters and the merged adapter: data order and one AdamW step.

:class:`DataOrder` hands out length-bucketed batches with a restorable RNG (so a snapshot
restores the data order too); :func:`adamw_step` is one step on the mean answer-token loss;
:func:`train_lora` trains one peft adapter alone (the source and target adapters).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from hpctl.errors import ConfigError
from hpctl.plugins.grasp_lora.lm import Batch, Encoded, PassCounter, answer_loss, collate, length_batches


class DataOrder:
    """Endless length-bucketed training batches with a restorable RNG (snapshot-friendly)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if not lengths:
            raise ConfigError("no training examples")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.rng = random.Random(seed)
        self.epoch: list[list[int]] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos >= len(self.epoch):
            self.epoch = length_batches(self.lengths, self.batch_size, self.rng)
            self.pos = 0
        batch = self.epoch[self.pos]
        self.pos += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "epoch": [list(b) for b in self.epoch], "pos": self.pos}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.epoch = [list(b) for b in state["epoch"]]
        self.pos = int(state["pos"])


def adamw_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], *,
               grad_clip: float | None, counter: PassCounter | None = None) -> float:
    """One optimizer step on the mean answer-token loss of ``batch``; returns that loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = answer_loss(model, batch, counter) / max(1, batch.n_labels)
    loss.backward()
    if counter is not None:
        counter.backward += 1
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_lora(model: nn.Module, name: str, data: Sequence[Encoded], *, steps: int, lr: float, batch_size: int,
               pad_id: int, seed: int, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
               counter: PassCounter | None = None,
               on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train peft adapter ``name`` alone for ``steps`` AdamW steps; returns the loss per step."""
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ConfigError(f"adapter {name!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = DataOrder([len(e.ids) for e in data], batch_size, seed)
    losses = []
    for step in range(int(steps)):
        batch = collate([data[i] for i in order.next()], pad_id)
        losses.append(adamw_step(model, batch, optimizer, params, grad_clip=grad_clip, counter=counter))
        if on_step is not None:
            on_step(step, losses[-1])
    for p in params:
        p.requires_grad_(False)
    return losses


