"""RULES: the single table of learning rules. A new rule is one file and one line here."""

from __future__ import annotations

from benchmark.registry import Registry
from benchmark.rules.agd import AGD_RULE
from benchmark.rules.base import BuildOptimizer, ErrorCase, HParams, LearningRule, OptimizerRule, RuleInfo
from benchmark.rules.baselines import ADAM, ADAMW, SGD
from benchmark.rules.diffgrad import DIFFGRAD
from benchmark.rules.eg import EG_ADAMW, EG_SGD, SGD_SIGNED
from benchmark.rules.kfac import KFAC_RULE
from benchmark.rules.lcp import BP_RULE, LCP_DI_RULE, LCP_EBD_RULE, LCP_KP_RULE, RBP_RULE
from benchmark.rules.lcp_lf import LCP_LF_RULE
from benchmark.rules.library import ADEMAMIX, LION, SHAMPOO, SOAP_RULE
from benchmark.rules.muon import MUON
from benchmark.rules.natgrad import NATGRAD_DIAG, NATGRAD_EXACT
from benchmark.rules.perturbation import NODE_PERTURBATION, WEIGHT_PERTURBATION
from benchmark.rules.self_tuning import PRODIGY, SCHEDULE_FREE_ADAMW

RULES: Registry[RuleInfo] = Registry("rule")
# Baselines (torch.optim)
RULES.add(SGD)
RULES.add(ADAM)
RULES.add(ADAMW)
RULES.add(DIFFGRAD)
# Exponentiated gradient and its sign-constrained baseline (issue 3)
RULES.add(EG_SGD)
RULES.add(EG_ADAMW)
RULES.add(SGD_SIGNED)
# Automatic gradient descent (issue 4)
RULES.add(AGD_RULE)
# Least-control principle trainers on equilibrium models (issue 5)
RULES.add(BP_RULE)
RULES.add(RBP_RULE)
RULES.add(LCP_DI_RULE)
RULES.add(LCP_KP_RULE)
RULES.add(LCP_EBD_RULE)
RULES.add(LCP_LF_RULE)
# Natural-gradient and zeroth-order rules (issue 7)
RULES.add(NATGRAD_EXACT)
RULES.add(NATGRAD_DIAG)
RULES.add(KFAC_RULE)
RULES.add(WEIGHT_PERTURBATION)
RULES.add(NODE_PERTURBATION)
# The optimizers today's comparisons are made against, from their libraries (issue 21)
RULES.add(MUON)
RULES.add(SCHEDULE_FREE_ADAMW)
RULES.add(LION)
RULES.add(SOAP_RULE)
RULES.add(SHAMPOO)
RULES.add(ADEMAMIX)
RULES.add(PRODIGY)

__all__ = ["RULES", "BuildOptimizer", "ErrorCase", "HParams", "LearningRule", "OptimizerRule", "RuleInfo"]
