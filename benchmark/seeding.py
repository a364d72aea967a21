"""One run seed, split into independent streams for data, initialisation and the rule.

As in AlgoPerf, changing the learning rule changes neither the data order nor the initial weights:
each consumer draws from its own stream, derived from the run's seed alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Seeds:
    """Integer seeds of the three streams of one run."""

    data: int
    init: int
    rule: int

    def generator(self, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh torch generator for one stream (``"data"``, ``"init"`` or ``"rule"``)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(int(getattr(self, stream)))
        return gen

    def for_rank(self, rank: int) -> Seeds:
        """The seeds of data-parallel worker ``rank``: its own data stream, the same init and rule.

        Rank 0 keeps the run's seeds, so worker 0 sees what a one-process run would.
        """
        if rank == 0:
            return self
        child = np.random.SeedSequence([self.data, rank]).generate_state(1, dtype=np.uint64)[0]
        return Seeds(data=int(child >> 1), init=self.init, rule=self.rule)


def derive_seeds(seed: int) -> Seeds:
    """Split ``seed`` into data, init and rule seeds with numpy's SeedSequence."""
    children = np.random.SeedSequence(seed).spawn(3)
    data, init, rule = (int(c.generate_state(1, dtype=np.uint64)[0] >> 1) for c in children)
    return Seeds(data=data, init=init, rule=rule)


def seed_everything(seed: int) -> None:
    """Seed the global generators, for code that does not take an explicit generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - for third-party code that draws from the legacy global RNG
    torch.manual_seed(seed)
