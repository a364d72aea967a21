"""saxe_depth: Saxe et al. (2013) §3, steps to a loss threshold by depth, orthogonal vs Gaussian init."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.spec import Suite
from benchmark.tasks.saxe_depth import SaxeDepthOptions, decoupled_steps_to_threshold
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def _gd(depth: int, init: str, steps: int, eval_every: int, seed: int = 0) -> dict[str, float]:
    """GD at the task's depth-scaled reference rate, lr_scale / (depth · s_max²)."""
    options = {"depth": depth, "width": 8, "init": init}
    lr = SaxeDepthOptions.model_validate(options).reference_lr
    spec = make_spec(
        task="saxe_depth",
        rule="sgd",
        seed=seed,
        steps=steps,
        eval_every=eval_every,
        hparams={"lr": lr, "momentum": 0.0},
        options=options,
    )
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "ok"
    return result.final


@pytest.mark.parametrize("depth", [2, 6, 12])
def test_decoupled_gd_follows_the_exact_mode_recursion(depth: int) -> None:
    final = _gd(depth, "decoupled", steps=30, eval_every=1)
    assert final["depth/steps_to_threshold"] == final["theory/steps_to_threshold"]
    assert final["train/loss"] == pytest.approx(final["theory/loss"], rel=1e-3, abs=1e-5)


def test_decoupled_reference_time_stays_bounded_as_depth_grows() -> None:
    options = [SaxeDepthOptions(depth=d, init="decoupled") for d in (2, 6, 12, 20)]
    times = [decoupled_steps_to_threshold(o) for o in options]
    assert all(math.isfinite(t) for t in times)
    assert max(times) <= 1.5 * min(times), times


def test_orthogonal_learns_at_every_depth_gaussian_stalls_as_depth_grows() -> None:
    budget = 400
    ortho = {d: _gd(d, "orthogonal", budget, eval_every=5) for d in (2, 6, 12)}
    gauss = {d: _gd(d, "gaussian", budget, eval_every=5) for d in (2, 6, 12)}
    # Orthogonal init: the threshold is reached at every depth, within a few times the depth-2 time.
    assert all(ortho[d]["depth/reached"] == 1.0 for d in ortho)
    assert ortho[12]["depth/steps_to_threshold"] <= 5 * ortho[2]["depth/steps_to_threshold"]
    # Scaled Gaussian init: as fast as orthogonal at depth 2, out of the budget from depth 6 on,
    # with a final loss that grows with depth.
    assert gauss[2]["depth/reached"] == 1.0
    assert gauss[2]["depth/steps_to_threshold"] <= 2 * ortho[2]["depth/steps_to_threshold"]
    assert gauss[6]["depth/reached"] == 0.0
    assert gauss[12]["depth/reached"] == 0.0
    final_loss = [gauss[d]["train/relative_loss"] for d in (2, 6, 12)]
    assert final_loss == sorted(final_loss)


@pytest.mark.slow
def test_orthogonal_arrives_at_depths_6_to_20_gaussian_never_does() -> None:
    budget, seeds = 2000, range(4)
    medians = {}
    for depth in (6, 12, 20):
        times = [_gd(depth, "orthogonal", budget, 10, seed)["depth/steps_to_threshold"] for seed in seeds]
        assert all(math.isfinite(t) for t in times), (depth, times)
        medians[depth] = statistics.median(times)
        gauss = _gd(depth, "gaussian", budget, 50, seed=0)
        assert gauss["depth/reached"] == 0.0
    # Measured medians 56 / 143 / 228 steps (width 8, 4 seeds): bounded growth, not strictly flat (the
    # worst eigen-angle of the random orthogonal product sets the time; see the module docstring).
    assert max(medians.values()) <= 5 * min(medians.values()), medians


def test_depth_below_two_is_bad_input_with_file_and_field() -> None:
    with pytest.raises(ValidationError, match="s_min: must be at most s_max"):
        SaxeDepthOptions(s_min=3.0, s_max=2.0)
    suite = Suite.model_validate(
        {
            "name": "bad",
            "tasks": [{"name": "saxe_depth", "options": {"depth": 1}}],
            "rules": [{"name": "sgd"}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )
    with pytest.raises(SpecError, match=r"suite.yaml: tasks\[0\].options.depth"):
        expand(suite, Path("suite.yaml"))
