"""A static leaderboard site: an index of suites and one page per suite, from the store alone.

The pages need no server and no network: data, figures (inline SVG) and the few lines of script that
sort the tables are inside each HTML file, so they open from ``file://`` and can be copied anywhere
(a lab's web space, GitHub Pages). Templates are Jinja2, with autoescaping on.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from benchmark import store
from benchmark.atomic import temporary_beside
from benchmark.errors import SpecError
from benchmark.leaderboard.figures import curves_svg, rule_colours, sensitivity_points, sensitivity_svg
from benchmark.leaderboard.score import runs_frame, score_runs

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a task's table: its header, the board column it shows and how numbers print."""

    header: str
    key: str
    digits: int = 4
    title: str = ""


TASK_COLUMNS = (
    Column("rank", "rank", title="by the selection metric's mean over seeds"),
    Column("rule", "rule_display"),
    Column("validation", "val_mean", title="mean over seeds of the metric the point was selected by"),
    Column("validation 95% CI", "val_interval"),
    Column(
        "test", "test_mean", title="mean over seeds of the test form of the target, at the selected point"
    ),
    Column("test 95% CI", "test_interval"),
    Column("final", "mean", title="mean over seeds of the target metric"),
    Column("95% CI", "interval"),
    Column("seeds", "n_seeds"),
    Column("diverged", "n_diverged"),
    Column("failed", "n_failed"),
    Column("steps to target", "median_steps_to_target"),
    Column("forward passes to target", "median_passes_to_target"),
    Column("seconds to target", "median_time_to_target_s", 3),
    Column("vs best", "versus_best", title="one-sided paired test over shared seeds, p < 0.01"),
)


@dataclass(slots=True)
class TaskSection:
    name: str
    metric: str
    columns: list[Column]
    rows: list[list[tuple[str, str]]]
    all_rows: list[list[tuple[str, str]]]
    figures: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)
    theory: bool = False


@dataclass(slots=True)
class SuitePage:
    name: str
    file: str
    n_runs: int
    tasks: list[TaskSection]
    provenance: list[tuple[str, str]]
    cross_task: str = ""
    generated: str = ""


def known_suites(results: Path) -> list[str]:
    """The suites under ``results`` that have a runs folder."""
    root = Path(results)
    return sorted(p.parent.name for p in root.glob("*/runs") if p.is_dir()) if root.is_dir() else []


def current_suites(results: Path) -> list[str]:
    """The suites under ``results`` with runs of the current protocol (the ones a site can show)."""
    return [s for s in known_suites(results) if store.read_runs(results, s).num_rows]


def check_suites(suites: Sequence[str], results: Path) -> None:
    """Refuse suites with no stored runs of the current protocol, naming the suite and the folder."""
    known = known_suites(results)
    for suite in suites:
        if suite not in known:
            hint = get_close_matches(suite, known, n=1)
            expected = f"a suite with stored runs under {results} ({', '.join(known) or 'none'})"
            got = f"{suite!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            raise SpecError(results, "suite", expected, got)
        if store.read_runs(results, suite).num_rows == 0:
            stale = store.stale_runs(results, suite)
            why = store.stale_message(results, suite, stale) if stale else "no runs"
            raise SpecError(store.runs_dir(results, suite), "suite", f"stored runs of suite {suite!r}", why)


