"""Global magnitude pruning of a small MLP on scikit-learn's digits: the training loop.

The knob is one *global* pruning ratio ``rho``: the ``round(rho * N)`` weights of smallest
magnitude over all weight matrices together (biases are never pruned) are masked, so
layers end up with different sparsities. Training at ``rho`` recomputes the mask from
the current dense weights every ``mask_every`` steps and runs the forward pass with the
masked weights; the backward pass is straight-through (``w_eff = w - (w * ~mask).detach()``),
so the dense weights, pruned ones included, keep receiving gradients and a weight can
come back when it grows past the threshold. AdamW updates the dense weights.

A probe scores the network masked at a candidate ratio on a fixed micro-dev slice. The
mask is applied functionally (the dense parameters are read, never written), so a probe
cannot change the training state, not even when it raises.

Objective (higher is better), the same for probes, grid points and the reported test
score::

    score(rho) = -cross_entropy(rho) + sparsity_weight * sparsity(rho)   (probe_metric=loss)
    score(rho) =  accuracy(rho)      + sparsity_weight * sparsity(rho)   (probe_metric=accuracy)

Without the sparsity term ratio 0 always wins; the weight prices a unit of sparsity in
nats (or accuracy points) and its defaults put the optimum inside the range (see
:data:`DEFAULT_SPARSITY_WEIGHT`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpctl.errors import ConfigError
from hpctl.knob import Knob
from hpctl.task import Task

SPLITS = ("train", "micro_dev", "dev", "test")
PROBE_METRICS = ("loss", "accuracy")
FINAL_MODES = ("retrain", "continue")
#: default price of sparsity per probe metric. Measured on the default network (mean of
#: 3 seeds, dev split, one full run per ratio): dev loss 0.15 up to rho=0.5, 0.17 at 0.7,
#: 0.22 at 0.8, 0.33 at 0.9, 0.69 at 0.95. With 0.5 nats per unit of sparsity the best
#: fixed ratio is about 0.75 (interior); accuracy (0.95 dense, 0.92 at 0.8, 0.78 at 0.95)
#: with 0.2 per unit peaks at about 0.8-0.9.
DEFAULT_SPARSITY_WEIGHT = {"loss": 0.5, "accuracy": 0.2}


def global_masks(weights: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """Boolean keep-masks pruning the ``round(ratio * N)`` smallest-magnitude weights overall.

    Ranking is global (all matrices together) and ties are broken by position (a stable
    sort), so exactly ``round(ratio * N)`` weights are pruned whatever the values.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1], got {ratio}")
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    k = int(round(ratio * total))
    keep = torch.ones(total, dtype=torch.bool)
    if k > 0:
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return [m.view_as(w) for m, w in zip(torch.split(keep, sizes), weights)]


class MaskedMLP(nn.Module):
    """An MLP whose weight matrices can be masked in the forward pass without being modified."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def weight_matrices(self) -> list[torch.Tensor]:
        return [layer.weight for layer in self.layers]

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            w = layer.weight
            if masks is not None:
                # forward: w * mask; backward: identity into the dense weight (straight-through)
                w = w - (w * ~masks[i]).detach()
            x = F.linear(x, w, layer.bias)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@dataclass(frozen=True)
class DigitsSplits:
    """Tensors of one deterministic train / micro-dev / dev / test split of the digits."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]

    @classmethod
    def load(cls, seed: int, micro_dev: int, dev: int, test: int) -> "DigitsSplits":
        from sklearn.datasets import load_digits

        data = load_digits()  # bundled with scikit-learn: 1797 8x8 images, offline
        x_all = np.asarray(data.data, dtype=np.float32) / 16.0
        y_all = np.asarray(data.target, dtype=np.int64)
        n = len(y_all)
        if min(micro_dev, dev, test) < 1:
            raise ConfigError("micro-dev, dev and test sizes must each be >= 1")
        n_train = n - micro_dev - dev - test
        if n_train < 64:
            raise ConfigError(f"micro-dev + dev + test = {micro_dev + dev + test} leaves {n_train} of {n} "
                              "digits for training; need >= 64")
        perm = np.random.default_rng([int(seed), 7]).permutation(n)
        bounds = np.cumsum([n_train, micro_dev, dev])
        parts = np.split(perm, bounds)
        x = {name: torch.from_numpy(x_all[idx]) for name, idx in zip(SPLITS, parts)}
        y = {name: torch.from_numpy(y_all[idx]) for name, idx in zip(SPLITS, parts)}
        return cls(x=x, y=y)

    def size(self, split: str) -> int:
        return int(self.y[split].shape[0])


