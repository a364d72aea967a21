"""The task's model as the rules' ``unsupported(task, options)`` checks see it: built once, then shared.

The planner asks every rule of a suite whether it can train every task. Several rules answer by
looking at the model (its layers, its parameter count, whether it is an equilibrium model), so the
model is built once per (task, options), on the CPU from a generator seeded 0, and kept. The checks
only read it: it is never trained.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo

CACHE_SIZE = 4
"""Models kept (least recently used first out): a suite plans its tasks one after another."""

_MODELS: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()


def task_model(task: TaskInfo, options: Any) -> nn.Module:
    """``task.build_model(options, generator seeded 0)``, built on the first call and cached.

    The key is the task's name and its options' JSON, so equal options share one model. Callers
    must not modify it.
    """
    spelled = options.model_dump_json() if isinstance(options, BaseModel) else repr(options)
    key = (task.name, spelled)
    model = _MODELS.get(key)
    if model is None:
        model = task.build_model(options, torch.Generator().manual_seed(0))
        _MODELS[key] = model
        if len(_MODELS) > CACHE_SIZE:
            _MODELS.popitem(last=False)
    else:
        _MODELS.move_to_end(key)
    return model
