"""Many runs in one process: ``run_group(specs, ...)`` trains runs that differ only in their seed
(and in the rule's per-member hyperparameters) as one stacked model.

A step of a small model is mostly Python overhead; a group shares it. The members' parameters are
stacked along a new leading dimension (``torch.func.stack_module_state``), their gradients come
from one ``vmap`` over ``grad`` of the task's loss through ``functional_call``, and the rule's own
update runs once over the stack (:class:`~benchmark.rules.base.BatchForm`), as in HFTA (Wang et
al., 2021, "Horizontally Fused Training Array", MLSys).

Each member is its solo run (:func:`benchmark.train.run`): its initialisation and data order come
from its own seed streams and never from the group; its module is built, prepared and evaluated by
the task and the rule exactly as alone, its parameters being views into the stack; it has its own
hooks (clocks, diagnostics, artifacts) and its own :class:`~benchmark.result.RunResult`. A member
whose loss stops being finite ends ``diverged`` at that step and leaves the stack; the others go
on. Each result is handed to ``on_end`` as its member ends, so that its row can be written then.
The group's clock is shared: a member's ``train_time_s`` and ``wall_time_s`` are the group's
divided by its size.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from benchmark.hooks import Hook, Run, select_hooks
from benchmark.metrics import Clock, brain_metrics, parameter_snapshot
from benchmark.provenance import pick_device
from benchmark.result import CurvePoint, RunResult, Status
from benchmark.rules import RULES
from benchmark.rules.base import StackedStep
from benchmark.seeding import derive_seeds
from benchmark.spec import RunSpec
from benchmark.tasks import TASKS
from benchmark.tasks.base import TaskData, TensorClassification
from benchmark.train import finished, initial_model, no_report
from benchmark.types import Batch, Metrics, Report

MemberEnd = Callable[[RunSpec, RunResult], None]
"""``on_end(spec, result)``: a member has ended (its row can be written now)."""


def no_end(spec: RunSpec, result: RunResult) -> None:
    """The default ``on_end``: keep nothing but the returned list."""


@dataclass
class _Member:
    """One run of the group: what :func:`benchmark.train.run` holds for a run alone."""

    spec: RunSpec
    run: Run
    hooks: list[Hook]
    data: TaskData
    generator: torch.Generator  # its data stream
    curve: list[CurvePoint] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)


def _start(spec: RunSpec, device: torch.device, extra: Sequence[Hook]) -> _Member:
    """A member built as :func:`benchmark.train.run` builds a run: same seeds, same order of draws.

    Its data is its own: a task's data may hold a run's state (threshold crossings) or be drawn
    from the run's data stream (teacher-student)."""
    task, rule = TASKS.get(spec.task), RULES.get(spec.rule)
    options = task.options.model_validate(spec.task_options)
    hparams = rule.hparams.model_validate(spec.hparams)
    seeds = derive_seeds(spec.seed)
    model = initial_model(task, rule, options, hparams, seeds, device)
    data = task.load_data(options, device)
    learner = rule.build(model, hparams)  # its optimizer is unused but for its diagnostics
    hooks = [*select_hooks(rule, learner, spec.budget, 1), *extra]
    run = Run(spec, model, learner, task.loss, device, parameter_snapshot(model), stepped=model)
    for hook in hooks:
        hook.on_start(run)
    return _Member(spec, run, hooks, data, seeds.generator("data"))


def _same_examples(data: TaskData, first: TensorClassification) -> bool:
    return (
        isinstance(data, TensorClassification)
        and torch.equal(data.train_x, first.train_x)
        and torch.equal(data.train_y, first.train_y)
    )


