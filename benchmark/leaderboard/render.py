"""Render a scored leaderboard: ``leaderboard.parquet`` (data) and ``leaderboard.md`` (for people)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from benchmark.atomic import temporary_beside
from benchmark.leaderboard.intervals import SIGNIFICANCE_RULE
from benchmark.leaderboard.plots import PROFILE_PLOT, plot_file, plot_performance_profiles
from benchmark.leaderboard.score import FORWARD_PASSES
from benchmark.leaderboard.suite_scores import SuiteScores
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
    scores: SuiteScores | None = None,
) -> str:
    lines = [
        f"# Leaderboard: {suite}",
        "",
        f"{n_runs} runs. Per task, each rule as the suite lists it shows one sweep point: the best mean "
        "of the task's selection metric on its validation split over seeds (a point with a failed seed "
        "cannot be chosen, a NaN mean ranks last, ties go to the smaller learning rate); nothing is "
        "chosen on test. For that point the table gives validation and test means over seeds, with a "
        "Student t 95% interval of the test mean. Diverged runs count with the metric they ended on; "
        "failed runs are left out and counted. Time to target is the median over seeds of the clock at "
        "the first evaluation that met the target (∞ when most seeds never met it), with the seeds that "
        "met it; train s is the median training time.",
        "",
        f"Significance rule: {SIGNIFICANCE_RULE} The last column tests each rule against the task's "
        "first row on test.",
        "",
    ]
    if provenance:
        lines += [
            "Produced by " + "; ".join(f"{k}: {', '.join(v)}" for k, v in provenance.items() if v) + ".",
            "",
        ]
    for task, rows in board.groupby("task_display", sort=False):
        lines += _task_section(str(task), rows)
    if scores is not None:
        lines += _suite_section(scores)
    if view is not None and (not view.deviations.empty or view.figures):
        lines += _theory_section(view.deviations, view.figures)
    if view is not None and not view.implied.empty:
        lines += _implied_section(view.implied)
    return "\n".join(lines)


def _task_section(task: str, rows: pd.DataFrame) -> list[str]:
    first = rows.iloc[0]
    chosen = rows[rows["selected"].astype(bool)]
    val, test = first["selection_metric"], first["metric"]
    clock = "forward passes" if first["clock"] == FORWARD_PASSES else "steps"
    better = {"max": "higher is better", "min": "lower is better"}
    target = f"`{first['target_metric']}` {'≥' if first['mode'] == 'max' else '≤'} {_fmt(first['target'])}"
    lines = [
        f"## {task}",
        "",
        f"Selected on `{val}` ({better.get(str(first['selection_mode']), '')}); reported on `{test}` "
        f"({better.get(str(first['mode']), '')}); target {target}"
        + (f", chance {_fmt(first['chance'])}." if math.isfinite(first["chance"]) else "."),
        "",
    ]
    if str(val).startswith("test/") and not bool(first["theory"]):
        lines += [
            "**Selected on a test metric.** These runs predate validation splits; rerun them "
            "(`--rerun`, or a new `--results`) before trusting this section.",
            "",
        ]
    if bool(first["theory"]):
        lines += [
            "Theory task: it keeps its closed-form target and has no held-out split, so it is selected on "
            "that target; it is shown here but left out of the cross-task scores.",
            "",
        ]
    lines += [
        f"![{task}: {val} over steps, each rule's selected point](plots/{plot_file(task)})",
        "",
        f"| rank | rule | points | val | test | test 95% CI | seeds | diverged | failed "
        f"| {clock} to target | train s | vs best |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    points = rows.groupby("entry").size()
    alike = _most_common(chosen)
    for _, r in chosen.iterrows():
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        to = r["median_clock_to_target"]
        lines.append(
            f"| {r['rank']} | `{r['rule_display']}` | {points[r['entry']]} | {_fmt(r['val_mean'])} | "
            f"{_fmt(r['mean'])} | {ci} | {r['n_seeds']} | {r['n_diverged']} | {r['n_failed']} | "
            f"{'∞' if to == math.inf else _fmt(to)} ({r['reached_target']}/{r['n_seeds']}) | "
            f"{_fmt(r['median_train_time_s'], 3)}{'' if r.get('batch_size', '1') == alike else '†'} | "
            f"{r['vs_best']} |"
        )
    if (chosen.get("batch_size", pd.Series("1", index=chosen.index)) != alike).any():
        lines += [
            "",
            f"† Batched differently from the others (runs per process: {_batched(chosen)}): a batched "
            "run's time is its group's divided by the group's size, so compare train s only between "
            "rows batched alike.",
        ]
    unselectable = sorted(set(rows["entry_label"]) - set(chosen["entry_label"]))
    if unselectable:
        lines += ["", "No selectable point (a failed seed at every point): " + _names(unselectable) + "."]
    lines.append("")
    return lines


def _most_common(chosen: pd.DataFrame) -> str:
    """The batching most selected points share (``1`` where the board predates batching)."""
    if "batch_size" not in chosen.columns or chosen.empty:
        return "1"
    return str(chosen["batch_size"].astype(str).mode().iloc[0])


def _batched(chosen: pd.DataFrame) -> str:
    sizes = chosen.get("batch_size", pd.Series("1", index=chosen.index)).astype(str)
    return ", ".join(f"`{label}` {size}" for label, size in zip(chosen["entry_label"], sizes, strict=True))


def _suite_section(scores: SuiteScores) -> list[str]:
    lines = [
        "## Across tasks",
        "",
        "Each rule as the suite lists it, at its selected point on each task; tuned and self-tuning "
        "rules are scored as separate tracks. *Profile score*: AlgoPerf's integrated performance "
        "profile, ∫₁⁴ ρ(τ) dτ / 3, where ρ(τ) is the fraction of tasks on which the rule's time to "
        "target is within τ times the fastest rule's (1: fastest everywhere; a rule that never meets a "
        "target, or was not run, is ∞ there). *IQM*: the interquartile mean over tasks and seeds of "
        "the normalised test score, 0 at the task's chance value and 1 at the best mean of the suite "
        "(below chance counts 0). *P(X > Y)*: the probability that a run of X scores above a run of Y "
        "on a random task (Agarwal et al. 2021). Intervals: 95% percentile intervals of a stratified "
        "bootstrap over seeds.",
        "",
    ]
    if scores.theory_tasks:
        lines += [f"Theory tasks, shown above, are not scored here: {_names(scores.theory_tasks)}.", ""]
    if scores.unnormalised_tasks:
        lines += [
            "Left out of IQM and P(X > Y) (no stored chance value, or no rule better than it): "
            f"{_names(scores.unnormalised_tasks)}.",
            "",
        ]
    if scores.summary.empty:
        return lines
    lines += [f"![performance profiles](plots/{PROFILE_PLOT})", ""]
    for track, summary in scores.summary.groupby("track", sort=True):
        lines += [
            f"### Track: {track}",
            "",
            "| rule | tasks | targets met | profile score [95% CI] | IQM [95% CI] |",
            "|---|---:|---:|---|---|",
        ]
        for _, r in summary.sort_values("integrated", ascending=False, kind="stable").iterrows():
            integrated = _with_interval(r["integrated"], r["integrated_low"], r["integrated_high"])
            iqm = _with_interval(r["iqm"], r["iqm_low"], r["iqm_high"])
            lines.append(
                f"| `{r['entry_label']}` | {r['n_tasks']} | {r['n_reached']} | {integrated} | {iqm} |"
            )
        pairs = scores.improvement[scores.improvement["track"] == track]
        if not pairs.empty:
            lines += ["", "| X | Y | P(X > Y) [95% CI] | significance |", "|---|---|---|---|"]
            for _, r in pairs.iterrows():
                probability = _with_interval(r["probability"], r["low"], r["high"])
                lines.append(f"| `{r['x']}` | `{r['y']}` | {probability} | {r['verdict']} |")
        missing = scores.cells[(scores.cells["track"] == track) & (scores.cells["why"] != "")]
        if not missing.empty:
            lines += ["", "Scored as never reaching the target, and 0 in IQM and P(X > Y):"]
            lines += [
                f"- `{r['entry_label']}` on {r['task_display']}: {r['why']}" for _, r in missing.iterrows()
            ]
        lines.append("")
    return lines


def _with_interval(value: float, low: float, high: float) -> str:
    return f"{_fmt(value, 3)} [{_fmt(low, 3)}, {_fmt(high, 3)}]"


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


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
    scores: SuiteScores | None = None,
) -> tuple[Path, Path]:
    """Write ``leaderboard.parquet`` and ``leaderboard.md`` into ``folder``, each atomically.

    The theory view and the implied-metric summary, when the suite has them, go to
    ``theory.parquet`` and ``implied_metric.parquet`` beside them; the cross-task ``scores`` to
    ``suite_scores.parquet``, ``probability_of_improvement.parquet``, ``suite_cells.parquet`` and
    ``performance_profile.parquet``, with the profile drawn under ``plots/``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "leaderboard.parquet"
    markdown = folder / "leaderboard.md"
    _write_parquet(board, parquet)
    if view is not None:
        for table, name in ((view.deviations, "theory.parquet"), (view.implied, "implied_metric.parquet")):
            if not table.empty:
                _write_parquet(table, folder / name)
    if scores is not None and not scores.summary.empty:
        tables = {
            "suite_scores.parquet": scores.summary,
            "probability_of_improvement.parquet": scores.improvement,
            "suite_cells.parquet": scores.cells,
            "performance_profile.parquet": scores.profile,
        }
        for name, table in tables.items():
            _write_parquet(table, folder / name)
        plot_performance_profiles(scores.profile, folder / "plots" / PROFILE_PLOT)
    text = render_markdown(suite, board, n_runs, provenance, view, scores).rstrip("\n") + "\n"
    tuning = folder / TUNING_MARKDOWN
    if tuning.is_file():  # `synapsebench tune`'s budget curve for this suite's rules, shown on its board
        text += "\n" + tuning.read_text()
    with temporary_beside(markdown) as tmp:
        tmp.write_text(text)
        os.replace(tmp, markdown)
    return parquet, markdown


TUNING_MARKDOWN = "tuning.md"
"""Written beside the board by ``synapsebench tune`` (``benchmark.execute.tune.write_scores``)."""


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    with temporary_beside(path) as tmp:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
