"""What GRPO commits and what it answers: the rules layered on the paper's policy.

:mod:`hpctl.controllers.grpo` holds the paper's policy and update. This module holds the
rules that turn a run's probes into the value training continues with and the value the
final phase uses. Each is ours except the guard, and each is off with ``paper=true``:

* **guard evidence** (:func:`guard_evidence`): the paper commits a move only if the
  micro-dev score does not drop at the target. Its evidence is a probe of the target
  (``commit_check="probe"``, the paper's); ``"nearest"`` (default) lets the group's
  candidate nearest to the target stand in for it when one lies within
  :data:`COMMIT_RADIUS`, and probes the target only otherwise; ``"none"`` commits unchecked.
* **vertex** (:func:`quadratic_vertex`): the answer is the peak of a least-squares
  quadratic through the last group's scores where its curvature is significantly negative
  and the peak lies inside the group's span; else the committed value.
* **drift** (:func:`fit_drift`): one model for all the probes of the last rounds - a
  quadratic in the knob whose peak moves linearly with training progress, with an
  intercept per round (a round's training state may raise or lower every score alike).
  The candidates' own values are its regressors, so the controller moving its probes does
  not look like a moving optimum. A drift that is significant is followed to the end of
  training, but never further ahead than the rounds that measured it reach back, and only
  where the last round's probes on its side do not all score below the committed value
  (:func:`confirm_drift`: the check that catches a quadratic misfitting another shape).
* **evidence span** (:func:`clip_to_evidence`): without a measured drift, the answer lies
  within the span of what the last rounds probed.
* **revisit** (:func:`revisit_candidate`): a probe the rounds leave unspent re-scores, in
  the last round, the best candidate of the earlier rounds that lies far from the answer;
  if it beats the probes near the answer, the run had settled on a lesser peak and the
  answer moves there.

The probes are kept in an :class:`Evidence` record (part of the controller's state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

#: "nearest": the farthest a candidate may lie from the commit target and stand in for it (unit coordinates)
COMMIT_RADIUS = 0.05
#: a revisit looks at candidates farther than this from the answer; "near the answer" is within it
REVISIT_RADIUS = 0.1
#: |drift slope| / its standard error needed before the answer follows a drift
TREND_T = 3.0
#: the drift model is fitted on the probes of this share of the rounds (the latest ones), at least DRIFT_MIN_ROUNDS
DRIFT_SHARE = 0.5
DRIFT_MIN_ROUNDS = 3
#: the answer stays within the span of the probes of the last EVIDENCE_ROUNDS rounds unless a drift moves it
EVIDENCE_ROUNDS = 2

# the kinds of probes an Evidence record holds
BASELINE, CANDIDATE, GUARD, REVISIT = 0.0, 1.0, 2.0, 3.0


class Evidence:
    """Every probe of a run: ``rows`` of ``(round, progress, kind, score, u_1..u_dim)``.

    ``u`` are unit coordinates; ``kind`` is :data:`BASELINE`, :data:`CANDIDATE`,
    :data:`GUARD` or :data:`REVISIT`. Non-finite scores (faults) are not recorded.
    """

    def __init__(self, dim: int, rows: np.ndarray | None = None) -> None:
        self.dim = int(dim)
        self.rows = np.zeros((0, 4 + self.dim)) if rows is None else np.asarray(rows, dtype=np.float64).reshape(
            -1, 4 + self.dim)

    def add(self, rnd: int, progress: float, kind: float, u: np.ndarray, scores: np.ndarray) -> None:
        u = np.asarray(u, dtype=np.float64).reshape(-1, self.dim)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        ok = np.isfinite(scores)
        if ok.any():
            n = int(ok.sum())
            meta = np.column_stack([np.full(n, float(rnd)), np.full(n, float(progress)), np.full(n, kind), scores[ok]])
            self.rows = np.vstack([self.rows, np.column_stack([meta, u[ok]])])

    def select(self, rounds: np.ndarray | None = None, kinds: tuple[float, ...] | None = None) -> np.ndarray:
        """The rows of the given rounds and kinds (all by default)."""
        keep = np.ones(len(self.rows), dtype=bool)
        if rounds is not None:
            keep &= np.isin(self.rows[:, 0], rounds)
        if kinds is not None:
            keep &= np.isin(self.rows[:, 2], kinds)
        return self.rows[keep]

    def rounds(self) -> np.ndarray:
        return np.unique(self.rows[:, 0])

    def last_rounds(self, k: int) -> np.ndarray:
        r = self.rounds()
        return r[-k:] if k > 0 else r[:0]


# -------------------------------------------------------------- guard evidence ------
def nearest_candidate(target: np.ndarray, rho: np.ndarray, scores: np.ndarray,
                      radius: float = COMMIT_RADIUS) -> float | None:
    """The score of the candidate nearest to ``target`` (max norm, unit coordinates) if it
    lies within ``radius``, else None."""
    if not len(scores):
        return None
    dist = np.max(np.abs(rho - target), axis=1)
    i = int(np.argmin(dist))
    return float(scores[i]) if dist[i] <= radius else None


def accept(target_score: float, baseline: float) -> bool:
    """The paper's guard: move only if the micro-dev score does not drop (a faulted current
    value loses to any finite score; a faulted target never wins)."""
    if not math.isfinite(target_score):
        return False
    if not math.isfinite(baseline):
        return True
    return target_score >= baseline


# -------------------------------------------------------------------- vertex ------
def quadratic_vertex(rho: np.ndarray, scores: np.ndarray, fallback: np.ndarray, t_min: float = 6.0) -> np.ndarray:
    """Per dimension, the peak of a least-squares quadratic through a group's scores (all
    dimensions fitted together, no cross terms) where its curvature is negative by at least
    ``t_min`` standard errors and the peak lies strictly inside the group's span in that
    dimension; ``fallback`` elsewhere. ``rho``: (n, dim) unit coordinates; needs ``n >= 2 * dim + 3``
    (two residual degrees of freedom), else returns ``fallback``."""
    out = np.asarray(fallback, dtype=np.float64).copy()
    rho = np.asarray(rho, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    dim = len(out)
    n, p = len(scores), 1 + 2 * dim
    if n < p + 2 or rho.shape != (n, dim) or not np.all(np.isfinite(scores)):
        return out
    lo, hi = rho.min(axis=0), rho.max(axis=0)
    if np.any(hi - lo <= 1e-12):
        return out
    c, w = (lo + hi) / 2, hi - lo
    x = (rho - c) / w  # in [-1/2, 1/2]: a well-conditioned fit
    feats = np.column_stack([np.ones(n), x, x ** 2])
    coef, _, rank, _ = np.linalg.lstsq(feats, scores, rcond=None)
    if rank < p:
        return out
    resid = scores - feats @ coef
    cov = float(resid @ resid) / (n - p) * np.linalg.inv(feats.T @ feats)
    b, a = coef[1:1 + dim], coef[1 + dim:]
    se_a = np.sqrt(np.maximum(np.diag(cov)[1 + dim:], 0.0))
    for d in range(dim):
        if a[d] < 0 and -a[d] >= t_min * se_a[d]:
            v = c[d] + w[d] * (-b[d] / (2 * a[d]))
            if lo[d] < v < hi[d]:
                out[d] = v
    return out


# --------------------------------------------------------------------- drift ------
@dataclass
class Drift:
    """A fitted drift: ``slope`` (unit coordinates per unit of progress), its ``t`` statistic,
    and ``shift``: how far the answer moves (0 where ``t`` is below the threshold)."""

    slope: np.ndarray
    t: np.ndarray
    shift: np.ndarray
    peak_last: np.ndarray | None = None  # the fitted peak at the last round (unit coordinates), where drifting

    @classmethod
    def none(cls, dim: int) -> "Drift":
        z = np.zeros(dim)
        return cls(z, z.copy(), z.copy())


def fit_drift(rows: np.ndarray, dim: int, p_last: float, t_min: float = TREND_T) -> Drift:
    """Fit ``score = a_round + sum_d (b_d x_d + c_d x_d^2 + e_d x_d q)`` to ``rows`` (an
    :class:`Evidence` selection), with ``x`` the unit coordinates and ``q`` the training
    progress, both centred and scaled by their spans.

    Per dimension the peak lies at ``x*(q) = -(b_d + e_d q) / (2 c_d)``, so the optimum drifts
    by ``-e_d / (2 c_d)`` per unit of ``q``; its ``t`` comes from the delta method. Where
    ``t >= t_min`` (and the curvature is negative) the shift is that slope times the training
    left after the last round (``1 - p_last``), capped at the span of progress the rows
    cover: a line is not followed further ahead than its data reach back. ``peak_last`` is the
    fitted peak at the last round: where the optimum moves, the probes lag behind it, so the
    answer starts there rather than at the committed value. Needs three rounds and two
    residual degrees of freedom, else no drift.
    """
    none = Drift.none(dim)
    if len(rows) == 0:
        return none
    rnd, prog, score, u = rows[:, 0], rows[:, 1], rows[:, 3], rows[:, 4:4 + dim]
    rounds = np.unique(rnd)
    n, k = len(score), len(rounds)
    n_par = k + 3 * dim
    p_span = float(prog.max() - prog.min())
    if k < DRIFT_MIN_ROUNDS or n < n_par + 2 or not p_span > 0:
        return none
    lo, hi = u.min(axis=0), u.max(axis=0)
    if np.any(hi - lo <= 1e-12):
        return none
    x = (u - (lo + hi) / 2) / (hi - lo)
    q = ((prog - prog.mean()) / p_span)[:, None]
    onehot = (rnd[:, None] == rounds[None, :]).astype(np.float64)
    feats = np.column_stack([onehot, x, x ** 2, x * q])
    coef, _, rank, _ = np.linalg.lstsq(feats, score, rcond=None)
    if rank < n_par:
        return none
    resid = score - feats @ coef
    cov = float(resid @ resid) / (n - n_par) * np.linalg.pinv(feats.T @ feats)
    c = coef[k + dim:k + 2 * dim]
    e = coef[k + 2 * dim:k + 3 * dim]
    slope, t, peak = np.zeros(dim), np.zeros(dim), np.full(dim, np.nan)
    q_last = float((p_last - prog.mean()) / p_span)
    for d in range(dim):
        ic, ie = k + dim + d, k + 2 * dim + d
        if not c[d] < 0:
            continue
        s = -e[d] / (2 * c[d])  # in scaled x per unit of q
        # delta method: grad of s w.r.t. (c, e)
        g = np.array([e[d] / (2 * c[d] ** 2), -1.0 / (2 * c[d])])
        sub = cov[np.ix_([ic, ie], [ic, ie])]
        se = math.sqrt(max(float(g @ sub @ g), 0.0))
        slope[d] = s * (hi[d] - lo[d]) / p_span  # unit coordinates per unit of progress
        t[d] = abs(s) / max(se, 1e-12)
        peak[d] = (lo[d] + hi[d]) / 2 + (hi[d] - lo[d]) * (-(coef[k + d] + e[d] * q_last) / (2 * c[d]))
    horizon = min(max(1.0 - float(p_last), 0.0), p_span)
    shift = np.where(t >= t_min, slope * horizon, 0.0)
    return Drift(slope, t, shift, peak)


def confirm_drift(drift: Drift, evidence: Evidence) -> Drift:
    """``drift`` with its shift kept only where the last round's own probes do not refute it.

    The drift model is a quadratic; on a landscape of another shape (a ramp that ends in a
    cliff, say) it can find a significant "drift" that is only the misfit seen from the
    different places successive rounds probed. The last round tests it directly: per
    dimension, if it probed on the drift's side of its baseline (the committed value) and no
    probe there beat the baseline, the optimum has not moved that way and the shift is
    dropped. A round that probed nothing on that side leaves the drift as fitted.
    """
    if not np.any(drift.shift != 0):
        return drift
    rows = evidence.select(evidence.last_rounds(1), (BASELINE, CANDIDATE))
    base = rows[rows[:, 2] == BASELINE]
    if not len(base):
        return drift
    b_u, b_score = base[-1, 4:], float(base[-1, 3])
    cand = rows[rows[:, 2] == CANDIDATE]
    shift = drift.shift.copy()
    for d in np.flatnonzero(shift):
        ahead = np.sign(cand[:, 4 + d] - b_u[d]) == np.sign(shift[d])
        if ahead.any() and not np.any(cand[ahead, 3] > b_score):
            shift[d] = 0.0
    return Drift(drift.slope, drift.t, shift, drift.peak_last)


def drift_rows(evidence: Evidence, total_rounds: int | None = None) -> np.ndarray:
    """The probes the drift model is fitted on: baselines and candidates of the latest
    :data:`DRIFT_SHARE` of the rounds (at least :data:`DRIFT_MIN_ROUNDS`)."""
    rounds = evidence.rounds()
    k = max(DRIFT_MIN_ROUNDS, int(math.ceil(DRIFT_SHARE * len(rounds))))
    return evidence.select(rounds[-k:], (BASELINE, CANDIDATE))


# ------------------------------------------------------------- evidence span ------
def evidence_span(evidence: Evidence, rounds: int = EVIDENCE_ROUNDS) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` per dimension of what the last ``rounds`` rounds probed (unit coordinates)."""
    rows = evidence.select(evidence.last_rounds(rounds))
    if not len(rows):
        return None
    u = rows[:, 4:]
    return u.min(axis=0), u.max(axis=0)


