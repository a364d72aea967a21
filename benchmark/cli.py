"""The ``synapsebench`` command: wiring and exit codes only.

Exit codes: 0 all went well, 1 some runs failed (they are listed), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from benchmark.errors import ExitCode, SpecError

if TYPE_CHECKING:
    from benchmark.batching import BatchSetting
    from benchmark.spec import RunSpec
    from benchmark.tracking import Tracker

DEFAULT_RESULTS = Path("leaderboards")
SITE_FOLDER = "site"
"""Where ``run`` publishes the results folder's site, beside the suites' folders."""


def entry_point() -> NoReturn:
    """The ``synapsebench`` command: run :func:`main` and exit with its code.

    Before exiting, the garbage collector's objects are frozen, so the interpreter's final
    collections skip the millions of objects that torch, Ray and MLflow leave behind. Everything
    the command writes is closed by then; on this 2-core VM, exiting after a run took 1.7 s before
    and 0.3 s after. In-process callers (the tests) use :func:`main`, which leaves the GC alone.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.command(args)
        return code
    except SpecError as exc:
        print(f"synapsebench: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        print("synapsebench: interrupted; finished runs are kept and skipped next time", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synapsebench",
        description="Benchmark learning rules over rule × task × seed grids on Ray, tracked in MLflow.",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite file's grid, then write its leaderboard")
    run.add_argument("suite", type=Path, help="suite file (YAML)")
    run.add_argument("--rerun", action="store_true", help="run again the cells that already have a result")
    run.add_argument(
        "--dry-run", action="store_true", help="validate and print the grid; run and write nothing"
    )
    run.add_argument("--max-failures", type=int, default=1, help="retries of a failed run (default: 1)")
    run.add_argument(
        "--batch",
        help="train runs that differ only in seed as one model, in groups of up to N (auto, off or N; "
        "default: the suite's batch, else auto)",
    )
    _add_cluster_args(run)
    run.set_defaults(command=cmd_run)

    tune = sub.add_parser(
        "tune", help="tune each rule of a suite with Optuna, an equal trial budget per rule"
    )
    tune.add_argument("suite", type=Path, help="suite file (YAML)")
    tune.add_argument("--trials", type=int, default=20, help="trials per rule and task (default: 20)")
    tune.add_argument("--rules", nargs="+", help="only these rules (default: every tunable rule)")
    tune.add_argument(
        "--out", type=Path, help="folder of the tuned-config files (default: tuned/<suite> beside the suite)"
    )
    _add_cluster_args(tune)
    tune.set_defaults(command=cmd_tune)

    lst = sub.add_parser("list", help="show the registered rules and tasks")
    lst.add_argument("what", nargs="?", choices=["rules", "tasks"], help="only rules or only tasks")
    lst.set_defaults(command=cmd_list)

    board = sub.add_parser("leaderboard", help="build a suite's leaderboard from its stored runs")
    board.add_argument("suite", help="suite name or suite file")
    board.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: leaderboards)"
    )
    board.set_defaults(command=cmd_leaderboard)

    publish = sub.add_parser("publish", help="write a static leaderboard site (opens from file://, offline)")
    publish.add_argument("suites", nargs="+", metavar="SUITE", help="suite names with stored runs")
    publish.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder")
    publish.add_argument("--out", type=Path, required=True, help="folder to write the site into")
    publish.set_defaults(command=cmd_publish)

    show = sub.add_parser("show", help="show one stored run: its spec, status, final metrics, provenance")
    show.add_argument("run_id", help="a run id, or enough of its start to be unique")
    show.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: leaderboards)"
    )
    show.set_defaults(command=cmd_show)
    return parser


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under --results)",
    )
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: leaderboards)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="root of downloaded data sets for the vision tasks (sets SYNAPSEBENCH_DATA on every worker)",
    )


