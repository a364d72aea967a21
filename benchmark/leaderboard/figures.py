"""The site's figures as inline SVG: learning curves, hyperparameter sensitivity, performance profiles.

Matplotlib's SVG keeps the site a set of static files with no plotting library to bundle: each figure
is text inside the page, opens from ``file://`` and prints as vectors. Every rule keeps one colour on
every page (:func:`rule_colours`), and legends sit outside the axes so they never cover the data.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

_TAB20 = [matplotlib.colors.to_hex(plt.get_cmap("tab20")(i)) for i in range(20)]
_TAB20B = [matplotlib.colors.to_hex(plt.get_cmap("tab20b")(i)) for i in range(20)]
PALETTE = _TAB20[::2] + _TAB20[1::2] + [_TAB20B[i + shade] for shade in range(4) for i in range(0, 20, 4)]
"""Forty colours: tab20's dark shades first, so up to ten rules get the most distinct ones, then its
light shades, then tab20b's five hues shade by shade (the site's 24 rules share the mapping)."""


SVG_METADATA = ("Creator", "Date", "Format", "Type")


def rule_colours(rules: Iterable[str]) -> dict[str, str]:
    """One colour per rule name, in sorted order, the same on every page that shares the mapping."""
    return {rule: PALETTE[i % len(PALETTE)] for i, rule in enumerate(sorted(set(rules)))}


def to_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), text kept as text."""
    buffer = io.StringIO()
    # A fixed salt gives the SVG's element ids from the figure alone, so a page is the same on every publish.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "synapsebench"}):
        # No metadata: no dates (pages are reproducible) and no RDF namespaces to look like links.
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata=dict.fromkeys(SVG_METADATA))
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _legend_outside(ax: Axes) -> None:
    if ax.has_data():
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def curves_svg(
    title: str, metric: str, curves: pd.DataFrame, labels: Mapping[str, str], colours: Mapping[str, str]
) -> str:
    """``metric`` over steps for each run group: the mean over seeds and the band from lowest to highest.

    ``curves`` is long (``group, seed, step, value``); ``labels`` maps a group to its legend text and
    ``colours`` maps the same group to its rule's colour.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for group, rows in curves.groupby("group", sort=True):
        stats = rows.groupby("step")["value"].agg(["mean", "min", "max"]).reset_index()
        colour = colours[str(group)]
        ax.plot(stats["step"], stats["mean"], color=colour, linewidth=1.6, label=labels[str(group)])
        ax.fill_between(stats["step"], stats["min"], stats["max"], color=colour, alpha=0.18, linewidth=0)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return to_svg(fig)


def sensitivity_svg(title: str, metric: str, points: pd.DataFrame, colours: Mapping[str, str]) -> str:
    """The final ``metric`` against each swept hyperparameter, one line per rule, with the seed band.

    ``points`` has ``key, rule, x, mean, low, high``: for each value ``x`` of hyperparameter ``key``,
    the rule's best configuration at that value (the others swept keys at their best) and its seeds'
    lowest and highest values.
    """
    keys = sorted(points["key"].unique())
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 1.6, 3.4), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for rule, rows in points[points["key"] == key].groupby("rule", sort=True):
            rows = rows.sort_values("x")
            colour = colours[str(rule)]
            ax.plot(rows["x"], rows["mean"], marker="o", color=colour, linewidth=1.4, label=str(rule))
            ax.fill_between(rows["x"], rows["low"], rows["high"], color=colour, alpha=0.18, linewidth=0)
        x = points.loc[points["key"] == key, "x"].to_numpy(dtype=float)
        if len(x) and np.all(x > 0) and x.max() / x.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].set_title(title, fontsize="medium", loc="left")
    _legend_outside(axes[0][-1])
    return to_svg(fig)


def profile_svg(profile: pd.DataFrame, colours: Mapping[str, str], clock: str) -> str:
    """Performance profiles: the share of tasks a rule reaches within τ × the fastest rule's time.

    ``profile`` has ``rule, tau, fraction`` (step functions over τ).
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    for rule, rows in profile.groupby("rule", sort=True):
        rows = rows.sort_values("tau")
        ax.step(rows["tau"], rows["fraction"], where="post", color=colours[str(rule)], label=str(rule))
    ax.set_xlabel(f"τ (time to target ÷ the best rule's, on {clock})")
    ax.set_ylabel("share of tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return to_svg(fig)


def sensitivity_points(runs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Points for :func:`sensitivity_svg` from a task's runs (``rule``, ``hparams_json``, ``final``).

    A hyperparameter is swept for a rule when its runs hold several values of it; at each value the
    configuration with the best mean over seeds stands for the rule.
    """
    out: list[dict[str, object]] = []
    ok = runs[runs["status"] != "failed"]
    for rule, rows in ok.groupby("rule", sort=True):
        hparams = rows["hparams_json"].map(json.loads)
        values = rows["final"].map(lambda f: float((f or {}).get(metric, math.nan)))
        configs = pd.DataFrame(list(hparams), index=rows.index).assign(_value=values)
        swept = [
            k
            for k in configs.columns
            if k != "_value" and configs[k].map(_is_number).all() and configs[k].nunique() > 1
        ]
        if not swept:
            continue
        by_config = configs.groupby(swept, dropna=False)["_value"].agg(["mean", "min", "max"]).reset_index()
        for key in swept:
            for x, group in by_config.groupby(key):
                ranked = group.sort_values("mean", ascending=mode == "min", na_position="last")
                best = ranked.iloc[0]
                out.append(
                    {
                        "key": key,
                        "rule": str(rule),
                        "x": float(x),
                        "mean": float(best["mean"]),
                        "low": float(best["min"]),
                        "high": float(best["max"]),
                    }
                )
    return pd.DataFrame(out, columns=["key", "rule", "x", "mean", "low", "high"])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
