"""TASKS: the single table of tasks. A new task is one file and one line here."""

from __future__ import annotations

from benchmark.registry import Registry
from benchmark.tasks.base import Resources, Target, TaskData, TaskInfo, TaskOptions
from benchmark.tasks.digits import DIGITS_MLP
from benchmark.tasks.mnist1d import MNIST1D_MLP

TASKS: Registry[TaskInfo] = Registry("task")
TASKS.add(MNIST1D_MLP)
TASKS.add(DIGITS_MLP)

__all__ = ["TASKS", "Resources", "Target", "TaskData", "TaskInfo", "TaskOptions"]