class _Draw:
    """Each step's batches of the live members, stacked (leading dimension: the members).

    Members draw their own batches from their own data streams, as alone. Where every member holds
    the same :class:`TensorClassification` examples (a task's data depends only on its options),
    each draws only the indices of its batch and one gather serves the group.
    """

    def __init__(self, members: Sequence[_Member]) -> None:
        datas = [m.data for m in members]
        first = datas[0]
        self.examples: TensorClassification | None = None
        if isinstance(first, TensorClassification) and all(_same_examples(d, first) for d in datas):
            self.examples = first
        self.streams: list[Iterator[Any]] = [
            d.train_indices(m.generator) if isinstance(d, TensorClassification) and self.examples else
            d.train_batches(m.generator)
            for d, m in zip(datas, members, strict=True)
        ]  # fmt: skip

    def keep(self, kept: Sequence[int]) -> None:
        self.streams = [self.streams[i] for i in kept]

    def __call__(self) -> tuple[Tensor, Tensor, list[Batch]]:
        """The stacked inputs and targets, and each member's own batch (for its hooks)."""
        if self.examples is not None:
            idx = torch.stack([next(s) for s in self.streams])
            inputs, targets = self.examples.train_x[idx], self.examples.train_y[idx]
            return inputs, targets, list(zip(inputs.unbind(), targets.unbind(), strict=True))
        drawn = [next(s) for s in self.streams]
        return torch.stack([b[0] for b in drawn]), torch.stack([b[1] for b in drawn]), drawn


class _Stack:
    """The live members' parameters and buffers, stacked; each member's module holds views of them."""

    def __init__(self, members: Sequence[_Member]) -> None:
        params, buffers = stack_module_state([m.run.model for m in members])
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self._bind(members)

    def keep(self, members: Sequence[_Member], index: Tensor) -> None:
        """Keep only the stack's entries ``index`` (of ``members``, the members still training)."""
        self.params = {k: v.index_select(0, index) for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        self._bind(members)

    def _bind(self, members: Sequence[_Member]) -> None:
        for i, member in enumerate(members):
            model = member.run.model
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                stacked = self.params.get(name, self.buffers.get(name))
                tensor.data = stacked[i]  # type: ignore[index]


def _gradients(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Any]:
    """``(params, buffers, inputs, targets) -> (grads, losses)`` for a stack, by ``vmap`` of ``grad``."""
    skeleton = copy.deepcopy(model).to("meta")

    def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(skeleton, (params, buffers), (x,)), y)

    return vmap(grad_and_value(loss))


