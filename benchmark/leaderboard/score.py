"""Score a suite's runs per task: each rule entry's sweep point chosen on validation, then reported on test.

One row per (task, rule configuration). A configuration's seeds give the mean of the task's selection
metric (its validation target unless the task declares another, e.g. validation loss) and of its test
metric (the target with ``val/`` read as ``test/``), each with a Student t 95% interval
(:mod:`benchmark.leaderboard.intervals`), plus seeds, diverged and failed runs, and time to target.

**Selection.** Each suite entry (a rule as listed in the suite, so ``sgd`` listed twice is two entries)
gets one ``selected`` point per task: the best mean of the selection metric over seeds, where a point
with a failed seed cannot be chosen, a NaN mean ranks last, and ties go to the smaller learning rate.
No test metric takes part in it. Ranks list the selected points first, in the same order.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from benchmark.leaderboard.intervals import paired_p_value, t_interval, verdict
from benchmark.spec import display_name, parse_display_name

FORWARD_PASSES = "clock/forward_passes"
STEPS = "steps"

LEADERBOARD_COLUMNS = [
    "task",
    "task_display",
    "rank",
    "selected",
    "entry",
    "entry_label",
    "track",
    "theory",
    "rule",
    "rule_display",
    "selection_metric",
    "selection_mode",
    "val_mean",
    "val_ci_low",
    "val_ci_high",
    "metric",
    "mode",
    "mean",
    "ci_low",
    "ci_high",
    "std",
    "n_seeds",
    "n_diverged",
    "n_failed",
    "target_metric",
    "target",
    "chance",
    "reached_target",
    "clock",
    "median_clock_to_target",
    "median_steps_to_target",
    "median_time_to_target_s",
    "median_train_time_s",
    "batch_size",
    "vs_best",
    "p_vs_best",
]


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


def test_metric_of(metric: str) -> str:
    """The test form of a validation metric: ``val/accuracy`` → ``test/accuracy``; others unchanged."""
    return "test/" + metric.removeprefix("val/") if metric.startswith("val/") else metric


def seed_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: identity, suite entry, track, and the numbers scoring needs from it.

    Columns the store may lack fall back: the selection metric to the target, the entry to the rule
    name, the track to ``tuned``, ``theory`` to False and ``chance`` to NaN. ``clock_to_target`` is
    the clock reading (:data:`FORWARD_PASSES` where every run of the task variant logs it, else steps)
    at the first evaluation that met the target: ∞ for a run that never met it, NaN for a failed run.
    """
    if frame.empty:
        return pd.DataFrame()
    out = frame[["run_id", "task", "task_display", "rule", "rule_display", "seed", "status"]].copy()
    out["selection_metric"] = _column(frame, "selection_metric", frame["target_metric"])
    out["selection_mode"] = _column(frame, "selection_mode", frame["target_mode"])
    out["target_metric"] = frame["target_metric"]
    out["target_mode"] = frame["target_mode"]
    out["target_value"] = frame["target_value"].astype(float)
    out["test_metric"] = frame["target_metric"].map(test_metric_of)
    out["chance"] = _column(frame, "chance", pd.Series(math.nan, index=frame.index)).astype(float)
    out["theory"] = _column(frame, "theory", pd.Series(False, index=frame.index)).astype(bool)
    out["track"] = _column(frame, "track", pd.Series("tuned", index=frame.index)).astype(str)
    out["entry"] = _column(frame, "rule_entry", frame["rule"]).astype(str)
    out["lr"] = frame["hparams_json"].map(_learning_rate)
    out["val"] = [_final(f, m) for f, m in zip(frame["final"], out["selection_metric"], strict=True)]
    out["test"] = [_final(f, m) for f, m in zip(frame["final"], out["test_metric"], strict=True)]
    out["train_time_s"] = frame["train_time_s"].astype(float)
    # Runs trained in a group of N report the group's time ÷ N: compared only with runs batched alike.
    out["batch_size"] = _column(frame, "batch_size", pd.Series(1, index=frame.index)).astype(int)
    reach = pd.DataFrame([_to_target(row) for _, row in frame.iterrows()], index=frame.index)
    out["steps_to_target"], out["time_to_target_s"], passes = reach[0], reach[1], reach[2]
    failed = out["status"] == "failed"
    logs_passes = frame["curve"].map(_logs_forward_passes) | failed
    out["clock"] = STEPS
    for _, index in out.groupby("task_display").groups.items():
        if logs_passes.loc[index].all():
            out.loc[index, "clock"] = FORWARD_PASSES
    to = np.where(out["clock"] == FORWARD_PASSES, passes, out["steps_to_target"]).astype(float)
    out["clock_to_target"] = np.where(failed, math.nan, np.where(np.isnan(to), math.inf, to))
    out["entry_label"] = entry_labels(out)
    return out


