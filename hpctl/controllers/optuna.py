"""Optuna's samplers as controllers: ``tpe``, ``cmaes`` and ``gp``.

Optuna's :class:`~optuna.samplers.TPESampler`, :class:`~optuna.samplers.CmaEsSampler` and
:class:`~optuna.samplers.GPSampler` driven through Optuna's ask/tell interface, so that the
controllers users already run for small-budget tuning sit beside GRPO in ``hpctl run``,
``hpctl compare``, :class:`hpctl.Session` and the Trainer callback. They need the
``optuna`` extra (``pip install 'hpctl[optuna]'``: Optuna >= 5.0, ``cmaes`` for CMA-ES,
scipy and torch for the GP); without it a controller name is a one-line
:class:`~hpctl.errors.ConfigError` before anything runs.

What a round is
---------------
They are search controllers (:mod:`hpctl.controllers.search`): they probe candidates at
the training state they find and never train, so Optuna's objective is a probe's score
(higher is better: the study maximises) at that one state, as it is for ``random`` and
``grid``. A round is ``group_size`` trials asked together (``study.ask()`` G times before
any ``tell``, Optuna's batch setting), scored with one ``env.probe_group`` call (in
parallel with ``--probe-workers``), then told; the last round shrinks to what is left of
the budget, so the whole budget is spent, as for ``random``. A failed probe (an exception
or a non-finite score) is told as a FAIL trial. The learned value is the best-scoring
candidate (first of ties), Optuna's ``study.best_trial``, and what the final phase uses.

The knob maps to one :class:`~optuna.distributions.FloatDistribution` per component,
``FloatDistribution(low, high, log=knob.log)``: a log-scale knob (a learning rate) is
searched in log space, as ``random`` and ``grid`` do.

Settings (``--set``, ``controller_config``): Optuna's defaults, except where a batch of
asks needs otherwise, each said in its config class. In short: TPE asks with
``constant_liar`` (Optuna's advice for batches, so a group does not pile onto one point);
CMA-ES's population is the group size (a round is one generation; with another size,
generations straddle rounds and Optuna drops the surplus trials); the random start-up of
TPE and GP is Optuna's 10 trials but at most a quarter of the budget, so a small budget is
not random search under another name. Whatever the setting, the first round is random:
Optuna's relative samplers (CMA-ES, GP) learn the search space from finished trials, and
none has finished when a round's group is asked. A budget the start-up would spend whole,
or one that cannot complete one CMA-ES generation and use it, is a one-line error.

CMA-ES on a 1-d knob is CMA-ES: Optuna 4.5 dropped the fallback that sampled 1-d spaces
with its independent (random) sampler, and the extra requires >= 5.0 (GPSampler's batch
acquisition for trials still running needs it too). A test checks that every 1-d trial
after the first round carries CMA-ES's generation.

Seeding and resume
------------------
The sampler is seeded with the controller's seed. The saved state holds the trials
(values, scores, which round asked them), never a pickle of the study: loading a
checkpoint (:mod:`hpctl.statefile`) runs no code. Resuming replays the saved rounds into a
fresh study with the same seed - each round asked again, checked against the saved values,
and told its saved scores - which restores everything Optuna keeps (its random streams,
CMA-ES's distribution, which lives in trial attributes as a pickle) exactly, so a resumed
run asks what an uninterrupted one asks. A replay that asks other values (another Optuna
version or sampler build) is a one-line :class:`~hpctl.errors.ResumeError`. In-process
restores of the state the live study already holds (a :class:`~hpctl.session.Session`
replays its round from the round's start state at every ``tell``) keep the live study and
the group it has asked, so ask/tell costs no replay.

The GP's asks run with one torch thread (restored afterwards): several times faster on
problems this small, and its numbers do not depend on the machine's thread count.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from hpctl.controllers.base import Controller, register
from hpctl.controllers.search import SearchController
from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, ResumeError

#: the oldest Optuna these controllers run on (CMA-ES in 1-d: 4.5; GP batch asks: 5.0)
MIN_OPTUNA = (5, 0)
INSTALL_HINT = "pip install 'hpctl[optuna]'"
#: a replayed trial may differ from the saved one by this much (unit coordinates) and still resume
REPLAY_TOL = 1e-6
#: Optuna's default number of random start-up trials (TPE, GP)
OPTUNA_STARTUP = 10


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _import_optuna():
    import optuna

    return optuna


@contextlib.contextmanager
def _quiet(optuna) -> Iterator[None]:
    """Optuna's INFO lines (one per trial) and experimental warnings off, restored afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", module=r"optuna(\.|$)")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class OptunaController(SearchController):
    """An Optuna sampler asked a group per round (module docstring).

    Subclasses set ``name``, ``Config``, ``sampler_class`` (the Optuna class's name, for
    messages), ``needs`` (the modules beyond Optuna its sampler imports) and implement
    :meth:`make_sampler`.
    """

    sampler_class: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this controller cannot run here (the extra is missing or too old); None if it can."""
        need = f"controller {cls.name!r} needs the 'optuna' extra: {INSTALL_HINT}"
        try:
            optuna = _import_optuna()
        except ImportError:
            return f"{need} (no module named 'optuna')"
        version = getattr(optuna, "__version__", "0")
        if _version_tuple(version) < MIN_OPTUNA:
            return f"{need} (optuna {version} is older than {'.'.join(map(str, MIN_OPTUNA))}: pip install -U optuna)"
        for module in cls.needs:  # found, not imported: torch alone takes seconds to import
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"{need} (no module named {module!r}, which {cls.sampler_class} needs)"
        return None

    def __init__(self, env: ControlEnv, config: Any = None, seed: int = 0) -> None:
        reason = self.unavailable()
        if reason is not None:
            raise ConfigError(reason)
        super().__init__(env, config, seed)
        self.optuna = _import_optuna()
        dim = self.knob.dim
        self.names = [f"x{i}" for i in range(dim)]
        self.distributions = {n: self.optuna.distributions.FloatDistribution(self.knob.low, self.knob.high,
                                                                              log=self.knob.log)
                              for n in self.names}
        # the record (the controller's state): every trial told, in order, and the rounds' sizes
        self.plan_budget: int | None = None  # the budget of the first run(): the sampler's settings depend on it
        self.asked = np.zeros((0, dim), dtype=np.float64)
        self.scores = np.zeros(0, dtype=np.float64)
        self.groups: list[int] = []
        # the live study and what of the record it holds; the group it asked and has not told
        self._study: Any = None
        self._held: tuple[Any, ...] | None = None
        self._pending: list[tuple[Any, np.ndarray]] | None = None

    # ------------------------------------------------------------------ settings ----
    def make_sampler(self, budget: int) -> Any:
        """A fresh Optuna sampler seeded with ``self.seed`` for a run of ``budget`` probes."""
        raise NotImplementedError

    def startup_trials(self, budget: int) -> int:
        """Random start-up trials before the model is used (TPE, GP; CMA-ES has its own)."""
        given = getattr(self.config, "n_startup_trials", None)
        return given if given is not None else max(1, min(OPTUNA_STARTUP, budget // 4))

    def first_model_trial(self, budget: int) -> int:
        """Index of the first trial the sampler's model chooses (rounds are asked whole)."""
        g = self.env.group_size
        return max(1, math.ceil(self.startup_trials(budget) / g)) * g

    def check_budget(self, budget: int) -> None:
        """Refuse a budget that leaves no trial to the sampler's model (it would be random search)."""
        first = self.first_model_trial(int(budget))
        if budget <= first:
            raise ConfigError(
                f"controller {self.name!r}: a budget of {budget} probes in groups of {self.env.group_size} is all "
                f"random start-up (n_startup_trials={self.startup_trials(budget)}, and a round's group is asked "
                f"before any of it is told; its model first chooses trial {first + 1}), so it would be random "
                f"search: raise --budget above {first} or lower n_startup_trials (--set n_startup_trials=N)")

    # ------------------------------------------------------------------ the loop ----
    def run(self, budget: int, callback: Callable[[Controller], None] | None = None) -> np.ndarray:
        budget = int(budget)
        if self.plan_budget is None:
            self.plan_budget = budget
        self.check_budget(self.plan_budget)
        self._sync()
        while self.env.probes < budget:
            if self._pending is None:
                self._pending = self._ask(min(self.env.group_size, budget - self.env.probes))
            values = np.stack([v for _, v in self._pending])
            scores = self.env.probe_group(values)  # a Session may stop here and come back (module docstring)
            self._tell(scores)
            if callback is not None:
                callback(self)
        return self.best()

    def _new_study(self) -> Any:
        with _quiet(self.optuna):
            return self.optuna.create_study(direction="maximize", sampler=self.make_sampler(self.plan_budget))

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        with _quiet(self.optuna):
            yield

    def _ask(self, n: int) -> list[tuple[Any, np.ndarray]]:
        """``n`` trials asked together from the live study, with their values in knob units."""
        out = []
        try:
            with self._asking():
                for _ in range(n):
                    trial = self._study.ask(self.distributions)
                    out.append((trial, self.knob.validate([trial.params[k] for k in self.names])))
        except BaseException:
            self._study, self._held = None, None  # half a group asked: rebuilt from the record next time
            raise
        return out

    def _tell(self, scores: np.ndarray) -> None:
        """Tell the pending group its scores; add it to the record and to the best."""
        pending, self._pending = self._pending, None
        self._tell_study([trial for trial, _ in pending], scores)
        values = np.stack([v for _, v in pending])
        self.asked = np.concatenate([self.asked, values])
        self.scores = np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)])
        self.groups = self.groups + [len(pending)]
        self._held = self._record()
        for value, score in zip(values, scores):
            self.evaluated += 1
            if math.isfinite(score) and score > self.best_score:  # the first of ties wins
                self.best_value, self.best_score = value.copy(), float(score)

    def _tell_study(self, trials: list[Any], scores: np.ndarray) -> None:
        """``study.tell`` each trial its score; a failed probe (NaN) as a FAIL trial."""
        fail = self.optuna.trial.TrialState.FAIL
        with _quiet(self.optuna):
            for trial, score in zip(trials, scores):
                if math.isfinite(score):
                    self._study.tell(trial, float(score))
                else:
                    self._study.tell(trial, state=fail)

    def _record(self) -> tuple[Any, ...]:
        """What the live study is built from: seed, plan, and the trials told."""
        return self.seed, self.plan_budget, self.asked.copy(), self.scores.copy(), list(self.groups)

    def _holds_record(self) -> bool:
        if self._study is None or self._held is None:
            return False
        seed, plan, asked, scores, groups = self._held
        return (seed == self.seed and plan == self.plan_budget and groups == self.groups
                and np.array_equal(asked, self.asked) and np.array_equal(scores, self.scores, equal_nan=True))

    def _sync(self) -> None:
        """Make the live study hold exactly the record: keep it if it does, else replay the record."""
        if self._holds_record():
            return
        self._pending = None
        self._study = self._new_study()
        self._held = None
        start = 0
        for n in self.groups:
            asked = self._ask(n)
            saved = self.asked[start:start + n]
            for i, ((trial, got), want) in enumerate(zip(asked, saved)):
                gap = float(np.max(np.abs(self.knob.to_unit(got) - self.knob.to_unit(want))))
                if gap > REPLAY_TOL:
                    self._study = None
                    raise ResumeError(
                        f"controller {self.name!r} cannot resume: replaying its saved trials with optuna "
                        f"{self.optuna.__version__} asked {self.knob.format(got)} where the run asked "
                        f"{self.knob.format(want)} (trial {start + i + 1}); was it saved with another Optuna "
                        "version or setting?")
            self._tell_study([trial for trial, _ in asked], self.scores[start:start + n])
            start += n
        self._held = self._record()

    # ------------------------------------------------------------------ state ----
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "seed": self.seed, "plan_budget": self.plan_budget,
                "asked": self.asked.copy(), "scores": self.scores.copy(), "groups": list(self.groups),
                "evaluated": self.evaluated,
                "best_value": None if self.best_value is None else self.best_value.copy(),
                "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.rng.bit_generator.state = state["rng"]
            self.seed = int(state["seed"])
            self.plan_budget = None if state["plan_budget"] is None else int(state["plan_budget"])
            asked = np.asarray(state["asked"], dtype=np.float64).reshape(-1, self.knob.dim)
            scores = np.asarray(state["scores"], dtype=np.float64).reshape(-1)
            groups = [int(n) for n in state["groups"]]
            self.evaluated = int(state["evaluated"])
            self.best_value = None if state["best_value"] is None else np.asarray(state["best_value"], np.float64)
            self.best_score = float(state["best_score"])
        except KeyError as exc:
            raise ResumeError(f"{self.name} checkpoint lacks {exc.args[0]!r}") from None
        if len(asked) != len(scores) or sum(groups) != len(asked):
            raise ResumeError(f"{self.name} checkpoint is inconsistent: {len(asked)} trials, {len(scores)} scores, "
                              f"rounds of {sum(groups)}")
        self.asked, self.scores, self.groups = asked, scores, groups
        if not self._holds_record():
            self._study, self._held, self._pending = None, None, None  # replayed at the next run()


