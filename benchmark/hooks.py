"""What plugs into the training loop: the :class:`Hook` interface and the hooks a run uses.

:func:`benchmark.train.run` owns the loop and its clock, as benchopt's runner owns the solver's
callback: it calls every hook at fixed points, and a hook never runs on the training clock.
Warm-up, data parallelism, the implied-metric probe, rule diagnostics, a rule's own evaluation
mode, the hardware-independent clocks and end-of-run files are all hooks. :func:`select_hooks`
picks them once per run from what the rule declares (:class:`~benchmark.rules.base.RuleInfo`) and
what its learner has, so the loop never asks what kind of rule it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from benchmark.metrics import save_weight_histogram
from benchmark.probe import ImpliedMetricProbe
from benchmark.result import Status
from benchmark.rules.base import LearningRule, OptimizerRule, RuleInfo
from benchmark.spec import Budget, RunSpec
from benchmark.types import Batch, LossFn


@dataclass
class Run:
    """What a hook sees of a run when it starts.

    ``stepped`` is the module the rule's step is given: ``model`` itself, or a wrapper of it
    (DistributedDataParallel) that a hook puts there in :meth:`Hook.on_start`.
    """

    spec: RunSpec
    model: nn.Module
    learner: LearningRule
    loss_fn: LossFn
    device: torch.device
    initial: dict[str, Tensor]
    """A copy of the parameters at initialisation (:func:`~benchmark.metrics.parameter_snapshot`)."""
    stepped: nn.Module


class Hook:
    """Called by the training loop at fixed points, always with the training clock paused.

    Every method does nothing by default; a hook overrides the ones it needs. Hooks are called in
    their list's order, except :meth:`after_evaluate`, which goes in reverse, so that a hook's
    before/after pair encloses those of the hooks after it (as nested ``with`` blocks).
    """

    def on_start(self, run: Run) -> None:
        """Once, after the model and the learner are built and before the step-0 evaluation."""

    def before_step(self, step: int, batch: Batch) -> None:
        """Before the rule's step ``step`` (from 1) on ``batch``."""

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        """After the step, with the metrics it returned; a hook may change them in place."""

    def before_evaluate(self, step: int) -> None:
        """Before the task evaluates the model after ``step`` steps."""

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        """After the evaluation; a hook may add its own values to ``metrics`` before they are reported."""

    def on_end(self, status: Status, final: dict[str, float]) -> None:
        """Once, at the end; a hook may add end-of-run metrics to ``final``."""


class WarmUp(Hook):
    """Linear warm-up: step ``t ≤ steps`` runs at ``lr · t / steps`` (Goyal et al., 2017, §2.2)."""

    def __init__(self, learner: OptimizerRule, steps: int) -> None:
        self.learner = learner
        self.steps = steps

    def before_step(self, step: int, batch: Batch) -> None:
        if step <= self.steps:
            self.learner.scale_lr(step / self.steps)


