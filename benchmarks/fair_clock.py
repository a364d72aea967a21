"""Do a rule's diagnostics cost it training time? eg_sgd's training clock with its diagnostics off,
read at evaluations (the loop now), and read after every step inside the step (the loop before).

Usage::

    .venv/bin/python benchmarks/fair_clock.py [--task digits_mlp] [--steps 300] [--eval-every 10]
        [--rounds 3] [--threads 1]

Each round trains the same RunSpec (eg_sgd at its defaults, seed 0) three ways, in an order that
rotates from round to round so that a machine whose load drifts affects all sides alike:

- ``off``: the loop never sees the optimizer's ``diagnostics()`` (no Diagnostics hook);
- ``at evals``: as a run does now, the Diagnostics hook reads them at each evaluation, with the
  clock paused;
- ``every step``: as ``OptimizerRule.train_step`` did before, after every step, on the clock.

It prints each round's training clock (``train_time_s``: evaluation paused) side by side with its
ratios to the same round's ``off``, then the medians of each column. A fair clock gives
``at evals ÷ off`` ≈ 1. The three sides train the same numbers (the final test accuracy is printed
to show it). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from benchmark import train
from benchmark.rules import RULES
from benchmark.rules.base import OptimizerRule
from benchmark.spec import Budget, RunSpec
from benchmark.tasks import TASKS
from benchmark.types import Batch, LossFn


class HiddenDiagnostics:
    """eg_sgd's step with its optimizer hidden from the loop, so no Diagnostics hook is chosen."""

    def __init__(self, inner: OptimizerRule) -> None:
        self.inner = inner

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        return self.inner.train_step(model, batch, loss_fn)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


class DiagnosticsEveryStep(HiddenDiagnostics):
    """The step as ``OptimizerRule.train_step`` ran it before: the diagnostics inside, on the clock."""

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        metrics = self.inner.train_step(model, batch, loss_fn)
        metrics.update(self.inner.optimizer.diagnostics())  # type: ignore[attr-defined]
        return metrics


SIDES = {"off": "eg_sgd_diagnostics_off", "at evals": "eg_sgd", "every step": "eg_sgd_diagnostics_every_step"}


def register_sides() -> None:
    eg = RULES.get("eg_sgd")
    for name, wrapper in ((SIDES["off"], HiddenDiagnostics), (SIDES["every step"], DiagnosticsEveryStep)):
        if name not in RULES:
            build = eg.build
            RULES.add(dataclasses.replace(eg, name=name, build=lambda m, hp, w=wrapper, b=build: w(b(m, hp))))


def spec_for(rule: str, task: str, steps: int, eval_every: int) -> RunSpec:
    options = TASKS.get(task).options().model_dump(mode="json")
    hparams = RULES.get(rule).defaults()
    budget = Budget(steps=steps, eval_every=eval_every)
    return RunSpec(
        suite="fair_clock", task=task, task_options=options, rule=rule, hparams=hparams, seed=0, budget=budget
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits_mlp")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: less noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_sides()
    device = torch.device("cpu")
    specs = {side: spec_for(rule, args.task, args.steps, args.eval_every) for side, rule in SIDES.items()}
    train.run(specs["off"], device=device)  # warm-up: first-call costs land on no side

    sides = list(SIDES)
    times: dict[str, list[float]] = {side: [] for side in sides}
    accuracy: dict[str, float] = {}
    print(f"eg_sgd on {args.task}: {args.steps} steps, evaluated every {args.eval_every}; training clock (s)")
    header = "".join(f"{side:>12}" for side in sides) + "".join(
        f"{side + ' ÷ off':>18}" for side in sides[1:]
    )
    print("round  " + header)

    def row(label: str, values: dict[str, float], ratios: dict[str, float]) -> str:
        return (
            f"{label:<7}"
            + "".join(f"{values[s]:12.3f}" for s in sides)
            + "".join(f"{ratios[s]:18.3f}" for s in sides[1:])
        )

    ratios: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            result = train.run(specs[side], device=device)
            times[side].append(result.train_time_s)
            accuracy[side] = result.final.get("test/accuracy", float("nan"))
        for side in sides:
            ratios[side].append(times[side][-1] / times["off"][-1])
        print(row(str(r + 1), {s: times[s][-1] for s in sides}, {s: ratios[s][-1] for s in sides}))
    median = statistics.median
    print(row("median", {s: median(times[s]) for s in sides}, {s: median(ratios[s]) for s in sides}))
    print("test/accuracy " + ", ".join(f"{side} {accuracy[side]:.4f}" for side in sides))


if __name__ == "__main__":
    main()
