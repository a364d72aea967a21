"""What a learning rule is: its registry entry, its training-step protocol, and the optimizer adapter."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import torch
from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]
"""Hyperparameter value types shared by the rules (lr > 0, decay ≥ 0, momentum and betas in [0, 1))."""


class HParams(BaseModel):
    """Base of every rule's hyperparameter model: frozen, and unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class LearningRule(Protocol):
    """A rule that owns the whole training step (an optimizer is wrapped by :class:`OptimizerRule`).

    Only ``train_step`` runs on the training clock, so it does the update and nothing else. A
    rule may also have ``diagnostics() -> {"rule/...": value}``, on itself or on its ``optimizer``;
    the loop reads it at each evaluation, off the clock (:class:`benchmark.hooks.Diagnostics`).
    """

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        """One update of ``model`` on ``batch``; returns at least ``train/loss`` (before the update).

        Other values it returns (``rule/...``) are reported at each evaluation, those of the
        step just before it; ``rule/forward_passes`` is the step's cost (see :class:`RuleInfo`).
        """
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class OptimizerRule:
    """Adapts a ``torch.optim.Optimizer``: zero grads, forward, loss, backward, step.

    An optimizer may expose ``diagnostics() -> dict[str, float]`` (e.g. AGD's step size); the
    training loop reads it at evaluations, not here, so that it stays off the training clock.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lrs: list[float | None] = [group.get("lr") for group in optimizer.param_groups]

    def scale_lr(self, factor: float) -> None:
        """Run every parameter group at ``factor`` × its ``lr`` at build time (a warm-up's ramp)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            if base is None:
                raise ValueError(f"{type(self.optimizer).__name__} has no lr to scale")
            group["lr"] = base * factor

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        inputs, targets = batch
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        value = float(loss.detach())
        try:
            self.optimizer.step()
        except RuntimeError as exc:
            blown_up = not (math.isfinite(value) and all(_finite_gradients(self.optimizer)))
            if not (blown_up or isinstance(exc, torch.linalg.LinAlgError)):  # type: ignore[attr-defined]
                raise
            # Where other optimizers step to NaN weights, a preconditioner's linear algebra raises
            # (Shampoo's SVD): on a non-finite loss or gradient, or on statistics beyond the float
            # range while the gradients are still finite (seen at |g| ≈ 1e17 on digits). Either way
            # the run's numbers blew up at this step: it diverged.
            return {"train/loss": math.nan}
        return {"train/loss": value}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(dict(state))


def _finite_gradients(optimizer: torch.optim.Optimizer) -> Iterator[bool]:
    for group in optimizer.param_groups:
        for param in group["params"]:
            yield param.grad is None or bool(torch.isfinite(param.grad).all())


def steps_without_closure(optimizer: type[torch.optim.Optimizer]) -> bool:
    """Whether ``optimizer.step()`` runs without a closure, so it reads only the gradients and state.

    Such a step sees the same DDP-averaged gradient on every worker and keeps them in step; one
    that needs a closure (L-BFGS) re-evaluates the loss on its own batch.
    """
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is None or closure.default is not inspect.Parameter.empty


def builds_optimizer_rule(build: Callable[..., Any]) -> bool:
    """Whether ``build`` gives an :class:`OptimizerRule` whose optimizer steps without a closure.

    Such a rule's update reads only the gradients, which DDP averages, so it may train
    data-parallel. A :class:`BuildOptimizer`'s class is checked (L-BFGS's step needs a closure);
    any other build is read from its declared return type, since ``OptimizerRule.train_step`` calls
    ``optimizer.step()`` without one.
    """
    if isinstance(build, BuildOptimizer):
        return steps_without_closure(build.optimizer)
    if not inspect.isfunction(build):
        return False
    returns = inspect.signature(build).return_annotation
    if isinstance(returns, str):  # postponed annotations: a name in the build's module
        returns = build.__globals__.get(returns)
    return isinstance(returns, type) and issubclass(returns, OptimizerRule)


@dataclass(frozen=True, slots=True)
class BuildOptimizer:
    """A rule's ``build`` from a torch.optim class whose keyword arguments are the hyperparameters.

    ``exclude`` names hyperparameters that are not the optimizer's (those of a rule's ``prepare``).
    A rule built this way has ``data_parallel`` derived from the class (:func:`builds_optimizer_rule`).
    """

    optimizer: type[torch.optim.Optimizer]
    exclude: frozenset[str] = frozenset()

    def __call__(self, model: nn.Module, hp: HParams) -> OptimizerRule:
        return OptimizerRule(self.optimizer(model.parameters(), **hp.model_dump(exclude=set(self.exclude))))


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """Hyperparameters that must be refused, and a regex of the message (contract-tested)."""

    hparams: Mapping[str, Any]
    match: str


def always_supported(task: TaskInfo, options: BaseModel) -> str | None:
    return None


class StackedStep(Protocol):
    """A rule's update over a group's stacked parameters (leading dimension: the group's members).

    Built by :attr:`BatchForm.build`, it holds the members' optimizer state, stacked as the
    parameters are, and updates the parameters in place (:mod:`benchmark.train_group`). A rule
    whose optimizer has ``diagnostics()`` gives its stacked step ``diagnostics() -> [{"rule/...":
    value}, ...]``, one dict per member in the stack's order, which the group reports for each
    member at evaluations in place of the member's own (unstepped) optimizer's.
    """

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        """One update of every member, in place; ``grads`` are stacked as ``params``."""
        ...

    def keep(self, members: torch.Tensor) -> None:
        """Keep only these members (indices into the current stack): the others have ended."""
        ...

    def scale_lr(self, factor: float) -> None:
        """Run every member at ``factor`` × its ``lr`` (a warm-up's ramp, as ``OptimizerRule.scale_lr``)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchForm:
    """A rule's declaration that runs differing only in seed (and in ``per_member``) train as one.

    Attributes:
        build: ``build(params, hparams) -> StackedStep``: ``params`` are the group's stacked
            parameters, ``hparams`` one validated model per member, in the stack's order.
        per_member: hyperparameters whose values may differ between a group's members (as HFTA's
            optimizers take arrays of them); every other hyperparameter is the same for all.
    """

    build: Callable[[Sequence[torch.Tensor], Sequence[Any]], StackedStep]
    per_member: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A learning rule's registry entry.

    Attributes:
        name: registry key, snake_case (``eg_sgd``).
        description: one line for ``synapsebench list``.
        hparams: the frozen pydantic model of its hyperparameters; its defaults are the paper's.
        build: ``build(model, hparams) -> LearningRule``.
        search_space: Optuna distributions over the hyperparameters that tuning may vary.
        reference: the paper (URL).
        track: ``tuned`` rules get a tuning budget; ``self_tuning`` rules (AGD) run untuned.
        prepare: optional ``prepare(model, generator, hparams) -> model``, for rules that own the
            initialisation or need a sign-split model. Runs before ``build``.
        unsupported: ``unsupported(task, options) -> reason | None``; the planner drops the cell.
        error_cases: hyperparameters that must raise, for the contract tests.
        test_hparams: a cheap setting for CI (as a task's ``test_options``), e.g. a loose solver.
        data_parallel: its ``build`` gives an :class:`OptimizerRule` whose step reads only the
            gradient, which DDP averages across workers, so runs may use ``budget.workers``.
            Derived from ``build`` (:func:`builds_optimizer_rule`): a rule never sets it by hand.
        forward_passes: the cost of one step in forward-equivalent passes, for the
            ``clock/forward_passes`` clock: 3 for a forward and a backward (a backward costs about
            two forwards). A rule whose cost varies from step to step reports it instead, as
            ``rule/forward_passes`` in each ``train_step``'s metrics, which then overrides this
            value: equilibrium rules their measured relaxation iterations, perturbation rules
            their extra forwards, curvature rules their Jacobian's or output-Hessian factor's
            backward passes (docs/protocol.md). Linear algebra (solves, K-FAC's inverses) is not
            counted.
        batching: how its runs train in groups (:class:`BatchForm`); None: each run alone.
    """

    name: str
    description: str
    hparams: type[HParams]
    build: Callable[[nn.Module, Any], LearningRule]
    search_space: Mapping[str, BaseDistribution] = field(default_factory=dict)
    reference: str = ""
    track: Literal["tuned", "self_tuning"] = "tuned"
    prepare: Callable[[nn.Module, torch.Generator, Any], nn.Module] | None = None
    unsupported: Callable[[TaskInfo, Any], str | None] = always_supported
    error_cases: tuple[ErrorCase, ...] = ()
    test_hparams: Mapping[str, Any] = field(default_factory=dict)
    data_parallel: bool = field(default=False, init=False)
    forward_passes: float = 3.0
    batching: BatchForm | None = None

    def __post_init__(self) -> None:
        # frozen: set once, at construction
        object.__setattr__(self, "data_parallel", builds_optimizer_rule(self.build))

    def defaults(self) -> dict[str, Any]:
        return self.hparams().model_dump(mode="json")

    @property
    def warms_up(self) -> bool:
        """Whether ``budget.warmup_steps`` applies: its step is a torch optimizer's, with an ``lr``."""
        return self.data_parallel and "lr" in self.hparams.model_fields