def _check_results(results: Path) -> None:
    if results.exists() and not results.is_dir():
        raise SpecError(results, "--results", "a folder for results", "an existing file")


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.plan import expand
    from benchmark.provenance import code_version
    from benchmark.spec import load_suite

    suite = load_suite(args.suite)
    plan = expand(suite, args.suite, code_version())
    _check_results(args.results)
    for cell in dict.fromkeys(plan.dropped):  # one line per reason, however many variants share it
        print(f"skipping {cell.rule} on {cell.task}: {cell.reason}", file=sys.stderr)
    _warn_stale(args.results, suite.name)
    from benchmark.batching import parse_batch

    batch = suite.batch if args.batch is None else parse_batch(args.batch)
    if args.dry_run:
        return _print_plan(plan, args.results, batch)

    # MLflow's set-up runs on the tracker's thread while Ray starts; Tune loads after.
    args.results.mkdir(parents=True, exist_ok=True)
    _record_dropped(args.results, suite.name, plan.dropped)
    tracker = _tracker(args, suite.name)
    resources, started_here = _connect(args)
    from benchmark.execute.cluster import shutdown_in_background
    from benchmark.execute.grid import run_grid

    # The driver mostly waits while the grid trains: the leaderboard's modules (SciPy, Matplotlib:
    # about 2 s) load then on a thread, not after the last run.
    threading.Thread(target=_import_leaderboard, name="import-leaderboard", daemon=True).start()

    outcome = run_grid(
        plan.specs,
        args.results,
        tracker,
        resources,
        rerun=args.rerun,
        max_failures=args.max_failures,
        batch=batch,
    )
    stopping = shutdown_in_background() if started_here else None
    _write_board(suite.name, args.results, only={spec.run_id for spec in plan.specs})
    _write_site(args.results)
    if stopping is not None:
        stopping.join()
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed:", file=sys.stderr)
        for spec, error in outcome.failed:
            print(
                f"  {spec.task} {spec.rule_display} seed={spec.seed} [{spec.run_id}]: {error}",
                file=sys.stderr,
            )
        return ExitCode.RUNS_FAILED
    return ExitCode.OK


def _connect(args: argparse.Namespace) -> tuple[Callable[[RunSpec], dict[str, float]], bool]:
    """Start or join Ray. Returns the per-run resource request (GPUs only where the cluster has
    them), and whether this call started a local Ray."""
    from benchmark.execute.cluster import connect
    from benchmark.tasks import TASKS

    args.results.mkdir(parents=True, exist_ok=True)
    env = {"SYNAPSEBENCH_DATA": str(args.data_dir.resolve())} if args.data_dir else {}
    connection = connect(args.address, args.num_cpus, env)
    has_gpu = connection.resources.get("GPU", 0) > 0

    def resources(spec: RunSpec) -> dict[str, float]:
        need = TASKS.get(spec.task).resources_for(spec.task_options)
        return {"cpu": need.cpus, "gpu": need.gpus if has_gpu else 0.0}

    return resources, connection.started_here


def _tracker(args: argparse.Namespace, experiment: str) -> Tracker:
    from benchmark.tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(args.tracking_uri, args.results), experiment)
    if tracker.enabled:
        print(f"tracking in MLflow at {tracker.uri} (experiment {experiment!r})", file=sys.stderr)
    return tracker


def cmd_tune(args: argparse.Namespace) -> int:
    from benchmark.plan import expand
    from benchmark.provenance import code_version
    from benchmark.registry import UnknownNameError
    from benchmark.rules import RULES
    from benchmark.spec import load_suite

    suite = load_suite(args.suite)
    plan = expand(suite, args.suite, code_version())
    _check_results(args.results)
    if args.trials < 1:
        raise SpecError(None, "--trials", "a positive number of trials", args.trials)
    for name in args.rules or []:
        try:
            RULES.get(name)
        except UnknownNameError as exc:
            raise SpecError(None, "--rules", "registered rules", str(exc)) from None
    from benchmark.execute.tune import tune_plan, tuning_bases, write_tuned

    workers = sorted({s.budget.workers for s in plan.specs if s.budget.workers})
    if workers:
        raise SpecError(args.suite, "budget.workers", "none when tuning (each trial is one process)", workers)
    if not tuning_bases(plan, args.rules):
        raise SpecError(args.suite, "rules", "at least one rule with a search space to tune", "none")
    resources, _ = _connect(args)
    cells = tune_plan(
        plan, args.trials, args.results, lambda name: _tracker(args, name), resources, args.rules
    )
    out = args.out or Path(args.suite).parent / "tuned" / suite.name
    for cell in cells:
        print(f"{cell.task} {cell.rule}: best {cell.metric} = {cell.value:.4g} with {cell.hparams}")
    for path in write_tuned(out, suite.name, suite.seeds[0], cells):
        print(f"wrote {path}")
    failed = sum(c.failed for c in cells)
    return ExitCode.RUNS_FAILED if failed else ExitCode.OK


