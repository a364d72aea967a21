"""Scores across a suite's tasks, per suite entry, from its point selected on validation on each task.

- **Performance profile** (Dolan & Moré 2002, as AlgoPerf scores it: Dahl et al. 2023, §4.5): on task
  t, an entry's time to target is the median over its seeds of the clock reading at the first
  evaluation that met the target (∞ for a seed that never did, so most seeds must reach it); its ratio
  r = time / fastest entry's time; ρ(τ) is the fraction of the track's tasks with r ≤ τ, for
  τ ∈ [1, 4]. The **integrated score** is ∫₁⁴ ρ(τ) dτ / 3, AlgoPerf's ``normalize=True`` (1: fastest on
  every task; 0: within 4× of the fastest on none).
- **Normalised final score**: per task and seed, (test − chance) / (best − chance), where ``chance``
  is the task's value at chance and ``best`` the best mean test value of any entry of the suite (both
  tracks share the scale). Scores below chance are clipped to 0, and a seed that ended on NaN scores
  0. The **interquartile mean** pools every (task, seed) score of an entry and averages the middle
  half (Agarwal et al. 2021, §4.2).
- **Probability of improvement** P(X > Y) = 1/M Σₘ 1/(N·K) Σᵢⱼ S(xₘᵢ, yₘⱼ), S = 1 when x > y, ½ on
  a tie, 0 otherwise, over the M tasks and the seeds both entries ran (Agarwal et al. 2021, eq. 6).

An entry that the planner dropped from a task, that has no selectable point there, or that did not
run there counts as never reaching the target (∞ in the profile) and scores 0 there.

Intervals are 95% percentile intervals of a stratified bootstrap over seeds: each (entry, task)
stratum's seeds are resampled on their own (``scipy.stats.bootstrap`` with one sample per stratum; a
stratum of one seed stays as it is). Tuned and self-tuning entries are scored as separate tracks, as
in AlgoPerf. Theory tasks are left out: their closed forms fix what they measure, and they have no
held-out split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from benchmark.leaderboard.intervals import CONFIDENCE, paired_p_value, verdict
from benchmark.leaderboard.score import runs_frame, seed_frame

TAU_MAX = 4.0
TAUS = np.linspace(1.0, TAU_MAX, 301)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the leaderboard is a pure function of the store

SUMMARY_COLUMNS = [
    "track",
    "entry_label",
    "n_tasks",
    "n_reached",
    "integrated",
    "integrated_low",
    "integrated_high",
    "iqm",
    "iqm_low",
    "iqm_high",
]
IMPROVEMENT_COLUMNS = ["track", "x", "y", "probability", "low", "high", "p", "n_seeds", "verdict"]
CELL_COLUMNS = ["track", "entry_label", "task_display", "clock", "time_to_target", "score", "why"]


@dataclass(frozen=True)
class Dropped:
    """A (task, rule) cell the planner did not run, and why (it counts as never reaching the target)."""

    task: str
    rule: str
    reason: str
    track: str = "tuned"


@dataclass(frozen=True)
class SuiteScores:
    """What the cross-task section shows: per entry, per pair, and per (entry, task) cell."""

    summary: pd.DataFrame
    profile: pd.DataFrame
    """Long: ``track, entry_label, tau, rho`` of the point estimate."""
    improvement: pd.DataFrame
    cells: pd.DataFrame
    """Per (entry, task): the clock, median time to target, mean normalised score, and why it is
    missing (dropped and the planner's reason, no selectable point, or not run)."""
    theory_tasks: list[str] = field(default_factory=list)
    unnormalised_tasks: list[str] = field(default_factory=list)
    """Tasks left out of normalised scores: no stored chance value, or no entry better than it."""


@dataclass
class _Cell:
    """One (entry, task): per-seed clock readings to target and normalised scores."""

    times: dict[int, float]
    scores: dict[int, float]
    why: str = ""


def score_suite(
    runs: pa.Table, board: pd.DataFrame, dropped: Sequence[Dropped] = (), resamples: int = BOOTSTRAP_RESAMPLES
) -> SuiteScores:
    """Cross-task scores of each track, from :func:`~benchmark.leaderboard.score.score_runs`'s ``board``."""
    seeds = seed_frame(runs_frame(runs))
    empty = SuiteScores(
        pd.DataFrame(columns=SUMMARY_COLUMNS),
        pd.DataFrame(columns=["track", "entry_label", "tau", "rho"]),
        pd.DataFrame(columns=IMPROVEMENT_COLUMNS),
        pd.DataFrame(columns=CELL_COLUMNS),
    )
    if seeds.empty:
        return empty
    theory = sorted(seeds.loc[seeds["theory"], "task_display"].unique())
    seeds = seeds[~seeds["theory"]]
    board = board[~board["theory"].astype(bool)]
    if seeds.empty:
        return replace(empty, theory_tasks=theory)
    best, unnormalised = _normalisers(board)
    summaries, profiles, pairs, cells = [], [], [], []
    for track in sorted(set(seeds["track"]) | {d.track for d in dropped if d.rule not in set(seeds["rule"])}):
        grid = _track_cells(seeds, board, dropped, track, best)
        if not grid:
            continue
        summary, profile = _profile_and_iqm(grid, unnormalised, resamples)
        summaries.append(summary.assign(track=track))
        profiles.append(profile.assign(track=track))
        pairs.append(_improvement(grid, unnormalised, resamples).assign(track=track))
        cells.append(_cell_table(grid, seeds, unnormalised).assign(track=track))
    return SuiteScores(
        pd.concat(summaries, ignore_index=True)[SUMMARY_COLUMNS],
        pd.concat(profiles, ignore_index=True)[["track", "entry_label", "tau", "rho"]],
        pd.concat(pairs, ignore_index=True)[IMPROVEMENT_COLUMNS],
        pd.concat(cells, ignore_index=True)[CELL_COLUMNS],
        theory,
        unnormalised,
    )


def _normalisers(board: pd.DataFrame) -> tuple[dict[str, tuple[float, float, str]], list[str]]:
    """Per task: (chance, best selected mean, mode); and the tasks that cannot be normalised."""
    best: dict[str, tuple[float, float, str]] = {}
    missing: list[str] = []
    for task, rows in board.groupby("task_display", sort=True):
        chosen = rows[rows["selected"].astype(bool)]
        mode = str(rows["mode"].iloc[0])
        chance = float(rows["chance"].iloc[0])
        means = chosen["mean"].to_numpy(float)
        means = means[np.isfinite(means)]
        top = (means.max() if mode == "max" else means.min()) if len(means) else math.nan
        better = (top > chance) if mode == "max" else (top < chance)
        if math.isnan(chance) or math.isnan(top) or not better:
            missing.append(str(task))
        best[str(task)] = (chance, float(top), mode)
    return best, missing


def normalised_score(value: float, chance: float, best: float) -> float:
    """0 at chance, 1 at the suite's best; below chance and NaN give 0."""
    score = (value - chance) / (best - chance)
    return max(score, 0.0) if math.isfinite(score) else 0.0


def _track_cells(
    seeds: pd.DataFrame,
    board: pd.DataFrame,
    dropped: Sequence[Dropped],
    track: str,
    best: dict[str, tuple[float, float, str]],
) -> dict[str, dict[str, _Cell]]:
    """entry label → task → cell, over the tasks on which any entry of the track ran or was dropped."""
    mine = seeds[seeds["track"] == track]
    ruled = set(seeds["rule"])
    labels_by_rule = mine.groupby("rule")["entry_label"].unique().to_dict()
    drops: dict[tuple[str, str], str] = {}
    for d in dropped:
        if d.rule in labels_by_rule or (d.rule not in ruled and d.track == track):
            for label in labels_by_rule.get(d.rule, [d.rule]):
                drops[(str(label), d.task)] = d.reason
    tasks = set(mine["task_display"]) | {
        t for (_, name) in drops for t in seeds.loc[seeds["task"] == name, "task_display"]
    }
    labels = sorted(set(mine["entry_label"]) | {label for label, _ in drops})
    grid: dict[str, dict[str, _Cell]] = {label: {} for label in labels}
    for task in sorted(tasks):
        task_seeds = seeds[seeds["task_display"] == task]
        all_seeds = sorted(int(s) for s in task_seeds["seed"].unique())
        chance, top, _ = best.get(task, (math.nan, math.nan, "max"))
        chosen = board[(board["task_display"] == task) & board["selected"].astype(bool)]
        for label in labels:
            pick = chosen[chosen["entry_label"] == label]
            if pick.empty:
                name = str(task_seeds["task"].iloc[0])
                why = (
                    f"dropped: {drops[(label, name)]}"
                    if (label, name) in drops
                    else "no selectable point (a failed seed at every point)"
                    if (task_seeds["entry_label"] == label).any()
                    else "not run"
                )
                grid[label][task] = _Cell(
                    dict.fromkeys(all_seeds, math.inf), dict.fromkeys(all_seeds, 0.0), why
                )
                continue
            runs = task_seeds[
                (task_seeds["rule_display"] == pick["rule_display"].iloc[0])
                & (task_seeds["status"] != "failed")
            ]
            grid[label][task] = _Cell(
                dict(zip(runs["seed"].astype(int), runs["clock_to_target"].astype(float), strict=True)),
                {
                    int(s): normalised_score(float(v), chance, top)
                    for s, v in zip(runs["seed"], runs["test"], strict=True)
                },
            )
    return grid


def stratified_bootstrap(
    strata: list[np.ndarray], statistic: Callable[[list[np.ndarray]], np.ndarray], resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of ``statistic(strata)``, resampling each stratum's values on its own.

    ``statistic`` takes the strata as arrays of shape (..., n_i) and returns shape (k, ...). A stratum
    of one value has nothing to resample and is held fixed.
    """
    moving = [i for i, s in enumerate(strata) if len(s) > 1]
    if not moving:
        point = statistic([s[None, :] for s in strata])[:, 0]
        return point, point

    def resampled(*data: np.ndarray, axis: int = -1) -> np.ndarray:
        full = [s.reshape((1,) * (data[0].ndim - 1) + s.shape) for s in strata]
        shape = data[0].shape[:-1]
        for i, values in zip(moving, data, strict=True):
            full[i] = values
        full = [np.broadcast_to(f, shape + f.shape[-1:]) for f in full]
        with np.errstate(invalid="ignore", divide="ignore"):
            return statistic(full)

    result = stats.bootstrap(
        tuple(strata[i] for i in moving),
        resampled,
        n_resamples=resamples,
        batch=250,  # bounds memory: each call holds (entries, tasks, batch) medians
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)


def _profile_and_iqm(
    grid: dict[str, dict[str, _Cell]], unnormalised: list[str], resamples: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = list(grid)
    tasks = sorted(next(iter(grid.values())))
    normalised = [t for t in tasks if t not in unnormalised]
    times = [np.array(list(grid[label][t].times.values()), dtype=float) for label in labels for t in tasks]
    scores = [
        np.array(list(grid[label][t].scores.values()), dtype=float) for label in labels for t in normalised
    ]

    def integrated(strata: list[np.ndarray]) -> np.ndarray:
        medians = np.stack([np.median(s, axis=-1) for s in strata], axis=0)
        return integrated_scores(medians.reshape((len(labels), len(tasks), *medians.shape[1:])))

    def iqm(strata: list[np.ndarray]) -> np.ndarray:
        per = len(normalised)
        pooled = [np.concatenate(strata[i * per : (i + 1) * per], axis=-1) for i in range(len(labels))]
        return np.stack([stats.trim_mean(p, 0.25, axis=-1) for p in pooled], axis=0)

    with np.errstate(invalid="ignore", divide="ignore"):
        point_times = np.array(
            [[np.median(list(grid[label][t].times.values())) for t in tasks] for label in labels]
        )
        rho = profile(point_times)
    low, high = stratified_bootstrap(times, integrated, resamples)
    summary = pd.DataFrame(
        {
            "entry_label": labels,
            "n_tasks": len(tasks),
            "n_reached": np.isfinite(point_times).sum(axis=1),
            "integrated": integrated_scores(point_times),
            "integrated_low": low,
            "integrated_high": high,
        }
    )
    if normalised:
        summary["iqm"] = iqm([s[None, :] for s in scores])[:, 0]
        summary["iqm_low"], summary["iqm_high"] = stratified_bootstrap(scores, iqm, resamples)
    else:
        summary["iqm"] = summary["iqm_low"] = summary["iqm_high"] = math.nan
    long = pd.DataFrame(
        [
            {"entry_label": label, "tau": tau, "rho": r}
            for label, row in zip(labels, rho, strict=True)
            for tau, r in zip(TAUS, row, strict=True)
        ]
    )
    return summary, long


def ratios(times: np.ndarray) -> np.ndarray:
    """Each entry's time to target over the fastest entry's, per task; ∞ where it never reached it.

    ``times`` has shape (entries, tasks, ...); a task no entry reached gives ∞ to all.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        fastest = np.min(times, axis=0, keepdims=True)
        ratio = np.where(np.isfinite(times) & (times == fastest), 1.0, times / fastest)
    return np.nan_to_num(ratio, nan=np.inf)


def profile(times: np.ndarray) -> np.ndarray:
    """ρ(τ) on :data:`TAUS`, shape (entries, len(TAUS)), from times of shape (entries, tasks)."""
    return np.asarray((ratios(times)[:, None, :] <= TAUS[None, :, None]).mean(axis=2), dtype=float)


def integrated_scores(times: np.ndarray) -> np.ndarray:
    """AlgoPerf's normalised integrated score ∫₁⁴ ρ(τ) dτ / 3 per entry, shape (entries, ...).

    Computed exactly: a task with ratio r adds (4 − r)⁺ / 3 (AlgoPerf sums the same integral with
    the trapezoid rule on a τ grid).
    """
    share = np.clip(TAU_MAX - ratios(times), 0.0, TAU_MAX - 1.0) / (TAU_MAX - 1.0)
    return np.asarray(share.mean(axis=1), dtype=float)


def probability_of_improvement(x: list[np.ndarray], y: list[np.ndarray]) -> np.ndarray:
    """P(X > Y) over tasks (Agarwal et al. 2021, eq. 6); one array per task in each list, shape (..., n)."""
    per_task = []
    for xm, ym in zip(x, y, strict=True):
        s = (xm[..., :, None] > ym[..., None, :]) + 0.5 * (xm[..., :, None] == ym[..., None, :])
        per_task.append(s.mean(axis=(-2, -1)))
    return np.asarray(np.mean(per_task, axis=0), dtype=float)


def _pair_statistic(m: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """P(X > Y) of strata laid out as X's M tasks, then Y's, shaped (1, ...) for the bootstrap."""

    def statistic(strata: list[np.ndarray]) -> np.ndarray:
        return np.asarray(probability_of_improvement(strata[:m], strata[m:]))[None, ...]

    return statistic


def _improvement(grid: dict[str, dict[str, _Cell]], unnormalised: list[str], resamples: int) -> pd.DataFrame:
    rows = []
    tasks = [t for t in sorted(next(iter(grid.values()))) if t not in unnormalised]
    for a, b in combinations(list(grid), 2):
        if not tasks:
            break
        shared = [sorted(grid[a][t].scores.keys() & grid[b][t].scores.keys()) for t in tasks]
        xs = [np.array([grid[a][t].scores[s] for s in ss]) for t, ss in zip(tasks, shared, strict=True)]
        ys = [np.array([grid[b][t].scores[s] for s in ss]) for t, ss in zip(tasks, shared, strict=True)]
        if any(len(v) == 0 for v in xs):
            continue
        point = float(probability_of_improvement(xs, ys))
        low, high = stratified_bootstrap(xs + ys, _pair_statistic(len(tasks)), resamples)
        common = set.intersection(*(set(ss) for ss in shared))
        per_seed_a = {s: float(np.mean([grid[a][t].scores[s] for t in tasks])) for s in common}
        per_seed_b = {s: float(np.mean([grid[b][t].scores[s] for t in tasks])) for s in common}
        x, y = (a, b) if point >= 0.5 else (b, a)
        better, worse = (per_seed_a, per_seed_b) if x == a else (per_seed_b, per_seed_a)
        p, n = paired_p_value(better, worse, "max")
        rows.append(
            {
                "x": a,
                "y": b,
                "probability": point,
                "low": float(low[0]),
                "high": float(high[0]),
                "p": p,
                "n_seeds": n,
                "verdict": verdict(f"`{x}`", f"`{y}`", p, n),
            }
        )
    return pd.DataFrame(rows, columns=[c for c in IMPROVEMENT_COLUMNS if c != "track"])


def _cell_table(
    grid: dict[str, dict[str, _Cell]], seeds: pd.DataFrame, unnormalised: list[str]
) -> pd.DataFrame:
    clocks = seeds.groupby("task_display")["clock"].first().to_dict()
    rows = [
        {
            "entry_label": label,
            "task_display": task,
            "clock": clocks.get(task, ""),
            "time_to_target": float(np.median(list(cell.times.values()))) if cell.times else math.inf,
            "score": math.nan if task in unnormalised else float(np.mean(list(cell.scores.values()))),
            "why": cell.why,
        }
        for label, tasks in grid.items()
        for task, cell in tasks.items()
    ]
    return pd.DataFrame(rows, columns=[c for c in CELL_COLUMNS if c != "track"])
