"""The ``magnitude_prune`` plugin: learn a global magnitude-pruning ratio of an MLP on digits.

A second sparsity knob through the same environment as GRASP LoRA, small enough to run
in seconds on a CPU: a 64-32-32-10 MLP trained with AdamW on scikit-learn's bundled
digits (8x8 images, 10 classes, offline), whose weight matrices are pruned by one global
magnitude ratio ``prune_ratio`` (ranked over all matrices together). Probes score the
network masked at a candidate ratio on a 64-example micro-dev slice; the score is
``-loss + sparsity_weight * sparsity`` (or ``accuracy + ...``), so the best ratio is a
trade-off inside the range rather than 0. The final phase retrains a fresh network at
the learned ratio (``--final retrain``, the default) and reports ``test_score`` (the same
objective on the test split; what ``hpctl compare`` ranks by), ``test_accuracy``,
``test_loss`` and the actual ``sparsity``. See :mod:`hpctl.plugins.magnitude_prune.task`.

The plugin is registered only through the ``hpctl.plugins`` entry point in
``pyproject.toml``, exactly as a third-party package would register one::

    hpctl run magnitude_prune --controller grpo
    hpctl compare magnitude_prune --controllers grpo,ppo,grid --seeds 1 -c grid --set full_runs=true

The grid baseline should use ``full_runs=true`` (one whole training run per grid point,
chosen on the dev split, as in the paper): a plain grid probes every ratio at the
*untrained* initial network, where the loss is the same everywhere and the sparsity
term alone picks the upper bound. In ``hpctl compare``, ``--set`` applies to the
controller named by ``-c``, hence ``-c grid`` above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpctl.plugins.magnitude_prune.task import (
    DEFAULT_SPARSITY_WEIGHT,
    FINAL_MODES,
    PROBE_METRICS,
    MagnitudePruneTask,
    global_masks,
)
from hpctl.task import Plugin

__all__ = ["MagnitudePruneConfig", "MagnitudePrunePlugin", "MagnitudePruneTask", "global_masks"]


@dataclass
class MagnitudePruneConfig:
    hidden: int = field(default=32, metadata={"help": "width of each hidden layer of the MLP"})
    layers: int = field(default=2, metadata={"help": "number of hidden layers"})
    total_steps: int = field(default=400, metadata={"help": "AdamW steps in one training run"})
    batch_size: int = field(default=64, metadata={"help": "mini-batch size"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    mask_every: int = field(default=1, metadata={"help": "recompute the global mask every this many steps"})
    micro_dev_size: int = field(default=64, metadata={"help": "examples in the micro-dev slice the probes score"})
    dev_size: int = field(default=300, metadata={"help": "examples in the dev split (grid points are chosen on it)"})
    test_size: int = field(default=400, metadata={"help": "examples in the test split"})
    probe_metric: str = field(default="loss", metadata={
        "help": "what a probe scores besides sparsity: minus the cross-entropy, or the accuracy",
        "choices": list(PROBE_METRICS)})
    sparsity_weight: float | None = field(default=None, metadata={
        "help": "reward per unit of sparsity in the score (default: "
                + ", ".join(f"{v} for {k}" for k, v in DEFAULT_SPARSITY_WEIGHT.items()) + ")"})
    min_ratio: float = field(default=0.0, metadata={"help": "lower bound of the pruning ratio"})
    max_ratio: float = field(default=0.95, metadata={"help": "upper bound of the pruning ratio (< 1)"})
    start_ratio: float = field(default=0.5, metadata={"help": "ratio training starts at (the knob's default)"})
    final: str = field(default="retrain", metadata={
        "help": "final phase: retrain a fresh network at the learned ratio, or continue with (evaluate) "
                "the network the controller run trained", "choices": list(FINAL_MODES)})
    threads: int = field(default=1, metadata={"help": "torch threads while the task runs"})


class MagnitudePrunePlugin(Plugin):
    name = "magnitude_prune"
    description = "global magnitude-pruning ratio of an MLP trained on scikit-learn digits (seconds on a CPU)"
    Config = MagnitudePruneConfig
    default_controller = "grpo"
    default_budget = 64
    default_group_size = 8
    primary_metric = "test_score"
    #: a grid point is a whole training run at that ratio (scoring ratios on the untrained
    #: network would reward sparsity alone)
    controller_defaults = {"grid": {"full_runs": True}}

    def make_task(self, config: MagnitudePruneConfig, *, seed: int, out_dir: Path) -> MagnitudePruneTask:
        return MagnitudePruneTask(
            seed=seed, hidden=config.hidden, layers=config.layers, total_steps=config.total_steps,
            batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
            mask_every=config.mask_every, micro_dev_size=config.micro_dev_size, dev_size=config.dev_size,
            test_size=config.test_size, probe_metric=config.probe_metric, sparsity_weight=config.sparsity_weight,
            low=config.min_ratio, high=config.max_ratio, default=config.start_ratio, final=config.final,
            threads=config.threads, out_dir=out_dir,
        )
