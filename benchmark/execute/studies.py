"""The Optuna studies of the tuning protocol: their storage, names and samplers, resuming them after a kill,
and scoring them.

The protocol is AlgoPerf's external tuning (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms", §4.4): each (rule, task) gets S independent studies of K trials; a study's score is its
fastest trial to the task's validation target, and a rule's score is the median over its studies.
Trial 0 of every study is the rule's defaults. The studies live in an Optuna storage (a journal file,
or a database on a cluster), so a killed ``tune`` continues them: trials the kill left running are
marked failed and interrupted, and their parameters are asked again. See ``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, Trial, TrialState

from benchmark.errors import SpecError

SAMPLERS = ("qmc", "tpe")
"""``qmc``: scrambled Halton points, seeded by the study index (AlgoPerf's quasi-random search);
``tpe``: Optuna's tree-structured Parzen estimator, seeded likewise."""

SLOT = "slot"
"""User attribute: a trial's place in its study's sequence (0 is the defaults). A trial asked again
after a kill keeps its slot, so the first k slots are the same trials however often ``tune`` ran."""

INTERRUPTED = "interrupted"
"""User attribute of a trial that a kill left running: failed, and its parameters asked again."""

STATUS = "status"
"""User attribute: how the trial's run ended (``ok``, ``diverged``, ``failed``, or ``stopped`` by ASHA)."""

STEPS_TO_TARGET = "steps_to_target"
"""User attribute: the step of the first evaluation that met the task's target; None if none did."""

OBJECTIVE = "objective"
"""User attribute: the selection metric at the trial's last evaluation (its final value, unless stopped)."""

RUN_ID = "run_id"

HPARAMS = "hparams"
"""User attribute: the searched hyperparameters the run took. They are the trial's point, except in
slot 0, whose run takes the rule's true defaults while Optuna records the nearest point of the search
space (a log-scale range cannot hold a default weight decay of 0)."""

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study and trial drowns the progress


def open_storage(where: str) -> BaseStorage:
    """A database for a URL (PostgreSQL on a cluster, SQLite), else a journal file at that path.

    Raises:
        SpecError: naming ``--storage``, when the database cannot be reached or its driver is missing.
    """
    if "://" not in where:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileSymlinkLock(str(path))
        _drop_torn_tail(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        url = sqlalchemy.engine.make_url(where)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship, not psycopg2
        return RDBStorage(url.render_as_string(hide_password=False))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        expected = f"a reachable Optuna storage; {reason}"
        raise SpecError(None, "--storage", expected, where_shown(where)) from None


def _drop_torn_tail(path: Path, lock: JournalFileSymlinkLock) -> None:
    """Cut a last line that a kill left without its newline: the operation never finished, and the
    next append would glue onto it and make the journal unreadable (Optuna reads whole lines only)."""
    if not path.is_file():
        return
    lock.acquire()
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    finally:
        lock.release()


def where_shown(where: str) -> str:
    """A storage URL with its password masked, for messages and files."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    if "://" not in where:
        return where
    try:
        return sqlalchemy.engine.make_url(where).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return where


def make_sampler(kind: str, study_index: int) -> optuna.samplers.BaseSampler:
    """The sampler of study ``study_index``. Halton is scrambled: without it the seed is ignored and
    every study would ask the same points."""
    if kind == "qmc":
        with warnings.catch_warnings():  # "experimental": its arguments may change, which a pin covers
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=study_index)
    return optuna.samplers.TPESampler(seed=study_index, constant_liar=True)


def study_name(suite: str, task: str, rule: str, sampler: str, setup: str, index: int) -> str:
    """Deterministic, so a rerun finds its studies: ``smoke/digits_mlp[bias=False]/sgd/qmc/1f2e3d4c/0``.

    ``setup`` is a hash of what the trials share besides their point (budget, fixed hyperparameters,
    searched keys, protocol), so a changed suite starts new studies rather than mixing budgets."""
    return f"{suite}/{task}/{rule}/{sampler}/{setup}/{index}"


class CellStudy:
    """One study of one (rule, task): asks its next trial, tells how it ended, knows its budget left."""

    def __init__(
        self,
        storage: BaseStorage,
        name: str,
        sampler: optuna.samplers.BaseSampler,
        direction: Literal["maximize", "minimize"],
        space: dict[str, BaseDistribution],
        defaults: dict[str, Any],
        trials: int,
    ) -> None:
        self.space = space
        self.defaults = defaults
        self.study = optuna.create_study(
            storage=storage, study_name=name, sampler=sampler, direction=direction, load_if_exists=True
        )
        existing = self.study.get_trials(deepcopy=False)
        if not existing:
            self.study.enqueue_trial(_inside(space, defaults), user_attrs={SLOT: 0})
        self._resume(existing)
        finished = [t for t in self.study.get_trials(deepcopy=False) if _counts(t)]
        self.left = max(trials - len(finished), 0)
        slots = [t.user_attrs[SLOT] for t in self.study.get_trials(deepcopy=False) if SLOT in t.user_attrs]
        self._next_slot = 1 + max(slots, default=0)

    def _resume(self, existing: Sequence[FrozenTrial]) -> None:
        """Trials left running by a kill: marked failed and interrupted, their parameters asked again
        (in slot order, with their slots), so the rerun ends with the trials an unbroken run has."""
        running = sorted((t for t in existing if t.state == TrialState.RUNNING), key=_slot)
        for trial in running:
            self.study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            self.study.tell(trial.number, state=TrialState.FAIL)
            if SLOT in trial.user_attrs:
                self.study.enqueue_trial(trial.params, user_attrs={SLOT: trial.user_attrs[SLOT]})

    def _align_qmc(self) -> None:
        """Point Optuna's QMC counter at this slot before a fresh ask.

        QMCSampler numbers its points with a counter kept in the study, bumped when a trial draws its
        point, before its parameters and slot are stored; an ask that a kill cuts short there leaves
        the counter ahead of the slots. Setting it to ``slot - 1`` (its key is
        ``QMCSampler._find_sample_id``'s, optuna pinned in the lock) makes a trial's point a function of
        its slot, as in an unbroken run, where slot 0 (the defaults, enqueued) draws no point."""
        sampler = self.study.sampler
        if not isinstance(sampler, optuna.samplers.QMCSampler) or not self.space:
            return
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return  # the next ask pops a queued trial, whose point is fixed
        space = {name: str(dist) for name, dist in sorted(self.space.items())}
        qmc_vars = {"qmc_type": "halton", "search_space": space, "scramble": True, "seed": sampler._seed}
        key = "qmc:" + hashlib.sha256(json.dumps(qmc_vars).encode()).hexdigest()
        self.study._storage.set_study_system_attr(self.study._study_id, key, self._next_slot - 2)

    def ask(self) -> tuple[Trial, dict[str, Any]]:
        """The next trial, and the hyperparameters its run takes: the defaults in slot 0, else its point."""
        self._align_qmc()
        trial = self.study.ask(fixed_distributions=self.space)
        if SLOT not in trial.user_attrs:
            trial.set_user_attr(SLOT, self._next_slot)
            self._next_slot += 1
        hparams = dict(self.defaults) if trial.user_attrs[SLOT] == 0 else dict(trial.params)
        trial.set_user_attr(HPARAMS, hparams)
        self.left -= 1
        return trial, hparams

    def tell(self, trial: Trial, state: TrialState, objective: float | None, attrs: dict[str, Any]) -> None:
        """Finish ``trial``. ``objective`` is the final selection metric; a diverged run's is the worst
        value (±1e30), which the sampler learns from but scoring reads as no value."""
        shown = objective if objective is not None and abs(objective) < 1e30 else None
        for key, value in {**attrs, OBJECTIVE: shown}.items():
            trial.set_user_attr(key, value)
        if state == TrialState.COMPLETE and objective is not None:
            self.study.tell(trial, objective)
        else:
            self.study.tell(trial, state=TrialState.FAIL if state == TrialState.COMPLETE else state)


def _inside(space: dict[str, BaseDistribution], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` moved to the nearest point of ``space`` where they fall outside it."""
    inside = {}
    for key, value in values.items():
        dist = space[key]
        if isinstance(dist, FloatDistribution | IntDistribution):
            value = min(max(value, dist.low), dist.high)
        elif isinstance(dist, CategoricalDistribution) and value not in dist.choices:
            value = dist.choices[0]
        inside[key] = value
    return inside


def _slot(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(SLOT, trial.number))


def _counts(trial: FrozenTrial) -> bool:
    """Whether a trial spent budget: it ran to its end, failed on its own, or ASHA stopped it."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED, False)


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """One trial of a study, as scoring reads it."""

    slot: int
    params: dict[str, Any]
    objective: float
    steps_to_target: float
    """∞ when the trial never met the target."""
    status: str
    run_id: str


def study_outcomes(storage: BaseStorage, name: str, trials: int) -> list[TrialOutcome]:
    """The first ``trials`` slots of a study that spent budget, in slot order."""
    study = optuna.load_study(study_name=name, storage=storage)
    done = sorted((t for t in study.get_trials(deepcopy=False) if _counts(t)), key=_slot)[:trials]
    return [
        TrialOutcome(
            slot=_slot(t),
            params=dict(t.user_attrs.get(HPARAMS, t.params)),
            objective=_number(t.user_attrs.get(OBJECTIVE)),
            steps_to_target=_number(t.user_attrs.get(STEPS_TO_TARGET), math.inf),
            status=str(t.user_attrs.get(STATUS, "failed" if t.state == TrialState.FAIL else "ok")),
            run_id=str(t.user_attrs.get(RUN_ID, "")),
        )
        for t in done
    ]


def _number(value: Any, missing: float = math.nan) -> float:
    return float(value) if isinstance(value, int | float) else missing


def study_score(outcomes: Sequence[TrialOutcome], k: int) -> float:
    """AlgoPerf's per-study score: the fewest steps to the target among its first ``k`` trials; ∞ if none."""
    return min((o.steps_to_target for o in outcomes[:k]), default=math.inf)


def rule_score(studies: Sequence[Sequence[TrialOutcome]], k: int) -> float:
    """A rule's score on a task: the median over its studies (∞ counts as the slowest)."""
    return float(statistics.median_low([study_score(s, k) for s in studies]))


def best_trial(outcomes: Sequence[TrialOutcome], mode: str) -> TrialOutcome | None:
    """The trial with the best final validation metric (NaN never wins)."""
    finite = [o for o in outcomes if math.isfinite(o.objective)]
    if not finite:
        return None
    return max(finite, key=lambda o: o.objective) if mode == "max" else min(finite, key=lambda o: o.objective)


def median_study(studies: Sequence[Sequence[TrialOutcome]], mode: str) -> int:
    """The index of the median study by score (the lower median for even S); ties, among them studies
    that never reach the target, are ordered by their best final validation metric."""

    def key(index: int) -> tuple[float, float]:
        best = best_trial(studies[index], mode)
        value = math.inf if best is None else (-best.objective if mode == "max" else best.objective)
        return (study_score(studies[index], len(studies[index])), value)

    order = sorted(range(len(studies)), key=key)
    return order[(len(order) - 1) // 2]
