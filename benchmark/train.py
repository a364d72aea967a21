"""The one training loop: ``run(spec, report) -> RunResult``.

Pure apart from ``report``: no Ray, no MLflow, no files. The same spec on the same CPU gives the
same numbers, and a run whose loss stops being finite ends as ``diverged`` at that step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import torch

from benchmark.metrics import Clock
from benchmark.provenance import device_name, pick_device
from benchmark.rules import RULES
from benchmark.seeding import derive_seeds, seed_everything
from benchmark.spec import RunSpec
from benchmark.tasks import TASKS
from benchmark.types import Metrics, Report

Status = Literal["ok", "diverged", "failed"]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    step: int
    train_time_s: float
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run produced. ``final`` holds the last evaluation plus end-of-run metrics."""

    run_id: str
    status: Status
    steps: int
    final: dict[str, float]
    curve: tuple[CurvePoint, ...]
    train_time_s: float
    wall_time_s: float
    device: str
    started_at: datetime
    finished_at: datetime
    target: tuple[str, float, str] = ("", float("nan"), "max")
    error: str = ""


def no_report(step: int, metrics: Metrics) -> None:
    """The default ``report``: tell nobody."""


def run(spec: RunSpec, report: Report = no_report, device: torch.device | None = None) -> RunResult:
    """Train ``spec`` to its budget and return what happened."""
    started_at = datetime.now(UTC)
    wall_start = time.perf_counter()
    device = device or pick_device()
    task = TASKS.get(spec.task)
    rule = RULES.get(spec.rule)
    options = task.options.model_validate(spec.task_options)
    hparams = rule.hparams.model_validate(spec.hparams)
    seeds = derive_seeds(spec.seed)
    seed_everything(seeds.rule)

    init_gen = seeds.generator("init")
    model = task.build_model(options, init_gen)
    if rule.prepare is not None:
        model = rule.prepare(model, init_gen, hparams)
    model = model.to(device)
    data = task.load_data(options, device)
    learner = rule.build(model, hparams)
    batches = data.train_batches(seeds.generator("data"))

    clock = Clock()
    curve: list[CurvePoint] = []
    step_losses: list[float] = []
    rule_metrics: dict[str, float] = {}

    def evaluate(step: int) -> dict[str, float]:
        metrics = dict(data.evaluate(model, step))
        if step_losses and "train/loss" not in metrics:
            metrics["train/loss"] = sum(step_losses) / len(step_losses)
        metrics.update(rule_metrics)
        curve.append(CurvePoint(step, clock.seconds, metrics))
        report(step, metrics)
        step_losses.clear()
        return metrics

    status: Status = "ok"
    last = evaluate(0)
    step = 0
    model.train()
    for step in range(1, spec.budget.steps + 1):
        clock.start()
        step_metrics = learner.train_step(model, next(batches), task.loss)
        clock.pause()
        loss = step_metrics.pop("train/loss")
        rule_metrics = step_metrics
        step_losses.append(loss)
        if not math.isfinite(loss):
            status = "diverged"
            last = evaluate(step)
            break
        if step % spec.eval_every == 0 or step == spec.budget.steps:
            last = evaluate(step)
            if not math.isfinite(last.get("train/loss", 0.0)):
                status = "diverged"
                break

    final = dict(last)
    if status == "ok":
        final.update(data.finalize(model))
    return RunResult(
        run_id=spec.run_id,
        status=status,
        steps=step,
        final=final,
        curve=tuple(curve),
        train_time_s=clock.seconds,
        wall_time_s=time.perf_counter() - wall_start,
        device=device_name(device),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        target=(task.target.metric, task.target.value, task.target.mode),
    )