def _column(frame: pd.DataFrame, name: str, fallback: pd.Series) -> pd.Series:
    """``frame[name]`` where present and not null, else ``fallback`` (rows of an older store)."""
    if name not in frame.columns:
        return fallback
    return frame[name].where(frame[name].notna(), fallback)


def _final(final: dict[str, float] | None, metric: str) -> float:
    return float((final or {}).get(metric, math.nan))


def _learning_rate(hparams_json: str) -> float:
    """The run's ``lr`` (ties in selection go to the smaller); ∞ for a rule without one."""
    value = json.loads(hparams_json or "{}").get("lr")
    return float(value) if isinstance(value, int | float) else math.inf


def _logs_forward_passes(curve: Any) -> bool:
    points = list(curve) if curve is not None else []
    return bool(points) and all(FORWARD_PASSES in (p["metrics"] or {}) for p in points)


def _to_target(row: pd.Series) -> tuple[float, float, float]:
    """(steps, train seconds, forward passes) at which the run first reached its target, or NaN."""
    metric, value, mode = row["target_metric"], row["target_value"], row["target_mode"]
    for point in row["curve"] if row["curve"] is not None else []:
        metrics = point["metrics"] or {}
        got = metrics.get(metric)
        if got is None or not math.isfinite(got):
            continue
        if (got >= value) if mode == "max" else (got <= value):
            passes = metrics.get(FORWARD_PASSES, math.nan)
            return float(point["step"]), float(point["train_time_s"]), float(passes)
    return math.nan, math.nan, math.nan


def entry_labels(seeds: pd.DataFrame) -> pd.Series:
    """A name per suite entry: the rule's name, or where a rule has several entries, the rule with the
    hyperparameters its entry holds fixed (``sgd[momentum=0.9]``), numbered if still alike."""
    labels: dict[str, str] = {}
    for rule, rows in seeds.groupby("rule", sort=True):
        entries = sorted(rows["entry"].unique())
        if len(entries) == 1:
            labels[entries[0]] = str(rule)
            continue
        for entry in entries:
            shown = [parse_display_name(d)[1] for d in rows.loc[rows["entry"] == entry, "rule_display"]]
            fixed = {k: v for k, v in shown[0].items() if all(s.get(k) == v for s in shown)}
            labels[entry] = display_name(str(rule), fixed)
        named = [labels[e] for e in entries]
        for entry in entries:
            if named.count(labels[entry]) > 1:
                labels[entry] = f"{labels[entry]}#{entry}"
    return seeds["entry"].map(labels)


def selection_key(val_mean: float, mode: str, lr: float, rule_display: str) -> tuple[Any, ...]:
    """Sort key of a sweep point: best mean first, a NaN mean last, then the smaller learning rate."""
    missing = math.isnan(val_mean)
    signed = 0.0 if missing else (-val_mean if mode == "max" else val_mean)
    return (missing, signed, lr, rule_display)


def score_runs(runs: pa.Table) -> pd.DataFrame:
    """One row per (task, rule configuration); each suite entry's point chosen on validation is
    ``selected``."""
    seeds = seed_frame(runs_frame(runs))
    if seeds.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    rows = []
    for display_task, task_seeds in seeds.groupby("task_display", sort=True):
        done = task_seeds[task_seeds["status"] != "failed"]
        first = (done if not done.empty else task_seeds).iloc[0]
        for display, group in task_seeds.groupby("rule_display", sort=True):
            rows.append(_point(str(display_task), str(display), group, first))
    board = pd.DataFrame(rows)
    ranked = [_rank(board[board["task_display"] == task]) for task in _display_order(board)]
    return pd.concat(ranked, ignore_index=True)[LEADERBOARD_COLUMNS]


