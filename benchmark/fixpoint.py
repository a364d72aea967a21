"""Equilibrium models and their fixed-point solver, shared by the LCP rules and the equilibrium tasks.

This module sits below ``rules`` and ``tasks`` (it imports torch only), so that a rule can recognise
an equilibrium model and drive its dynamics without importing a task, and a task can build one
without importing a rule.

An equilibrium model maps an input ``x`` to an injection ``x̃ = encode(x)``, then to the state ``v*``
that solves ``v = f(x̃, v)``, then to the output ``ŷ = g(v*)``. Every state here is a flat
``(batch, n)`` tensor; models with several blocks or feature maps reshape internally.

The solver and the models follow the least-control principle's code (Meulemans et al. 2022,
github.com/seijin-kobayashi/least-control, ``fixpoint_solver.py`` and ``implicit_model.py``); our code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

State = tuple[Tensor, ...]
Step = Callable[[State], State]

DEFAULT_THRESHOLD = 1e-4
"""The reference's default solver error threshold (run_classification.py)."""
DEFAULT_MAX_ITER = 50
"""The reference's default maximum number of solver iterations."""


@dataclass(frozen=True, slots=True)
class Solution:
    """What a solve returned: the final state, how many steps it took and whether it met the threshold."""

    state: State
    iterations: int
    converged: bool
    error: float


@torch.no_grad()
def relative_change(new: State, old: State) -> float:
    """Max over samples of ``‖new − old‖₂ / (1e-5 + ‖old‖₂)``, the norm over all state tensors together."""
    diff = sum((n - o).square().flatten(1).sum(1) for n, o in zip(new, old, strict=True))
    size = sum(o.square().flatten(1).sum(1) for o in old)
    assert isinstance(diff, Tensor)
    assert isinstance(size, Tensor)
    return float((diff.sqrt() / (1e-5 + size.sqrt())).max())


def solve(step: Step, init: State, threshold: float, max_iter: int) -> Solution:
    """Iterate ``state ← step(state)`` until the relative change is below ``threshold``.

    The reference's "vanilla" solver: no damping, stop when every sample's relative change is under
    the threshold, or after ``max_iter`` steps. Callers that integrate ODEs with Euler step ``dt``
    pass ``threshold·dt``, since one step then moves the state by ``dt`` times the residual.

    Args:
        step: one iteration (a map or an Euler step of the dynamics).
        init: the starting state.
        threshold: relative-change threshold.
        max_iter: the most steps to take (``≥ 1``).

    Returns:
        The last state, the number of steps taken, and whether the threshold was met.
    """
    state = init
    error = math.inf
    for iteration in range(1, max_iter + 1):
        new = step(state)
        error = relative_change(new, state)
        state = new
        if error < threshold:
            return Solution(state, iteration, True, error)
    return Solution(state, max_iter, False, error)


