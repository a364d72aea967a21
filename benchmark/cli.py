"""The ``synapsebench`` command: wiring and exit codes only.

Exit codes: 0 all went well, 1 some runs failed (they are listed), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from benchmark.errors import ExitCode, SpecError

if TYPE_CHECKING:
    from benchmark.batching import BatchSetting
    from benchmark.results_location import Location
    from benchmark.spec import PluginRef, RunSpec
    from benchmark.tracking import Tracker

DEFAULT_RESULTS = Path("leaderboards")
RESULTS_HELP = "results folder, or a URI such as s3://bucket/prefix (default: leaderboards)"
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
        if hasattr(args, "results"):
            args.results = _results_location(args)
        code: int = args.command(args)
        return code
    except SpecError as exc:
        if args.debug:  # e.g. a plugin's own traceback, chained under the error
            traceback.print_exception(exc, file=sys.stderr)
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
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of bad input (a plugin's error)"
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
        "tune",
        help="tune each rule of a suite with Optuna (AlgoPerf's external tuning: S studies of K trials)",
    )
    tune.add_argument("suite", type=Path, help="suite file (YAML)")
    tune.add_argument("--trials", type=int, default=5, help="trials per study, K (default: 5)")
    tune.add_argument(
        "--studies", type=int, default=3, help="independent studies per rule and task, S (default: 3)"
    )
    tune.add_argument("--sampler", default="qmc", help="qmc (scrambled Halton, the default) or tpe")
    tune.add_argument(
        "--storage",
        help="where the studies live: a journal file, or a database URL such as postgresql://… on a "
        "cluster (default: <results>/<suite>-tune/optuna.journal); a rerun continues its studies",
    )
    tune.add_argument(
        "--asha", action="store_true", help="stop unpromising trials early with ASHA (default: off)"
    )
    tune.add_argument("--rules", nargs="+", help="only these rules (default: every tunable rule)")
    tune.add_argument(
        "--out", type=Path, help="folder of the tuned-config files (default: tuned/<suite> beside the suite)"
    )
    _add_cluster_args(tune)
    tune.set_defaults(command=cmd_tune)

    lst = sub.add_parser("list", help="show the registered rules and tasks")
    lst.add_argument("what", nargs="?", choices=["rules", "tasks"], help="only rules or only tasks")
    lst.add_argument(
        "--suite", type=Path, help="also the rules and tasks of this suite's plugins and installed plugins"
    )
    lst.set_defaults(command=cmd_list)

    board = sub.add_parser("leaderboard", help="build a suite's leaderboard from its stored runs")
    board.add_argument("suite", help="suite name or suite file")
    board.add_argument("--results", default=DEFAULT_RESULTS, help=RESULTS_HELP)
    board.set_defaults(command=cmd_leaderboard)

    publish = sub.add_parser("publish", help="write a static leaderboard site (opens from file://, offline)")
    publish.add_argument("suites", nargs="+", metavar="SUITE", help="suite names with stored runs")
    publish.add_argument("--results", default=DEFAULT_RESULTS, help=RESULTS_HELP)
    publish.add_argument("--out", type=Path, required=True, help="folder to write the site into")
    publish.set_defaults(command=cmd_publish)

    show = sub.add_parser("show", help="show one stored run: its spec, status, final metrics, provenance")
    show.add_argument("run_id", help="a run id, or enough of its start to be unique")
    show.add_argument("--results", default=DEFAULT_RESULTS, help=RESULTS_HELP)
    show.set_defaults(command=cmd_show)
    return parser


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under --results)",
    )
    parser.add_argument("--results", default=DEFAULT_RESULTS, help=RESULTS_HELP)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="root of downloaded data sets for the vision tasks (sets SYNAPSEBENCH_DATA on every worker)",
    )


def _results_location(args: argparse.Namespace) -> Location:
    """``--results`` as a folder or a URI; a URI needs a tracking store of its own (exit 2 otherwise)."""
    from benchmark.results_location import RemoteFolder, check_reachable, parse

    results = parse(args.results)
    tracking = getattr(args, "tracking_uri", "") or os.environ.get("MLFLOW_TRACKING_URI")
    if isinstance(results, RemoteFolder) and hasattr(args, "tracking_uri") and not tracking:
        raise SpecError(
            None,
            "--tracking-uri",
            f"a tracking server when --results is a URI (the SQLite default cannot live at {results})",
            "none",
        )
    check_reachable(results)
    return results


def _check_results(results: Location) -> None:
    if results.exists() and not results.is_dir():
        raise SpecError(str(results), "--results", "a folder for results", "an existing file")


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.plan import expand
    from benchmark.provenance import code_version
    from benchmark.spec import load_suite

    suite = load_suite(args.suite)
    plan = expand(suite, args.suite, code_version())
    _check_results(args.results)
    _print_skips(plan.dropped)
    _warn_stale(args.results, suite.name)
    from benchmark.batching import parse_batch

    batch = suite.batch if args.batch is None else parse_batch(args.batch)
    if args.dry_run:
        return _print_plan(plan, args.results, batch)

    # MLflow's set-up runs on the tracker's thread while Ray starts; Tune loads after.
    args.results.mkdir(parents=True, exist_ok=True)
    _record_dropped(args.results, suite.name, plan.dropped)
    tracker = _tracker(args, suite.name)
    resources, started_here = _connect(args, plan.specs[0].plugins)
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


def _print_skips(cells: Sequence[Any]) -> None:
    """One line per dropped (task, rule) cell and reason, however many variants share it."""
    for cell in dict.fromkeys(cells):
        print(f"skipping {cell.rule} on {cell.task}: {cell.reason}", file=sys.stderr)


def _connect(
    args: argparse.Namespace, plugins: Sequence[PluginRef] = ()
) -> tuple[Callable[[RunSpec], dict[str, float]], bool]:
    """Start or join Ray, shipping the suite's plugins to a cluster's workers. Returns the per-run
    resource request (GPUs only where the cluster has them), and whether this call started a local Ray."""
    from benchmark.execute.cluster import connect
    from benchmark.plugins import shipped_modules

    args.results.mkdir(parents=True, exist_ok=True)
    env = {"SYNAPSEBENCH_DATA": str(args.data_dir.resolve())} if args.data_dir else {}
    connection = connect(args.address, args.num_cpus, env, shipped_modules(plugins))
    has_gpu = connection.resources.get("GPU", 0) > 0

    def resources(spec: RunSpec) -> dict[str, float]:
        # Imported here, not captured: this function travels to Ray's workers, and a captured
        # registry would carry plugin tasks that a worker cannot unpickle before it imports them.
        from benchmark.tasks import TASKS

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
        raise SpecError(None, "--trials", "a positive number of trials per study", args.trials)
    if args.studies < 1:
        raise SpecError(None, "--studies", "a positive number of studies", args.studies)
    for name in args.rules or []:
        try:
            RULES.get(name)
        except UnknownNameError as exc:
            raise SpecError(None, "--rules", "registered rules", str(exc)) from None
    from benchmark.execute import studies
    from benchmark.execute.tune import (
        TuneOptions,
        default_storage,
        tune_plan,
        tuning_bases,
        write_scores,
        write_tuned,
    )

    if args.sampler not in studies.SAMPLERS:
        raise SpecError(None, "--sampler", " or ".join(studies.SAMPLERS), args.sampler)

    workers = sorted({s.budget.workers for s in plan.specs if s.budget.workers})
    if workers:
        raise SpecError(args.suite, "budget.workers", "none when tuning (each trial is one process)", workers)
    chosen = tuning_bases(plan, args.rules)
    _print_skips([*(d for d in plan.dropped if not args.rules or d.rule in args.rules), *chosen.skipped])
    if not chosen.bases and not chosen.self_tuning:
        raise SpecError(args.suite, "rules", "at least one rule with a search space to tune", "none")
    storage = args.storage or default_storage(args.results, suite.name)
    studies.open_storage(storage)  # an unreachable database is bad input, before anything runs
    options = TuneOptions(args.studies, args.trials, args.sampler, storage, args.asha)
    resources, _ = _connect(args, plan.specs[0].plugins)
    cells = tune_plan(plan, options, args.results, lambda name: _tracker(args, name), resources, args.rules)
    out = args.out or Path(args.suite).parent / "tuned" / suite.name
    for cell in cells:
        scores = ", ".join(f"k={k}: {v:g}" for k, v in cell.scores.items())
        print(
            f"{cell.task} {cell.rule}: steps to target {scores or 'none'}; "
            f"tuned {cell.metric} = {cell.value:.4g} with {cell.hparams}"
        )
    for path in write_tuned(out, suite.name, suite.seeds[0], cells, options):
        print(f"wrote {path}")
    from benchmark import store

    for written in write_scores(store.suite_dir(args.results, suite.name), cells, options):
        print(f"wrote {written}")
    failed = sum(c.failed for c in cells)
    return ExitCode.RUNS_FAILED if failed else ExitCode.OK


def _print_plan(plan: object, results: Location, batch: BatchSetting = "off") -> int:
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
    from benchmark.plugins import plugin_mark
    from benchmark.rules import RULES
    from benchmark.tasks import TASKS

    if args.suite is not None:
        from benchmark.plugins import load_entry_points, load_suite_plugins
        from benchmark.spec import load_suite

        load_suite_plugins(load_suite(args.suite), args.suite)
        load_entry_points()
    if args.what in (None, "rules"):
        print("Rules:")
        for name, rule in RULES.items():
            tags = ", ".join([rule.track, *(["data-parallel"] if rule.data_parallel else [])])
            print(f"  {name:<16} {rule.description}  [{tags}]{plugin_mark('rule', name)}")
            tunable = set(rule.search_space)
            for key, value in _listed_defaults(rule).items():
                mark = " (tuned)" if key in tunable else ""
                print(f"      {key} = {value}{mark}")
    if args.what in (None, "tasks"):
        print("Tasks:")
        for name, task in TASKS.items():
            target = task.target
            print(f"  {name:<16} {task.description}{plugin_mark('task', name)}")
            print(f"      target: {target.metric} {'>=' if target.mode == 'max' else '<='} {target.value}")
            chosen = task.selected_by
            print(f"      selected by: {chosen.metric} ({chosen.mode}); chance: {task.chance:g}")
            split = task.validation or "none (a theory task: its closed forms assume no held-out split)"
            print(f"      validation: {split}")
            for key, value in task.defaults().items():
                print(f"      {key} = {value!r}")
    return ExitCode.OK


def _listed_defaults(rule: Any) -> dict[str, str]:
    """A rule's hyperparameters as ``list`` shows them; an ``optimizer:`` rule's may be required."""
    fields = rule.hparams.model_fields
    if any(field.is_required() for field in fields.values()):
        return {k: "(required)" if f.is_required() else repr(f.default) for k, f in fields.items()}
    return {k: repr(v) for k, v in rule.defaults().items()}


def _warn_stale(results: Location, suite: str) -> None:
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
    if planned is None:
        _load_recorded_plugins(args.results, name)
    parquet, markdown = _write_board(name, args.results, required=True, only=planned)
    print(f"wrote {markdown} and {parquet}")
    print(markdown.read_bytes().decode())
    return ExitCode.OK


def _load_recorded_plugins(results: Location, suite: str) -> None:
    """Import the plugins the suite's stored runs record, so their tasks' theory plots are drawn."""
    from benchmark import store

    texts = store.read_runs(results, suite).column("plugins_json").to_pylist()
    if not any(texts):
        return
    from benchmark.plugins import load_recorded, records_from_json

    for failure in load_recorded(records_from_json(texts)):
        print(
            f"synapsebench: note: plugin not imported, its theory plots are left out: {failure}",
            file=sys.stderr,
        )


def _write_site(results: Location) -> None:
    """After a run, the results folder's site (``<results>/site/``) shows every suite stored there."""
    from benchmark.leaderboard.site import current_suites, publish
    from benchmark.results_location import local_folder

    suites = current_suites(results)
    if suites:
        with local_folder(results / SITE_FOLDER) as out:
            publish(suites, results, out)
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


