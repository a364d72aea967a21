"""RULES: the single table of learning rules. A new rule is one file and one line here."""

from __future__ import annotations

from benchmark.registry import Registry
from benchmark.rules.base import ErrorCase, HParams, LearningRule, OptimizerRule, RuleInfo
from benchmark.rules.baselines import ADAMW, SGD

RULES: Registry[RuleInfo] = Registry("rule")
RULES.add(SGD)
RULES.add(ADAMW)

__all__ = ["RULES", "ErrorCase", "HParams", "LearningRule", "OptimizerRule", "RuleInfo"]
