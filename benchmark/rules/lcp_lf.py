"""LCP with linear feedback (lcp_lf): the hidden control is a fixed-shape linear map of the output control.

Meulemans et al., "The least-control principle for local learning at equilibrium", NeurIPS 2022,
https://arxiv.org/abs/2207.01332 ("LCP-LF" rows of Table 1). The dynamics follow the authors' code
(github.com/seijin-kobayashi/least-control @ e867d49, ``fixpoint_trainer.py``, ``LCPLinearFeedback``);
the code is ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor, nn

from benchmark.fixpoint import EquilibriumModel, LayeredEquilibriumModel, State, activate_prime, solve
from benchmark.rules.base import ErrorCase, RuleInfo
from benchmark.rules.lcp import (
    LCP_PAPER,
    ControlHParams,
    Grads,
    MetaTrainer,
    free_loss,
    needs_layered,
    output_control,
    step_costs,
)
from benchmark.types import Batch, LossFn

__all__ = ["LCP_LF_RULE", "LCPLinearFeedback", "LFHParams"]


class LFHParams(ControlHParams):
    """lcp_lf: lcp_di's, plus Q's learning (MNIST commands: wd_Q 0.01, σ 0.01, τ_Q 1e5, tf 5)."""

    wd_Q: Annotated[float, Field(ge=0)] = 0.01
    sigma: Annotated[float, Field(gt=0)] = 0.01
    tau_Q: Annotated[float, Field(gt=0)] = 1e5
    timescale_factor: Annotated[float, Field(ge=1)] = 5.0
    tau_eps: Annotated[float, Field(gt=0)] = 1.0
    """Time constant of the Ornstein–Uhlenbeck noise (not set by any README command; 1 assumed)."""


class LCPLinearFeedback(MetaTrainer):
    """LCP with linear feedback ``e = Q u``, where ``Q`` is learnt from noise, not by the meta-optimizer.

    Controlled relaxation from zero (Euler, step ``dt``), with no hidden-control dynamics:

    .. math::
        u = k_i u_i − k_p ∇L(ŷ), \\quad
        \\dot v = f(x̃, v) − v + Q u, \\quad
        \\dot ŷ = g(v) − ŷ + u, \\quad
        \\dot u_i = −∇L(ŷ) − α u_i

    Weight update: the gradient on ``v̂ = f(x̃, v*) + e*`` is ``−e* ⊙ φ'(v̂)`` (an extra ``φ'`` that DI
    and KP do not have; the reference's reason is not known to us) and on ``ŷ' = g(v̂) + u*`` is
    ``−u*``. Then ``Q`` learns from a noisy relaxation started at the controlled equilibrium, with
    ``dt' = dt/tf²`` (``tf`` = timescale_factor), OU noise
    ``ε ← ε + (tf/τ_ε)(−dt' ε + √dt' ξ)``, ``v ← v + dt(f − v + Qu + σε)`` (fast) and ``ŷ``, ``u_i``
    stepping ``dt'`` (slow), accumulating per sample ``C ← C − σ⁻²(Qu + σε)(u − u*)ᵀ``; finally
    ``Q ← Q + (dt/τ_Q)(mean_batch C − wd_Q Q)``.

    Args:
        model: a :class:`~benchmark.fixpoint.LayeredEquilibriumModel` (``φ'`` is needed).
        hparams: :class:`LFHParams` (lcp_di's MNIST settings, wd_Q 0.01, σ 0.01, τ_Q 1e5, tf 5).

    Differences from the paper: the noisy phase runs exactly ``max_iter`` steps (with noise the
    threshold is never met; the reference uses the same solver); ``τ_ε`` = 1 is our assumption;
    ``Q`` starts ``N(0, 1/10)`` in variance; ``Q`` and the noise generator are the rule's state.

    When not to use: when compute matters; the noisy phase doubles the relaxation cost. The decoder
    is trained too, despite the reference's comment that it assumes a fixed readout.

    Reference: arXiv 2207.01332, "LCP-LF" rows of Table 1.
    """

    hparams: LFHParams

    def __init__(self, model: nn.Module, hparams: LFHParams) -> None:
        if not isinstance(model, LayeredEquilibriumModel):
            raise TypeError(f"lcp_lf needs a LayeredEquilibriumModel, got {type(model).__name__}")
        super().__init__(model, hparams)
        self.layered = model
        weight = model.decoder.weight
        self.classes = weight.shape[0]
        self.q = torch.randn(model.state_size, self.classes, device=weight.device) * math.sqrt(0.1)
        # The noise has its own stream, drawn from the rule seed, so a state_dict resumes it exactly.
        seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator(device=weight.device).manual_seed(seed)

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        hp = self.hparams
        x, y = batch
        layered = self.layered
        with torch.no_grad():
            x_enc = layered.encode(x)
        loss = free_loss(layered, x_enc, y, loss_fn)

        def step(state: State) -> State:
            v, y_hat, u_i = state
            u, grad = output_control(hp, loss_fn, y_hat, y, u_i)
            with torch.no_grad():
                f_v, g_v = layered.implicit_and_decode(x_enc, v)
                return (
                    v + hp.dt * (f_v - v + u @ self.q.t()),
                    y_hat + hp.dt * (g_v - y_hat + u),
                    u_i + hp.dt * (-grad - hp.alpha * u_i),
                )

        zeros = x_enc.new_zeros
        init = (zeros(x_enc.shape), zeros(len(x), self.classes), zeros(len(x), self.classes))
        solution = solve(step, init, hp.threshold * hp.dt, hp.max_iter)
        v_star, y_star, u_i_star = solution.state
        u_star, _ = output_control(hp, loss_fn, y_star, y, u_i_star)
        e_star = u_star @ self.q.t()

        with torch.enable_grad():
            v_hat = layered.implicit(layered.encode(x), v_star) + e_star
            y_prime = layered.decode(v_hat.detach()) + u_star
            signal = (e_star * activate_prime(v_hat.detach(), layered.activation)).detach()
            (-(signal * v_hat).sum() - (u_star * y_prime).sum()).backward()  # type: ignore[no-untyped-call]

        noise_iters = self._learn_q(x_enc, y, loss_fn, solution.state, u_star)
        iters = solution.iterations + noise_iters
        passes = solution.iterations + noise_iters + 3
        return loss, step_costs(iters, passes, solution.converged)

    @torch.no_grad()
    def _learn_q(self, x_enc: Tensor, y: Tensor, loss_fn: LossFn, start: State, u_star: Tensor) -> int:
        hp = self.hparams
        layered = self.layered
        dt_slow = hp.dt / hp.timescale_factor**2
        v, y_hat, u_i = start
        eps = torch.zeros_like(v)
        c = torch.zeros_like(self.q)
        for _ in range(hp.max_iter):
            xi = torch.randn(v.shape, generator=self.generator, device=v.device)
            eps = eps + (hp.timescale_factor / hp.tau_eps) * (-dt_slow * eps + math.sqrt(dt_slow) * xi)
            u, grad = output_control(hp, loss_fn, y_hat, y, u_i)
            feedback = u @ self.q.t() + hp.sigma * eps
            f_v, g_v = layered.implicit_and_decode(x_enc, v)
            c -= torch.einsum("bn,bc->nc", feedback, u - u_star) / (hp.sigma**2 * len(v))
            v = v + hp.dt * (f_v - v + feedback)
            y_hat = y_hat + dt_slow * (g_v - y_hat + u)
            u_i = u_i + dt_slow * (-grad - hp.alpha * u_i)
        self.q += (hp.dt / hp.tau_Q) * (c - hp.wd_Q * self.q)
        return hp.max_iter

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["q"] = self.q.clone()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.q.copy_(state["q"])
        self.generator.set_state(state["generator"])


def _build(model: nn.Module, hparams: Any) -> LCPLinearFeedback:
    return LCPLinearFeedback(model, hparams)


LCP_LF_RULE = RuleInfo(
    name="lcp_lf",
    description="Least-control principle with linear feedback e = Q·u, Q learnt from noise.",
    hparams=LFHParams,
    build=_build,
    search_space={
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "k_i": FloatDistribution(0.1, 10.0, log=True),
        "wd_Q": FloatDistribution(1e-3, 1e-1, log=True),
    },
    reference=LCP_PAPER,
    unsupported=needs_layered("lcp_lf", "needs φ' of linear links between state blocks"),
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"sigma": 0}, r"sigma: expected greater than 0"),
    ),
    test_hparams={"threshold": 1e-4, "max_iter": 60},
)
