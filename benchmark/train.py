"""The one training loop: ``run(spec, report, hooks) -> RunResult``.

It writes no files and imports no Ray or MLflow: what it tells the world goes through ``report``,
and what it writes through the hooks its caller passes (the grid's weight histogram). The same
spec on the same CPU gives the same numbers, and a run whose loss stops being finite ends as
``diverged`` at that step.

The loop owns the clock, as benchopt's runner does: only the batch draw and the rule's step run
on it. Everything else plugs in as a :class:`~benchmark.hooks.Hook`, called with the clock paused:
warm-up, data parallelism, the implied-metric probe, rule diagnostics, a rule's evaluation mode,
the hardware-independent clocks (``clock/steps``, ``clock/examples``, ``clock/forward_passes``) and
end-of-run files. Which hooks a run gets is decided once, before the loop
(:func:`~benchmark.hooks.select_hooks`).

Inside a ``torch.distributed`` group of several processes (as Ray Train's TorchTrainer starts one,
see :mod:`benchmark.execute.ddp`) the same loop trains data-parallel
(:class:`~benchmark.hooks.DataParallel`): each rank draws its own batches and every rank sees the
same curve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from benchmark.hooks import Hook, Run, select_hooks
from benchmark.metrics import Clock, brain_metrics, parameter_snapshot
from benchmark.provenance import device_name, pick_device
from benchmark.result import CurvePoint, RunResult, Status
from benchmark.rules import RULES
from benchmark.rules.base import RuleInfo
from benchmark.seeding import Seeds, derive_seeds, seed_everything
from benchmark.spec import RunSpec
from benchmark.tasks import TASKS
from benchmark.tasks.base import TaskInfo
from benchmark.types import Metrics, Report


def no_report(step: int, metrics: Metrics) -> None:
    """The default ``report``: tell nobody."""


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run(
    spec: RunSpec,
    report: Report = no_report,
    device: torch.device | None = None,
    hooks: Sequence[Hook] = (),
) -> RunResult:
    """Train ``spec`` to its budget and return what happened.

    ``hooks`` are the caller's, called after the run's own (e.g.
    :func:`~benchmark.hooks.artifact_hooks` for the files ``spec.artifacts`` names).
    """
    started_at = datetime.now(UTC)
    wall_start = time.perf_counter()
    device = device or pick_device()
    task = TASKS.get(spec.task)
    rule = RULES.get(spec.rule)
    options = task.options.model_validate(spec.task_options)
    hparams = rule.hparams.model_validate(spec.hparams)
    rank, world = _process_group()
    seeds = derive_seeds(spec.seed).for_rank(rank)
    model = initial_model(task, rule, options, hparams, seeds, device)
    initial = parameter_snapshot(model)  # for the end-of-run sign flips (Dale's law)
    data = task.load_data(options, device)
    learner = rule.build(model, hparams)
    hooks = [*select_hooks(rule, learner, spec.budget, world), *hooks]
    context = Run(spec, model, learner, task.loss, device, initial, stepped=model)
    for hook in hooks:
        hook.on_start(context)
    batches = data.train_batches(seeds.generator("data"))

    clock = Clock()
    curve: list[CurvePoint] = []
    step_losses: list[float] = []
    rule_metrics: dict[str, float] = {}  # the latest step's own values (rule/...)

    def evaluate(step: int) -> dict[str, float]:
        for hook in hooks:
            hook.before_evaluate(step)
        metrics = dict(data.evaluate(model, step))
        if step_losses and "train/loss" not in metrics:
            metrics["train/loss"] = sum(step_losses) / len(step_losses)
        metrics.update(rule_metrics)
        for hook in reversed(hooks):
            hook.after_evaluate(step, metrics)
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
        batch = next(batches)
        clock.pause()
        for hook in hooks:
            hook.before_step(step, batch)
        clock.start()
        step_metrics = learner.train_step(context.stepped, batch, task.loss)
        clock.pause()
        for hook in hooks:
            hook.after_step(step, step_metrics)
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
        final.update(brain_metrics(initial, model))
        final.update(data.finalize(model))
    for hook in hooks:
        hook.on_end(status, final)
    return finished(
        spec, status, step, final, curve, clock.seconds, time.perf_counter() - wall_start, device, started_at
    )


def initial_model(
    task: TaskInfo, rule: RuleInfo, options: Any, hparams: Any, seeds: Seeds, device: torch.device
) -> nn.Module:
    """The run's model at initialisation: built from its init stream, prepared by the rule, on ``device``."""
    seed_everything(seeds.rule)
    init_gen = seeds.generator("init")
    model = task.build_model(options, init_gen)
    if rule.prepare is not None:
        model = rule.prepare(model, init_gen, hparams)
    return model.to(device)


def finished(
    spec: RunSpec,
    status: Status,
    steps: int,
    final: dict[str, float],
    curve: Sequence[CurvePoint],
    train_time_s: float,
    wall_time_s: float,
    device: torch.device,
    started_at: datetime,
) -> RunResult:
    """The result of a run that ended now, with its task's target, selection metric and chance."""
    task = TASKS.get(spec.task)
    return RunResult(
        run_id=spec.run_id,
        status=status,
        steps=steps,
        final=final,
        curve=tuple(curve),
        train_time_s=train_time_s,
        wall_time_s=wall_time_s,
        device=device_name(device),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        target=(task.target.metric, task.target.value, task.target.mode),
        selection=(task.selected_by.metric, task.selected_by.mode),
        chance=task.chance,
        theory=task.theory,
    )
