"""Theory plots: runs drawn against their task's closed form, as the task's registry entry declares.

- :class:`~benchmark.types.CurveOverlay`: measured curves (mean over seeds) over the theory
  curves, one panel per rule, e.g. Saxe et al.'s mode strengths over their eq. 12 sigmoids.
- :class:`~benchmark.types.OptionSweepPlot`: a final metric against a task option across the
  suite's variants of that task, one line per rule, e.g. the grokking delay against the training
  fraction.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from benchmark.leaderboard.plots import plot_file, save_figure
from benchmark.types import CurveOverlay, OptionSweepPlot, TheoryPlot

MAX_PANELS = 12
"""Rules drawn per overlay figure, closest to the theory first; a suite with more shows those."""


def draw_theory_plots(
    frame: pd.DataFrame, curves: pd.DataFrame, declared: Mapping[str, Sequence[TheoryPlot]], folder: Path
) -> list[tuple[str, str]]:
    """Draw the theory plots that ``declared`` names per task into ``folder``; returns (title, file).

    ``frame`` is :func:`benchmark.leaderboard.score.runs_frame`'s frame, ``curves`` is
    :func:`benchmark.leaderboard.plots.curve_frame`'s. The declarations come from the task registry
    through the caller, so the leaderboard itself depends only on the store.
    """
    figures: list[tuple[str, str]] = []
    ok = frame[frame["status"] != "failed"]
    for task in sorted(ok["task"].unique()):
        for i, spec in enumerate(declared.get(task, ())):
            if isinstance(spec, CurveOverlay):
                for display in sorted(ok.loc[ok["task"] == task, "task_display"].unique()):
                    name = plot_file(f"{display}-theory-{i}")
                    rows = curves[curves["task_display"] == display]
                    if _overlay(spec, display, rows, folder / "plots" / name):
                        figures.append((f"{display}: {spec.title}", name))
            else:
                name = plot_file(f"{task}-theory-{i}")
                if _option_sweep(spec, str(task), ok[ok["task"] == task], folder / "plots" / name):
                    figures.append((f"{task}: {spec.title}", name))
    return figures


def _keys(pattern: str, available: set[str]) -> list[tuple[str, str]]:
    """(k, key) for each curve key matching ``pattern`` (``{k}`` → an integer), in k order."""
    if "{k}" not in pattern:
        return [("", pattern)] if pattern in available else []
    regex = re.compile(re.escape(pattern).replace(re.escape("{k}"), r"(\d+)") + "$")
    found = [(m.group(1), key) for key in available if (m := regex.match(key))]
    return sorted(found, key=lambda item: int(item[0]))


def _overlay(spec: CurveOverlay, display: str, rows: pd.DataFrame, path: Path) -> bool:
    available = set(rows["key"].unique())
    measured = _keys(spec.measured, available)
    if not measured:
        return False
    rules = sorted(rows["rule_display"].unique(), key=lambda r: (_distance(spec, measured, rows, r), r))
    rules = rules[:MAX_PANELS]
    cols = min(len(rules), 3)
    nrows = math.ceil(len(rules) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.4, 4.2 * cols), 3.6 * nrows), dpi=110, squeeze=False)
    for ax, rule in zip(axes.flat, rules, strict=False):
        mine = rows[rows["rule_display"] == rule]
        for index, (k, key) in enumerate(measured):
            color = f"C{index % 10}"
            mean = mine[mine["key"] == key].groupby("step")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=1.6, label=f"measured {k}".strip())
            theory_key = spec.theory.replace("{k}", k)
            theory = mine[mine["key"] == theory_key].groupby("step")["value"].mean()
            ax.plot(theory.index, theory.to_numpy(), color="black", linestyle="--", linewidth=0.9)
        for key, label in spec.references:
            ref = mine[mine["key"] == key].groupby("step")["value"].mean()
            ax.plot(ref.index, ref.to_numpy(), color="grey", linestyle=":", linewidth=1.4, label=label)
        ax.plot([], [], color="black", linestyle="--", linewidth=0.9, label="theory")
        ax.set_title(rule if len(rule) <= 48 else rule[:45] + "...", fontsize="small")
        ax.set_xlabel("step")
        if spec.log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rules) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="x-small")
    fig.suptitle(textwrap.fill(f"{display}: {spec.title}", 70), fontsize="medium")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def _distance(spec: CurveOverlay, measured: list[tuple[str, str]], rows: pd.DataFrame, rule: str) -> float:
    """Mean relative distance of a rule's curves (mean over seeds) from their theory curves."""
    mine = rows[rows["rule_display"] == rule]
    gaps = []
    for k, key in measured:
        got = mine[mine["key"] == key].groupby("step")["value"].mean()
        want = mine[mine["key"] == spec.theory.replace("{k}", k)].groupby("step")["value"].mean()
        both = pd.concat([got, want], axis=1, join="inner").to_numpy()
        if len(both):
            gaps.append(np.mean(np.abs(both[:, 0] - both[:, 1])) / max(np.mean(np.abs(both[:, 1])), 1e-300))
    finite = [g for g in gaps if np.isfinite(g)]
    return float(np.mean(finite)) if finite else math.inf


def _option_sweep(spec: OptionSweepPlot, task: str, runs: pd.DataFrame, path: Path) -> bool:
    options = runs["task_options_json"].map(lambda text: json.loads(text) if text else {})
    # One line per rule and per value of the task's other swept options (e.g. init=gaussian).
    others = [k for k in sorted({k for o in options for k in o}) if k != spec.option]
    others = [k for k in others if len({json.dumps(o.get(k)) for o in options}) > 1]
    rules = runs["rule"] if spec.by_rule_name else runs["rule_display"]
    labels = [
        str(rule) + "".join(f" {k}={o.get(k)}" for k in others)
        for rule, o in zip(rules, options, strict=True)
    ]
    y = runs["final"].map(lambda f: (f or {}).get(spec.metric, math.nan)).astype(float)
    missing = ~np.isfinite(y)
    if spec.missing_at_budget:
        y = y.where(~missing, runs["budget_steps"].astype(float))
    table = pd.DataFrame({"line": labels, "x": options.map(lambda o: o.get(spec.option)), "y": y})
    table["missing"] = missing.to_numpy()
    table = table.dropna(subset=["x"])
    if table["x"].nunique() < 2:
        return False
    fig, ax = plt.subplots(figsize=(9.6, 4.8), dpi=120)
    # The line is the mean over the runs that have the metric; the others only get a marker.
    for label, group in table[np.isfinite(table["y"])].groupby("line", sort=True):
        stats = group[~group["missing"]].groupby("x")["y"].agg(["mean", "min", "max"]).reset_index()
        (line,) = ax.plot(stats["x"], stats["mean"], marker="o", label=label, linewidth=1.5)
        ax.fill_between(stats["x"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        capped = group[group["missing"]]
        if len(capped):
            ax.plot(capped["x"], capped["y"], "x", color=line.get_color(), markersize=8)
    ax.set_xlabel(spec.option)
    ax.set_ylabel(spec.metric)
    title = f"{task}: {spec.title}"
    if spec.missing_at_budget and table["missing"].any():
        title += "\n(× never reached: drawn at the step budget)"
    ax.set_title(title, fontsize="medium")
    if spec.log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
    return True