class MagnitudePruneTask(Task):
    """Train an MLP on digits under a global magnitude mask whose ratio is the knob.

    Args:
        seed: the split of the data, the weight initialisation and the mini-batch order.
        hidden: width of each hidden layer; ``layers`` hidden layers.
        total_steps, batch_size, lr, weight_decay: the AdamW training run.
        mask_every: recompute the mask from the dense weights every this many steps.
        probe_metric: ``"loss"`` or ``"accuracy"`` (see the module docstring).
        sparsity_weight: price of sparsity in the score (None: per-metric default).
        low, high, default: the knob's bounds and starting ratio.
        final: ``"retrain"`` a fresh network at the learned ratio for ``total_steps``
            (fair to every controller) or ``"continue"``: evaluate the network the
            controller run trained, as is (no extra cost; meaningful for online controllers).
        threads: torch intra-op threads while the task is open (None: leave as is);
            :meth:`close` restores the previous setting. One thread is fastest for a net this small.
        out_dir: where :meth:`finish` saves the pruned weights (``pruned_mlp.pt``).
    """

    def __init__(self, *, seed: int = 0, hidden: int = 32, layers: int = 2, total_steps: int = 400,
                 batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4, mask_every: int = 1,
                 micro_dev_size: int = 64, dev_size: int = 300, test_size: int = 400,
                 probe_metric: str = "loss", sparsity_weight: float | None = None,
                 low: float = 0.0, high: float = 0.95, default: float = 0.5, final: str = "retrain",
                 threads: int | None = 1, out_dir: Path | None = None) -> None:
        for name, v in (("hidden", hidden), ("layers", layers), ("total_steps", total_steps),
                        ("batch_size", batch_size), ("mask_every", mask_every)):
            if v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if not lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
        if probe_metric not in PROBE_METRICS:
            raise ConfigError(f"unknown probe metric {probe_metric!r} (choose from {', '.join(PROBE_METRICS)})")
        if final not in FINAL_MODES:
            raise ConfigError(f"unknown final mode {final!r} (choose from {', '.join(FINAL_MODES)})")
        if not 0.0 <= low < high < 1.0:
            raise ConfigError(f"ratio bounds must satisfy 0 <= low < high < 1, got low={low}, high={high}")
        if not low <= default <= high:
            raise ConfigError(f"default ratio {default} is outside the bounds [{low}, {high}]")
        self.sparsity_weight = DEFAULT_SPARSITY_WEIGHT[probe_metric] if sparsity_weight is None else float(sparsity_weight)
        if self.sparsity_weight < 0:
            raise ConfigError(f"sparsity weight must be >= 0, got {self.sparsity_weight}")
        self.knob = Knob("prune_ratio", low, high, default=default, units="fraction of weights pruned")
        self.total_steps = int(total_steps)
        self.sizes = [64] + [int(hidden)] * int(layers) + [10]
        self.batch_size, self.lr, self.weight_decay = int(batch_size), float(lr), float(weight_decay)
        self.mask_every = int(mask_every)
        self.probe_metric, self.final = probe_metric, final
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.data = DigitsSplits.load(seed, micro_dev_size, dev_size, test_size)
        #: seconds spent training during the controller run (incl. grid points), probing, and in finish()
        self.phase_seconds: dict[str, float] = {"train_s": 0.0, "probe_s": 0.0, "final_train_s": 0.0}
        self._train_clock = "train_s"
        self._artifacts: list[Path] = []
        self._seed = int(seed)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self._threads_before: int | None = None
        if threads is not None:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(int(threads))
        self.reset(seed)

    # ------------------------------------------------------------ state ------
    def reset(self, seed: int | None = None) -> None:
        """Fresh weights, optimizer and batch order; the data split stays the construction seed's."""
        if seed is not None:
            self._seed = int(seed)
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the global RNG
            torch.manual_seed(self._seed)
            self.model = MaskedMLP(self.sizes)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.batch_rng = torch.Generator().manual_seed(self._seed + 1)
        self.steps = 0
        self._masks: list[torch.Tensor] | None = None
        self._mask_ratio: float | None = None
        self._mask_step = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "batch_rng": self.batch_rng.get_state(),
            "steps": self.steps,
            "seed": self._seed,
            "masks": None if self._masks is None else [m.clone() for m in self._masks],
            "mask_ratio": self._mask_ratio,
            "mask_step": self._mask_step,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # a deep copy, so the optimizer's in-place updates never reach the snapshot
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.batch_rng.set_state(state["batch_rng"])
        self.steps = int(state["steps"])
        self._seed = int(state["seed"])
        self._masks = None if state["masks"] is None else [m.clone() for m in state["masks"]]
        self._mask_ratio = state["mask_ratio"]
        self._mask_step = int(state["mask_step"])

    # ----------------------------------------------------------- masks -------
    @property
    def n_weights(self) -> int:
        return sum(w.numel() for w in self.model.weight_matrices())

    def masks(self, ratio: float) -> list[torch.Tensor]:
        """The global keep-masks of the current dense weights at ``ratio``."""
        return global_masks(self.model.weight_matrices(), float(ratio))

    @staticmethod
    def sparsity(masks: list[torch.Tensor]) -> float:
        total = sum(m.numel() for m in masks)
        return float(sum(int((~m).sum()) for m in masks) / total)

    def layer_sparsity(self, ratio: float) -> list[float]:
        """Fraction pruned in each weight matrix at ``ratio`` (they differ: the ranking is global)."""
        return [float((~m).float().mean()) for m in self.masks(ratio)]

    def _train_masks(self, ratio: float) -> list[torch.Tensor]:
        stale = self.steps - self._mask_step >= self.mask_every
        if self._masks is None or self._mask_ratio != ratio or stale:
            self._masks = self.masks(ratio)
            self._mask_ratio, self._mask_step = ratio, self.steps
        return self._masks

    # ------------------------------------------------------------ loop -------
    def _ratio(self, value: np.ndarray | float) -> float:
        return float(self.knob.clip(value)[0])

    def train(self, steps: int, value: np.ndarray) -> float:
        ratio = self._ratio(value)
        x, y = self.data.x["train"], self.data.y["train"]
        t0 = time.perf_counter()
        self.model.train()
        losses = []
        for _ in range(int(steps)):
            masks = self._train_masks(ratio)
            idx = torch.randint(0, y.shape[0], (self.batch_size,), generator=self.batch_rng)
            loss = F.cross_entropy(self.model(x[idx], masks), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            losses.append(float(loss.detach()))
        self.phase_seconds[self._train_clock] += time.perf_counter() - t0
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def _metrics(self, split: str, ratio: float) -> dict[str, float]:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        masks = self.masks(ratio)
        logits = self.model(self.data.x[split], masks)
        y = self.data.y[split]
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(dim=1) == y).float().mean())
        sparsity = self.sparsity(masks)
        quality = -loss if self.probe_metric == "loss" else acc
        return {"accuracy": acc, "loss": loss, "sparsity": sparsity,
                "score": quality + self.sparsity_weight * sparsity}

    def probe(self, value: np.ndarray) -> float:
        """Score on the micro-dev slice at ``value``; reads the weights, never writes them."""
        t0 = time.perf_counter()
        try:
            return self._metrics("micro_dev", self._ratio(value))["score"]
        finally:
            self.phase_seconds["probe_s"] += time.perf_counter() - t0

    def evaluate(self, split: str, value: np.ndarray) -> dict[str, float]:
        """``accuracy``, ``loss``, ``sparsity`` and ``score`` on ``split`` at ``value``."""
        return self._metrics(split, self._ratio(value))

    def full_run(self, value: np.ndarray) -> float:
        """One grid point: a fresh network trained at a fixed ratio, scored on the dev split."""
        self.reset()
        self.train(self.total_steps, value)
        return self.evaluate("dev", value)["score"]

    def finish(self, value: np.ndarray) -> dict[str, float]:
        """Final phase at the learned ratio; test metrics plus the dev score and layer sparsities."""
        if self.final == "retrain":
            self._train_clock = "final_train_s"
            try:
                self.reset()
                self.train(self.total_steps, value)
            finally:
                self._train_clock = "train_s"
        test = self.evaluate("test", value)
        dev = self.evaluate("dev", value)
        out = {"test_score": test["score"], "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "sparsity": test["sparsity"], "dev_score": dev["score"], "dev_accuracy": dev["accuracy"]}
        for i, s in enumerate(self.layer_sparsity(self._ratio(value))):
            out[f"sparsity_layer{i}"] = s
        if self.out_dir is not None:
            path = self.out_dir / "pruned_mlp.pt"
            masks = self.masks(self._ratio(value))
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            for i, m in enumerate(masks):
                state[f"layers.{i}.weight"] = state[f"layers.{i}.weight"] * m
            torch.save({"sizes": self.sizes, "state_dict": state, "prune_ratio": self._ratio(value)}, path)
            self._artifacts = [path]
        return out

    def artifacts(self) -> list[Path]:
        """Files the runner uploads after :meth:`finish` (the pruned weights)."""
        return list(self._artifacts)

    def close(self) -> None:
        """Give the process its torch thread count back."""
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def describe(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "weights": self.n_weights, "total_steps": self.total_steps,
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "mask_every": self.mask_every, "probe_metric": self.probe_metric,
                "sparsity_weight": self.sparsity_weight, "final": self.final,
                "splits": {s: self.data.size(s) for s in SPLITS}}
