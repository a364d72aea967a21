"""Cost of the implied-metric probe, as a multiple of one training step, on an MNIST-sized MLP.

    .venv/bin/python benchmarks/implied_metric.py [--repeats 30] [--batch 128] [--threads 1]
        [--nodes 2] [--quadrature legendre|lobatto] [--no-grad-from-rule]

The model is 784 → 256 → 256 → 10 (ReLU, 269k parameters) with cross-entropy on random inputs (the cost
does not depend on the data). One training step is SGD's zero-grad, forward, backward, step; one probe
is ``before`` (saving θ₀; with ``--no-grad-from-rule`` also a forward-backward at θ₀) plus ``after`` (one
forward-backward per node, with ``legendre`` also a forward at θ₁, the O(D) reductions and the restores).
The aim (issue 7) is a ratio of 3 or less; the machine's load moves it, so run it a few times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from benchmark.probe import ImpliedMetricProbe
from benchmark.rules.base import OptimizerRule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--quadrature", choices=["lobatto", "legendre"], default="legendre")
    parser.add_argument(
        "--grad-from-rule",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read g(θ0) from .grad after the step, as train.run does for OptimizerRule (default: on)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    batch = (torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,)))
    loss_fn = nn.functional.cross_entropy
    rule = OptimizerRule(torch.optim.SGD(model.parameters(), lr=0.01))
    probe = ImpliedMetricProbe(
        model, loss_fn, nodes=args.nodes, grad_from_rule=args.grad_from_rule, quadrature=args.quadrature
    )
    for _ in range(5):  # warm-up
        rule.train_step(model, batch, loss_fn)
        probe.before(batch)
        loss0 = rule.train_step(model, batch, loss_fn)["train/loss"]
        probe.after(batch, loss0)
    step_times, probe_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rule.train_step(model, batch, loss_fn)
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        probe.before(batch)
        middle = time.perf_counter()
        loss0 = rule.train_step(model, batch, loss_fn)["train/loss"]
        resume = time.perf_counter()
        probe.after(batch, loss0)
        probe_times.append(middle - start + time.perf_counter() - resume)
    step, cost = statistics.median(step_times), statistics.median(probe_times)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: MLP 784-256-256-10, {params} parameters, batch {args.batch}, {args.threads} thread(s)")
    print(f"training step (median of {args.repeats}): {step * 1e3:.2f} ms")
    source = "read from .grad" if args.grad_from_rule else "own backward"
    print(f"probe, {args.nodes} nodes ({args.quadrature}), g(θ0) {source} (median): {cost * 1e3:.2f} ms")
    print(f"probe cost / training step: {cost / step:.2f}")


if __name__ == "__main__":
    main()