def _print_plan(plan: object, results: Path, batch: BatchSetting = "off") -> int:
    from benchmark import store
    from benchmark.batching import group_runs

    specs = plan.specs  # type: ignore[attr-defined]
    done = store.done_ids(results, specs[0].suite) if specs else set()
    for spec in specs:
        state = "done" if spec.run_id in done else "todo"
        print(
            f"{spec.run_id}  {state}  {spec.task}  {spec.rule_display}  "
            f"seed={spec.seed}  steps={spec.budget.steps}"
        )
    print(f"{len(specs)} runs, {sum(s.run_id in done for s in specs)} already done", file=sys.stderr)
    for line in group_runs([s for s in specs if s.run_id not in done], batch).summary():
        print(line, file=sys.stderr)
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.rules import RULES
    from benchmark.tasks import TASKS

    if args.what in (None, "rules"):
        print("Rules:")
        for name, rule in RULES.items():
            tags = ", ".join([rule.track, *(["data-parallel"] if rule.data_parallel else [])])
            print(f"  {name:<16} {rule.description}  [{tags}]")
            tunable = set(rule.search_space)
            for key, value in rule.defaults().items():
                mark = " (tuned)" if key in tunable else ""
                print(f"      {key} = {value!r}{mark}")
    if args.what in (None, "tasks"):
        print("Tasks:")
        for name, task in TASKS.items():
            target = task.target
            print(f"  {name:<16} {task.description}")
            print(f"      target: {target.metric} {'>=' if target.mode == 'max' else '<='} {target.value}")
            chosen = task.selected_by
            print(f"      selected by: {chosen.metric} ({chosen.mode}); chance: {task.chance:g}")
            split = task.validation or "none (a theory task: its closed forms assume no held-out split)"
            print(f"      validation: {split}")
            for key, value in task.defaults().items():
                print(f"      {key} = {value!r}")
    return ExitCode.OK


def _warn_stale(results: Path, suite: str) -> None:
    """Say so when ``results`` holds rows of an older protocol: they are neither skipped nor scored."""
    from benchmark import store

    stale = store.stale_runs(results, suite)
    if stale:
        print(f"synapsebench: note: {store.stale_message(results, suite, stale)}", file=sys.stderr)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    name, planned = args.suite, None
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        from benchmark.plan import expand
        from benchmark.spec import load_suite

        # A suite file scopes the board to its current grid: runs of cells since removed stay out.
        suite = load_suite(name)
        planned = {spec.run_id for spec in expand(suite, name).specs}
        name = suite.name
    _check_results(args.results)
    _warn_stale(args.results, name)
    parquet, markdown = _write_board(name, args.results, required=True, only=planned)
    print(f"wrote {markdown} and {parquet}")
    print(markdown.read_text())
    return ExitCode.OK


def _write_site(results: Path) -> None:
    """After a run, the results folder's site (``<results>/site/``) shows every suite stored there."""
    from benchmark.leaderboard.site import current_suites, publish

    suites = current_suites(results)
    if suites:
        publish(suites, results, results / SITE_FOLDER)
        print(f"site: {results / SITE_FOLDER / 'index.html'}", file=sys.stderr)


def cmd_publish(args: argparse.Namespace) -> int:
    from benchmark.leaderboard.site import publish

    _check_results(args.results)
    pages = publish(args.suites, args.results, args.out)
    print(f"wrote {len(pages)} pages under {args.out}; open {args.out / 'index.html'}")
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from benchmark import store

    _check_results(args.results)
    found = store.find_runs(args.results, args.run_id)
    if len(found) != 1:
        got = "no stored run" if not found else f"{len(found)} runs: " + ", ".join(p.stem for p in found[:5])
        raise SpecError(args.results, "run_id", "the id (or unique start) of one stored run", got)
    row = store.read_run(found[0])
    print(render_run(row, found[0]))
    return ExitCode.OK


