"""GRPO controller of GRASP LoRA: the paper's policy and update, in the paper's order.

The policy is a diagonal Gaussian ``N(mu_d, sigma_d^2)`` per knob dimension ``d`` over a
latent ``z``; a sample becomes a knob value through its unit coordinate ``u``
(``knob.from_unit(u)``). Every round, at one frozen training state (the paper's "every K
optimizer steps"):

1. **sample** a group of C candidates ``z_i ~ N(mu, sigma^2)``, ``u_i = to_unit(z_i)``;
2. **probe** them all at the same training state (``env.probe_group``) and the baseline at
   the committed value (``env.baseline()``); reward ``r_i = score_i - score_0`` (the paper's
   ``L_0 - L_i`` for a loss; scores are higher-is-better);
3. **advantages**, group-centred: ``A_i = (r_i - mean r) / (std r + eps)``, ``std`` unbiased
   and ``eps = 1e-4`` as in TRL's GRPO (near-ties of a deterministic loss make small steps);
4. **update**: ``epochs`` ascent steps on ``(mu, log sigma)`` of

       J = mean_i min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i)   surrogate
           - lambda_reg * sum_d (mu_d - c_d)^2 / (2 sigma_old_d^2)        pull to the committed c
           + entropy_coef * sum_d log sigma_d                             entropy bonus

   with ``ratio_i = pi(z_i) / pi_old(z_i)`` and ``c`` the committed value in latent
   coordinates. Score-function gradients: ``d log pi / d mu = (z - mu) / sigma^2``,
   ``d log pi / d log sigma = (z - mu)^2 / sigma^2 - 1``, preconditioned by the inverse
   Fisher information (``sigma^2`` for ``mu``, ``1/2`` for ``log sigma``: the natural
   gradient, so the first step on ``mu`` is about ``policy_lr * sigma * corr(A, z)`` and the pull
   to ``c`` is ``policy_lr * lambda_reg * (c - mu)`` whatever sigma is). ``sigma`` stays in its
   bounds, ``mu`` within the range;
5. **commit**: the training value moves towards ``to_unit(mu)`` by at most half the range,
   and only if the micro-dev score does not drop there (the guard;
   :mod:`hpctl.controllers.answer` says which score is the evidence). Then
   ``env.advance(value)`` trains one round at the committed value.

The learned value is the final committed value (:meth:`GRPO.answer`).

Additions (ours), each on by default and all off with ``paper=True``:

* ``space="logit"``: ``u = sigmoid(z)`` instead of the paper's ``u = clamp(z, 0, 1)``
  (sampling mass beyond a bound piles up on it and pulls the learned value there). The
  density of ``u`` is ``N(logit u; mu, sigma^2) / (u (1 - u))``; the Jacobian does not
  depend on the policy, so ratios and gradients are those of the Gaussian in ``z``;
* **any start**: in the logit space the initial mean is the start value moved, if need be,
  to within ``sigma_init`` of the middle of the range (:meth:`GRPO.initial_mean`);
* ``sampling="stratified"``: per dimension one draw from each of the C equal-probability
  slices of the Gaussian (each draw is still exactly ``N(mu, sigma^2)``);
* the trust region: an epoch that lowers ``J`` is undone and ends the round's epochs, and a
  round's step is shortened along its direction until ``KL(pi_old || pi) <= 0.5``;
* the answer rules of :mod:`hpctl.controllers.answer`: ``commit_check="nearest"``,
  ``answer="vertex"``, ``trend="extrapolate"``, ``revisit="far_best"``, and the answer
  kept within the span of the last rounds' probes.

``shaping`` (off by default) replaces the rewards by rank utilities before step 3
(:func:`rank_utilities`). The optimiser (the paper names none) is plain natural-gradient
ascent with ``policy_lr`` on ``mu`` and ``policy_lr_sigma`` on ``log sigma`` (not ``lr``: a plugin's
``--lr`` is its optimizer's rate). Design notes and the
measurements behind each choice: docs/controllers.md and benchmarks/results/controllers.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from hpctl.controllers import answer as rules
from hpctl.controllers.base import Controller, register
from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, ResumeError

COMMIT_CHECKS = ("probe", "nearest", "none")
SPACES = ("logit", "clamp")
SAMPLINGS = ("stratified", "iid")
SHAPINGS = ("none", "centered_rank", "nes")
TRENDS = ("extrapolate", "none")
ANSWERS = ("committed", "vertex")
REVISITS = ("far_best", "none")

#: the settings ``paper=True`` sets, with the paper's choice for each
PAPER = {"space": "clamp", "sampling": "iid", "shaping": "none", "commit_check": "probe", "answer": "committed",
         "trend": "none", "revisit": "none"}
#: (sigma_init, sigma_min, sigma_max) per space: latent units (logits, or unit coordinates with "clamp")
SIGMAS = {"logit": (1.2, 0.2, 3.0), "clamp": (0.3, 0.025, 0.75)}
Z_MAX = 6.9  # |mu| bound in the logit space (sigmoid(6.9) = 0.999)
MAX_STEP = 0.5  # largest commit move per round (per component, unit coordinates)
ADV_EPS = 1e-4
MAX_KL = 0.5  # the trust region (ours)
STATE_VERSION = 2  # controller state layout (checkpoints); older ones are refused in one line


@dataclass
class GRPOConfig:
    """Hyperparameters of :class:`GRPO` (module docstring).

    ``sigma_init`` is in the policy's latent units: logits of the unit coordinate with
    ``space="logit"`` (1.2 spreads one sigma over about 0.23-0.77 around the middle), the
    unit coordinate itself with ``space="clamp"``; ``None`` takes the space's default.
    ``paper=True`` runs the paper's algorithm: every addition off (``PAPER``); setting one
    of those to something other than its default or the paper's choice is an error.
    """

    group_size: int | None = None  # candidates per round (C); None: the env's group size
    paper: bool = False  # the paper's algorithm: every addition below off
    space: str = "logit"  # "logit": u = sigmoid(z); "clamp": u = clip(z, 0, 1) (the paper's)
    sampling: str = "stratified"  # "stratified": one draw per 1/C quantile slice of N(0, 1); "iid" (the paper's)
    sigma_init: float | None = None  # initial exploration width (latent units); None: 1.2 (logit), 0.3 (clamp)
    policy_lr: float = 0.8  # natural-gradient step size on mu
    policy_lr_sigma: float = 0.3  # natural-gradient step size on log sigma
    epochs: int = 3  # gradient steps per group
    clip_eps: float = 0.0  # PPO ratio clip; 0 turns clipping off
    lambda_reg: float = 0.1  # pull of mu towards the committed value (in units of sigma)
    entropy_coef: float = 0.0  # bonus on sum(log sigma)
    shaping: str = "none"  # rewards replaced by their rank's utility before step 3: "centered_rank", "nes"; "none"
    commit_check: str = "nearest"  # the guard's evidence: "nearest", "probe" (the paper's) or "none"
    answer: str = "vertex"  # "vertex": the last group's significant quadratic peak; "committed" (the paper's)
    vertex_t: float = 6.0  # |curvature| / its standard error needed before the vertex is used
    trend: str = "extrapolate"  # the answer follows a measured drift to the end of training; "none"
    revisit: str = "far_best"  # a probe the rounds leave unspent re-scores the best far candidate; "none"

    def __post_init__(self) -> None:
        if self.paper:
            fields = {f.name: f.default for f in dataclasses.fields(self)}
            for name, theirs in PAPER.items():
                value = getattr(self, name)
                if value not in (fields[name], theirs):
                    raise ValueError(f"paper=true runs the paper's {name}={theirs}; drop {name}={value}")
                setattr(self, name, theirs)
        for name, allowed in (("space", SPACES), ("sampling", SAMPLINGS), ("shaping", SHAPINGS),
                              ("commit_check", COMMIT_CHECKS), ("trend", TRENDS), ("answer", ANSWERS),
                              ("revisit", REVISITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r} (choose from {', '.join(allowed)})")
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size}")
        lo, hi = self.sigma_bounds
        if self.sigma_init is None:
            self.sigma_init = SIGMAS[self.space][0]
        if not lo <= self.sigma_init <= hi:
            raise ValueError(f"sigma_init must be in [{lo}, {hi}] with space={self.space}, got {self.sigma_init}")
        for name in ("policy_lr", "policy_lr_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("clip_eps", "lambda_reg", "entropy_coef", "vertex_t"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def sigma_bounds(self) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` of this space."""
        return SIGMAS[self.space][1], SIGMAS[self.space][2]