def run_group(
    specs: Sequence[RunSpec],
    report: Report = no_report,
    device: torch.device | None = None,
    hooks: Sequence[Sequence[Hook]] | None = None,
    on_end: MemberEnd = no_end,
) -> list[RunResult]:
    """Train ``specs`` (one task and options, one rule, one budget) as one group; results in order.

    ``report`` gets the mean of the members' metrics at each evaluation (Ray Tune's one result per
    evaluation); ``hooks`` are the caller's, one list per member (artifacts); ``on_end`` is called
    as each member ends.

    Raises:
        ValueError: the specs cannot train as one group (different task, rule or budget, or a
            rule or task that does not batch); the planner forms only groups that can.
    """
    started_at = datetime.now(UTC)
    wall_start = time.perf_counter()
    device = device or pick_device()
    first = specs[0]
    task, rule = TASKS.get(first.task), RULES.get(first.rule)
    _check_group(specs, rule.batching is not None, task.batch_member_bytes is not None)
    assert rule.batching is not None  # checked above; for the type checker
    extra = hooks or [[] for _ in specs]
    members = [_start(spec, device, hook) for spec, hook in zip(specs, extra, strict=True)]
    stack = _Stack(members)
    draw = _Draw(members)
    hparams = [rule.hparams.model_validate(s.hparams) for s in specs]
    update: StackedStep = rule.batching.build(list(stack.params.values()), hparams)
    gradients = _gradients(members[0].run.model, task.loss)
    stacked_diagnostics: Callable[[], list[dict[str, float]]] | None = getattr(update, "diagnostics", None)

    clock = Clock()
    size = len(specs)
    results: dict[str, RunResult] = {}

    def evaluate(member: _Member, step: int) -> dict[str, float]:
        for hook in member.hooks:
            hook.before_evaluate(step)
        metrics = dict(member.data.evaluate(member.run.model, step))
        if member.step_losses and "train/loss" not in metrics:
            metrics["train/loss"] = sum(member.step_losses) / len(member.step_losses)
        for hook in reversed(member.hooks):
            hook.after_evaluate(step, metrics)
        if stacked_diagnostics is not None and (values := stacked_diagnostics()):
            # The group's update stepped the member, not the member's own optimizer.
            metrics.update(values[next(i for i, m in enumerate(members) if m is member)])
        member.curve.append(CurvePoint(step, clock.seconds / size, metrics))
        member.step_losses.clear()
        member.last = metrics
        return metrics

    def end(member: _Member, status: Status, step: int) -> None:
        final = dict(member.last)
        if status == "ok":
            final.update(brain_metrics(member.run.initial, member.run.model))
            final.update(member.data.finalize(member.run.model))
        for hook in member.hooks:
            hook.on_end(status, final)
        wall = (time.perf_counter() - wall_start) / size
        result = finished(
            member.spec, status, step, final, member.curve, clock.seconds / size, wall, device, started_at
        )
        result = dataclasses.replace(result, batch_size=size)
        results[member.spec.run_id] = result
        on_end(member.spec, result)

    report(0, _mean([evaluate(m, 0) for m in members]))
    for member in members:
        member.run.model.train()
    steps = first.budget.steps
    warmup = first.budget.warmup_steps or 0
    for step in range(1, steps + 1):
        if step <= warmup:  # the members' WarmUp hooks ramp their own (unused) optimizers alike
            update.scale_lr(step / warmup)
        clock.start()
        inputs, targets, drawn = draw()
        clock.pause()
        for member, batch in zip(members, drawn, strict=True):
            for hook in member.hooks:
                hook.before_step(step, batch)
        clock.start()
        grads, losses = gradients(stack.params, stack.buffers, inputs, targets)
        update.step(list(stack.params.values()), [grads[k] for k in stack.params])
        step_losses: list[float] = losses.tolist()
        clock.pause()
        ended: list[tuple[_Member, Status]] = []
        for member, loss in zip(members, step_losses, strict=True):
            metrics = {"train/loss": loss}
            for hook in member.hooks:
                hook.after_step(step, metrics)
            member.step_losses.append(metrics.pop("train/loss"))
            if not math.isfinite(loss):
                evaluate(member, step)
                ended.append((member, "diverged"))
        if step % first.eval_every == 0 or step == steps:
            diverged = {id(m) for m, _ in ended}
            values = [evaluate(m, step) for m in members if id(m) not in diverged]
            if values:
                report(step, _mean(values))
            ended += [
                (m, "diverged")
                for m in members
                if id(m) not in diverged and not math.isfinite(m.last.get("train/loss", 0.0))
            ]
        for member, status in ended:
            end(member, status, step)
        if ended:  # the ended members leave the stack; the others go on
            gone = {id(m) for m, _ in ended}
            kept = [i for i, m in enumerate(members) if id(m) not in gone]
            members = [members[i] for i in kept]
            if not members:
                break
            index = torch.tensor(kept, dtype=torch.long, device=device)
            stack.keep(members, index)
            update.keep(index)
            draw.keep(kept)
    for member in members:
        end(member, "ok", steps)
    return [results[s.run_id] for s in specs]


def _mean(values: Sequence[Metrics]) -> dict[str, float]:
    """Each metric's mean over the members that report it (Ray Tune's one result per evaluation)."""
    keys = dict.fromkeys(k for v in values for k in v)
    return {k: sum(v[k] for v in values if k in v) / sum(k in v for v in values) for k in keys}


def _check_group(specs: Sequence[RunSpec], rule_batches: bool, task_batches: bool) -> None:
    first = specs[0]
    if not rule_batches or not task_batches:
        raise ValueError(f"{first.rule} on {first.task} does not train in groups")
    for spec in specs:
        if (spec.task, spec.task_options, spec.rule, spec.budget) != (
            first.task, first.task_options, first.rule, first.budget,
        ):  # fmt: skip
            raise ValueError(
                f"run {spec.run_id} differs from {first.run_id} in more than its seed and hparams"
            )
        if spec.budget.probe_every or spec.budget.workers:
            raise ValueError(f"run {spec.run_id} probes or trains data-parallel: it runs alone")