def render_run(row: dict[str, Any], path: Path) -> str:
    """A stored run as text: identity, outcome, final metrics, provenance and where its files are."""
    final = row["final"] or []
    pairs = final.items() if isinstance(final, dict) else final
    curve = row["curve"] or []
    lines = [
        f"run {row['run_id']}  ({path})",
        f"  suite      {row['suite']}",
        f"  task       {row['task']}  {row['task_options_json']}",
        f"  rule       {row['rule_display']}  {row['hparams_json']}",
        f"  seed       {row['seed']}   budget {row['budget_steps']} steps, eval every {row['eval_every']}",
        f"  status     {row['status']}" + (f": {row['error']}" if row["error"] else ""),
        f"  steps      {row['steps']}   train {row['train_time_s']:.2f} s, wall {row['wall_time_s']:.2f} s",
        f"  target     {row['target_metric']} {'≥' if row['target_mode'] == 'max' else '≤'} "
        f"{row['target_value']}",
        f"  curve      {len(curve)} evaluations",
        f"  provenance {row['package_version']} ({row['code_version']}), torch {row['torch_version']}, "
        f"{row['device_name']} on {row['hostname']}, {row['finished_at']}",
        "  final metrics:",
    ]
    lines += [f"    {key:<36} {value:.6g}" for key, value in sorted(pairs)]
    artifacts = path.parent.parent / "artifacts" / str(row["run_id"])
    if artifacts.is_dir():
        lines.append(f"  artifacts  {artifacts}: " + ", ".join(sorted(p.name for p in artifacts.iterdir())))
    return "\n".join(lines)


def _import_leaderboard() -> None:
    """Load what :func:`_write_board` needs beyond the store, ahead of it."""
    import benchmark.leaderboard
    import benchmark.leaderboard.plots
    import benchmark.leaderboard.theory_plots  # noqa: F401


def _record_dropped(results: Path, suite: str, dropped: Sequence[Any]) -> None:
    """Keep the planner's dropped cells beside the runs: the cross-task scores count them as misses."""
    from benchmark import store
    from benchmark.rules import RULES

    store.write_dropped(
        results, suite, [(d.task, d.rule, d.reason, RULES.get(d.rule).track) for d in dropped]
    )


def _write_board(
    suite: str, results: Path, required: bool = False, only: set[str] | None = None
) -> tuple[Path, Path]:
    """Score and render the stored runs of ``suite`` (those in ``only``, when given)."""
    from benchmark import store
    from benchmark.leaderboard import Dropped, provenance_summary, score_runs, score_suite, write_leaderboard
    from benchmark.leaderboard.score import runs_frame
    from benchmark.leaderboard.theory import TheoryView, implied_metric_table, theory_table

    runs = store.read_runs(results, suite)
    stale = store.stale_runs(results, suite)
    if runs.num_rows == 0 and stale and required:
        raise SpecError(
            store.runs_dir(results, suite),
            "protocol",
            "runs of the current protocol",
            store.stale_message(results, suite, stale),
        )
    if only is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        runs = runs.filter(pc.is_in(runs.column("run_id"), value_set=pa.array(sorted(only), pa.string())))
    if runs.num_rows == 0 and required:
        raise SpecError(store.runs_dir(results, suite), "suite", f"stored runs of suite {suite!r}", "no runs")
    board = score_runs(runs)
    frame = runs_frame(runs)
    folder = store.suite_dir(results, suite)
    figures: list[tuple[str, str]] = []
    if runs.num_rows:
        from benchmark.leaderboard.plots import curve_frame, plot_file, plot_task_curves
        from benchmark.leaderboard.theory_plots import draw_theory_plots

        curves = curve_frame(frame, store.read_curves(results, suite).to_pandas())
        for task, rows in board.groupby("task_display"):
            chosen = rows[rows["selected"].astype(bool)]
            metric = str(rows["selection_metric"].iloc[0])
            shown = curves[curves["rule_display"].isin(set(chosen["rule_display"]))]
            plot_task_curves(str(task), metric, shown, folder / "plots" / plot_file(str(task)))
        from benchmark.tasks import TASKS

        declared = {name: info.theory_plots for name, info in TASKS.items()}
        figures = draw_theory_plots(frame, curves, declared, folder)
    view = TheoryView(theory_table(frame), implied_metric_table(frame), figures)
    dropped = [Dropped(*cell) for cell in store.read_dropped(results, suite)]
    scores = score_suite(runs, board, dropped)
    return write_leaderboard(folder, suite, board, runs.num_rows, provenance_summary(runs), view, scores)


if __name__ == "__main__":
    entry_point()
