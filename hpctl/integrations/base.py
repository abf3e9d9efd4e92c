"""What a knob steered inside a ``transformers.Trainer`` run implements, and the shared helpers.

:class:`TrainerKnob` is the interface :class:`~hpctl.integrations.transformers.KnobCallback`
drives (``setup``, ``apply``, ``probe``, ``on_step_begin``); :class:`TrainerContext` is what
a knob may use (the Trainer's model, optimizer, scheduler, arguments and the probe score);
:class:`FunctionKnob` makes a knob of two functions. The shipped knobs live in
:mod:`.lora_prune` and :mod:`.learning_rate`; the callback in :mod:`.transformers`. Nothing
here imports transformers.
"""

from __future__ import annotations

import contextlib
import numbers
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from hpctl.errors import ConfigError, shorten
from hpctl.knob import Knob

__all__ = ["FunctionKnob", "TrainerContext", "TrainerKnob", "autocast_for", "model_device", "preserved_rng",
           "to_device"]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, numpy's and torch's (CPU and initialised CUDA) global random states back after the block."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device``."""
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast_for(args: Any, device: torch.device):
    """Autocast as the Trainer's arguments ask (``bf16``/``fp16``), else nothing."""
    if getattr(args, "bf16", False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if getattr(args, "fp16", False):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class TrainerContext:
    """What a knob may use: the Trainer's model, optimizer, scheduler and arguments, and the scorer."""

    model: nn.Module
    optimizer: Any
    lr_scheduler: Any
    args: Any
    scorer: Callable[[nn.Module], float]
    train_dataloader: Any = None
    seed: int = 0
    step: int = 0  # the Trainer's global step now
    #: ``collate(rows, data_collator, batch_size) -> batches`` (the callback's; text columns dropped)
    collate: Callable[[Sequence[Any], Callable | None, int], list[dict[str, Any]]] | None = None

    def score(self) -> float:
        """The probe score of the model's current state."""
        return self.scorer(self.model)


class TrainerKnob(ABC):
    """A knob :class:`KnobCallback` can steer.

    ``knob`` (an :class:`hpctl.Knob`) must be set once :meth:`setup` returns. Values
    reach :meth:`apply` and :meth:`probe` as 1-d float arrays of length ``knob.dim``.
    Contract of :meth:`probe`: afterwards the training state (weights, optimizer, anything
    training reads) is bit for bit what it was, also when it raises.
    """

    knob: Knob

    def check(self, model: nn.Module) -> None:
        """Raise a one-line :class:`~hpctl.errors.ConfigError` if this knob cannot steer ``model``.

        :class:`~hpctl.integrations.transformers.KnobCallback` calls it when the Trainer is
        built (``on_init_end``), so a model the knob cannot handle fails there, before
        ``train()``; it changes nothing on the model. The default accepts any model.
        """

    def setup(self, ctx: TrainerContext) -> None:
        """Called once at the start of training (the model, optimizer and scheduler exist)."""
        self.ctx = ctx

    @abstractmethod
    def apply(self, value: np.ndarray) -> None:
        """Training continues at ``value``."""

    @abstractmethod
    def probe(self, value: np.ndarray) -> float:
        """Score ``value`` at the current training state (higher is better)."""

    def on_step_begin(self, step: int) -> None:
        """Called before every optimizer step (``step`` = the Trainer's global step)."""

    def describe(self) -> dict[str, Any]:
        """Parameters worth logging."""
        return {}


class FunctionKnob(TrainerKnob):
    """A knob from two functions: ``apply(value)`` sets it for training, ``probe(value) -> score``
    scores it at the current state (higher is better) and must leave the training state as it was.

    ``value`` is a float for a scalar knob, an array for a vector one.
    """

    def __init__(self, knob: Knob, apply: Callable[[Any], None], probe: Callable[[Any], float]) -> None:
        if not isinstance(knob, Knob):
            raise ConfigError(f"FunctionKnob needs an hpctl.Knob, got {type(knob).__name__}")
        if not callable(apply) or not callable(probe):
            raise ConfigError("FunctionKnob needs two functions: apply(value) and probe(value) -> score")
        self.knob, self._apply, self._probe = knob, apply, probe

    def _user(self, value: np.ndarray) -> Any:
        return float(value[0]) if self.knob.dim == 1 else np.asarray(value, dtype=np.float64).copy()

    def apply(self, value: np.ndarray) -> None:
        self._apply(self._user(value))

    def probe(self, value: np.ndarray) -> float:
        user = self._user(value)
        score = self._probe(user)
        item = score.item() if getattr(score, "ndim", None) == 0 and hasattr(score, "item") else score  # numpy, torch
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real):
            raise ConfigError(f"FunctionKnob {self.knob.name!r}: probe({self.knob.format(value)}) returned "
                              f"{shorten(repr(score))}, not a number (return the score as an int or a float)")
        return float(item)
