"""The theory view of a leaderboard, and the implied-metric summary of each rule.

Tasks with a closed-form reference log, beside their ordinary metrics, how far the run departed from
it: final metrics under ``theory/`` whose names end in ``_rel_error`` (a relative deviation, e.g.
``theory/max_rel_error``) or ``_ratio`` (measured over predicted, e.g. ``theory/sharpness_ratio``).
Those are deviations by naming convention, so the view needs nothing but the store; reference values
(``theory/u_0``) and the last evaluation's ``theory/rel_error`` are not listed.

Runs with the implied-metric probe on carry ``metric/run_...`` totals (see :mod:`benchmark.probe`);
the summary gives, per rule, the median κ* (the best condition number of a metric that explains the
step), the fraction of probed steps that no metric explains, and the median cos ψ between the step
and the negative gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TheoryView:
    """What a leaderboard shows beyond the ranking: deviations, implied metrics, theory plots."""

    deviations: pd.DataFrame
    implied: pd.DataFrame
    figures: list[tuple[str, str]] = field(default_factory=list)
    """(title, file name under ``plots/``) of each theory plot."""


THEORY_COLUMNS = ["task", "task_display", "rule_display", "quantity", "median", "worst", "n_seeds"]
IMPLIED_COLUMNS = [
    "rule_display",
    "n_runs",
    "probes",
    "unresolved",
    "median_kappa",
    "no_metric_fraction",
    "median_cos_psi",
    "loss_up_fraction",
    "median_block_kappa",
    "diag_violation",
]


def is_deviation(key: str) -> bool:
    """Whether a final metric measures the departure from a closed form (see the module doc)."""
    return key.startswith("theory/") and key.endswith(("_rel_error", "_ratio"))


def theory_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task variant, rule and deviation: the median over seeds and the worst seed.

    ``frame`` is :func:`benchmark.leaderboard.score.runs_frame`'s frame. "Worst" is the largest
    deviation for errors, and the value farthest from 1 for ratios.
    """
    ok = frame[frame["status"] != "failed"] if not frame.empty else frame
    rows: list[dict[str, Any]] = []
    for (display_task, rule), group in ok.groupby(["task_display", "rule_display"], sort=True):
        keys = sorted({k for f in group["final"] for k in (f or {}) if is_deviation(k)})
        for key in keys:
            values = np.array([float((f or {}).get(key, math.nan)) for f in group["final"]])
            finite = values[np.isfinite(values)]
            worst = math.nan
            if len(finite):
                far = np.argmax(np.abs(finite - 1)) if key.endswith("ratio") else np.argmax(finite)
                worst = float(finite[far])
            rows.append(
                {
                    "task": group["task"].iloc[0],
                    "task_display": display_task,
                    "rule_display": rule,
                    "quantity": key,
                    "median": float(np.median(finite)) if len(finite) else math.nan,
                    "worst": worst,
                    "n_seeds": len(group),
                }
            )
    return pd.DataFrame(rows, columns=THEORY_COLUMNS)


def implied_metric_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per rule configuration, over every probed run of the suite: the implied-metric summary.

    Fractions are weighted by each run's number of probes; medians are over runs of each run's
    median (runs whose every probed step had no metric have no κ* and are left out of that median).
    """
    rows: list[dict[str, Any]] = []
    if frame.empty:
        return pd.DataFrame(rows, columns=IMPLIED_COLUMNS)
    ok = frame[frame["status"] != "failed"]
    for rule, group in ok.groupby("rule_display", sort=True):
        finals = [f or {} for f in group["final"] if "metric/run_probes" in (f or {})]
        if not finals:
            continue
        probes = np.array([f["metric/run_probes"] for f in finals])
        column = {k: np.array([f.get(f"metric/run_{k}", math.nan) for f in finals]) for k in _PROBE_KEYS}
        rows.append(
            {
                "rule_display": rule,
                "n_runs": len(finals),
                "probes": int(probes.sum()),
                "unresolved": int(sum(f.get("metric/run_unresolved", 0.0) for f in finals)),
                "median_kappa": _nanmedian(column["kappa"]),
                "no_metric_fraction": _weighted(column["no_metric_fraction"], probes),
                "median_cos_psi": _nanmedian(column["cos_psi"]),
                "loss_up_fraction": _weighted(column["loss_up_fraction"], probes),
                "median_block_kappa": _nanmedian(column["block_kappa"]),
                "diag_violation": _weighted(column["diag_violation"], probes),
            }
        )
    return pd.DataFrame(rows, columns=IMPLIED_COLUMNS)


_PROBE_KEYS = ("kappa", "no_metric_fraction", "cos_psi", "loss_up_fraction", "block_kappa", "diag_violation")


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    keep = np.isfinite(values)
    return float(np.average(values[keep], weights=weights[keep])) if keep.any() else math.nan


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if len(finite) else math.nan