# ----------------------------------------------------------------------- tpe -------
@dataclass
class TPEConfig:
    """Settings of :class:`TPE` (Optuna's ``TPESampler``; its defaults unless said)."""

    #: random trials first; None: Optuna's 10, but at most a quarter of the budget (at least 1)
    n_startup_trials: int | None = None
    #: Optuna's batch advice (default there: False): a trial still running counts as a bad one,
    #: so a round's group spreads out instead of piling onto one point
    constant_liar: bool = True
    #: one joint density over a vector knob's components (Optuna's default: False, independent)
    multivariate: bool = False
    #: candidates drawn per ask to pick the best expected improvement from (Optuna's default)
    n_ei_candidates: int = 24

    def __post_init__(self) -> None:
        self.n_startup_trials = _positive_int("n_startup_trials", self.n_startup_trials, 0)
        self.n_ei_candidates = _positive_int("n_ei_candidates", self.n_ei_candidates, 1)


@register
class TPE(OptunaController):
    """Optuna's Tree-structured Parzen Estimator (``TPESampler``), a group per round."""

    name = "tpe"
    Config = TPEConfig
    sampler_class = "TPESampler"

    def make_sampler(self, budget: int) -> Any:
        cfg = self.config
        with _quiet(self.optuna):
            return self.optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.startup_trials(budget), constant_liar=cfg.constant_liar,
                multivariate=cfg.multivariate, n_ei_candidates=cfg.n_ei_candidates)


