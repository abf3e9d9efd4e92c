"""Your own PyTorch training loop, steered by GRPO through ask/tell (no Task class to write).

Run:  python examples/ask_tell.py            (about a minute on two CPU cores)
      python examples/ask_tell.py --fast     (seconds; what the tests run)

An MLP learns a regression with plain SGD. The knob is the learning rate, searched on a
log scale from a default that is too small (1e-3). Every ``--every`` steps the loop stops,
and for each value the session asks about, ``probe`` looks ahead: a few SGD steps on a copy
of the weights at that rate, scored by minus the loss on a held-out micro-dev set (the
weights themselves are not touched). Training then continues at the committed value,
``s.value``. A second run trains at the default rate throughout, for comparison.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn as nn

import hpctl


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 8, generator=g)
    w1, w2 = torch.randn(8, 16, generator=g), torch.randn(16, generator=g)
    y = torch.tanh(x @ w1) @ w2 + 0.1 * torch.randn(1024, generator=g)
    return (x[:768], y[:768]), (x[768:896], y[768:896]), (x[896:], y[896:])  # train, micro-dev, test


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def mse(model: nn.Module, data) -> float:
    x, y = data
    with torch.no_grad():
        return float(((model(x).squeeze(-1) - y) ** 2).mean())


def sgd_steps(model: nn.Module, data, lr: float, steps: int, gen: torch.Generator) -> float:
    """``steps`` SGD steps on mini-batches of 32; returns the mean training loss."""
    x, y = data
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(x), (32,), generator=gen)
        loss = ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses)


def probe(model: nn.Module, train, dev, lr: float, lookahead: int, seed: int) -> float:
    """Minus the micro-dev loss after ``lookahead`` SGD steps at ``lr`` on a copy of the weights."""
    ahead = make_model()
    ahead.load_state_dict(model.state_dict())
    sgd_steps(ahead, train, lr, lookahead, torch.Generator().manual_seed(seed))  # the same batches for every lr
    loss = mse(ahead, dev)
    return -math.log(loss) if math.isfinite(loss) else float("nan")  # log: a diverging lr scores low, not -1e30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="a short run (for tests)")
    ap.add_argument("--out", default=None, help="the session's run folder")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    steps, every, budget = (160, 10, 36) if a.fast else (600, 10, 90)

    train, dev, test = make_data(a.seed)
    knob = hpctl.Knob("lr", 1e-4, 1.0, default=1e-3, log=True)

    # --- the loop with the session -----------------------------------------------------------
    model, gen = make_model(a.seed), torch.Generator().manual_seed(a.seed)
    s = hpctl.Session(knob, "grpo", budget=budget, group_size=4, seed=a.seed, out_dir=a.out,
                      steps_per_round=every, total_steps=steps)
    done = 0
    while done < steps:
        if not s.done:
            for value in s.ask():  # the values to score at this training state
                s.tell(value, probe(model, train, dev, value, lookahead=5, seed=done))
        s.report_loss(sgd_steps(model, train, s.value, every, gen))  # train at the committed value
        done += every
    if not s.done:
        s.finish()  # training is over before the budget: the learned value is the one training ended at
    steered = mse(model, test)

    # --- the same loop at the default rate -------------------------------------------------
    fixed, gen = make_model(a.seed), torch.Generator().manual_seed(a.seed)
    sgd_steps(fixed, train, knob.default_value[0], steps, gen)
    print(f"default lr {knob.default_value[0]:g}: test mse {mse(fixed, test):.4f}")
    print(f"learned lr = {s.learned:.4g} after {s.probes} probes: test mse {steered:.4f}")
    print(f"run folder: {s.out_dir}; MLflow run {s.tracker.run_id}", file=sys.stderr)


if __name__ == "__main__":
    main()
