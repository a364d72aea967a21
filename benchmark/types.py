"""Type aliases shared across layers (AlgoPerf's habit: one place for the vocabulary)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

Batch = tuple[Tensor, Tensor]
"""Inputs and targets, already on the run's device."""

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss(output, target) -> scalar``: mean over the batch."""

Metrics = Mapping[str, float]
"""Metric name (``split/metric`` or ``rule/...``) → value."""

Report = Callable[[int, Metrics], None]
"""``report(step, metrics)``: how a run tells the outside world about an evaluation."""