# --------------------------------------------------------------------- cmaes -------
@dataclass
class CmaEsConfig:
    """Settings of :class:`CmaEs` (Optuna's ``CmaEsSampler``; its defaults unless said)."""

    #: trials per generation; None: the group size, so a round is one generation (Optuna's
    #: default, 4 + 3 ln(dim), would straddle rounds and drop the surplus of a round)
    popsize: int | None = None
    #: random trials first (Optuna's default); the first round is random whatever it is
    n_startup_trials: int = 1
    #: CMA-ES with learning-rate adaptation, for noisy or multimodal scores (Optuna's default: False)
    lr_adapt: bool = False

    def __post_init__(self) -> None:
        self.popsize = _positive_int("popsize", self.popsize, 2)
        self.n_startup_trials = _positive_int("n_startup_trials", self.n_startup_trials, 0)


@register
class CmaEs(OptunaController):
    """Optuna's CMA-ES (``CmaEsSampler``), one generation per round by default."""

    name = "cmaes"
    Config = CmaEsConfig
    sampler_class = "CmaEsSampler"
    needs = ("cmaes",)

    def popsize(self) -> int:
        return self.config.popsize or self.env.group_size

    def make_sampler(self, budget: int) -> Any:
        cfg = self.config
        with _quiet(self.optuna):
            return self.optuna.samplers.CmaEsSampler(
                seed=self.seed, n_startup_trials=cfg.n_startup_trials, popsize=self.popsize(),
                lr_adapt=cfg.lr_adapt, warn_independent_sampling=False)

    def startup_trials(self, budget: int) -> int:
        return self.config.n_startup_trials

    def check_budget(self, budget: int) -> None:
        """CMA-ES must finish one generation and ask from what it learned, or it learns nothing."""
        g, p = self.env.group_size, self.popsize()
        first = self.first_model_trial(int(budget))  # CMA-ES's first generation starts here
        need = first + math.ceil(p / g) * g + 1  # ... is told whole, and a trial is asked after it
        if budget < need:
            raise ConfigError(
                f"controller 'cmaes': a budget of {budget} probes in groups of {g} never updates CMA-ES (the first "
                f"round is random, a generation is {p} trials, so it needs {need}): raise --budget to {need} or "
                "lower popsize (--set popsize=N)")


