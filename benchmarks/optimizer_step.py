"""Time one optimizer step of eg_sgd, eg_adamw and torch's AdamW (foreach) on ResNet-18-sized tensors.

Usage::

    .venv/bin/python benchmarks/optimizer_step.py [--rounds 30] [--threads N] [--device cpu|cuda|all]
        [--no-fused] [--cpu-block N]

The parameters are the 62 tensors of torchvision's ResNet-18 (11.7 M entries, float32), each with a
fixed random gradient. Every optimizer steps its own copy. Steps are interleaved round by round
(one step of each optimizer per round) so that a machine whose load changes affects all of them
alike; the table shows the median step time and its ratio to AdamW(foreach=True). On the CPU,
torch's default for every rule here is the loop kernel; all kernels of the EG rules are shown, EG-SGD's
``fused`` one (compiled by torch.compile on the first warm-up step) beside torch's fused AdamW.
``--cpu-block 0`` runs the EG loop kernels over whole tensors (no cache blocking), to show what the
blocking buys. Nothing is asserted: this prints figures, it does not judge them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from benchmark.rules import eg
from benchmark.rules.eg import EGSGD, EGAdamW


def resnet18_shapes() -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in torchvision.models.resnet18().parameters()]


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(device))
        p.grad = (torch.randn(shape, generator=gen) * 1e-2).to(device)
        params.append(p)
    return params


def optimizers(device: torch.device, compiled: bool) -> dict[str, torch.optim.Optimizer]:
    shapes = resnet18_shapes()
    table: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "AdamW(foreach)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, foreach=True),
        "eg_adamw(loop)": lambda p: EGAdamW(p, lr=1e-3, weight_decay=1e-2, foreach=False),
        "eg_adamw(foreach)": lambda p: EGAdamW(p, lr=1e-3, weight_decay=1e-2, foreach=True),
        "eg_sgd(loop)": lambda p: EGSGD(p, lr=0.1, momentum=0.9, foreach=False),
        "eg_sgd(foreach)": lambda p: EGSGD(p, lr=0.1, momentum=0.9, foreach=True),
        "AdamW(loop)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, foreach=False),
    }
    if compiled:
        table |= {
            "eg_sgd(fused)": lambda p: EGSGD(p, lr=0.1, momentum=0.9, fused=True),
            "AdamW(fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True),
        }
    return {name: make(make_params(shapes, device)) for name, make in table.items()}


def time_steps(opts: dict[str, torch.optim.Optimizer], device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per step of each optimizer, interleaved over ``rounds`` rounds after 3 warm-up steps."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for opt in opts.values():
        for _ in range(3):
            opt.step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--no-fused", action="store_true", help="skip the compiled kernels (slow to compile)")
    parser.add_argument("--cpu-block", type=int, default=None, help="entries per EG loop block (0: whole)")
    args = parser.parse_args()
    if args.cpu_block is not None:
        eg.CPU_BLOCK = args.cpu_block or 1 << 62
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    numel = sum(torch.Size(s).numel() for s in resnet18_shapes())
    print(f"ResNet-18 parameters: 62 tensors, {numel / 1e6:.1f} M float32 entries; torch {torch.__version__}")
    for device in devices:
        threads = f"cpu, {torch.get_num_threads()} threads"
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
        medians = time_steps(optimizers(device, not args.no_fused), device, args.rounds)
        base = medians["AdamW(foreach)"]
        print(f"\n{where}: median of {args.rounds} interleaved steps")
        print(f"{'optimizer':<20}{'ms/step':>10}{'÷ AdamW(foreach)':>20}")
        for name, seconds in medians.items():
            print(f"{name:<20}{seconds * 1e3:>10.2f}{seconds / base:>20.2f}")


if __name__ == "__main__":
    main()
