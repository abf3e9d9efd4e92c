"""GRPO controller of GRASP LoRA, from scratch, in one file (CleanRL style).

The policy is a diagonal Gaussian over the knob in its unit cube (``knob.to_unit``):
one ``N(mu_d, sigma_d^2)`` per knob dimension ``d``. Every round, at one frozen
training state (the paper's "every K optimizer steps"):

1. sample a group of C candidates ``z_i ~ N(mu, sigma^2)``, ``rho_i = clamp(z_i, 0, 1)``;
2. probe them all at the same training state (``env.probe_group``) and the baseline
   at the committed value (``env.baseline()``); reward ``r_i = score_i - score_0``
   (the paper's ``L_0 - L_i`` for a loss; scores are higher-is-better);
3. group-centred advantages ``A_i = (r_i - mean r) / (std r + eps)``;
4. a few epochs of gradient ascent on ``(mu, log sigma)`` of

       J = mean_i min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i)     PPO-style surrogate
           - beta * KL(pi_old || pi)                                        trust region
           - lambda_reg * sum_d (mu_d - c_d)^2                              pull to committed c
           + entropy_coef * sum_d log sigma_d                               entropy bonus

   with ``ratio_i = pi(z_i) / pi_old(z_i)`` and the analytic score-function gradients
   ``d log N(z) / d mu = (z - mu) / sigma^2``, ``d log N(z) / d log sigma =
   (z - mu)^2 / sigma^2 - 1``. ``mu`` is kept in [0, 1], ``sigma`` in
   ``[sigma_min, sigma_max]``;
5. commit: the training value moves towards the new ``mu`` by at most ``max_step``
   (unit coordinates), and only if the micro-dev score does not drop there:
   ``evidence >= score_0 - commit_tol``, otherwise training stays where it is. The
   evidence (``commit_check``) is, by default (``"nearest"``), the score of the group
   candidate nearest to the move target when one lies within ``commit_radius`` of it,
   else one extra ``"guard"`` probe of the target (counted in the budget);
   ``"probe"`` always probes the target. Then ``env.advance(value)`` trains one round
   at the committed value.

The learned value is the final committed value (``env.current``).

Ablations: ``epochs=1`` (with ``clip_eps=0`` and ``beta_kl=0``) is plain REINFORCE with
a group baseline; ``clip_eps=0.2`` is PPO's clip; ``normalize_std=False`` keeps only
mean-centring; ``commit_check="none"`` commits without the guard.

Optimiser (ours, the paper names none): the gradient is preconditioned by the inverse
Fisher information of the Gaussian (``sigma^2`` for ``mu``, ``1/2`` for ``log sigma``:
the natural gradient), then plain gradient ascent with ``lr`` on ``mu`` and
``lr_sigma`` on ``log sigma``. With standardised advantages the first step on ``mu``
is about ``lr * sigma * corr(A, z)``: large while sigma is large, shrinking as sigma
adapts, independent of the score's units. ``optimizer="adam"`` (moments kept across
rounds) and ``natural_gradient=False`` are there for comparison.

Defaults, tuned on the synthetic landscapes (the setup of ``benchmarks/controllers.py``:
64 probes, groups of 4-8, noise 0.01): ``sigma_init=0.2`` covers the unit interval in
the first group; ``lr=0.8`` with 3 epochs moves ``mu`` most of the way to the best
region in one round; ``lr_sigma=0.3`` shrinks sigma more slowly than ``mu`` moves and
``sigma_min=0.03`` keeps the policy able to follow a drifting optimum. The ratio clip
is off by default (``clip_eps=0``: the surrogate is ``ratio_i A_i``): with 4-8 samples
and large natural-gradient steps it zeroes the gradient of the samples that matter
after the first epoch and costs precision (worst median distance over optima
0.05-0.9, groups of 8, 10 seeds: 0.028 with ``clip_eps=0.2``, 0.016 without).
``"nearest"`` saves the guard probe in most rounds; it is an optimistic check (the
nearest candidate tends to be one that scored well, which is why ``mu`` moved there);
``"probe"`` is the unbiased, one-probe-per-round alternative (worst median 0.018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hpctl.controllers.base import Controller, register
from hpctl.control_env import ControlEnv
from hpctl.errors import ResumeError

COMMIT_CHECKS = ("probe", "nearest", "none")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class GRPOConfig:
    """Hyperparameters of :class:`GRPO` (all distances in the knob's unit cube)."""

    group_size: int | None = None  # candidates per round (C); None: the env's group size
    sigma_init: float = 0.2  # initial exploration width
    sigma_min: float = 0.03
    sigma_max: float = 0.5
    lr: float = 0.8  # step size of the (natural-)gradient ascent on mu
    lr_sigma: float | None = 0.3  # step size on log sigma; None: lr
    optimizer: str = "sgd"  # "sgd" (plain ascent) or "adam"
    natural_gradient: bool = True  # precondition by the inverse Fisher information
    epochs: int = 3  # gradient steps per group (PPO epochs)
    clip_eps: float = 0.0  # PPO ratio clip; 0 turns clipping off
    beta_kl: float = 0.0  # weight of KL(pi_old || pi)
    lambda_reg: float = 0.1  # pull of mu towards the committed value
    entropy_coef: float = 0.0  # bonus on sum(log sigma)
    normalize_std: bool = True  # divide centred rewards by their std
    adv_eps: float = 1e-8
    max_step: float = 0.3  # largest commit move per round (per component)
    commit_check: str = "nearest"  # evidence for the guard: "nearest", "probe" or "none"
    commit_radius: float = 0.05  # "nearest": farthest candidate that may stand in for the target
    commit_tol: float = 0.0  # move if evidence >= baseline - commit_tol
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size}")
        if not 0 < self.sigma_min <= self.sigma_init <= self.sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_init <= sigma_max, got "
                             f"{self.sigma_min}, {self.sigma_init}, {self.sigma_max}")
        if self.lr_sigma is not None and self.lr_sigma <= 0:
            raise ValueError(f"lr_sigma must be > 0, got {self.lr_sigma}")
        if self.lr <= 0 or self.epochs < 1 or self.clip_eps < 0 or self.beta_kl < 0 or self.lambda_reg < 0:
            raise ValueError("lr must be > 0, epochs >= 1, clip_eps/beta_kl/lambda_reg >= 0")
        if self.commit_radius < 0 or self.commit_tol < 0 or self.entropy_coef < 0:
            raise ValueError("commit_radius, commit_tol and entropy_coef must be >= 0")
        if not 0 < self.max_step <= 1:
            raise ValueError(f"max_step must be in (0, 1], got {self.max_step}")
        if self.commit_check not in COMMIT_CHECKS:
            raise ValueError(f"commit_check must be one of {COMMIT_CHECKS}, got {self.commit_check!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))


# ---------------------------------------------------------------- the math ------
def gaussian_logp(z: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> np.ndarray:
    """Joint log-density of each row of ``z`` (shape (n, dim)) under the diagonal Gaussian."""
    sigma = np.exp(log_sigma)
    return np.sum(-0.5 * ((z - mu) / sigma) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi), axis=1)


def group_advantages(rewards: np.ndarray, normalize_std: bool = True, eps: float = 1e-8) -> np.ndarray:
    """``A_i = (r_i - mean r) / (std r + eps)`` (population std); only centred if not normalising."""
    r = np.asarray(rewards, dtype=np.float64)
    a = r - r.mean()
    return a / (r.std() + eps) if normalize_std else a


def score_grads(z: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``d log N(z)/d mu = (z-mu)/sigma^2`` and ``d log N(z)/d log sigma = (z-mu)^2/sigma^2 - 1``."""
    var = np.exp(2 * log_sigma)
    d = z - mu
    return d / var, d * d / var - 1.0


def kl_old_new(mu_old: np.ndarray, ls_old: np.ndarray, mu: np.ndarray, ls: np.ndarray) -> float:
    """``KL(N(mu_old, s_old^2) || N(mu, s^2))`` summed over dimensions."""
    v_old, v = np.exp(2 * ls_old), np.exp(2 * ls)
    return float(np.sum(ls - ls_old + (v_old + (mu_old - mu) ** 2) / (2 * v) - 0.5))


def objective_grads(z: np.ndarray, adv: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray,
                    mu_old: np.ndarray, ls_old: np.ndarray, committed: np.ndarray,
                    cfg: GRPOConfig) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Gradient of the objective ``J`` (module docstring) w.r.t. ``mu`` and ``log sigma``.

    Returns ``(g_mu, g_log_sigma, info)``; ``info`` has the surrogate value, the mean
    ratio and the fraction of clipped samples.
    """
    n = len(adv)
    ratio = np.exp(gaussian_logp(z, mu, log_sigma) - gaussian_logp(z, mu_old, ls_old))
    # the PPO surrogate min(r A, clip(r) A) has gradient r A grad log pi where it is not clipped
    if cfg.clip_eps > 0:
        active = np.where(adv >= 0, ratio < 1 + cfg.clip_eps, ratio > 1 - cfg.clip_eps)
        surr = np.minimum(ratio * adv, np.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    else:
        active = np.ones(n, dtype=bool)
        surr = ratio * adv
    w = (ratio * adv * active)[:, None] / n
    d_mu, d_ls = score_grads(z, mu, log_sigma)
    g_mu = np.sum(w * d_mu, axis=0)
    g_ls = np.sum(w * d_ls, axis=0)
    # - beta * KL(pi_old || pi)
    if cfg.beta_kl > 0:
        var = np.exp(2 * log_sigma)
        var_old = np.exp(2 * ls_old)
        g_mu -= cfg.beta_kl * (mu - mu_old) / var
        g_ls -= cfg.beta_kl * (1.0 - (var_old + (mu_old - mu) ** 2) / var)
    # - lambda_reg * |mu - c|^2
    g_mu -= 2.0 * cfg.lambda_reg * (mu - committed)
    # + entropy_coef * H(pi), H = sum(log sigma) + const
    g_ls += cfg.entropy_coef
    info = {"surrogate": float(np.mean(surr)), "ratio_mean": float(np.mean(ratio)),
            "clip_frac": float(1.0 - np.mean(active))}
    return g_mu, g_ls, info


# ------------------------------------------------------------ the controller ------
@register
class GRPO(Controller):
    """Group-relative policy optimisation of a Gaussian over the knob (GRASP LoRA).

    One round = ``1 + C (+1)`` probes: the baseline at the committed value, C sampled
    candidates, and at most one guard probe of the move target (always with
    ``commit_check="probe"``, reserved in the budget; with ``"nearest"`` only when no
    candidate lies near the target and the budget has a probe left). A round with fewer
    than 2 affordable candidates is not started, so ``env.probes <= budget`` always.
    The run stops when the budget is spent or training is over (``env.done``).
    """

    name = "grpo"
    Config = GRPOConfig

    def __init__(self, env: ControlEnv, config: GRPOConfig | None = None, seed: int = 0) -> None:
        super().__init__(env, config, seed)
        dim = self.knob.dim
        self.mu = np.full(dim, np.nan)  # set from the committed value when run() starts
        self.log_sigma = np.full(dim, math.log(self.config.sigma_init))
        self.initialized = False
        self.adam_m = np.zeros(2 * dim)
        self.adam_v = np.zeros(2 * dim)
        self.adam_t = 0
        self.rounds = 0
        self.commits = 0
        self.refusals = 0
        self.guard_probes = 0
        self.guard_nearest = 0
        self.last: dict[str, float] = {}

    # -- helpers ------------------------------------------------------------------
    @property
    def sigma(self) -> np.ndarray:
        return np.exp(self.log_sigma)

    def group_size(self) -> int:
        return int(self.config.group_size or self.env.group_size)

    def _ascend(self, g_mu: np.ndarray, g_ls: np.ndarray) -> None:
        """One ascent step on (mu, log sigma), then project onto the bounds."""
        cfg = self.config
        if cfg.natural_gradient:  # inverse Fisher of N(mu, sigma^2) in (mu, log sigma)
            g_mu = g_mu * np.exp(2 * self.log_sigma)
            g_ls = g_ls * 0.5
        g = np.concatenate([g_mu, g_ls])
        if cfg.optimizer == "adam":
            b1, b2 = cfg.adam_betas
            self.adam_t += 1
            self.adam_m = b1 * self.adam_m + (1 - b1) * g
            self.adam_v = b2 * self.adam_v + (1 - b2) * g * g
            m_hat = self.adam_m / (1 - b1 ** self.adam_t)
            v_hat = self.adam_v / (1 - b2 ** self.adam_t)
            step = m_hat / (np.sqrt(v_hat) + cfg.adam_eps)
        else:
            step = g
        dim = self.knob.dim
        step = step * np.repeat([cfg.lr, cfg.lr if cfg.lr_sigma is None else cfg.lr_sigma], dim)
        self.mu = np.clip(self.mu + step[:dim], 0.0, 1.0)
        self.log_sigma = np.clip(self.log_sigma + step[dim:], math.log(cfg.sigma_min), math.log(cfg.sigma_max))

    def update(self, z: np.ndarray, rewards: np.ndarray, committed: np.ndarray) -> dict[str, float]:
        """Steps 3-4: advantages and ``epochs`` ascent steps on the objective for one group.

        ``z``: (n, dim) unclamped samples in unit coordinates; ``rewards``: (n,);
        ``committed``: the committed value in unit coordinates.
        """
        cfg = self.config
        adv = group_advantages(rewards, cfg.normalize_std, cfg.adv_eps)
        mu_old, ls_old = self.mu.copy(), self.log_sigma.copy()
        info: dict[str, float] = {}
        for _ in range(cfg.epochs):
            g_mu, g_ls, info = objective_grads(z, adv, self.mu, self.log_sigma, mu_old, ls_old, committed, cfg)
            self._ascend(g_mu, g_ls)
        info["kl"] = kl_old_new(mu_old, ls_old, self.mu, self.log_sigma)
        return info

    def commit_target(self, u_cur: np.ndarray) -> np.ndarray:
        """Step 5a: the committed value moved towards mu by at most ``max_step`` (unit coords)."""
        return np.clip(u_cur + np.clip(self.mu - u_cur, -self.config.max_step, self.config.max_step), 0.0, 1.0)

    def guard_evidence(self, target: np.ndarray, rho: np.ndarray, scores: np.ndarray, t_val: np.ndarray,
                       budget: int) -> float:
        """The score the guard judges the move by (NaN: no evidence, the move is refused).

        ``"probe"``: a probe of the target. ``"nearest"``: the score of the valid candidate
        nearest to the target if it lies within ``commit_radius`` (unit coordinates, max
        norm), else a probe of the target while the budget allows one.
        """
        cfg = self.config
        if cfg.commit_check == "none":
            return float("nan")
        if cfg.commit_check == "nearest" and len(scores):
            dist = np.max(np.abs(rho - target), axis=1)
            i = int(np.argmin(dist))
            if dist[i] <= cfg.commit_radius:
                self.guard_nearest += 1
                return float(scores[i])
        if self.env.probes >= budget:
            return float("nan")
        self.guard_probes += 1
        return self.env.probe(t_val, kind="guard")

    def accept(self, target_score: float, baseline: float) -> bool:
        """Step 5b, the guard: move only if the micro-dev score does not drop."""
        if not math.isfinite(target_score):
            return False
        if not math.isfinite(baseline):
            return True  # the current value faults; a finite score at the target is better
        return target_score >= baseline - self.config.commit_tol

    # -- the loop -----------------------------------------------------------------
    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        env, knob, cfg = self.env, self.knob, self.config
        if not self.initialized:
            self.mu = np.clip(knob.to_unit(env.current), 0.0, 1.0)
            self.initialized = True
        guard_cost = 1 if cfg.commit_check == "probe" else 0  # reserved; "nearest" probes only if room
        while not env.done:
            room = budget - env.probes - 1 - guard_cost  # 1: the baseline probe
            n = min(self.group_size(), room)
            if n < 2:
                break
            u_cur = np.clip(knob.to_unit(env.current), 0.0, 1.0)
            # 1. sample the group
            z = self.mu + self.sigma * self.rng.standard_normal((n, knob.dim))
            rho = np.clip(z, 0.0, 1.0)
            # 2. probe the baseline and the candidates at the same training state
            base = env.baseline()
            scores = env.probe_group(np.stack([knob.from_unit(r) for r in rho]))
            ok = np.isfinite(scores)
            rewards = scores[ok] - (base if math.isfinite(base) else 0.0)  # faulted baseline: same advantages
            self.last = {"reward_mean": float(rewards.mean()) if ok.any() else 0.0,
                         "reward_best": float(rewards.max()) if ok.any() else 0.0,
                         "valid": float(ok.sum())}
            # 3-4. advantages and the policy update (a group needs >= 2 valid scores)
            if ok.sum() >= 2:
                self.last.update(self.update(z[ok], rewards, u_cur))
            # 5. guarded, bounded commit
            target = self.commit_target(u_cur)
            value = env.current
            if not np.allclose(target, u_cur, rtol=0.0, atol=1e-9):
                t_val = knob.from_unit(target)
                evidence = self.guard_evidence(target, rho[ok], scores[ok], t_val, budget)
                if cfg.commit_check == "none" or self.accept(evidence, base):
                    value = t_val
                    self.commits += 1
                else:
                    self.refusals += 1
            env.advance(value)
            self.rounds += 1
            if callback is not None:
                callback(self)
        return env.current.copy()

    # -- logging and resume ---------------------------------------------------------
    def state(self) -> dict[str, float]:
        """mu (knob units), sigma (unit coordinates) and the committed value per component, plus counters."""
        names = self.knob.component_names
        mu_k = self.knob.from_unit(self.mu) if self.initialized else self.knob.clip(self.env.current)
        out: dict[str, float] = {}
        for i, n in enumerate(names):
            sfx = "" if self.knob.dim == 1 else f"/{n}"
            out[f"mu{sfx}"] = float(mu_k[i])
            out[f"sigma{sfx}"] = float(self.sigma[i])  # unit coordinates
            out[f"value{sfx}"] = float(self.env.current[i])
        out.update({"rounds": float(self.rounds), "commits": float(self.commits), "refusals": float(self.refusals),
                    "guard_probes": float(self.guard_probes)})
        out.update({k: v for k, v in self.last.items() if math.isfinite(v)})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state, "mu": self.mu.copy(), "log_sigma": self.log_sigma.copy(),
            "initialized": self.initialized, "adam_m": self.adam_m.copy(), "adam_v": self.adam_v.copy(),
            "adam_t": self.adam_t, "rounds": self.rounds, "commits": self.commits, "refusals": self.refusals,
            "guard_probes": self.guard_probes, "guard_nearest": self.guard_nearest, "last": dict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.rng.bit_generator.state = state["rng"]
            self.mu = np.asarray(state["mu"], dtype=np.float64).copy()
            self.log_sigma = np.asarray(state["log_sigma"], dtype=np.float64).copy()
            self.initialized = bool(state["initialized"])
            self.adam_m = np.asarray(state["adam_m"], dtype=np.float64).copy()
            self.adam_v = np.asarray(state["adam_v"], dtype=np.float64).copy()
            self.adam_t = int(state["adam_t"])
            self.rounds, self.commits = int(state["rounds"]), int(state["commits"])
            self.refusals = int(state["refusals"])
            self.guard_probes, self.guard_nearest = int(state["guard_probes"]), int(state["guard_nearest"])
            self.last = dict(state.get("last", {}))
        except KeyError as exc:
            raise ResumeError(f"grpo checkpoint lacks {exc.args[0]!r}") from None
        if self.mu.shape != (self.knob.dim,):
            raise ResumeError(f"grpo checkpoint is for a {self.mu.size}-d knob, this knob has dim {self.knob.dim}")
