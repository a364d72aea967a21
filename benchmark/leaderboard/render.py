"""Render a scored leaderboard: ``leaderboard.parquet`` (data) and ``leaderboard.md`` (for people)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from benchmark.atomic import temporary_beside
from benchmark.leaderboard.plots import plot_file
from benchmark.leaderboard.theory import TheoryView


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def render_markdown(
    suite: str,
    board: pd.DataFrame,
    n_runs: int,
    provenance: dict[str, list[str]] | None = None,
    view: TheoryView | None = None,
) -> str:
    lines = [
        f"# Leaderboard: {suite}",
        "",
        f"{n_runs} runs. Per task, rules are ranked by the mean final value of the task's target metric "
        "over seeds, with a 95% percentile-bootstrap confidence interval of the mean. "
        "Diverged runs count with the metric they ended on; failed runs are left out and counted. "
        "Steps and time to target are medians over the seeds that reached it, on the training clock.",
        "",
    ]
    if provenance:
        lines += [
            "Produced by " + "; ".join(f"{k}: {', '.join(v)}" for k, v in provenance.items() if v) + ".",
            "",
        ]
    for task, rows in board.groupby("task_display", sort=False):
        first = rows.iloc[0]
        direction = "higher is better" if first["mode"] == "max" else "lower is better"
        lines += [
            f"## {task}",
            "",
            f"Metric: `{first['metric']}` ({direction}); target {_fmt(first['target'])}.",
            "",
            f"![{task}: {first['metric']} over steps](plots/{plot_file(str(task))})",
            "",
            "| rank | rule | mean | 95% CI | seeds | diverged | failed | reached target "
            "| steps to target | train s |",
            "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in rows.iterrows():
            ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            lines.append(
                f"| {r['rank']} | `{r['rule_display']}` | {_fmt(r['mean'])} | {ci} | {r['n_seeds']} | "
                f"{r['n_diverged']} | {r['n_failed']} | {r['reached_target']}/{r['n_seeds']} | "
                f"{_fmt(r['median_steps_to_target'])} | {_fmt(r['median_train_time_s'], 3)} |"
            )
        lines.append("")
    if view is not None and (not view.deviations.empty or view.figures):
        lines += _theory_section(view.deviations, view.figures)
    if view is not None and not view.implied.empty:
        lines += _implied_section(view.implied)
    return "\n".join(lines)


def _theory_section(theory: pd.DataFrame, figures: list[tuple[str, str]]) -> list[str]:
    lines = [
        "## Theory: departure from the closed forms",
        "",
        "For each task with a closed-form reference, each rule's deviation from it: the median over "
        "seeds, and the worst seed in brackets. `..._rel_error` is relative (0 is exact); `..._ratio` is "
        "measured over predicted, or over the theoretical bound (1 is on it; `theory/sharpness_ratio` "
        "= λ_max·lr/2, at most 1 where GD is stable). The references are computed by the task from "
        "theory, not fitted to the run; a rule other than GD at the task's reference rate is not "
        "expected to follow them, so its deviation measures how far it departs from GD.",
        "",
    ]
    for title, name in figures:
        lines += [f"![{title}](plots/{name})", ""]
    for task, rows in theory.groupby("task_display", sort=False):
        quantities = list(dict.fromkeys(rows["quantity"]))
        lines += [
            f"### {task}",
            "",
            "| rule | " + " | ".join(f"`{q}`" for q in quantities) + " |",
            "|---|" + "---:|" * len(quantities),
        ]
        for rule, group in rows.groupby("rule_display", sort=True):
            cells = []
            for q in quantities:
                hit = group[group["quantity"] == q]
                if hit.empty:
                    cells.append("–")
                else:
                    r = hit.iloc[0]
                    cells.append(f"{_fmt(r['median'], 3)} [{_fmt(r['worst'], 3)}]")
            lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _implied_section(implied: pd.DataFrame) -> list[str]:
    lines = [
        "## Implied metric of each rule",
        "",
        "Every probed step Δθ read as natural-gradient descent, Δθ = −M⁻¹g: κ* is the smallest "
        "condition number of an SPD metric M that explains the step (1 for gradient descent), "
        '"no metric" the fraction of probed steps that no SPD metric explains (g·Δθ ≥ 0), '
        'cos ψ the cosine between the step and −g, "loss up" the fraction of steps that raised the '
        'probe batch\'s loss, and "diagonal" the fraction of coordinates no diagonal metric explains. '
        '"Unresolved" probes (steps below 100·ε·‖θ‖, lost in the parameters\' rounding, as in a '
        "converged run) are counted and left out of the rest.",
        "",
        "| rule | runs | probes | unresolved | median κ* | no metric | median cos ψ | loss up "
        "| median block κ* | diagonal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in implied.iterrows():
        lines.append(
            f"| `{r['rule_display']}` | {r['n_runs']} | {r['probes']} | {r['unresolved']} | "
            f"{_fmt(r['median_kappa'], 3)} | "
            f"{_fmt(r['no_metric_fraction'], 3)} | {_fmt(r['median_cos_psi'], 3)} | "
            f"{_fmt(r['loss_up_fraction'], 3)} | {_fmt(r['median_block_kappa'], 3)} | "
            f"{_fmt(r['diag_violation'], 3)} |"
        )
    lines.append("")
    return lines


def write_leaderboard(
    folder: Path,
    suite: str,
    board: pd.DataFrame,
    n_runs: int,
    provenance: dict[str, list[str]] | None = None,
    view: TheoryView | None = None,
) -> tuple[Path, Path]:
    """Write ``leaderboard.parquet`` and ``leaderboard.md`` into ``folder``, each atomically.

    The theory view and the implied-metric summary, when the suite has them, go to
    ``theory.parquet`` and ``implied_metric.parquet`` beside them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "leaderboard.parquet"
    markdown = folder / "leaderboard.md"
    _write_parquet(board, parquet)
    if view is not None:
        for table, name in ((view.deviations, "theory.parquet"), (view.implied, "implied_metric.parquet")):
            if not table.empty:
                _write_parquet(table, folder / name)
    with temporary_beside(markdown) as tmp:
        tmp.write_text(render_markdown(suite, board, n_runs, provenance, view).rstrip("\n") + "\n")
        os.replace(tmp, markdown)
    return parquet, markdown


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    with temporary_beside(path) as tmp:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