def clip_to_evidence(u: np.ndarray, evidence: Evidence, shift: np.ndarray) -> np.ndarray:
    """``u`` kept within the span of the last rounds' probes, widened by a measured ``shift``
    in its direction (unit coordinates)."""
    span = evidence_span(evidence)
    u = np.asarray(u, dtype=np.float64)
    if span is None:
        return np.clip(u, 0.0, 1.0)
    lo, hi = span
    return np.clip(u, np.clip(lo + np.minimum(shift, 0.0), 0.0, 1.0), np.clip(hi + np.maximum(shift, 0.0), 0.0, 1.0))


# ------------------------------------------------------------------- revisit ------
def revisit_candidate(evidence: Evidence, answer: np.ndarray, this_round: int,
                      radius: float = REVISIT_RADIUS) -> np.ndarray | None:
    """The best candidate of the rounds before ``this_round`` lying farther than ``radius``
    from ``answer`` (unit coordinates, max norm), if it outscored every earlier candidate
    near the answer; else None."""
    earlier = evidence.select(np.arange(this_round), (CANDIDATE,))
    if not len(earlier):
        return None
    far = np.max(np.abs(earlier[:, 4:] - answer), axis=1) > radius
    if not far.any():
        return None
    i = int(np.flatnonzero(far)[np.argmax(earlier[far, 3])])
    if (~far).any() and earlier[i, 3] <= earlier[~far, 3].max():
        return None
    return earlier[i, 4:].copy()


def revisit_wins(score: float, evidence: Evidence, this_round: int, answer: np.ndarray,
                 radius: float = REVISIT_RADIUS) -> bool:
    """Whether a revisited candidate's ``score`` beats the mean score of this round's probes
    within ``radius`` of the answer (the best of them if none lies near it)."""
    rows = evidence.select(np.array([this_round]), (BASELINE, CANDIDATE))
    if not math.isfinite(score):
        return False
    if not len(rows):
        return True
    near = np.max(np.abs(rows[:, 4:] - answer), axis=1) <= radius
    here = float(rows[near, 3].mean()) if near.any() else float(rows[:, 3].max())
    return score > here

