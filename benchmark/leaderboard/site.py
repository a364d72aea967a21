"""A static leaderboard site: an index of suites and one page per suite, from the store alone.

The pages need no server and no network: data, figures (inline SVG) and the few lines of script that
sort the tables are inside each HTML file, so they open from ``file://`` and can be copied anywhere
(a lab's web space, GitHub Pages). Templates are Jinja2, with autoescaping on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
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
from benchmark.leaderboard.figures import (
    curves_svg,
    profile_svg,
    rule_colours,
    sensitivity_points,
    sensitivity_svg,
)
from benchmark.leaderboard.score import runs_frame, score_runs
from benchmark.leaderboard.suite_scores import Dropped, SuiteScores, score_suite
from benchmark.results_location import Location, parse

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a task's table: its header, the board column it shows and how numbers print."""

    header: str
    key: str
    digits: int = 4
    title: str = ""


TASK_COLUMNS = (
    Column("rank", "rank", title="selected points first, by the selection metric's mean over seeds"),
    Column("rule", "entry_label"),
    Column("setting", "rule_display"),
    Column("validation", "val_mean", title="mean over seeds of the metric the point was selected by"),
    Column("validation 95% CI", "val_interval"),
    Column("test", "mean", title="mean over seeds of the test form of the target, at the selected point"),
    Column("test 95% CI", "interval", title="Student-t interval of the mean over seeds"),
    Column("seeds", "n_seeds"),
    Column("diverged", "n_diverged"),
    Column("failed", "n_failed"),
    Column("reached target", "reached_target"),
    Column("steps to target", "median_steps_to_target"),
    Column(
        "clock to target",
        "median_clock_to_target",
        title="forward-equivalent passes where recorded, else steps",
    ),
    Column("seconds to target", "median_time_to_target_s", 3, title="training clock, evaluation paused"),
    Column("vs best", "vs_best", title="one-sided paired t test over shared seeds; 'beats' needs p < 0.01"),
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


SUMMARY_COLUMNS = (
    Column("rule", "entry_label"),
    Column("tasks", "n_tasks"),
    Column("reached target", "n_reached", title="tasks on which the rule's median seed reached the target"),
    Column("integrated profile score", "integrated", 3, title="AlgoPerf: ∫ρ(τ)dτ over τ ∈ [1, 4], ÷ 3"),
    Column("95% CI", "integrated_interval", 3),
    Column("IQM normalised score", "iqm", 3, title="0 at chance, 1 at the suite's best; interquartile mean"),
    Column("IQM 95% CI", "iqm_interval", 3),
)
IMPROVEMENT_COLUMNS = (
    Column("X", "x"),
    Column("Y", "y"),
    Column("P(X > Y)", "probability", 3),
    Column("95% CI", "interval", 3),
    Column("p (one-sided)", "p", 3),
    Column("seeds", "n_seeds"),
    Column("verdict", "verdict"),
)


@dataclass(slots=True)
class Table:
    columns: list[Column]
    rows: list[list[tuple[str, str]]]


@dataclass(slots=True)
class TrackSection:
    """One scoring track (tuned, or self-tuning) of the cross-task scores."""

    name: str
    summary: Table
    improvement: Table
    profile: str
    missing: list[str]


@dataclass(slots=True)
class SuitePage:
    name: str
    file: str
    n_runs: int
    tasks: list[TaskSection]
    provenance: list[tuple[str, str]]
    tracks: list[TrackSection] = field(default_factory=list)
    cross_task_notes: list[str] = field(default_factory=list)
    generated: str = ""


def known_suites(results: Location) -> list[str]:
    """The suites under ``results`` that have a runs folder."""
    root = parse(results)
    return sorted(p.parent.name for p in root.glob("*/runs") if p.is_dir()) if root.is_dir() else []


def current_suites(results: Location) -> list[str]:
    """The suites under ``results`` with runs of the current protocol (the ones a site can show)."""
    return [s for s in known_suites(results) if store.read_runs(results, s).num_rows]


def check_suites(suites: Sequence[str], results: Location) -> None:
    """Refuse suites with no stored runs of the current protocol, naming the suite and the folder."""
    known = known_suites(results)
    for suite in suites:
        if suite not in known:
            hint = get_close_matches(suite, known, n=1)
            expected = f"a suite with stored runs under {results} ({', '.join(known) or 'none'})"
            got = f"{suite!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            raise SpecError(str(results), "suite", expected, got)
        if store.read_runs(results, suite).num_rows == 0:
            stale = store.stale_runs(results, suite)
            why = store.stale_message(results, suite, stale) if stale else "no runs"
            raise SpecError(
                str(store.runs_dir(results, suite)), "suite", f"stored runs of suite {suite!r}", why
            )


def publish(suites: Sequence[str], results: Location, out: Path) -> list[Path]:
    """Write ``index.html`` and one page per suite into ``out``; returns the pages written."""
    check_suites(suites, results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    tables = {s: store.read_runs(results, s) for s in suites}
    frames = {s: runs_frame(table) for s, table in tables.items()}
    colours = rule_colours(r for f in frames.values() for r in f["rule"].astype(str))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pages: list[SuitePage] = []
    for suite in suites:
        frame, runs = frames[suite], tables[suite]
        board = score_runs(runs)
        curves = store.read_curves(results, suite).to_pandas()
        scores = score_suite(runs, board, [Dropped(*cell) for cell in store.read_dropped(results, suite)])
        page = SuitePage(
            name=suite,
            file=f"{suite}.html",
            n_runs=len(frame),
            tasks=[
                _task_section(str(task), frame, board, curves, colours)
                for task in board["task_display"].drop_duplicates()
            ],
            provenance=provenance_rows(frame),
            tracks=_track_sections(scores, colours, board),
            cross_task_notes=_cross_task_notes(scores),
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


def _track_sections(scores: SuiteScores, colours: dict[str, str], board: pd.DataFrame) -> list[TrackSection]:
    """The cross-task tables and the performance profile of each track; an entry takes its rule's colour."""
    rule_of = dict(zip(board["entry_label"].astype(str), board["rule"].astype(str), strict=False))
    sections = []
    for track, summary in scores.summary.groupby("track", sort=True):
        profile = scores.profile[scores.profile["track"] == track].rename(
            columns={"entry_label": "rule", "rho": "fraction"}
        )
        entry_colours = {str(e): colours.get(rule_of.get(str(e), str(e)), "#444444") for e in profile["rule"]}
        pairs = scores.improvement[scores.improvement["track"] == track].rename(
            columns={"low": "ci_low", "high": "ci_high"}
        )
        cells = scores.cells[(scores.cells["track"] == track) & (scores.cells["why"] != "")]
        summary = summary.rename(
            columns={
                "integrated_low": "integrated_ci_low",
                "integrated_high": "integrated_ci_high",
                "iqm_low": "iqm_ci_low",
                "iqm_high": "iqm_ci_high",
            }
        )
        sections.append(
            TrackSection(
                name=str(track).replace("_", "-"),
                summary=Table(
                    list(SUMMARY_COLUMNS), [_cells(r, list(SUMMARY_COLUMNS)) for _, r in summary.iterrows()]
                ),
                improvement=Table(
                    list(IMPROVEMENT_COLUMNS),
                    [_cells(r, list(IMPROVEMENT_COLUMNS)) for _, r in pairs.iterrows()],
                ),
                profile=profile_svg(
                    profile,
                    entry_colours,
                    str(scores.cells["clock"].iloc[0]) if len(scores.cells) else "steps",
                )
                if not profile.empty
                else "",
                missing=[f"{r.entry_label} on {r.task_display}: {r.why}" for r in cells.itertuples()],
            )
        )
    return sections


def _cross_task_notes(scores: SuiteScores) -> list[str]:
    notes = []
    if scores.theory_tasks:
        notes.append(
            "Theory tasks are shown below but not scored across tasks: "
            + ", ".join(scores.theory_tasks)
            + "."
        )
    if scores.unnormalised_tasks:
        notes.append(
            "Left out of normalised scores (no chance value stored, or no rule above it): "
            + ", ".join(scores.unnormalised_tasks)
            + "."
        )
    return notes


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
    columns = [c for c in TASK_COLUMNS if _has_column(rows, c.key)]
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


def _copy_theory_images(page: SuitePage, results: Location, out: Path) -> None:
    """Theory overlays the leaderboard drew (PNG files) are copied beside the page and shown."""
    source = store.suite_dir(results, page.name) / "plots"
    if not source.is_dir():
        return
    images: list[Location] = sorted(source.glob("*-theory-*.png"), key=str)
    if not images:
        return
    target = out / page.name
    target.mkdir(parents=True, exist_ok=True)
    for task in page.tasks:
        stem = task.name.split("[")[0]
        for image in images:
            if image.name.startswith(stem + "-") or image.name.startswith(stem + "."):
                (target / image.name).write_bytes(image.read_bytes())  # from a URI too
                task.images.append((f"{page.name}/{image.name}", image.stem))


def _write_text(path: Path, text: str) -> Path:
    with temporary_beside(path, path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path
