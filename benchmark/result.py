"""What one run produced: the record that train returns, the store writes and the grid reports.

Kept apart from :mod:`benchmark.train` so that the store and the leaderboard can read results
without importing the training loop, the rules or the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

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
    selection: tuple[str, str] = ("", "max")
    """(metric, mode) the leaderboard and tuning choose sweep points by; empty: the target's."""
    chance: float = float("nan")
    """The target metric's value at chance (the 0 of normalised cross-task scores)."""
    theory: bool = False
    """A task scored against closed forms, with no held-out split (left out of cross-task scores)."""
    batch_size: int = 1
    """Runs trained together as one stacked model (:mod:`benchmark.train_group`); 1: alone. Its
    ``train_time_s`` and ``wall_time_s`` are then the group's divided by this size."""
