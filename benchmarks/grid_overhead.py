"""Is Ray worth it on this machine? The smoke suite through ``synapsebench run`` against the same
RunSpecs trained one after another in one process by ``train.run``.

Both sides start from a fresh Python process, so both pay their imports; the CLI side also pays Ray's
start-up, worker imports and MLflow tracking. Both read the suite's data sets from the same data cache,
filled beforehand (``--cold`` starts each side with an empty one instead). Prints both wall times and
their ratio (CLI ÷ sequential): below 1, the grid's parallelism outweighs its overhead. The aim on 2
cores is 0.75 or less. On a shared VM one pair's ratio drifts by ±0.15 between runs: ``--repeat N`` times N
pairs, alternating which side goes first, and prints the median.

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
path = sys.argv[1]
for spec in expand(load_suite(path), path).specs:
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


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.yaml")
    parser.add_argument("--cold", action="store_true", help="an empty data cache for each side")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs to time, alternating which side goes first (median ratio)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat: expected a positive number of pairs, got {args.repeat}")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    print(f"suite:                    {args.suite}")
    print(f"cores:                    {os.cpu_count()}")
    print(f"data cache:               {'empty for each side' if args.cold else 'filled beforehand'}")
    ratios = []
    for pair in range(args.repeat):
        # A shared VM's timings drift run to run; alternating the order keeps drift off one side.
        grid_s, sequential_s = _time_pair(args.suite, args.cold, env, grid_first=pair % 2 == 0)
        ratios.append(grid_s / sequential_s)
        print(
            f"pair {pair + 1}: synapsebench run (Ray) {grid_s:6.1f} s, "
            f"train.run one by one {sequential_s:6.1f} s"
        )
    print(f"ratio (Ray / sequential): {statistics.median(ratios):7.2f}   (aim: <= 0.75)", end="")
    print(f"   [median of {len(ratios)}: {', '.join(f'{r:.2f}' for r in ratios)}]" if len(ratios) > 1 else "")


def _time_pair(suite: str, cold: bool, env: dict[str, str], grid_first: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sb_bench_") as tmp:
        env = {**env, "SYNAPSEBENCH_CACHE": str(Path(tmp) / "cache")}
        if not cold:
            timed([sys.executable, "-c", PREPARE, suite], env)
        cli = [sys.executable, "-m", "benchmark", "run", suite, "--results", str(Path(tmp) / "r")]
        sequential = [sys.executable, "-c", SEQUENTIAL, suite]
        sequential_env = {**env, "SYNAPSEBENCH_CACHE": str(Path(tmp) / "cache_sequential")} if cold else env
        if grid_first:
            grid_s = timed(cli, env)
            return grid_s, timed(sequential, sequential_env)
        sequential_s = timed(sequential, sequential_env)
        return timed(cli, env), sequential_s


if __name__ == "__main__":
    main()
