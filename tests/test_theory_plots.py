"""Leaderboard theory plots from real runs of the closed-form tasks: files drawn, linked, readable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark import store, train
from benchmark.cli import main
from tests.helpers import make_spec


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("theory")
    specs = [
        make_spec("saxe_modes", "sgd", seed=s, steps=60, hparams={"lr": 0.05, "momentum": 0.0})
        for s in (0, 1)
    ]
    specs += [
        make_spec("teacher_student", "sgd", seed=s, steps=60, options={"alpha": a}, hparams={"momentum": 0.0})
        for a in (0.5, 2.0)
        for s in (0, 1)
    ]
    # Too few steps to reach the threshold at depth 3: drawn at the budget, not dropped.
    specs += [
        make_spec("saxe_depth", "sgd", seed=0, steps=s, options={"depth": d}) for d, s in ((2, 60), (3, 5))
    ]
    for spec in specs:
        spec = spec.model_copy(update={"suite": "theory"})
        store.write_run(folder, spec, train.run(spec, device=torch.device("cpu")))
    assert main(["leaderboard", "theory", "--results", str(folder)]) == 0
    return folder / "theory"


def test_overlays_and_option_sweeps_are_drawn_and_linked(results: Path) -> None:
    markdown = (results / "leaderboard.md").read_text()
    drawn = {
        "saxe_modes-theory-0.png": "mode strengths over eq. 12",
        "teacher_student-alpha=0.5-theory-0.png": "Marchenko–Pastur",
        "teacher_student-alpha=2-theory-0.png": "Marchenko–Pastur",
        "teacher_student-theory-1.png": "against α",
        "saxe_depth-theory-0.png": "against depth",
    }
    for name, title in drawn.items():
        assert (results / "plots" / name).stat().st_size > 5000, name
        line = next(line for line in markdown.splitlines() if f"(plots/{name})" in line)
        assert title in line


def test_theory_view_lists_each_variant(results: Path) -> None:
    markdown = (results / "leaderboard.md").read_text()
    theory = markdown[markdown.index("## Theory") :]
    for variant in ("### saxe_modes", "### teacher_student[alpha=0.5]", "### teacher_student[alpha=2]"):
        assert variant in theory
    assert "`theory/max_rel_error`" in theory
