"""Rules that the generic optimizer tests leave out for the same reason, named once."""

from __future__ import annotations

EQUILIBRIUM_TRAINERS: dict[str, str] = dict.fromkeys(
    ("bp", "rbp", "lcp_di", "lcp_kp", "lcp_ebd", "lcp_lf"),
    "trains an equilibrium model (benchmark.fixpoint) and owns the training step; no torch optimizer",
)
