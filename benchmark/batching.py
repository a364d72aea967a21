"""Which runs of a grid train together: groups of RunSpecs identical but for their seed (and the
per-member hyperparameters their rule declares), each trained as one stacked model by
:func:`benchmark.train_group.run_group`.

A suite's ``batch`` (``auto``, a group size, or ``off``; the ``--batch`` flag overrides it) sets
the largest group. It is not part of any RunSpec, so run ids do not change with it. A run trains
alone when its rule or task declares no batched form, when it probes (``budget.probe_every``) or
trains data-parallel (``budget.workers``), when nothing shares its cell, or, under ``auto``, when a
member is too large for a group to pay (:data:`AUTO_MEMBER_LIMIT`). A group larger than a
share of the device's memory allows (the task's ``batch_member_bytes`` per member) is split, and
the split is said.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from benchmark.errors import SpecError
from benchmark.rules import RULES
from benchmark.spec import RunSpec, content_hash

BatchSetting = Literal["auto", "off"] | int
"""``auto``: groups of up to :data:`AUTO_SIZE`; ``off``: every run alone; N: groups of up to N."""

AUTO_SIZE = 64
"""The largest group ``auto`` forms: 64 seeds of a small MLP ran at 4× a sequential run's
throughput on 2 CPU cores, about as much as 32 (benchmarks/seed_batching.py)."""

AUTO_MEMBER_LIMIT = 16 * 2**20
"""The largest member ``auto`` groups. A larger member's step moves its own data through memory, which
a group cannot share. Groups of 8 against 8 runs one after another, on 2 CPU cores
(benchmarks/seed_batching.py, 2026-12-04): sparse_signal's point neuron at d = 200 (a member ≈ 4 MiB)
1.40×, d = 2,000 (≈ 42 MiB) 0.97×, d = 20,000 (≈ 420 MiB) 0.36×; MNIST-1D's MLP (≈ 0.5 MiB) 1.66×.
An explicit group size groups them anyway."""

MEMORY_SHARE = 0.25
"""The share of the device's memory one group may take (Ray runs several trials side by side)."""


@dataclass(frozen=True, slots=True)
class Grouping:
    """A grid split into batched groups and runs that train alone, with the reasons."""

    groups: tuple[tuple[RunSpec, ...], ...]
    alone: tuple[RunSpec, ...]
    reasons: Counter[str] = field(default_factory=Counter)
    """Why runs train alone → how many (a group of one is not counted)."""
    splits: tuple[str, ...] = ()
    """One line per group that memory split."""

    def summary(self) -> list[str]:
        """What ``run`` and ``--dry-run`` print: the groups, and why runs train alone."""
        batched = sum(len(g) for g in self.groups)
        sizes = sorted({len(g) for g in self.groups})
        lines = [
            f"batching: {batched} run(s) in {len(self.groups)} group(s)"
            + (f" of {', '.join(map(str, sizes))}" if sizes else "")
            + f", {len(self.alone)} alone"
        ]
        lines += [f"  {count} run(s) alone: {reason}" for reason, count in sorted(self.reasons.items())]
        return lines + [f"  {line}" for line in self.splits]


def parse_batch(text: str) -> BatchSetting:
    """The ``--batch`` flag's value.

    Raises:
        SpecError: neither ``auto``, ``off`` nor a whole number ≥ 1 (the CLI exits 2).
    """
    if text in ("auto", "off"):
        return text  # type: ignore[return-value]
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise SpecError(None, "--batch", "auto, off or a group size of at least 1", text)


def why_alone(spec: RunSpec) -> str | None:
    """Why ``spec`` cannot join a group; None when it can."""
    from benchmark.tasks import TASKS  # heavy; only the planner's callers need it

    if RULES.get(spec.rule).batching is None:
        return f"rule {spec.rule} has no batched form"
    member_bytes = TASKS.get(spec.task).batch_member_bytes
    if member_bytes is None:
        return f"task {spec.task} does not batch"
    if member_bytes(TASKS.get(spec.task).options.model_validate(spec.task_options)) is None:
        return f"task {spec.task} does not batch with these options"
    if spec.budget.probe_every is not None:
        return "budget.probe_every: the probe reads one model's step"
    if spec.budget.workers is not None:
        return "budget.workers: data-parallel runs train alone"
    return None


def cell_key(spec: RunSpec) -> str:
    """What a group's members share: the run's identity without its seed and per-member hparams."""
    batching = RULES.get(spec.rule).batching
    shared = frozenset() if batching is None else batching.per_member
    identity = spec.identity()
    identity.pop("seed")
    identity["hparams"] = {k: v for k, v in spec.hparams.items() if k not in shared}
    return content_hash(identity)


def device_memory() -> int:
    """Bytes of the memory groups train in: the GPU's where there is one, else the machine's RAM."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def group_runs(specs: Sequence[RunSpec], batch: BatchSetting, memory: int | None = None) -> Grouping:
    """Split ``specs`` into groups of up to ``batch`` runs that can train as one, and runs alone.

    Members keep the grid's order; a cell larger than the group size is cut into near-equal groups.
    """
    if batch == "off":
        return Grouping(groups=(), alone=tuple(specs), reasons=Counter({"batch: off": len(specs)}))
    from benchmark.tasks import TASKS

    reasons: Counter[str] = Counter()
    alone: list[RunSpec] = []
    cells: dict[str, list[RunSpec]] = {}
    for spec in specs:
        reason = why_alone(spec)
        if reason is None:
            cells.setdefault(cell_key(spec), []).append(spec)
        else:
            reasons[reason] += 1
            alone.append(spec)
    groups: list[tuple[RunSpec, ...]] = []
    splits: list[str] = []
    largest = AUTO_SIZE if batch == "auto" else batch
    memory = memory or device_memory()
    for members in cells.values():
        first = members[0]
        task = TASKS.get(first.task)
        assert task.batch_member_bytes is not None  # why_alone let it in
        need = task.batch_member_bytes(task.options.model_validate(first.task_options)) or 1
        if batch == "auto" and need > AUTO_MEMBER_LIMIT:
            reasons[
                f"batch auto: a member of {first.task} needs ~{need / 2**20:.0f} MiB, over the "
                f"{AUTO_MEMBER_LIMIT / 2**20:.0f} MiB below which groups pay (--batch N groups them)"
            ] += len(members)
            alone.extend(members)
            continue
        fits = max(1, int(MEMORY_SHARE * memory // max(need, 1)))
        size = min(largest, fits)
        count = math.ceil(len(members) / size)
        if fits < min(largest, len(members)):
            splits.append(
                f"{len(members)} runs of {first.task} × {first.rule_display} split into {count} groups: "
                f"a member needs ~{need / 2**20:.1f} MiB, a group at most {MEMORY_SHARE:.0%} of "
                f"{memory / 2**30:.1f} GiB"
            )
        bounds = [round(i * len(members) / count) for i in range(count + 1)]
        for chunk in (members[a:b] for a, b in itertools.pairwise(bounds)):
            if len(chunk) == 1:
                alone.extend(chunk)
            else:
                groups.append(tuple(chunk))
    return Grouping(tuple(groups), tuple(alone), reasons, tuple(splits))