# ---------------------------------------------------------------- the math ------
U_EPS = 1e-6  # unit coordinates are kept this far inside (0, 1) before taking a logit


def logit(u: np.ndarray) -> np.ndarray:
    u = np.clip(np.asarray(u, dtype=np.float64), U_EPS, 1.0 - U_EPS)
    return np.log(u) - np.log1p(-u)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable for large |z|


def gaussian_logp(z: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> np.ndarray:
    """Joint log-density of each row of ``z`` (shape (n, dim)) under the diagonal Gaussian."""
    sigma = np.exp(log_sigma)
    return np.sum(-0.5 * ((z - mu) / sigma) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi), axis=1)


def unit_logp(u: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> np.ndarray:
    """Log-density of unit coordinates ``u = sigmoid(z)``, ``z ~ N(mu, sigma^2)`` (logit space).

    ``log N(logit u; mu, sigma^2) - sum_d log(u_d (1 - u_d))``: the change of variables.
    """
    u = np.asarray(u, dtype=np.float64)
    return gaussian_logp(logit(u), mu, log_sigma) - np.sum(np.log(u) + np.log1p(-u), axis=1)


# step 1: sampling
def standard_normal_group(rng: np.random.Generator, n: int, dim: int, stratified: bool = True) -> np.ndarray:
    """``n`` draws of ``N(0, I_dim)``; ``stratified``: per dimension one draw from each of the
    ``n`` equal-probability slices of the normal, in random order (Latin hypercube sampling).

    Each draw is still exactly ``N(0, 1)`` (a uniform slice, then a random slice), so the
    gradient estimates stay unbiased; the group is spread over the whole distribution,
    tails included, instead of clumping by chance.
    """
    if not stratified:
        return rng.standard_normal((n, dim))
    u = (np.stack([rng.permutation(n) for _ in range(dim)], axis=1) + rng.random((n, dim))) / n
    inv = NormalDist().inv_cdf
    return np.vectorize(inv)(np.clip(u, 1e-12, 1 - 1e-12))


# step 3: advantages
def rank_utilities(rewards: np.ndarray, shaping: str) -> np.ndarray:
    """Fitness shaping: each reward replaced by a utility of its rank in the group (ties share).

    ``"centered_rank"``: ranks mapped linearly onto ``[-1/2, 1/2]`` (OpenAI's evolution
    strategies); ``"nes"``: the natural evolution strategies' utilities
    ``max(0, log(n/2 + 1) - log k) / sum - 1/n`` for rank ``k`` (1 the best), which give
    weight to the upper half only, most to the best. Either is invariant to any monotone
    change of the score. Sums to zero.
    """
    r = np.asarray(rewards, dtype=np.float64)
    n = r.size
    if n < 2:
        return np.zeros(n)
    order = np.argsort(-r, kind="stable")  # best first
    k = np.arange(1, n + 1, dtype=np.float64)
    if shaping == "centered_rank":
        by_rank = (n - k) / (n - 1) - 0.5
    elif shaping == "nes":
        w = np.maximum(0.0, math.log(n / 2 + 1) - np.log(k))
        by_rank = w / w.sum() - 1.0 / n
    else:
        raise ValueError(f"unknown shaping {shaping!r} (choose from {', '.join(SHAPINGS[1:])})")
    util = np.empty(n)
    util[order] = by_rank
    values, inverse = np.unique(r, return_inverse=True)
    if values.size < n:  # ties share the mean utility of their ranks
        util = (np.bincount(inverse, weights=util) / np.bincount(inverse))[inverse]
    return util - util.mean()


def group_advantages(rewards: np.ndarray, shaping: str = "none", eps: float = ADV_EPS) -> np.ndarray:
    """``A_i = (r_i - mean r) / (std r + eps)`` with the unbiased ``std`` (TRL's GRPO).

    With ``shaping`` (:func:`rank_utilities`) the rank utilities take the place of the
    centred rewards, scaled to the centred rewards' std, so near-ties still make small steps.
    """
    r = np.asarray(rewards, dtype=np.float64)
    a = r - r.mean()
    std = r.std(ddof=1) if r.size > 1 else r.std()
    if shaping != "none":
        util = rank_utilities(r, shaping)
        u_std = util.std(ddof=1) if r.size > 1 else util.std()
        if u_std == 0:
            return np.zeros_like(r)
        a = util / u_std * std
    return a / (std + eps)


# step 4: the objective and its gradient
def score_grads(z: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``d log N(z)/d mu = (z-mu)/sigma^2`` and ``d log N(z)/d log sigma = (z-mu)^2/sigma^2 - 1``."""
    var = np.exp(2 * log_sigma)
    d = z - mu
    return d / var, d * d / var - 1.0


def kl_old_new(mu_old: np.ndarray, ls_old: np.ndarray, mu: np.ndarray, ls: np.ndarray) -> float:
    """``KL(N(mu_old, s_old^2) || N(mu, s^2))`` summed over dimensions."""
    v_old, v = np.exp(2 * ls_old), np.exp(2 * ls)
    return float(np.sum(ls - ls_old + (v_old + (mu_old - mu) ** 2) / (2 * v) - 0.5))


def surrogate(z: np.ndarray, adv: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray, mu_old: np.ndarray,
              ls_old: np.ndarray, clip_eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the ratio ``pi / pi_old``, the surrogate ``min(r A, clip(r) A)`` and where it
    is not clipped (there its gradient is ``r A grad log pi``)."""
    ratio = np.exp(gaussian_logp(z, mu, log_sigma) - gaussian_logp(z, mu_old, ls_old))
    if clip_eps > 0:
        active = np.where(adv >= 0, ratio < 1 + clip_eps, ratio > 1 - clip_eps)
        return ratio, np.minimum(ratio * adv, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv), active
    return ratio, ratio * adv, np.ones(len(adv), dtype=bool)


def objective_grads(z: np.ndarray, adv: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray,
                    mu_old: np.ndarray, ls_old: np.ndarray, center: np.ndarray,
                    cfg: GRPOConfig) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Gradient of the objective ``J`` (module docstring) w.r.t. ``mu`` and ``log sigma``.

    ``z``: latent samples (n, dim); ``center``: the committed value in latent coordinates.
    Returns ``(g_mu, g_log_sigma, info)``; ``info`` has the surrogate value, the mean
    ratio and the fraction of clipped samples.
    """
    n = len(adv)
    ratio, surr, active = surrogate(z, adv, mu, log_sigma, mu_old, ls_old, cfg.clip_eps)
    w = (ratio * adv * active)[:, None] / n
    d_mu, d_ls = score_grads(z, mu, log_sigma)
    g_mu = np.sum(w * d_mu, axis=0)
    g_ls = np.sum(w * d_ls, axis=0)
    g_mu -= cfg.lambda_reg * (mu - center) / np.exp(2 * ls_old)  # - lambda_reg |mu - c|^2 / (2 sigma_old^2)
    g_ls += cfg.entropy_coef  # + entropy_coef H(pi), H = sum(log sigma) + const
    info = {"surrogate": float(np.mean(surr)), "ratio_mean": float(np.mean(ratio)),
            "clip_frac": float(1.0 - np.mean(active))}
    return g_mu, g_ls, info


def objective_value(z: np.ndarray, adv: np.ndarray, mu: np.ndarray, log_sigma: np.ndarray,
                    mu_old: np.ndarray, ls_old: np.ndarray, center: np.ndarray, cfg: GRPOConfig) -> float:
    """The objective ``J`` itself (the value whose gradient :func:`objective_grads` gives)."""
    _, surr, _ = surrogate(z, adv, mu, log_sigma, mu_old, ls_old, cfg.clip_eps)
    j = float(np.mean(surr)) - cfg.lambda_reg * float(np.sum((mu - center) ** 2 / (2 * np.exp(2 * ls_old))))
    return j + cfg.entropy_coef * float(np.sum(log_sigma))


# ------------------------------------------------------------ the controller ------
@register
class GRPO(Controller):
    """Group-relative policy optimisation of a Gaussian over the knob (GRASP LoRA).

    One round = ``1 + C (+1)`` probes: the baseline at the committed value, C sampled
    candidates, and at most one guard probe of the move target (always with
    ``commit_check="probe"``, reserved in the budget; with ``"nearest"`` only when no
    candidate lies near the target and the budget has a probe left). A round with fewer
    than 2 affordable candidates is not started, so ``env.probes <= budget`` always; a
    budget too small for one round is a :class:`ConfigError` (:meth:`check_budget`).
    The run stops when the budget is spent or training is over (``env.done``).
    """

    #: settings renamed so that GRPO's step sizes are not taken for a plugin's ``--lr``
    RENAMED = {"lr": "policy_lr", "lr_sigma": "policy_lr_sigma"}

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None) -> Any:
        """As :meth:`Controller.make_config`; an old setting name is a one-line error naming the new one."""
        for old, new in cls.RENAMED.items():
            if old in (overrides or {}):
                raise ConfigError(f"controller 'grpo' has no setting {old!r}: it is now {new!r} (e.g. --set {new}="
                                  f"{overrides[old]}; --lr, where a plugin has it, is its optimizer's rate)")
        return super().make_config(overrides)

    name = "grpo"
    Config = GRPOConfig

    def __init__(self, env: ControlEnv, config: GRPOConfig | None = None, seed: int = 0) -> None:
        super().__init__(env, config, seed)
        dim = self.knob.dim
        self.mu = np.full(dim, np.nan)  # set from the committed value when run() starts
        self.log_sigma = np.full(dim, math.log(self.config.sigma_init))
        self.initialized = False
        self.rounds = 0
        self.updates = 0  # gradient steps on (mu, log sigma)
        self.commits = 0
        self.refusals = 0
        self.undone = 0  # epochs undone by the trust region
        self.guard_probes = 0
        self.guard_nearest = 0
        self.revisits = 0
        self.escapes = 0
        self.last: dict[str, float] = {}
        self.evidence = rules.Evidence(dim)  # every probe: what the answer rules read
        self.escape: np.ndarray | None = None  # the revisit's answer (unit coordinates), if it found one

    # -- the policy's space -----------------------------------------------------------
    @property
    def sigma(self) -> np.ndarray:
        return np.exp(self.log_sigma)

    def to_unit(self, z: np.ndarray) -> np.ndarray:
        """Latent -> unit coordinates: ``sigmoid`` (or ``clip`` to [0, 1] with ``space="clamp"``)."""
        return sigmoid(z) if self.config.space == "logit" else np.clip(z, 0.0, 1.0)

    def to_latent(self, u: np.ndarray) -> np.ndarray:
        """Unit -> latent coordinates, within the bounds ``mu`` may take."""
        if self.config.space == "logit":
            return np.clip(logit(u), -Z_MAX, Z_MAX)
        return np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)

    def mu_bounds(self) -> tuple[float, float]:
        return (-Z_MAX, Z_MAX) if self.config.space == "logit" else (0.0, 1.0)

    def initial_mean(self, u0: np.ndarray) -> np.ndarray:
        """The policy's first mean for the start value ``u0`` (unit coordinates).

        In the logit space a Gaussian of width ``sigma`` around ``mu`` spans about
        ``sigma * u (1 - u)`` of the range, which vanishes at a bound: started there, every
        candidate would lie beside it. So the mean starts within ``sigma_init`` of the middle
        (``|mu| <= sigma_init``): one sigma always reaches the middle of the range and the
        group covers a fixed share of it (two sigmas: 2-77 % of it from a bound), from any
        start. Starts inside that band (0.23-0.77 with the default width) are unchanged; the
        committed value still starts where training does, and moves only past the guard.
        """
        mu = self.to_latent(u0)
        if self.config.space == "logit" and not self.config.paper:
            mu = np.clip(mu, -self.config.sigma_init, self.config.sigma_init)
        return mu

    def group_size(self) -> int:
        return int(self.config.group_size or self.env.group_size)

    def round_cost(self, n: int) -> int:
        """Probes one round of ``n`` candidates reserves: baseline, candidates, guard."""
        return 1 + n + (1 if self.config.commit_check == "probe" else 0)

    def check_budget(self, budget: int) -> None:
        """A budget that cannot pay for one round (two candidates) would learn nothing."""
        need = self.round_cost(2)
        if budget < need:
            raise ConfigError(f"controller 'grpo' needs a budget of at least {need} probes for one update "
                              f"(baseline, 2 candidates{', guard' if need == 4 else ''}), got {budget}")

    # -- step 4: the update ---------------------------------------------------------------
    def _ascend(self, g_mu: np.ndarray, g_ls: np.ndarray) -> None:
        """One natural-gradient ascent step on (mu, log sigma), then project onto the bounds."""
        cfg = self.config
        g = np.concatenate([g_mu * np.exp(2 * self.log_sigma), g_ls * 0.5])  # inverse Fisher of N(mu, sigma^2)
        dim = self.knob.dim
        step = g * np.repeat([cfg.policy_lr, cfg.policy_lr_sigma], dim)
        lo, hi = cfg.sigma_bounds
        self.mu = np.clip(self.mu + step[:dim], *self.mu_bounds())
        self.log_sigma = np.clip(self.log_sigma + step[dim:], math.log(lo), math.log(hi))
        self.updates += 1

    def _trust_region(self, mu_old: np.ndarray, ls_old: np.ndarray) -> float:
        """Shorten the round's step along its direction until ``KL(pi_old || pi) <= MAX_KL`` (ours)."""
        kl = kl_old_new(mu_old, ls_old, self.mu, self.log_sigma)
        if self.config.paper or kl <= MAX_KL:
            return 1.0
        mu_new, ls_new = self.mu.copy(), self.log_sigma.copy()
        lo, hi = 0.0, 1.0  # bisection on the step fraction t (KL grows with t along the segment)
        for _ in range(30):
            t = 0.5 * (lo + hi)
            kl_t = kl_old_new(mu_old, ls_old, mu_old + t * (mu_new - mu_old), ls_old + t * (ls_new - ls_old))
            if kl_t > MAX_KL:
                hi = t
            else:
                lo = t
        self.mu, self.log_sigma = mu_old + lo * (mu_new - mu_old), ls_old + lo * (ls_new - ls_old)
        return lo

    def update(self, z: np.ndarray, rewards: np.ndarray, center: np.ndarray) -> dict[str, float]:
        """Steps 3-4 for one group: advantages, ``epochs`` ascent steps (with the trust region).

        ``z``: (n, dim) latent samples; ``rewards``: (n,); ``center``: the committed value
        in latent coordinates.
        """
        cfg = self.config
        adv = group_advantages(rewards, shaping=cfg.shaping)
        mu_old, ls_old = self.mu.copy(), self.log_sigma.copy()
        info: dict[str, float] = {}
        for _ in range(cfg.epochs):
            mu_from, ls_from = self.mu.copy(), self.log_sigma.copy()
            g_mu, g_ls, info = objective_grads(z, adv, self.mu, self.log_sigma, mu_old, ls_old, center, cfg)
            self._ascend(g_mu, g_ls)
            if not cfg.paper and (  # ours: an epoch that lowers J (same samples and advantages) overshot
                    objective_value(z, adv, self.mu, self.log_sigma, mu_old, ls_old, center, cfg)
                    < objective_value(z, adv, mu_from, ls_from, mu_old, ls_old, center, cfg)):
                self.mu, self.log_sigma = mu_from, ls_from
                self.updates -= 1
                self.undone += 1
                break
        info["step_fraction"] = self._trust_region(mu_old, ls_old)
        info["kl"] = kl_old_new(mu_old, ls_old, self.mu, self.log_sigma)
        return info

    # -- step 5: the guarded, bounded commit --------------------------------------------------
    def commit_target(self, u_cur: np.ndarray) -> np.ndarray:
        """The committed value moved towards the policy's mean by at most ``MAX_STEP`` (unit coords)."""
        return np.clip(u_cur + np.clip(self.to_unit(self.mu) - u_cur, -MAX_STEP, MAX_STEP), 0.0, 1.0)

    def guard_evidence(self, target: np.ndarray, rho: np.ndarray, scores: np.ndarray, budget: int) -> float:
        """The score the guard judges the move by (NaN: no evidence, the move is refused).

        ``"probe"``: a probe of the target. ``"nearest"``: the score of the candidate nearest
        to the target if it lies within ``answer.COMMIT_RADIUS``, else a probe of the target
        while the budget allows one.
        """
        if self.config.commit_check == "nearest":
            near = rules.nearest_candidate(target, rho, scores)
            if near is not None:
                self.guard_nearest += 1
                return near
        if self.env.probes >= budget:
            return float("nan")
        self.guard_probes += 1
        score = self.env.probe(self.knob.from_unit(target), kind="guard")
        self.evidence.add(self.rounds, self.env.progress, rules.GUARD, target, [score])
        return score

    # -- the loop ---------------------------------------------------------------------
    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        env, knob, cfg = self.env, self.knob, self.config
        if self.rounds == 0:
            self.check_budget(budget)
        if not self.initialized:
            self.mu = self.initial_mean(knob.to_unit(env.current))
            self.initialized = True
        while not env.done:
            room = budget - self.env.probes - self.round_cost(0)
            n = min(self.group_size(), room)
            if n < 2:
                break
            u_cur = np.clip(knob.to_unit(env.current), 0.0, 1.0)
            # 1. sample the group
            z = self.mu + self.sigma * standard_normal_group(self.rng, n, knob.dim, cfg.sampling == "stratified")
            rho = self.to_unit(z)
            # 2. probe the baseline and the candidates at the same training state
            base = env.baseline()
            scores = env.probe_group(np.stack([knob.from_unit(r) for r in rho]))
            ok = np.isfinite(scores)
            self.evidence.add(self.rounds, env.progress, rules.BASELINE, u_cur, [base])
            self.evidence.add(self.rounds, env.progress, rules.CANDIDATE, rho, scores)
            rewards = scores[ok] - (base if math.isfinite(base) else 0.0)  # faulted baseline: same advantages
            self.last = {"reward_mean": float(rewards.mean()) if ok.any() else 0.0,
                         "reward_best": float(rewards.max()) if ok.any() else 0.0,
                         "valid": float(ok.sum())}
            # 3-4. advantages and the policy update (a group needs >= 2 valid scores)
            if ok.sum() >= 2:
                self.last.update(self.update(z[ok], rewards, self.to_latent(u_cur)))
            # 5. guarded, bounded commit
            target = self.commit_target(u_cur)
            value = env.current
            if not np.allclose(target, u_cur, rtol=0.0, atol=1e-9):
                if cfg.commit_check == "none" or rules.accept(self.guard_evidence(target, rho[ok], scores[ok], budget),
                                                              base):
                    value = knob.from_unit(target)
                    self.commits += 1
                else:
                    self.refusals += 1
            if cfg.revisit == "far_best" and self._last_round(budget):
                self._revisit(value, budget)
            env.advance(value)
            self.rounds += 1
            if callback is not None:
                callback(self)
        return self.answer()

    def _last_round(self, budget: int) -> bool:
        env = self.env
        return (env.steps_done + env.steps_per_round >= env.task.total_steps
                or budget - env.probes - self.round_cost(0) < 2)

    def _revisit(self, value: np.ndarray, budget: int) -> None:
        """In the last round and only with a probe the rounds left unspent: the best far candidate
        of the earlier rounds (:func:`answer.revisit_candidate`) is probed again here; if it wins
        (:func:`answer.revisit_wins`), the answer moves there."""
        if self.env.probes >= budget:
            return
        here = np.clip(self.knob.to_unit(self._answer_from(value)), 0.0, 1.0)
        u = rules.revisit_candidate(self.evidence, here, self.rounds)
        if u is None:
            return
        score = self.env.probe(self.knob.from_unit(u), kind="revisit")
        self.revisits += 1
        self.evidence.add(self.rounds, self.env.progress, rules.REVISIT, u, [score])
        if rules.revisit_wins(score, self.evidence, self.rounds, here):
            self.escape = u
            self.escapes += 1

    # -- the answer -----------------------------------------------------------------------
    def drift(self) -> rules.Drift:
        """The drift the answer follows (:func:`answer.fit_drift`; none with ``trend="none"``)."""
        if self.config.trend == "none" or not len(self.evidence.rows):
            return rules.Drift.none(self.knob.dim)
        p_last = float(self.evidence.rows[-1, 1])
        drift = rules.fit_drift(rules.drift_rows(self.evidence), self.knob.dim, p_last)
        return rules.confirm_drift(drift, self.evidence)

    def answer(self) -> np.ndarray:
        """The learned value: the final committed value, or with the answer rules the last
        group's significant peak, moved along a measured drift, within the evidence; or the
        far value a revisit found better."""
        if self.escape is not None:
            return self.knob.from_unit(self.escape)
        return self._answer_from(self.env.current)

    def _answer_from(self, committed: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.paper:
            return np.array(committed, dtype=np.float64)
        u0 = np.clip(self.knob.to_unit(np.asarray(committed, dtype=np.float64)), 0.0, 1.0)
        u = u0
        if cfg.answer == "vertex" and len(self.evidence.rows):
            last = self.evidence.select(self.evidence.last_rounds(1), (rules.CANDIDATE,))
            u = rules.quadratic_vertex(last[:, 4:], last[:, 3], u0, cfg.vertex_t)
        drift = self.drift()
        shift = drift.shift
        if drift.peak_last is not None:  # drifting: the committed value lags; start from the fitted peak
            u = np.where((shift != 0) & np.isfinite(drift.peak_last), drift.peak_last, u)
        u = rules.clip_to_evidence(u + shift, self.evidence, shift)
        if cfg.answer == "committed" and np.array_equal(u, u0):
            return np.array(committed, dtype=np.float64)  # unchanged: no round trip through unit coordinates
        return self.knob.from_unit(u)

    # -- logging, resume and warm starts -----------------------------------------------
    def state(self) -> dict[str, float]:
        """mu (knob units), sigma (latent units), the committed value per component, and counters."""
        names = self.knob.component_names
        mu_k = self.knob.from_unit(self.to_unit(self.mu)) if self.initialized else self.knob.clip(self.env.current)
        drift = self.drift() if self.config.trend == "extrapolate" else None
        out: dict[str, float] = {}
        for i, n in enumerate(names):
            sfx = "" if self.knob.dim == 1 else f"/{n}"
            out[f"mu{sfx}"] = float(mu_k[i])
            out[f"sigma{sfx}"] = float(self.sigma[i])
            out[f"value{sfx}"] = float(self.env.current[i])
            if drift is not None and drift.t[i] > 0:
                out[f"trend_slope{sfx}"], out[f"trend_t{sfx}"] = float(drift.slope[i]), float(drift.t[i])
                out[f"trend_shift{sfx}"] = float(drift.shift[i])  # 0: not followed (not significant, or refuted)
        out.update({"rounds": float(self.rounds), "updates": float(self.updates), "commits": float(self.commits),
                    "refusals": float(self.refusals), "guard_probes": float(self.guard_probes),
                    "undone": float(self.undone), "revisits": float(self.revisits), "escapes": float(self.escapes)})
        out.update({k: v for k, v in self.last.items() if math.isfinite(v)})
        return out

    def export_state(self, out_dir: Path) -> dict[str, Any]:
        """The policy (latent mean and width) a later run can warm-start from."""
        return {"space": self.config.space, "mu": self.mu.tolist(), "sigma": self.sigma.tolist(),
                "updates": self.updates}

    def warm_start(self, state: dict[str, Any], folder: Path) -> None:
        """Start from a finished run's policy: mean and width, not its counters or RNG.

        Training still starts at the task's starting value; the first round samples
        around the saved mean, and the commit moves towards it by at most half the range.
        """
        cfg = self.config
        if state.get("space") != cfg.space:
            raise ConfigError(f"warm start: the grpo policy in {str(folder)!r} lives in the {state.get('space')!r} "
                              f"space, this run's in {cfg.space!r} (set space={state.get('space')})")
        try:
            mu = np.asarray(state["mu"], dtype=np.float64).reshape(-1)
            sigma = np.asarray(state["sigma"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"warm start: the grpo state in {str(folder)!r} is unreadable: {exc}") from None
        if mu.shape != (self.knob.dim,) or sigma.shape != (self.knob.dim,):
            raise ConfigError(f"warm start: the grpo policy in {str(folder)!r} has {mu.size} dimension(s), "
                              f"this knob {self.knob.dim}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and (sigma > 0).all()):
            raise ConfigError(f"warm start: the grpo policy in {str(folder)!r} is not finite")
        lo, hi = cfg.sigma_bounds
        self.mu = np.clip(mu, *self.mu_bounds())
        self.log_sigma = np.clip(np.log(sigma), math.log(lo), math.log(hi))
        self.initialized = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "rng": self.rng.bit_generator.state, "mu": self.mu.copy(),
            "log_sigma": self.log_sigma.copy(), "initialized": self.initialized, "rounds": self.rounds,
            "updates": self.updates, "commits": self.commits, "refusals": self.refusals,
            "guard_probes": self.guard_probes, "guard_nearest": self.guard_nearest, "undone": self.undone,
            "revisits": self.revisits, "escapes": self.escapes, "last": dict(self.last),
            "evidence": self.evidence.rows.copy(), "escape": None if self.escape is None else self.escape.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ResumeError("this grpo checkpoint was written by an older hpctl (its controller state changed); "
                              "start the run afresh")
        try:
            self.rng.bit_generator.state = state["rng"]
            self.mu = np.asarray(state["mu"], dtype=np.float64).copy()
            self.log_sigma = np.asarray(state["log_sigma"], dtype=np.float64).copy()
            self.initialized = bool(state["initialized"])
            self.rounds, self.updates, self.commits = int(state["rounds"]), int(state["updates"]), int(state["commits"])
            self.refusals, self.undone = int(state["refusals"]), int(state["undone"])
            self.guard_probes, self.guard_nearest = int(state["guard_probes"]), int(state["guard_nearest"])
            self.revisits, self.escapes = int(state["revisits"]), int(state["escapes"])
            self.last = dict(state["last"])
            rows = np.asarray(state["evidence"], dtype=np.float64)
            escape = state["escape"]
            self.escape = None if escape is None else np.asarray(escape, dtype=np.float64).copy()
        except KeyError as exc:
            raise ResumeError(f"grpo checkpoint lacks {exc.args[0]!r}") from None
        if self.mu.shape != (self.knob.dim,):
            raise ResumeError(f"grpo checkpoint is for a {self.mu.size}-d knob, this knob has dim {self.knob.dim}")
        if rows.size % (4 + self.knob.dim):
            raise ResumeError(f"grpo checkpoint's probe record does not fit a {self.knob.dim}-d knob")
        self.evidence = rules.Evidence(self.knob.dim, rows)
