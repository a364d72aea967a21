"""Is Ray worth it on this machine? The smoke suite through ``synapsebench run`` against the same
RunSpecs trained one after another in one process by ``train.run``.

Every side starts from fresh Python processes, so each pays its imports; the CLI side also pays Ray's
start-up, worker imports and MLflow tracking. All read the suite's data sets from the same cache, filled
beforehand, which also holds the empty MLflow database that new tracking stores copy (``--cold`` starts
each side with an empty cache instead). Prints the wall times and the ratio CLI ÷ sequential: below 1,
the grid's parallelism outweighs its overhead. On 2 cores the ratio is bounded by the CPU the run needs.

A third side is this machine's ceiling: one plain process per core started together, process i training
RunSpecs i, i + cores, ... with no scheduler, tracking or store. Ray's ratio can approach it, not beat
it; the gap between the two is what Ray, MLflow and the store cost. On a shared VM one round's ratio
drifts by ±0.15 or more between runs: ``--repeat N`` times N rounds, rotating which side goes first,
and prints the medians.

    .venv/bin/python benchmarks/grid_overhead.py [--suite suites/smoke.yaml] [--repeat 3] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQUENTIAL = """
import sys
from benchmark import train
from benchmark.plan import expand
from benchmark.spec import load_suite
path, part, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for spec in expand(load_suite(path), path).specs[part::parts]:
    result = train.run(spec)
    assert result.status == "ok", (spec, result.status)
"""

PREPARE = """
import sys
import torch
from benchmark.plan import expand
from benchmark.spec import load_suite
from benchmark.tasks import TASKS
path = sys.argv[1]
for spec in expand(load_suite(path), path).specs:
    task = TASKS.get(spec.task)
    task.load_data(task.options.model_validate(spec.task_options), torch.device("cpu"))
"""


SIDES = ("ray", "sequential", "split")


def timed(cmds: list[list[str]], env: dict[str, str]) -> float:
    """Wall seconds until every command, all started together, has exited."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in cmds
    ]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(f"a timed command failed (exit codes {codes}): {cmds}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.yaml")
    parser.add_argument("--cold", action="store_true", help="an empty data cache for each side")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds to time, rotating which side goes first (median ratios)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat: expected a positive number of rounds, got {args.repeat}")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cores = os.cpu_count() or 1
    print(f"suite:                    {args.suite}")
    print(f"cores:                    {cores}")
    print(f"data cache:               {'empty for each side' if args.cold else 'filled beforehand'}")
    ratios: dict[str, list[float]] = {"ray": [], "split": []}
    for round_ in range(args.repeat):
        # A shared VM's timings drift run to run; rotating the order keeps drift off one side.
        first = round_ % len(SIDES)
        order = SIDES[first:] + SIDES[:first]
        seconds = _time_round(args.suite, args.cold, env, cores, order)
        for side in ratios:
            ratios[side].append(seconds[side] / seconds["sequential"])
        print(
            f"round {round_ + 1}: synapsebench run (Ray) {seconds['ray']:6.1f} s, "
            f"train.run one by one {seconds['sequential']:6.1f} s, "
            f"{cores} plain processes {seconds['split']:6.1f} s"
        )
    _print_ratio("ratio (Ray / sequential):", ratios["ray"])
    _print_ratio("ceiling (plain / sequential):", ratios["split"])


def _print_ratio(label: str, ratios: list[float]) -> None:
    spread = (
        f"   [median of {len(ratios)}: {', '.join(f'{r:.2f}' for r in ratios)}]" if len(ratios) > 1 else ""
    )
    print(f"{label:<30}{statistics.median(ratios):5.2f}{spread}")


def _time_round(
    suite: str, cold: bool, env: dict[str, str], cores: int, order: tuple[str, ...]
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sb_bench_") as tmp:

        def side_env(side: str, **extra: str) -> dict[str, str]:
            cache = Path(tmp) / (f"cache_{side}" if cold else "cache")
            return {**env, "SYNAPSEBENCH_CACHE": str(cache), **extra}

        if not cold:
            timed([[sys.executable, "-c", PREPARE, suite]], side_env("ray"))
        cli = [sys.executable, "-m", "benchmark", "run", suite, "--results", str(Path(tmp) / "r")]
        one = [sys.executable, "-c", SEQUENTIAL, suite]
        runs = {
            "ray": ([cli], side_env("ray")),
            "sequential": ([[*one, "0", "1"]], side_env("sequential")),
            # One thread each, as Ray gives a one-CPU trial (OMP_NUM_THREADS=1).
            "split": (
                [[*one, str(i), str(cores)] for i in range(cores)],
                side_env("split", OMP_NUM_THREADS="1"),
            ),
        }
        return {side: timed(*runs[side]) for side in order}


if __name__ == "__main__":
    main()
