"""The one training loop: ``run(spec, report) -> RunResult``.

Pure apart from ``report``: no Ray, no MLflow, no files. The same spec on the same CPU gives the
same numbers, and a run whose loss stops being finite ends as ``diverged`` at that step.

Inside a ``torch.distributed`` group of several processes (as Ray Train's TorchTrainer starts one,
see :mod:`benchmark.execute.ddp`) the same loop trains data-parallel: the model is wrapped in
DistributedDataParallel, each rank draws its own batches, and the step's loss is averaged over the
ranks, so every rank sees the same curve and stops at the same step.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from benchmark.metrics import Clock, brain_metrics, parameter_snapshot, save_weight_histogram
from benchmark.probe import ImpliedMetricProbe
from benchmark.provenance import device_name, pick_device
from benchmark.result import CurvePoint, RunResult, Status
from benchmark.rules import RULES, OptimizerRule
from benchmark.seeding import derive_seeds, seed_everything
from benchmark.spec import RunSpec
from benchmark.tasks import TASKS
from benchmark.types import Metrics, Report


def no_report(step: int, metrics: Metrics) -> None:
    """The default ``report``: tell nobody."""


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _data_parallel(
    model: torch.nn.Module, learner: object, rule: str, device: torch.device
) -> DistributedDataParallel:
    if not isinstance(learner, OptimizerRule):
        # Its update reads more than the gradient (activations, equilibria, perturbations), which
        # DDP does not average across ranks; the planner drops such cells before they get here.
        raise ValueError(f"rule {rule!r} cannot train data-parallel: its update is not an optimizer step")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm's running statistics) over the ranks before evaluating.

    DDP hands rank 0's buffers to every rank at each forward, but the last training forward leaves
    each rank with statistics of its own batches: evaluation would differ from rank to rank.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(dist.get_world_size())


def _mean_over_ranks(value: float, device: torch.device) -> float:
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def run(
    spec: RunSpec,
    report: Report = no_report,
    device: torch.device | None = None,
    artifacts_dir: Path | None = None,
) -> RunResult:
    """Train ``spec`` to its budget and return what happened.

    The end-of-run files that ``spec.artifacts`` names are written into ``artifacts_dir`` (none
    when it is None), e.g. ``weight_histogram.png``.
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
    seed_everything(seeds.rule)

    init_gen = seeds.generator("init")
    model = task.build_model(options, init_gen)
    if rule.prepare is not None:
        model = rule.prepare(model, init_gen, hparams)
    model = model.to(device)
    initial = parameter_snapshot(model)  # for the end-of-run sign flips (Dale's law)
    data = task.load_data(options, device)
    learner = rule.build(model, hparams)
    stepped = model if world == 1 else _data_parallel(model, learner, spec.rule, device)
    warmup = spec.budget.warmup_steps or 0
    if warmup and not isinstance(learner, OptimizerRule):
        raise ValueError(f"rule {spec.rule!r} cannot warm up: its update is not an optimizer step")
    batches = data.train_batches(seeds.generator("data"))
    probe_every = spec.budget.probe_every  # implied-metric probe (seed 003); off when None
    # An OptimizerRule leaves ∇L(θ₀) in .grad, which spares the probe one backward pass.
    probe = (
        ImpliedMetricProbe(model, task.loss, grad_from_rule=isinstance(learner, OptimizerRule))
        if probe_every
        else None
    )

    clock = Clock()
    curve: list[CurvePoint] = []
    step_losses: list[float] = []
    rule_metrics: dict[str, float] = {}

    def evaluate(step: int) -> dict[str, float]:
        if world > 1:
            _average_buffers(model)
        metrics = dict(data.evaluate(model, step))
        if step_losses and "train/loss" not in metrics:
            metrics["train/loss"] = sum(step_losses) / len(step_losses)
        metrics.update(rule_metrics)
        if probe is not None:
            metrics.update(probe.window())
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
        probing = probe if probe_every and step % probe_every == 0 else None
        if probing is not None:
            clock.pause()  # probing is not training time
            probing.before(batch)
            clock.start()
        if step <= warmup and isinstance(learner, OptimizerRule):
            learner.scale_lr(step / warmup)
        step_metrics = learner.train_step(stepped, batch, task.loss)
        clock.pause()
        if probing is not None:
            probing.after(batch, step_metrics["train/loss"])
        loss = step_metrics.pop("train/loss")
        if world > 1:
            loss = _mean_over_ranks(loss, device)
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
        if probe is not None:
            final.update(probe.totals())
        if artifacts_dir is not None and "weight_histogram" in spec.artifacts:
            title = f"{spec.task} · {spec.rule_display} · seed {spec.seed}"
            save_weight_histogram(model, artifacts_dir / "weight_histogram.png", initial, title=title)
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
        selection=(task.selected_by.metric, task.selected_by.mode),
        chance=task.chance,
        theory=task.theory,
    )
