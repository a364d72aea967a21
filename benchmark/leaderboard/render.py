"""Render a scored leaderboard: ``leaderboard.parquet`` (data) and ``leaderboard.md`` (for people)."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import pandas as pd


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def render_markdown(
    suite: str, board: pd.DataFrame, n_runs: int, provenance: dict[str, list[str]] | None = None
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
    for task, rows in board.groupby("task", sort=True):
        first = rows.iloc[0]
        direction = "higher is better" if first["mode"] == "max" else "lower is better"
        lines += [
            f"## {task}",
            "",
            f"Metric: `{first['metric']}` ({direction}); target {_fmt(first['target'])}.",
            "",
            f"![{task}: {first['metric']} over steps](plots/{task}.png)",
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
    return "\n".join(lines)


def write_leaderboard(
    folder: Path,
    suite: str,
    board: pd.DataFrame,
    n_runs: int,
    provenance: dict[str, list[str]] | None = None,
) -> tuple[Path, Path]:
    """Write ``leaderboard.parquet`` and ``leaderboard.md`` into ``folder``, each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "leaderboard.parquet"
    markdown = folder / "leaderboard.md"
    tmp = folder / f".leaderboard.{uuid.uuid4().hex}.tmp"
    board.to_parquet(tmp, index=False)
    os.replace(tmp, parquet)
    tmp.write_text(render_markdown(suite, board, n_runs, provenance) + "\n")
    os.replace(tmp, markdown)
    return parquet, markdown