# ------------------------------------------------------------------------ gp -------
@dataclass
class GPConfig:
    """Settings of :class:`GP` (Optuna's ``GPSampler``; its defaults unless said)."""

    #: random trials first; None: Optuna's 10, but at most a quarter of the budget (at least 1)
    n_startup_trials: int | None = None
    #: the scores are noise-free (the GP's noise variance is fixed near 0)
    deterministic_objective: bool = False

    def __post_init__(self) -> None:
        self.n_startup_trials = _positive_int("n_startup_trials", self.n_startup_trials, 0)


@register
class GP(OptunaController):
    """Optuna's Gaussian-process Bayesian optimisation (``GPSampler``), a group per round
    (later trials of a group by q-batch log expected improvement over the ones still running)."""

    name = "gp"
    Config = GPConfig
    sampler_class = "GPSampler"
    needs = ("scipy", "torch")

    def make_sampler(self, budget: int) -> Any:
        cfg = self.config
        with _quiet(self.optuna):
            return self.optuna.samplers.GPSampler(
                seed=self.seed, n_startup_trials=self.startup_trials(budget),
                deterministic_objective=cfg.deterministic_objective, warn_independent_sampling=False)

    @contextlib.contextmanager
    def _asking(self) -> Iterator[None]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with _quiet(self.optuna):
                yield
        finally:
            torch.set_num_threads(threads)
