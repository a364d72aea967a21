"""A rule's update over a group's stacked parameters: the state and hyperparameters of many runs at once.

Runs that differ only in their seed (and in a few scalar hyperparameters) train as one model whose
parameters carry a leading member dimension (:mod:`benchmark.train_group`). Their update is the
rule's own pure update function, applied to the stacked tensors: elementwise math is the same for
a stack as for each member alone. A hyperparameter that differs between members becomes a tensor
of one value per member, broadcast against each parameter, as HFTA's fused optimizers take arrays
of hyperparameters (Wang et al., 2021, "Horizontally Fused Training Array", MLSys, §3.2). One that
all members share stays a Python number, so that its arithmetic, and its rounding, are those of
the rule's own optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from benchmark.rules.base import BatchForm

Update = Callable[..., Any]
"""``update(param, grad, *state, **hyperparameters, inplace=True)``: a rule's pure update."""


def stacked_hypers(hparams: Sequence[Any], names: Sequence[str], like: Tensor) -> dict[str, Any]:
    """Each named hyperparameter: its value if every member has the same, else a tensor of the
    members' values (in ``like``'s dtype and device)."""
    out: dict[str, Any] = {}
    for name in names:
        values = [getattr(h, name) for h in hparams]
        same = all(v == values[0] for v in values)
        out[name] = values[0] if same else torch.tensor(values, dtype=like.dtype, device=like.device)
    return out


def _per_member(value: Any, param: Tensor) -> Any:
    """A member-indexed tensor shaped to broadcast against a stacked parameter; numbers as they are."""
    if isinstance(value, Tensor):
        return value.view(-1, *([1] * (param.dim() - 1)))
    return value


class StackedOptimizer:
    """The :class:`~benchmark.rules.base.StackedStep` of a rule given by its pure update function.

    Args:
        update: the rule's update, ``update(param, grad, *state, **hyper, inplace=True)``.
        params: the stacked parameters (their state is created here, zeros as theirs).
        hyper: the update's keyword hyperparameters (numbers, or one value per member).
        states: the names of the update's state tensors in its argument order; ``None`` passes
            ``None`` (state the setting does not use: no momentum, no AMSGrad).
        first: hyperparameters of the first step that differ (momentum's zero buffers with
            dampening 0 start at the first gradient, as torch.optim.SGD's buffers).
        counts_steps: pass ``step`` (from 1) as a hyperparameter (Adam's bias corrections).
    """

    def __init__(
        self,
        update: Update,
        params: Sequence[Tensor],
        hyper: dict[str, Any],
        states: Sequence[str | None],
        first: dict[str, Any] | None = None,
        counts_steps: bool = False,
    ) -> None:
        self.update = update
        self.hyper = hyper
        self.names = tuple(states)
        self.state = {n: [torch.zeros_like(p) for p in params] for n in self.names if n is not None}
        self.first = first or {}
        self.counts_steps = counts_steps
        self.steps = 0
        self.base_lr = hyper.get("lr")

    @torch.no_grad()
    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        self.steps += 1
        hyper = {**self.hyper, **(self.first if self.steps == 1 else {})}
        if self.counts_steps:
            hyper["step"] = float(self.steps)
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            state = [None if n is None else self.state[n][i] for n in self.names]
            shaped = {k: _per_member(v, param) for k, v in hyper.items()}
            self.update(param, grad, *state, **shaped, inplace=True)

    def scale_lr(self, factor: float) -> None:
        if self.base_lr is None:
            raise ValueError(f"{self.update.__name__} has no lr to scale")
        self.hyper["lr"] = self.base_lr * factor

    def keep(self, members: Tensor) -> None:
        self.state = {n: [t.index_select(0, members) for t in ts] for n, ts in self.state.items()}
        self.hyper = {
            k: v.index_select(0, members.to(v.device)) if isinstance(v, Tensor) else v
            for k, v in self.hyper.items()
        }
        if isinstance(self.base_lr, Tensor):
            self.base_lr = self.base_lr.index_select(0, members.to(self.base_lr.device))