class EquilibriumModel(nn.Module):
    """A network whose output is read from the fixed point ``v* = f(x̃, v*)``.

    ``model(x)`` with gradients off solves the free fixed point (evaluation, as in the reference).
    With gradients on, it is differentiable: a feedforward model (``feedforward_depth`` set) unrolls
    ``f`` that many times from zero, which reaches the fixed point exactly; a recurrent one solves
    without a graph and differentiates implicitly (recurrent backprop), so a plain optimizer gets
    the exact gradient at the equilibrium.

    Attributes:
        state_size: ``n``, the width of the flat state.
        feedforward_depth: iterations from zero that reach the fixed point exactly; None if recurrent.
        solver_threshold, solver_max_iter: the free solve's settings (rules set them to theirs).
        last_solution: iterations and convergence of the latest free solve (for diagnostics).
    """

    feedforward_depth: int | None = None

    def __init__(self, state_size: int) -> None:
        super().__init__()
        self.state_size = state_size
        self.solver_threshold = DEFAULT_THRESHOLD
        self.solver_max_iter = DEFAULT_MAX_ITER
        self.last_solution: Solution | None = None

    def encode(self, x: Tensor) -> Tensor:
        """The input injection ``x̃``, shaped like the state ``(batch, n)``."""
        raise NotImplementedError

    def implicit(self, x_enc: Tensor, v: Tensor) -> Tensor:
        """The implicit map ``f(x̃, v)``, input injection included."""
        raise NotImplementedError

    def decode(self, v: Tensor) -> Tensor:
        """The readout ``g(v)``: logits ``(batch, classes)``."""
        raise NotImplementedError

    def implicit_and_decode(self, x_enc: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x̃, v), g(v))`` together; models override it to share work (the activation)."""
        return self.implicit(x_enc, v), self.decode(v)

    def configure_solver(self, threshold: float, max_iter: int) -> None:
        self.solver_threshold = threshold
        self.solver_max_iter = max_iter

    def constrain(self) -> list[float]:
        """Project the weights back onto the model's constraint set; return the factor per link.

        Trainers call it after every optimizer step. The base model has no constraint.
        """
        return []

    @torch.no_grad()
    def solve_free(self, x_enc: Tensor, init: Tensor | None = None) -> Solution:
        """The free equilibrium ``v* = f(x̃, v*)`` from zero (or ``init``), without a graph."""
        start = torch.zeros_like(x_enc) if init is None else init
        solution = solve(
            lambda s: (self.implicit(x_enc, s[0]),), (start,), self.solver_threshold, self.solver_max_iter
        )
        self.last_solution = solution
        return solution

    def unroll(self, x_enc: Tensor, depth: int) -> Tensor:
        """``depth`` iterations of ``f`` from zero, with the graph (backprop through the MLP/CNN)."""
        v = torch.zeros_like(x_enc)
        for _ in range(depth):
            v = self.implicit(x_enc, v)
        return v

    def forward(self, x: Tensor) -> Tensor:
        x_enc = self.encode(x)
        if not torch.is_grad_enabled():
            return self.decode(self.solve_free(x_enc).state[0])
        if self.feedforward_depth is not None:
            return self.decode(self.unroll(x_enc, self.feedforward_depth))
        v_star = self.solve_free(x_enc).state[0]
        v_hat, _ = attach_implicit(self, x_enc, v_star, self.solver_threshold, self.solver_max_iter)
        return self.decode(v_hat)


@dataclass(slots=True)
class AdjointStats:
    """Filled in by the backward hook of :func:`attach_implicit` when the adjoint solve runs."""

    iterations: int = 0
    converged: bool = True


def attach_implicit(
    model: EquilibriumModel, x_enc: Tensor, v_star: Tensor, threshold: float, max_iter: int
) -> tuple[Tensor, AdjointStats]:
    """Re-attach the equilibrium to the graph with an implicit-function-theorem backward.

    ``v̂ = f(x̃, v*)`` is one graph-recording call at the solved ``v*``. In the backward pass the
    incoming ``a = ∂L/∂v̂`` is replaced by the solution of ``w = Jᵀw + a``, found by the same solver
    started from ``a`` (Neumann iteration). What then flows through ``f`` into its parameters and
    the encoder is ``(∂f/∂θ)ᵀ(I − Jᵀ)⁻¹a``, the exact gradient at the equilibrium.

    ``J = ∂f/∂v`` is taken at ``v̂``, as in the authors' code (seijin-kobayashi/least-control,
    ``RBP.forward_train``): the state the loss reads. At an exact fixed point ``v̂ = v*``; at the
    solver's threshold the two Jacobians differ by O(threshold).

    Returns:
        ``v̂`` and the statistics of the adjoint solve (filled in during backward).
    """
    stats = AdjointStats()
    v_hat = model.implicit(x_enc, v_star.detach())
    v_in = v_hat.detach().requires_grad_(True)
    with torch.enable_grad():
        f_adj = model.implicit(x_enc.detach(), v_in)

    def hook(grad: Tensor) -> Tensor:
        def adjoint_step(state: State) -> State:
            (w,) = torch.autograd.grad(f_adj, v_in, state[0], retain_graph=True)
            return (w + grad,)

        solution = solve(adjoint_step, (grad,), threshold, max_iter)
        stats.iterations, stats.converged = solution.iterations, solution.converged
        return solution.state[0]

    if v_hat.requires_grad:
        v_hat.register_hook(hook)  # type: ignore[no-untyped-call]
    return v_hat, stats


Activation = Literal["tanh", "relu"]


def activate(v: Tensor, activation: Activation) -> Tensor:
    return torch.tanh(v) if activation == "tanh" else F.relu(v)


def activate_prime(v: Tensor, activation: Activation) -> Tensor:
    """``φ'(v)``, the derivative of the activation."""
    if activation == "tanh":
        return 1 - torch.tanh(v).pow(2)
    return (v > 0).to(v.dtype)


