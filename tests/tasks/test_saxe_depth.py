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


def _gd(
    depth: int, init: str, steps: int, eval_every: int, seed: int = 0, lr_scale: float = 1.0, **options: int
) -> dict[str, float]:
    """GD at lr_scale / (depth · s_max²), on the task's defaults (width 32, 8 outputs) unless given."""
    opts = {"depth": depth, "init": init, "lr_scale": lr_scale, "width": 32, "outputs": 8, **options}
    lr = SaxeDepthOptions.model_validate(opts).reference_lr
    spec = make_spec(
        task="saxe_depth",
        rule="sgd",
        seed=seed,
        steps=steps,
        eval_every=eval_every,
        hparams={"lr": lr, "momentum": 0.0},
        options=opts,
    )
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "ok"
    return result.final


def _median_steps(depth: int, init: str, steps: int, seeds: range) -> float:
    """Median over seeds of the steps to the threshold, the budget's end counted as never (inf)."""
    times = [_gd(depth, init, steps, eval_every=1, seed=seed)["depth/steps_to_threshold"] for seed in seeds]
    return statistics.median(t if math.isfinite(t) else math.inf for t in times)


@pytest.mark.parametrize("options", [{}, {"width": 8, "outputs": 8}])
@pytest.mark.parametrize("depth", [2, 6, 12])
def test_decoupled_gd_follows_the_exact_mode_recursion(depth: int, options: dict[str, int]) -> None:
    final = _gd(depth, "decoupled", steps=30, eval_every=1, **options)
    assert final["depth/steps_to_threshold"] == final["theory/steps_to_threshold"]
    assert final["train/loss"] == pytest.approx(final["theory/loss"], rel=1e-3, abs=1e-5)


def test_decoupled_reference_time_stays_bounded_as_depth_grows() -> None:
    options = [SaxeDepthOptions(depth=d, init="decoupled") for d in (2, 6, 12, 20)]
    times = [decoupled_steps_to_threshold(o) for o in options]
    assert all(math.isfinite(t) for t in times)
    assert max(times) <= 1.5 * min(times), times


def test_orthogonal_steps_are_flat_in_depth_gaussian_steps_grow() -> None:
    # GD at 1 / (depth · s_max²), the lowest rate of the suite's grid (stable for both inits at every
    # depth), seeds 0-2. Measured medians, depth 2 / 6 / 12 / 20: orthogonal 18 / 24 / 24 / 31 steps;
    # Gaussian 15 / 58 / 127 at depth 2 / 6 / 12 (median 292 at depth 20 over 8 seeds: too slow here).
    seeds = range(3)
    ortho = {d: _median_steps(d, "orthogonal", 60, seeds) for d in (2, 6, 12, 20)}
    gauss = {d: _median_steps(d, "gaussian", 200, seeds) for d in (2, 6, 12)}
    deep = [ortho[d] for d in (6, 12, 20)]
    # Orthogonal init: flat from depth 6 to 20 (max/min ≤ 1.5, i.e. within ±20% of their middle),
    # and depth 2 not far below.
    assert max(deep) <= 1.5 * min(deep), ortho
    assert max(deep) <= 2.5 * ortho[2], ortho
    # Scaled Gaussian init: as fast as orthogonal at depth 2, slower at every added depth.
    assert gauss[2] <= 1.2 * ortho[2], (gauss, ortho)
    assert gauss[2] < gauss[6] < gauss[12], gauss
    assert gauss[12] >= 4 * ortho[12], (gauss, ortho)


@pytest.mark.slow
def test_square_maps_make_orthogonal_init_slow_and_seed_dependent_at_depth() -> None:
    # outputs = width (a square end-to-end map): the product must rotate onto U Vᵀ, and its eigen-angle
    # nearest π sets the time (see the module docstring). Measured at width 32, lr 2/(depth · s_max²),
    # seeds 0-3: 14-43 steps at depth 2 (median 24), 93-501 at depth 6 (median 168).
    times = {
        d: [
            _gd(d, "orthogonal", 1000, 5, seed, lr_scale=2.0, outputs=32)["depth/steps_to_threshold"]
            for seed in range(4)
        ]
        for d in (2, 6)
    }
    assert all(math.isfinite(t) for ts in times.values() for t in ts), times
    assert statistics.median(times[6]) >= 4 * statistics.median(times[2]), times
    assert max(times[6]) >= 2 * min(times[6]), times


def test_depth_below_two_is_bad_input_with_file_and_field() -> None:
    with pytest.raises(ValidationError, match="s_min: must be at most s_max"):
        SaxeDepthOptions(s_min=3.0, s_max=2.0)
    with pytest.raises(ValidationError, match="outputs: must be at most width = 8"):
        SaxeDepthOptions(width=8, outputs=9)
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