def publish(
    suites: Sequence[str],
    results: Path,
    out: Path,
    extra: Callable[[str, pd.DataFrame, pd.DataFrame], str] | None = None,
) -> list[Path]:
    """Write ``index.html`` and one page per suite into ``out``; returns the pages written.

    ``extra(suite, runs, board)`` may add HTML to a suite page (the cross-task scores).
    """
    check_suites(suites, results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    frames = {s: runs_frame(store.read_runs(results, s)) for s in suites}
    colours = rule_colours(r for f in frames.values() for r in f["rule"].astype(str))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pages: list[SuitePage] = []
    for suite in suites:
        frame = frames[suite]
        board = score_runs(store.read_runs(results, suite))
        curves = store.read_curves(results, suite).to_pandas()
        page = SuitePage(
            name=suite,
            file=f"{suite}.html",
            n_runs=len(frame),
            tasks=[
                _task_section(str(task), frame, board, curves, colours)
                for task in board["task_display"].drop_duplicates()
            ],
            provenance=provenance_rows(frame),
            cross_task=extra(suite, frame, board) if extra else "",
            generated=generated,
        )
        _copy_theory_images(page, results, out)
        pages.append(page)
    written = []
    for page in pages:
        html = env.get_template("suite.html").render(page=page, suites=pages)
        written.append(_write_text(out / page.file, html))
    index = env.get_template("index.html").render(suites=pages, generated=generated)
    written.append(_write_text(out / "index.html", index))
    return written


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _task_section(
    task: str, frame: pd.DataFrame, board: pd.DataFrame, curves: pd.DataFrame, colours: dict[str, str]
) -> TaskSection:
    rows = board[board["task_display"] == task]
    selected = rows[rows["selected"].astype(bool)] if "selected" in rows.columns else rows
    columns = [c for c in TASK_COLUMNS if c.key in rows.columns or c.key.endswith("interval")]
    columns = [c for c in columns if _has_column(rows, c.key)]
    metric = (
        str(rows["selection_metric"].iloc[0]) if "selection_metric" in rows else str(rows["metric"].iloc[0])
    )
    mode = str(rows["selection_mode"].iloc[0]) if "selection_mode" in rows else str(rows["mode"].iloc[0])
    runs = frame[frame["task_display"] == task]
    section = TaskSection(
        name=task,
        metric=metric,
        columns=columns,
        rows=[_cells(row, columns) for _, row in selected.iterrows()],
        all_rows=[_cells(row, columns) for _, row in rows.iterrows()] if len(rows) > len(selected) else [],
        theory=bool(runs["theory"].fillna(False).any()) if "theory" in runs else False,
    )
    chosen = runs[runs["rule_display"].isin(set(selected["rule_display"])) & (runs["status"] != "failed")]
    long = curves[curves["run_id"].isin(set(chosen["run_id"])) & (curves["key"] == metric)]
    if not long.empty:
        long = long.merge(chosen[["run_id", "rule_display", "rule", "seed"]], on="run_id")
        long = long.rename(columns={"rule_display": "group"})
        rule_of = dict(zip(long["group"], long["rule"], strict=False))
        svg = curves_svg(
            task, metric, long, {g: g for g in rule_of}, {g: colours[r] for g, r in rule_of.items()}
        )
        section.figures.append(
            ("learning curves of each rule's selected setting (band: lowest to highest seed)", svg)
        )
    points = sensitivity_points(runs, metric, mode)
    if not points.empty:
        section.figures.append(
            (
                "sensitivity: the final metric against each swept hyperparameter",
                sensitivity_svg(task, metric, points, colours),
            )
        )
    return section


def _has_column(rows: pd.DataFrame, key: str) -> bool:
    if key.endswith("interval"):
        prefix = key[: -len("interval")]
        return f"{prefix}ci_low" in rows.columns
    return key in rows.columns


def _cells(row: pd.Series, columns: list[Column]) -> list[tuple[str, str]]:
    """Each cell as (shown text, sort key): numbers sort as numbers, missing values last."""
    cells = []
    for column in columns:
        if column.key.endswith("interval"):
            prefix = column.key[: -len("interval")]
            low, high = row.get(f"{prefix}ci_low"), row.get(f"{prefix}ci_high")
            cells.append((f"[{_number(low, column.digits)}, {_number(high, column.digits)}]", _sort_key(low)))
        else:
            value = row.get(column.key)
            text = _number(value, column.digits) if isinstance(value, int | float) else str(value)
            cells.append((text, _sort_key(value)))
    return cells


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def _sort_key(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float):
        return repr(float(value)) if math.isfinite(float(value)) else ""
    return str(value)


def provenance_rows(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """What produced the suite's runs: code, dirty flag, torch, CUDA, devices, hosts and times."""

    def distinct(column: str) -> str:
        values = sorted({str(v) for v in frame.get(column, pd.Series(dtype=str)).dropna() if str(v)})
        return ", ".join(values) or "–"

    started, finished = frame["started_at"].min(), frame["finished_at"].max()
    dirty = frame["code_dirty"].fillna(False).astype(bool)
    return [
        ("code version", distinct("code_version")),
        ("git commit", distinct("git_commit")),
        ("uncommitted changes", f"{int(dirty.sum())} of {len(frame)} runs" if dirty.any() else "none"),
        ("package", distinct("package_version")),
        ("torch", distinct("torch_version")),
        ("CUDA", distinct("cuda_version")),
        ("devices", distinct("device_name")),
        ("hosts", distinct("hostname")),
        ("runs made", f"{started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M} UTC" if len(frame) else "–"),
    ]


def _copy_theory_images(page: SuitePage, results: Path, out: Path) -> None:
    """Theory overlays the leaderboard drew (PNG files) are copied beside the page and shown."""
    source = store.suite_dir(results, page.name) / "plots"
    if not source.is_dir():
        return
    images = sorted(source.glob("*-theory-*.png"))
    if not images:
        return
    target = out / page.name
    target.mkdir(parents=True, exist_ok=True)
    for task in page.tasks:
        stem = task.name.split("[")[0]
        for image in images:
            if image.name.startswith(stem + "-") or image.name.startswith(stem + "."):
                shutil.copyfile(image, target / image.name)
                task.images.append((f"{page.name}/{image.name}", image.stem))


def _write_text(path: Path, text: str) -> Path:
    with temporary_beside(path, path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path
