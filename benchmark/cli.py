"""The ``synapsebench`` command: wiring and exit codes only.

Exit codes: 0 all went well, 1 some runs failed (they are listed), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmark.errors import ExitCode, SpecError

DEFAULT_RESULTS = Path("leaderboards")


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
    run.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite under --results)",
    )
    run.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: leaderboards)"
    )
    run.add_argument("--rerun", action="store_true", help="run again the cells that already have a result")
    run.add_argument(
        "--dry-run", action="store_true", help="validate and print the grid; run and write nothing"
    )
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    run.add_argument("--max-failures", type=int, default=1, help="retries of a failed run (default: 1)")
    run.set_defaults(command=cmd_run)

    lst = sub.add_parser("list", help="show the registered rules and tasks")
    lst.add_argument("what", nargs="?", choices=["rules", "tasks"], help="only rules or only tasks")
    lst.set_defaults(command=cmd_list)

    board = sub.add_parser("leaderboard", help="build a suite's leaderboard from its stored runs")
    board.add_argument("suite", help="suite name or suite file")
    board.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: leaderboards)"
    )
    board.set_defaults(command=cmd_leaderboard)
    return parser


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
    for cell in plan.dropped:
        print(f"skipping {cell.rule} on {cell.task}: {cell.reason}", file=sys.stderr)
    if args.dry_run:
        return _print_plan(plan, args.results)

    from benchmark.execute.cluster import connect
    from benchmark.execute.grid import run_grid
    from benchmark.tasks import TASKS
    from benchmark.tracking import Tracker, resolve_tracking_uri

    args.results.mkdir(parents=True, exist_ok=True)
    cluster = connect(args.address, args.num_cpus)
    has_gpu = cluster.get("GPU", 0) > 0

    def resources(spec: object) -> dict[str, float]:
        need = TASKS.get(spec.task).resources  # type: ignore[attr-defined]
        return {"cpu": need.cpus, "gpu": need.gpus if has_gpu else 0.0}

    tracker = Tracker(resolve_tracking_uri(args.tracking_uri, args.results), suite.name)
    if tracker.enabled:
        print(f"tracking in MLflow at {tracker.uri} (experiment {suite.name!r})", file=sys.stderr)
    outcome = run_grid(
        plan.specs, args.results, tracker, resources, rerun=args.rerun, max_failures=args.max_failures
    )
    _write_board(suite.name, args.results)
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed:", file=sys.stderr)
        for spec, error in outcome.failed:
            print(
                f"  {spec.task} {spec.rule_display} seed={spec.seed} [{spec.run_id}]: {error}",
                file=sys.stderr,
            )
        return ExitCode.RUNS_FAILED
    return ExitCode.OK


def _print_plan(plan: object, results: Path) -> int:
    from benchmark import store

    specs = plan.specs  # type: ignore[attr-defined]
    done = store.done_ids(results, specs[0].suite) if specs else set()
    for spec in specs:
        state = "done" if spec.run_id in done else "todo"
        print(
            f"{spec.run_id}  {state}  {spec.task}  {spec.rule_display}  "
            f"seed={spec.seed}  steps={spec.budget.steps}"
        )
    print(f"{len(specs)} runs, {sum(s.run_id in done for s in specs)} already done", file=sys.stderr)
    return ExitCode.OK


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.rules import RULES
    from benchmark.tasks import TASKS

    if args.what in (None, "rules"):
        print("Rules:")
        for name, rule in RULES.items():
            print(f"  {name:<16} {rule.description}  [{rule.track}]")
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
            for key, value in task.defaults().items():
                print(f"      {key} = {value!r}")
    return ExitCode.OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    name = args.suite
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        from benchmark.spec import load_suite

        name = load_suite(name).name
    _check_results(args.results)
    parquet, markdown = _write_board(name, args.results, required=True)
    print(f"wrote {markdown} and {parquet}")
    print(markdown.read_text())
    return ExitCode.OK


def _write_board(suite: str, results: Path, required: bool = False) -> tuple[Path, Path]:
    from benchmark import store
    from benchmark.leaderboard import score_runs, write_leaderboard

    runs = store.read_runs(results, suite)
    if runs.num_rows == 0 and required:
        raise SpecError(store.runs_dir(results, suite), "suite", f"stored runs of suite {suite!r}", "no runs")
    board = score_runs(runs)
    return write_leaderboard(store.suite_dir(results, suite), suite, board, runs.num_rows)


if __name__ == "__main__":
    raise SystemExit(main())
