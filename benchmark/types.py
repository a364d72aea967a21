"""Type aliases shared across layers (AlgoPerf's habit: one place for the vocabulary)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

Batch = tuple[Tensor, Tensor]
"""Inputs and targets, already on the run's device."""

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(output, target) -> scalar``: mean over the batch."""

Metrics = Mapping[str, float]
"""Metric name (``split/metric`` or ``rule/...``) → value."""

Report = Callable[[int, Metrics], None]
"""``report(step, metrics)``: how a run tells the outside world about an evaluation."""


@dataclass(frozen=True, slots=True)
class CurveOverlay:
    """A theory plot: measured curves drawn over their closed forms, one panel per rule.

    ``measured`` and ``theory`` are curve keys; a ``{k}`` in both stands for 0, 1, 2, ... (one line
    per mode). ``references`` are further theory curves, as (key, label), drawn as reference lines.
    """

    title: str
    measured: str
    theory: str
    references: tuple[tuple[str, str], ...] = ()
    log_y: bool = False


@dataclass(frozen=True, slots=True)
class OptionSweepPlot:
    """A theory plot: a final metric against a task option across the suite's variants, per rule."""

    title: str
    option: str
    metric: str
    log_y: bool = False
    missing_at_budget: bool = False
    """Runs that never produced ``metric`` (never reached a threshold) are drawn at the step budget."""
    by_rule_name: bool = False
    """One line per rule name, not per configuration: for suites that give a rule a different
    setting per variant (sgd at each depth's rate)."""


TheoryPlot = CurveOverlay | OptionSweepPlot
"""A plot of runs against a task's closed form, declared by the task and drawn by the leaderboard."""