def _point(display_task: str, display: str, group: pd.DataFrame, first: pd.Series) -> dict[str, Any]:
    """The aggregate row of one sweep point over its seeds; ``first``: a run of the task that did not fail."""
    ok = group[group["status"] != "failed"]
    val, test = ok["val"].to_numpy(float), ok["test"].to_numpy(float)
    reached = np.isfinite(ok["clock_to_target"].to_numpy(float))
    finite_test = test[np.isfinite(test)]
    return {
        "task": first["task"],
        "task_display": display_task,
        "selected": False,
        "entry": group["entry"].iloc[0],
        "entry_label": group["entry_label"].iloc[0],
        "track": group["track"].iloc[0],
        "theory": bool(first["theory"]),
        "rule": group["rule"].iloc[0],
        "rule_display": display,
        "lr": float(group["lr"].iloc[0]),
        "selection_metric": first["selection_metric"],
        "selection_mode": first["selection_mode"],
        "val_mean": _mean(val),
        **dict(zip(("val_ci_low", "val_ci_high"), t_interval(val), strict=True)),
        "metric": first["test_metric"],
        "mode": first["target_mode"],
        "mean": _mean(test),
        **dict(zip(("ci_low", "ci_high"), t_interval(test), strict=True)),
        "std": float(finite_test.std(ddof=1)) if len(finite_test) > 1 else math.nan,
        "n_seeds": len(ok),
        "n_diverged": int((ok["status"] == "diverged").sum()),
        "n_failed": int((group["status"] == "failed").sum()),
        "target_metric": first["target_metric"],
        "target": float(first["target_value"]),
        "chance": float(first["chance"]),
        "reached_target": int(reached.sum()),
        "clock": first["clock"],
        "median_clock_to_target": _median(ok["clock_to_target"].to_numpy(float)),
        "median_steps_to_target": _median(ok["steps_to_target"].to_numpy(float)[reached]),
        "median_time_to_target_s": _median(ok["time_to_target_s"].to_numpy(float)[reached]),
        "median_train_time_s": _median(ok["train_time_s"].to_numpy(float)),
        "batch_size": batch_label(ok["batch_size"]),
        "seed_tests": dict(zip(ok["seed"].astype(int), test, strict=True)),
    }


def batch_label(sizes: pd.Series) -> str:
    """How an entry's runs were batched: ``1`` (alone), ``32``, or ``1–32`` where they differ."""
    values = sorted({int(v) for v in sizes}) or [1]
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _rank(task_board: pd.DataFrame) -> pd.DataFrame:
    """Mark each entry's selected point, order selected points first, and test each against the best."""
    task_board = task_board.copy()
    keys = {
        r.Index: selection_key(r.val_mean, str(r.selection_mode), r.lr, str(r.rule_display))
        for r in task_board.itertuples()
    }
    key = keys.__getitem__

    for _, points in task_board.groupby("entry"):
        selectable = [
            i for i in points.index if points.at[i, "n_failed"] == 0 and points.at[i, "n_seeds"] > 0
        ]
        if selectable:
            task_board.loc[min(selectable, key=key), "selected"] = True
    order = sorted(task_board.index, key=lambda i: (not task_board.at[i, "selected"], key(i)))
    task_board = task_board.loc[order]
    task_board.insert(2, "rank", range(1, len(task_board) + 1))
    task_board["vs_best"], task_board["p_vs_best"] = "", math.nan
    chosen = task_board[task_board["selected"]]
    if not chosen.empty:
        best = chosen.iloc[0]
        task_board.loc[best.name, "vs_best"] = "best"
        for index, other in chosen.iloc[1:].iterrows():
            p, n = paired_p_value(best["seed_tests"], other["seed_tests"], str(best["mode"]))
            task_board.loc[index, "p_vs_best"] = p
            task_board.loc[index, "vs_best"] = verdict("the best", f"`{other['entry_label']}`", p, n)
    return task_board


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


def provenance_summary(runs: pa.Table) -> dict[str, list[str]]:
    """The distinct code versions, devices and torch versions behind a leaderboard."""
    if runs.num_rows == 0:
        return {}
    columns = {"code": "code_version", "device": "device_name", "torch": "torch_version"}
    return {label: sorted({v for v in runs.column(col).to_pylist() if v}) for label, col in columns.items()}


def _mean(values: np.ndarray) -> float:
    """The plain mean: NaN when any seed ended on NaN, so a point that diverged there ranks last."""
    return float(values.mean()) if len(values) else math.nan


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else math.nan
