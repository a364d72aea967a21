"""Training throughput of the vision tasks on synthetic data: images per second and peak GPU memory.

Runs the benchmark's own pieces (the task's model and on-device data with ``synthetic: true``, the
rule's ``prepare`` and ``build``, ``OptimizerRule.train_step``), so the number is what a suite run
gets, minus evaluation and minus JPEG decoding for ImageNet (synthetic tensors start on the device).

    .venv/bin/python benchmarks/vision_throughput.py                      # CUDA if present
    .venv/bin/python benchmarks/vision_throughput.py --rules agd sgd --steps 50 --json out.json

Without CUDA it falls back to tiny sizes (a smoke check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.rules import RULES
from benchmark.tasks import TASKS

# Options per task: the suite-scale batch on a GPU, tiny sizes on a CPU.
GPU_OPTIONS: dict[str, dict[str, Any]] = {
    "cifar10_resnet18": {"batch_size": 128},
    "imagenet_resnet50": {"batch_size": 256, "image_size": 224},
}
CPU_OPTIONS: dict[str, dict[str, Any]] = {
    "cifar10_resnet18": {"batch_size": 8},
    "imagenet_resnet50": {"batch_size": 4, "image_size": 64, "num_classes": 10},
}


@dataclass(frozen=True, slots=True)
class Measurement:
    task: str
    rule: str
    device: str
    batch_size: int
    image_size: int
    steps: int
    images_per_s: float
    step_ms: float
    peak_memory_gib: float
    channels_last: bool
    autocast_bf16: bool


def measure(task_name: str, rule_name: str, steps: int, warmup: int, device: torch.device) -> Measurement:
    task = TASKS.get(task_name)
    rule = RULES.get(rule_name)
    table = GPU_OPTIONS if device.type == "cuda" else CPU_OPTIONS
    # AGD needs the bias-free variant; the others run it too, so the models are the same.
    options = task.options.model_validate({**table[task_name], "synthetic": True, "bias": False})
    hparams = rule.hparams()
    gen = torch.Generator().manual_seed(0)
    model = task.build_model(options, gen)
    if rule.prepare is not None:
        model = rule.prepare(model, gen, hparams)
    model = model.to(device).train()
    data = task.load_data(options, device)
    learner = rule.build(model, hparams)
    batches = data.train_batches(torch.Generator().manual_seed(1))

    for _ in range(warmup):  # cudnn autotuning, allocator growth, lazy init
        learner.train_step(model, next(batches), task.loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        # train_step reads the loss back to the host, as every step of a suite run does.
        learner.train_step(model, next(batches), task.loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    image_size = int(getattr(options, "image_size", 32))
    return Measurement(
        task=task_name,
        rule=rule_name,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        batch_size=options.batch_size,  # type: ignore[attr-defined]
        image_size=image_size,
        steps=steps,
        images_per_s=steps * options.batch_size / elapsed,  # type: ignore[attr-defined]
        step_ms=1000 * elapsed / steps,
        peak_memory_gib=peak,
        channels_last=task_name.startswith("imagenet") and device.type == "cuda",
        autocast_bf16=task_name.startswith("imagenet") and device.type == "cuda",
    )


def render(rows: list[Measurement]) -> str:
    lines = [
        "| task | rule | device | batch | image | images/s | ms/step | peak GiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.rule} | {r.device} | {r.batch_size} | {r.image_size} | "
            f"{r.images_per_s:,.0f} | {r.step_ms:.1f} | {r.peak_memory_gib:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(GPU_OPTIONS), choices=list(GPU_OPTIONS))
    parser.add_argument("--rules", nargs="+", default=["sgd", "agd"], help="registered rules to time")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 3 on CPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default: 10 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        print("no CUDA: tiny sizes on the CPU, a smoke check rather than a measurement")
    steps = args.steps or (50 if cuda else 3)
    warmup = args.warmup or (10 if cuda else 1)
    rows = [measure(t, r, steps, warmup, device) for t in args.tasks for r in args.rules]
    print(render(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
