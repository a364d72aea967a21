"""Batched ÷ sequential throughput of runs that differ only in seed, through synapsebench's own loop.

Usage::

    .venv/bin/python benchmarks/seed_batching.py [--sizes 8 32 64] [--solo-runs 8] [--threads N]
        [--tasks mnist1d_mlp saxe_depth] [--rule sgd] [--steps-scale 1.0] [--repeats 3] [--bare]

    # where auto stops grouping (batching.AUTO_MEMBER_LIMIT): the eg-paper point neuron at three widths
    .venv/bin/python benchmarks/seed_batching.py --tasks sparse_signal_d200 sparse_signal \
        sparse_signal_d20000 --sizes 8 --repeats 1

For each task, ``--solo-runs`` runs go one after another through :func:`benchmark.train.run` (a
run's time does not depend on how many follow it, so this gives the sequential rate), then groups
of N runs through :func:`benchmark.train_group.run_group`: the same RunSpecs, seeds 0 … N−1, data,
initialisation, evaluations and results as alone. Throughput is runs per second of wall time, end
to end (model building, evaluations, end-of-run metrics included), the fastest of ``--repeats``
timings of each. ``mnist1d_mlp`` runs at its suite
size (40-100-100-10, 300 steps, evaluated every 100); ``saxe_depth`` (depth 6, width 32) as in the
dynamics suite without its probe (500 full-batch steps, evaluated every 5). The machine's load
average is printed before and after: on a shared machine, compare only figures taken at similar load.
With ``--bare``, each ``mnist1d_mlp`` line is followed by the same ratio for a bare step of its model
(:func:`bare_ceiling`), timed in the same run: the gain the machine's compute allows.
Nothing is asserted: this prints figures, it does not judge them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from benchmark import train
from benchmark.rules import RULES
from benchmark.spec import Budget, RunSpec
from benchmark.tasks import TASKS
from benchmark.train_group import run_group

SETTINGS: dict[str, tuple[dict[str, Any], Budget]] = {
    "mnist1d_mlp": ({}, Budget(steps=300, eval_every=100)),
    "saxe_depth": ({"depth": 6, "width": 32, "outputs": 8, "lr_scale": 2.0}, Budget(steps=500, eval_every=5)),
    # The eg-paper suite's point neuron at d = 200, 2,000 and 20,000: where batching stops paying.
    "sparse_signal_d200": ({}, Budget(steps=600, eval_every=20)),
    "sparse_signal": ({}, Budget(steps=600, eval_every=20)),
    "sparse_signal_d20000": ({}, Budget(steps=600, eval_every=20)),
}
DEFAULT_TASKS = ("mnist1d_mlp", "saxe_depth")
HPARAMS = {"sgd": {"momentum": 0.0, "lr": 0.05}, "adamw": {}, "eg_sgd": {"lr": 0.05}}


def specs(task: str, rule: str, seeds: Sequence[int], steps_scale: float) -> list[RunSpec]:
    options, budget = SETTINGS[task]
    steps = max(1, round(budget.steps * steps_scale))
    budget = Budget(steps=steps, eval_every=min(budget.eval_every or steps, steps))
    info = TASKS.get(task)
    hparams = RULES.get(rule).hparams.model_validate(HPARAMS.get(rule, {})).model_dump(mode="json")
    return [
        RunSpec(
            suite="seed-batching",
            task=task,
            task_options=info.options.model_validate(options).model_dump(mode="json"),
            rule=rule,
            hparams=hparams,
            seed=seed,
            budget=budget,
        )
        for seed in seeds
    ]


def timed(work: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timings (as ``timeit`` advises: slower ones measure other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_ceiling(size: int, repeats: int, steps: int = 200) -> float:
    """Batched ÷ sequential for ``mnist1d_mlp``'s bare step: no data pipeline, evaluation or bookkeeping.

    The task's own model (40-100-100-10 at its suite size) on one batch of random inputs, stepped by
    ``torch.optim.SGD`` (lr 0.05), against ``size`` copies under ``vmap(grad)`` with the same update.
    What the machine's compute allows, which synapsebench's loop can approach but not pass.
    """
    info = TASKS.get("mnist1d_mlp")
    options = info.options.model_validate(SETTINGS["mnist1d_mlp"][0])

    def mlp() -> nn.Module:
        return info.build_model(options, torch.Generator().manual_seed(0))

    batch_size: int = options.model_dump()["batch_size"]
    x = torch.randn(batch_size, 40)  # MNIST-1D's 40 inputs
    y = torch.randint(0, 10, (batch_size,))
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def solo_step() -> None:
        optimizer.zero_grad()
        loss_value: torch.Tensor = nn.functional.cross_entropy(model(x), y)
        loss_value.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    params, buffers = stack_module_state([mlp() for _ in range(size)])
    skeleton = mlp().to("meta")

    def loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(skeleton, (p, b), (x,)), y)

    grads_of = vmap(grad(loss))

    def batched_step() -> None:
        grads = grads_of(params, buffers)
        with torch.no_grad():
            for name, value in params.items():
                value.sub_(0.05 * grads[name])

    def repeat(step: Callable[[], None], count: int) -> None:
        for _ in range(count):
            step()

    repeat(solo_step, 20)  # warm both paths
    repeat(batched_step, 20)
    solo = timed(lambda: repeat(solo_step, steps), repeats) / steps
    batched = timed(lambda: repeat(batched_step, steps // 4), repeats) / (steps // 4)
    return size * solo / batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--solo-runs", type=int, default=8, help="runs timed one after another")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(SETTINGS))
    parser.add_argument("--rule", default="sgd", choices=sorted(HPARAMS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every budget (quick looks)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure; the fastest is kept")
    parser.add_argument(
        "--bare", action="store_true", help="also time mnist1d_mlp's bare vmapped step: the machine's ceiling"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), rule {args.rule}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'task':<20} {'N':>4} {'sequential runs/s':>18} {'batched runs/s':>15} {'batched ÷ sequential':>21}"
    )
    print(header)
    for task in args.tasks:
        for spec in specs(task, args.rule, [0], args.steps_scale):  # data generated and cached, code warm
            train.run(spec)
        solo = specs(task, args.rule, range(args.solo_runs), args.steps_scale)
        sequential = len(solo) / timed(lambda solo=solo: [train.run(s) for s in solo], args.repeats)
        for size in args.sizes:
            group = specs(task, args.rule, range(size), args.steps_scale)
            batched = size / timed(lambda group=group: run_group(group), args.repeats)
            print(f"{task:<20} {size:>4} {sequential:>18.2f} {batched:>15.2f} {batched / sequential:>20.2f}×")
            if args.bare and task == "mnist1d_mlp":
                ceiling = bare_ceiling(size, args.repeats)
                print(f"{'  bare step, no loop':<20} {size:>4} {'':>18} {'':>15} {ceiling:>20.2f}×")
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