class LayeredEquilibriumModel(EquilibriumModel):
    """An equilibrium model whose implicit map is a sum of linear links between blocks of the state.

    The state is the concatenation of blocks ``v = [v_0 | v_1 | …]`` of pre-activations. Each link
    ``(s → d, W)`` adds ``W φ(v_s)`` to block ``d``; the encoder injects ``x̃`` into block 0 and the
    decoder reads ``g(v) = D φ(v_r)`` from the readout block ``r``:

    .. math::
        f(x̃, v)_d = [d = 0]\\,\\mathrm{enc}(x) + \\sum_{(s \\to d, W)} W φ(v_s), \\qquad
        g(v) = D φ(v_r)

    so ``Jᵀe = φ'(v) ⊙ Σ Wᵀe_d`` and ``J_gᵀu = φ'(v) ⊙ Dᵀu``. This structure is what lets the
    Kollen–Pollack and linear-feedback trainers replace the transposes with learnt feedback weights
    (:meth:`feedback`). A link is an ``nn.Linear`` (on flattened blocks) or an ``nn.Conv2d``.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[int, ...]],
        encoder: nn.Module,
        links: Sequence[tuple[int, int, nn.Module]],
        decoder: nn.Linear,
        activation: Activation,
        feedforward_depth: int | None,
        spectral_bound: float | None = None,
    ) -> None:
        sizes = [math.prod(shape) for shape in blocks]
        super().__init__(sum(sizes))
        self.blocks = [tuple(shape) for shape in blocks]
        self.block_sizes = sizes
        self.encoder = encoder
        self.links = nn.ModuleList(module for _, _, module in links)
        self.routes = [(src, dst) for src, dst, _ in links]
        self.decoder = decoder
        self.activation: Activation = activation
        self.feedforward_depth = feedforward_depth
        self.readout_block = len(blocks) - 1
        self.spectral_bound = spectral_bound
        if spectral_bound is not None:
            if not all(isinstance(link, nn.Linear) for link in self.links):
                raise ValueError("spectral_bound needs linear links")
            self.constrain()  # the contractive init: every link starts at most at the bound

    @torch.no_grad()
    def constrain(self) -> list[float]:
        """Rescale each linear link whose spectral norm exceeds ``spectral_bound`` back onto it.

        With ``‖W‖₂ ≤ γ < 1`` and a 1-Lipschitz activation (tanh), ``f`` is a γ-contraction in
        ``v`` for every input, so plain iteration converges (relative error ``~γᵏ``) and the fixed
        point is unique. This is projected gradient descent: the rule's update is unchanged, the
        step is followed by the projection (a multiplicative decay of ``W`` only when it leaves the
        ball). Returns the factor applied to each link (1.0 when unconstrained or inside).
        """
        bound = self.spectral_bound
        if bound is None:
            return [1.0] * len(self.links)
        factors = []
        for weight in self.link_weights():
            norm = float(torch.linalg.matrix_norm(weight, ord=2))
            factor = min(1.0, bound / norm) if norm > 0 else 1.0
            if factor < 1.0:
                weight.mul_(factor)
            factors.append(factor)
        return factors

    def split(self, v: Tensor) -> list[Tensor]:
        """The blocks of a flat state, each shaped ``(batch, *block)``."""
        parts = torch.split(v, self.block_sizes, dim=1)
        return [p.reshape(len(v), *shape) for p, shape in zip(parts, self.blocks, strict=True)]

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    def encode(self, x: Tensor) -> Tensor:
        first = self.encoder(x).flatten(1)
        return F.pad(first, (0, self.state_size - first.shape[1]))

    def _apply_link(self, link: nn.Module, h: Tensor, dst: int) -> Tensor:
        out: Tensor = link(h.flatten(1)) if isinstance(link, nn.Linear) else link(h)
        return out.reshape(len(h), *self.blocks[dst])

    def implicit(self, x_enc: Tensor, v: Tensor) -> Tensor:
        return self._implicit_from(x_enc, activate(v, self.activation))

    def implicit_and_decode(self, x_enc: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = activate(v, self.activation)
        return self._implicit_from(x_enc, h), self._decode_from(h)

    def _implicit_from(self, x_enc: Tensor, h: Tensor) -> Tensor:
        hs = self.split(h)
        out: list[Tensor | None] = [None] * len(self.blocks)
        for (src, dst), link in zip(self.routes, self.links, strict=True):
            contribution = self._apply_link(link, hs[src], dst)
            current = out[dst]
            out[dst] = contribution if current is None else current + contribution
        parts = [torch.zeros_like(h) if o is None else o for h, o in zip(hs, out, strict=True)]
        return x_enc + self.merge(parts)

    def decode(self, v: Tensor) -> Tensor:
        return self._decode_from(activate(v, self.activation))

    def _decode_from(self, h: Tensor) -> Tensor:
        out: Tensor = self.decoder(self.split(h)[self.readout_block].flatten(1))
        return out

    def link_weights(self) -> list[Tensor]:
        """The weight of each link, in ``routes`` order (the shapes feedback weights copy)."""
        return [link.weight for link in self.links]  # type: ignore[misc]

    def feedback(self, e: Tensor, u: Tensor, weights: Sequence[Tensor], readout_weight: Tensor) -> Tensor:
        """``B·e + D_fb·u``: the transposed links applied with feedback weights of the same layout.

        With ``weights`` the links' own weights and ``readout_weight`` the decoder's, this is
        ``Wᵀe + Dᵀu`` (no bias, no activation), so that ``φ'(v) ⊙ feedback(e, u) = Jᵀe + J_gᵀu``.
        Storing ``B`` in ``W``'s layout makes the Kollen–Pollack update ``grad_B = grad_W`` exact.
        """
        es = self.split(e)
        out: list[Tensor] = [torch.zeros_like(p) for p in es]
        for (src, dst), link, weight in zip(self.routes, self.links, weights, strict=True):
            if isinstance(link, nn.Linear):
                back = F.linear(es[dst].flatten(1), weight.t()).reshape_as(out[src])
            else:
                assert isinstance(link, nn.Conv2d)
                stride, padding = link.stride, link.padding
                assert isinstance(padding, tuple)
                natural = [
                    (es[dst].shape[2 + i] - 1) * stride[i] - 2 * padding[i] + link.kernel_size[i]
                    for i in range(2)
                ]
                extra = tuple(out[src].shape[2 + i] - natural[i] for i in range(2))
                back = F.conv_transpose2d(
                    es[dst], weight, stride=stride, padding=padding, output_padding=extra
                )
            out[src] = out[src] + back
        readout = F.linear(u, readout_weight.t()).reshape_as(out[self.readout_block])
        out[self.readout_block] = out[self.readout_block] + readout
        return self.merge(out)
