"""Learning-curve plots from the store: per task, the target metric over steps, one line per rule.

Each line is the mean over seeds at each evaluated step, with the band between the lowest and the
highest seed, so a reader sees both the typical curve and its spread.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or CI
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from benchmark.atomic import temporary_beside
from benchmark.leaderboard.figures import rule_colours


def plot_file(task_display: str) -> str:
    """The PNG name of a task variant's plot: ``saxe_depth[depth=8]`` → ``saxe_depth-depth=8.png``."""
    return re.sub(r"[^A-Za-z0-9_.=+]+", "-", task_display).strip("-") + ".png"


def curve_frame(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Long frame ``task_display, rule_display, seed, step, key, value`` for the runs that did not fail.

    ``runs`` is :func:`benchmark.leaderboard.score.runs_frame`'s frame.
    """
    ok = runs[runs["status"] != "failed"][["run_id", "task", "task_display", "rule", "rule_display", "seed"]]
    return curves.merge(ok, on="run_id", how="inner")


def plot_task_curves(task: str, metric: str, frame: pd.DataFrame, path: Path) -> Path:
    """Plot ``metric`` against steps for every rule of the task variant ``task`` into ``path``."""
    fig, ax = plt.subplots(figsize=(8.0, 4.0), dpi=120)
    rows = frame[(frame["task_display"] == task) & (frame["key"] == metric)]
    colours = rule_colours(frame["rule"].astype(str)) if "rule" in frame else {}
    for display, group in rows.groupby("rule_display", sort=True):
        stats = group.groupby("step")["value"].agg(["mean", "min", "max"]).reset_index()
        colour = colours.get(str(group["rule"].iloc[0])) if colours else None
        (line,) = ax.plot(stats["step"], stats["mean"], label=str(display), linewidth=1.5, color=colour)
        ax.fill_between(stats["step"], stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    ax.set_title(task)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.has_data():  # outside the axes, so it never covers a curve
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG through a hidden temporary, so a reader never sees half a file."""
    with temporary_beside(path, ".png") as tmp:
        fig.savefig(tmp, bbox_inches="tight")  # keeps a legend placed outside the axes
        plt.close(fig)
        os.replace(tmp, path)
    return path


PROFILE_PLOT = "performance_profile.png"


def plot_performance_profiles(profile: pd.DataFrame, path: Path) -> Path:
    """Draw ρ(τ) against τ for every rule, one panel per track, the legend beside the data.

    ``profile`` is :class:`~benchmark.leaderboard.suite_scores.SuiteScores`'s long ``profile`` frame.
    """
    tracks = sorted(profile["track"].unique())
    fig, axes = plt.subplots(1, len(tracks), figsize=(6.4 * len(tracks), 4.0), dpi=120, squeeze=False)
    for ax, track in zip(axes[0], tracks, strict=True):
        for rule, group in profile[profile["track"] == track].groupby("entry_label", sort=True):
            ax.step(group["tau"], group["rho"], where="post", label=str(rule), linewidth=1.5)
        ax.set_title(f"track: {track}")
        ax.set_xlabel("τ (time to target / fastest rule's)")
        ax.set_ylabel("fraction of tasks within τ")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