def sgd_form(update: Update, names: Sequence[str]) -> BatchForm:
    """The batched form of an SGD-like rule (SGD's momentum buffer; ``names`` its update's
    keyword hyperparameters, among them ``momentum`` and ``dampening``); per member: lr, weight
    decay and momentum."""

    def build(params: Sequence[Tensor], hparams: Sequence[Any]) -> StackedOptimizer:
        hyper = stacked_hypers(hparams, names, params[0])
        momentum = hyper["momentum"]
        if isinstance(momentum, Tensor):  # torch.optim.SGD ignores dampening without momentum
            hyper["dampening"] = hyper["dampening"] * (momentum != 0).to(momentum.dtype)
        buffer = "momentum_buffer" if isinstance(momentum, Tensor) or momentum != 0 else None
        return StackedOptimizer(update, params, hyper, (buffer,), first={"dampening": 0.0})

    return BatchForm(build, per_member=frozenset({"lr", "weight_decay", "momentum"}))


def adam_form(update: Update, names: Sequence[str], **fixed: Any) -> BatchForm:
    """The batched form of an Adam-like rule (two moments, AMSGrad's maximum where the hparams
    have ``amsgrad``; ``betas`` as ``beta1``, ``beta2``); per member: lr and weight decay."""

    def build(params: Sequence[Tensor], hparams: Sequence[Any]) -> StackedOptimizer:
        hyper = {**stacked_hypers(hparams, names, params[0]), **fixed}
        hyper["beta1"], hyper["beta2"] = hparams[0].betas  # shared by every member
        amsgrad = "max_exp_avg_sq" if getattr(hparams[0], "amsgrad", False) else None
        states = ("exp_avg", "exp_avg_sq", amsgrad)
        return StackedOptimizer(update, params, hyper, states, counts_steps=True)

    return BatchForm(build, per_member=frozenset({"lr", "weight_decay"}))


class StackedTorchOptimizer:
    """The :class:`~benchmark.rules.base.StackedStep` of a torch optimizer whose update is
    elementwise: the rule's own optimizer, built over the stacked parameters, steps every member
    at once, its state stacked as they are. Its members share every hyperparameter (its form has
    no ``per_member``), since the optimizer takes numbers, not one value per member.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group.get("lr") for group in optimizer.param_groups]

    def _bind(self, params: Sequence[Tensor]) -> None:
        """Point the optimizer at ``params`` (new tensors after :meth:`keep`), its state with them."""
        (group,) = self.optimizer.param_groups
        old = group["params"]
        if all(a is b for a, b in zip(old, params, strict=True)):
            return
        state = self.optimizer.state
        moved = {new: state[p] for p, new in zip(old, params, strict=True) if p in state}
        state.clear()
        state.update(moved)
        group["params"] = list(params)

    @torch.no_grad()
    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        self._bind(params)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        self.optimizer.step()
        for param in params:
            param.grad = None

    def scale_lr(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            if base is None:
                raise ValueError(f"{type(self.optimizer).__name__} has no lr to scale")
            group["lr"] = base * factor

    def keep(self, members: Tensor) -> None:
        for param in self.optimizer.param_groups[0]["params"]:
            state = self.optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and value.shape == param.shape:  # not a step count
                    state[key] = value.index_select(0, members.to(value.device))


def optimizer_form(make: Callable[[list[Tensor], Any], torch.optim.Optimizer]) -> BatchForm:
    """The batched form of a rule whose torch optimizer updates elementwise (its state has the
    parameters' shapes): ``make(params, hparams)`` builds it, as the rule's ``build`` does, over
    the stacked parameters. Members share every hyperparameter."""

    def build(params: Sequence[Tensor], hparams: Sequence[Any]) -> StackedTorchOptimizer:
        return StackedTorchOptimizer(make(list(params), hparams[0]))

    return BatchForm(build)