def render_run(row: dict[str, Any], path: Location) -> str:
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
    ]
    for key in ("rule_origin", "task_origin"):  # a plugin's: where its code came from (docs/plugins.md)
        if row.get(key):
            lines.append(f"  {key.replace('_', ' '):<10} {row[key]}")
    lines.append("  final metrics:")
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


def _record_dropped(results: Location, suite: str, dropped: Sequence[Any]) -> None:
    """Keep the planner's dropped cells beside the runs: the cross-task scores count them as misses."""
    from benchmark import store
    from benchmark.rules import RULES

    store.write_dropped(
        results, suite, [(d.task, d.rule, d.reason, RULES.get(d.rule).track) for d in dropped]
    )


def _write_board(
    suite: str, results: Location, required: bool = False, only: set[str] | None = None
) -> tuple[Location, Location]:
    """Score and render the stored runs of ``suite`` (those in ``only``, when given)."""
    from benchmark import store
    from benchmark.results_location import local_folder

    runs = store.read_runs(results, suite)
    stale = store.stale_runs(results, suite)
    if runs.num_rows == 0 and stale and required:
        raise SpecError(
            str(store.runs_dir(results, suite)),
            "protocol",
            "runs of the current protocol",
            store.stale_message(results, suite, stale),
        )
    if only is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        runs = runs.filter(pc.is_in(runs.column("run_id"), value_set=pa.array(sorted(only), pa.string())))
    if runs.num_rows == 0 and required:
        where = str(store.runs_dir(results, suite))
        raise SpecError(where, "suite", f"stored runs of suite {suite!r}", "no runs")
    with local_folder(store.suite_dir(results, suite)) as folder:
        parquet, markdown = _render_board(suite, results, runs, folder)
    return store.suite_dir(results, suite) / parquet.name, store.suite_dir(results, suite) / markdown.name


def _render_board(suite: str, results: Location, runs: Any, folder: Path) -> tuple[Path, Path]:
    """Score ``runs`` and write the board, its plots and its tables into ``folder``."""
    from benchmark import store
    from benchmark.leaderboard import Dropped, provenance_summary, score_runs, score_suite, write_leaderboard
    from benchmark.leaderboard.score import runs_frame
    from benchmark.leaderboard.theory import TheoryView, implied_metric_table, theory_table

    board = score_runs(runs)
    frame = runs_frame(runs)
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