class DataParallel(Hook):
    """Trains data-parallel in the ``torch.distributed`` group this process is in.

    The model is wrapped in DistributedDataParallel, which averages gradients. The step's loss is
    averaged over the ranks, so every rank sees the same curve and stops at the same step.
    Floating buffers (BatchNorm's running statistics) are averaged before each evaluation: the
    last training forward leaves each rank with statistics of its own batches, and evaluation
    would otherwise differ from rank to rank.
    """

    def on_start(self, run: Run) -> None:
        self.device = run.device
        self.model = run.model
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.stepped = DistributedDataParallel(run.model, device_ids=ids)

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        total = torch.tensor([metrics["train/loss"]], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        metrics["train/loss"] = float(total) / dist.get_world_size()

    def before_evaluate(self, step: int) -> None:
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(dist.get_world_size())


class Probe(Hook):
    """The implied-metric probe (Shoji, Suzuki & Kozachkov, 2024) every ``every`` steps.

    Its ``metric/...`` window summary joins each evaluation, and its run totals the final metrics
    of a run that ended ``ok``. ``grad_from_rule``: the rule's step leaves ∇L(θ₀) in ``.grad``.
    """

    def __init__(self, every: int, grad_from_rule: bool) -> None:
        self.every = every
        self.grad_from_rule = grad_from_rule
        self.batch: Batch | None = None

    def on_start(self, run: Run) -> None:
        self.probe = ImpliedMetricProbe(run.model, run.loss_fn, grad_from_rule=self.grad_from_rule)

    def before_step(self, step: int, batch: Batch) -> None:
        self.batch = batch if step % self.every == 0 else None
        if self.batch is not None:
            self.probe.before(batch)

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.batch is not None:
            self.probe.after(self.batch, metrics["train/loss"])
            self.batch = None

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        metrics.update(self.probe.window())

    def on_end(self, status: Status, final: dict[str, float]) -> None:
        if status == "ok":
            final.update(self.probe.totals())


class Diagnostics(Hook):
    """A rule's ``diagnostics() -> {"rule/...": value}``, read at each evaluation and never per step.

    Called at step 0 too, where its values are dropped (no step has been taken yet) but where
    counts kept "since the previous call" (EG's sign flips) start from.
    """

    def __init__(self, diagnostics: Callable[[], dict[str, float]]) -> None:
        self.diagnostics = diagnostics

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        values = self.diagnostics()
        if step > 0:
            metrics.update(values)


class EvalMode(Hook):
    """Switches an optimizer with its own ``eval()``/``train()`` (schedule-free) around each evaluation.

    Schedule-free optimizers (Defazio et al., 2024) train at one sequence of points and are
    evaluated at another, their average; ``eval()`` swaps the average into the parameters.
    """

    def __init__(self, optimizer: object) -> None:
        self.optimizer = optimizer

    def before_evaluate(self, step: int) -> None:
        self.optimizer.eval()  # type: ignore[attr-defined]

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self.optimizer.train()  # type: ignore[attr-defined]


class Clocks(Hook):
    """Hardware-independent clocks, in every evaluation's metrics (AlgoPerf's steps, and more).

    ``clock/steps``; ``clock/examples``, the examples the rule has stepped on (batch sizes summed,
    times the ranks under data parallelism); ``clock/forward_passes``, forward-equivalent passes
    of one rank's batches: the rule's :attr:`~benchmark.rules.base.RuleInfo.forward_passes` per
    step, or the ``rule/forward_passes`` its step reports, which this hook takes out of the step's
    metrics.
    """

    def __init__(self, forward_passes: float, world: int) -> None:
        self.per_step = forward_passes
        self.world = world
        self.steps = 0
        self.examples = 0
        self.passes = 0.0

    def before_step(self, step: int, batch: Batch) -> None:
        self.examples += len(batch[0]) * self.world

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps += 1
        self.passes += metrics.pop("rule/forward_passes", self.per_step)

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        metrics["clock/steps"] = float(self.steps)
        metrics["clock/examples"] = float(self.examples)
        metrics["clock/forward_passes"] = self.passes


class WeightHistogram(Hook):
    """Writes a PNG of each layer's weight magnitudes at the end of a run that ended ``ok``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_start(self, run: Run) -> None:
        self.run = run

    def on_end(self, status: Status, final: dict[str, float]) -> None:
        if status == "ok":
            spec = self.run.spec
            title = f"{spec.task} · {spec.rule_display} · seed {spec.seed}"
            save_weight_histogram(self.run.model, self.path, self.run.initial, title=title)


def artifact_hooks(spec: RunSpec, directory: Path | None) -> list[Hook]:
    """The hooks that write the end-of-run files ``spec.artifacts`` names into ``directory``."""
    if directory is None or "weight_histogram" not in spec.artifacts:
        return []
    return [WeightHistogram(directory / "weight_histogram.png")]


def _diagnostics(learner: LearningRule) -> Callable[[], dict[str, float]] | None:
    for owner in (learner, getattr(learner, "optimizer", None)):
        diagnostics = getattr(owner, "diagnostics", None)
        if callable(diagnostics):
            return diagnostics  # type: ignore[no-any-return]
    return None


def select_hooks(rule: RuleInfo, learner: LearningRule, budget: Budget, world: int) -> list[Hook]:
    """The hooks a run of ``rule`` needs, from what it declares and what its learner has.

    Raises:
        ValueError: the budget asks for what the rule cannot do (the planner drops such cells
            before they get here): several workers or a warm-up, for a rule whose update is not
            a torch optimizer's step on the gradient alone.
    """
    hooks: list[Hook] = []
    if world > 1:
        if not rule.data_parallel:
            # Its update reads more than the gradient (activations, equilibria, perturbations),
            # which DDP does not average across ranks.
            raise ValueError(
                f"rule {rule.name!r} cannot train data-parallel: its update is not an optimizer step"
            )
        hooks.append(DataParallel())
    diagnostics = _diagnostics(learner)
    if diagnostics is not None:  # before EvalMode: read in training mode, after train()
        hooks.append(Diagnostics(diagnostics))
    optimizer = getattr(learner, "optimizer", None)
    if callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None)):
        hooks.append(EvalMode(optimizer))
    if budget.warmup_steps:
        if not rule.warms_up or not isinstance(learner, OptimizerRule):
            raise ValueError(
                f"rule {rule.name!r} cannot warm up: its update is not an optimizer step with an lr"
            )
        hooks.append(WarmUp(learner, budget.warmup_steps))
    if budget.probe_every:
        # An OptimizerRule leaves ∇L(θ₀) in .grad, which spares the probe one backward pass.
        hooks.append(Probe(budget.probe_every, grad_from_rule=isinstance(learner, OptimizerRule)))
    hooks.append(Clocks(rule.forward_passes, world))
    return hooks
