"""Score a suite's runs: per task, rank rules by their mean final target metric over seeds.

Each (task, rule configuration) gets the mean, a 95% bootstrap confidence interval over seeds, the
number of seeds, diverged and failed runs, and time-to-target on the training clock.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from benchmark.spec import display_name, parse_display_name

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the leaderboard is a pure function of the store

LEADERBOARD_COLUMNS = [
    "task",
    "task_display",
    "rank",
    "rule",
    "rule_display",
    "metric",
    "mode",
    "mean",
    "ci_low",
    "ci_high",
    "std",
    "n_seeds",
    "n_diverged",
    "n_failed",
    "target",
    "reached_target",
    "median_steps_to_target",
    "median_time_to_target_s",
    "median_train_time_s",
]


def bootstrap_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; degenerate samples give a point interval."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1 or np.ptp(values) == 0:
        return float(values[0]) if len(values) == 1 else float(values.mean()), float(values.mean())
    res = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def runs_frame(runs: pa.Table) -> pd.DataFrame:
    """The runs table as a DataFrame, with the final metrics as a dict column and ``task_display``."""
    frame = runs.to_pandas(maps_as_pydicts="strict")
    frame["task_display"] = task_displays(frame) if not frame.empty else pd.Series(dtype=str)
    return frame


def task_displays(frame: pd.DataFrame) -> pd.Series:
    """Each run's task name, with the options that vary between the suite's runs of that task.

    A suite that runs one task under several options (``sweep: {depth: [2, 8]}``) gets one
    leaderboard section per variant, e.g. ``saxe_depth[depth=8]``; a task run with one set of
    options keeps its plain name.
    """
    options = frame["task_options_json"].map(lambda text: json.loads(text) if text else {})
    out = frame["task"].astype(str).copy()
    for task, index in frame.groupby("task").groups.items():
        opts = options.loc[index]
        keys = sorted({k for o in opts for k in o})
        varying = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in opts}) > 1]
        if varying:
            out.loc[index] = [display_name(str(task), {k: o.get(k) for k in varying}) for o in opts]
    return out


def _display_order(board: pd.DataFrame) -> list[str]:
    """Task variants in a readable order: by task, then by their options' values (numbers as numbers)."""

    def key(display: str) -> tuple[str, tuple[Any, ...]]:
        name, params = parse_display_name(display)
        values: list[Any] = []
        for text in params.values():
            try:
                values.append((0, float(text), ""))
            except ValueError:
                values.append((1, 0.0, text))
        return name, tuple(values)

    return sorted(board["task_display"].unique(), key=key)


def _to_target(row: pd.Series) -> tuple[float, float]:
    """(steps, train seconds) at which the run first reached its target, or NaN."""
    metric, value, mode = row["target_metric"], row["target_value"], row["target_mode"]
    for point in row["curve"] if row["curve"] is not None else []:
        got = (point["metrics"] or {}).get(metric)
        if got is None or not math.isfinite(got):
            continue
        if (got >= value) if mode == "max" else (got <= value):
            return float(point["step"]), float(point["train_time_s"])
    return math.nan, math.nan


def score_runs(runs: pa.Table) -> pd.DataFrame:
    """One row per (task, rule configuration), ranked within each task."""
    frame = runs_frame(runs)
    if frame.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    rows: list[dict[str, Any]] = []
    for display_task, task_runs in frame.groupby("task_display", sort=True):
        done = task_runs[task_runs["status"] != "failed"]
        if done.empty:
            metric, mode, target = "", "max", math.nan
        else:
            first = done.iloc[0]
            metric, mode, target = first["target_metric"], first["target_mode"], first["target_value"]
        for display, group in task_runs.groupby("rule_display", sort=True):
            ok = group[group["status"] != "failed"]
            values = np.array([float((f or {}).get(metric, math.nan)) for f in ok["final"]], dtype=float)
            finite = values[np.isfinite(values)]
            low, high = bootstrap_ci(values)
            reach = ok.apply(_to_target, axis=1, result_type="expand") if not ok.empty else None
            steps_to = reach[0].to_numpy(dtype=float) if reach is not None else np.array([])
            time_to = reach[1].to_numpy(dtype=float) if reach is not None else np.array([])
            reached = np.isfinite(steps_to)
            rows.append(
                {
                    "task": task_runs["task"].iloc[0],
                    "task_display": display_task,
                    "rule": group["rule"].iloc[0],
                    "rule_display": display,
                    "metric": metric,
                    "mode": mode,
                    "mean": float(finite.mean()) if len(finite) else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                    "n_seeds": len(ok),
                    "n_diverged": int((ok["status"] == "diverged").sum()),
                    "n_failed": int((group["status"] == "failed").sum()),
                    "target": float(target),
                    "reached_target": int(reached.sum()),
                    "median_steps_to_target": _median(steps_to[reached]),
                    "median_time_to_target_s": _median(time_to[reached]),
                    "median_train_time_s": _median(ok["train_time_s"].to_numpy(dtype=float)),
                }
            )
    board = pd.DataFrame(rows, columns=[c for c in LEADERBOARD_COLUMNS if c != "rank"])
    ranked = []
    for display_task in _display_order(board):
        task_board = board[board["task_display"] == display_task]
        ascending = task_board["mode"].iloc[0] == "min"
        task_board = task_board.sort_values(
            ["mean", "rule_display"], ascending=[ascending, True], na_position="last"
        )
        task_board.insert(1, "rank", range(1, len(task_board) + 1))
        ranked.append(task_board)
    return pd.concat(ranked, ignore_index=True)[LEADERBOARD_COLUMNS]


def provenance_summary(runs: pa.Table) -> dict[str, list[str]]:
    """The distinct code versions, devices and torch versions behind a leaderboard."""
    if runs.num_rows == 0:
        return {}
    columns = {"code": "code_version", "device": "device_name", "torch": "torch_version"}
    return {label: sorted({v for v in runs.column(col).to_pylist() if v}) for label, col in columns.items()}


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else math.nan
