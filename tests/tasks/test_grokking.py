"""grokking_modadd: memorise, then generalise, only above Tian's critical fraction 2.7482 ln M/M."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.spec import Suite
from benchmark.tasks.grokking import critical_fraction
from tests.helpers import make_spec

M = 23
# Tian's code: Adam at lr 1e-3 with a coupled L2 penalty of 1e-4, full batch.
ADAM = {"lr": 1e-3, "weight_decay": 1e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(fraction: float, steps: int, eval_every: int) -> dict[str, float]:
    spec = make_spec(
        task="grokking_modadd",
        rule="adam",
        steps=steps,
        eval_every=eval_every,
        hparams=ADAM,
        options={"M": M, "hidden": 512, "train_fraction": fraction},
    )
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "ok"
    return result.final


def test_critical_fraction_is_tians_law() -> None:
    assert critical_fraction(23) == pytest.approx(2.7482 * math.log(23) / 23)
    assert critical_fraction(23) == pytest.approx(0.375, abs=1e-3)
    assert critical_fraction(97) < critical_fraction(23)  # n_train ~ M log M: a shrinking share of M²


def test_training_set_is_memorised_before_the_test_set_is_learned() -> None:
    final = _train(2 * critical_fraction(M), steps=300, eval_every=25)
    assert final["grok/train_step_99"] <= 300
    assert final["train/accuracy"] >= 0.99
    assert final["test/accuracy"] < 0.9  # generalisation lags: the grokking delay is still open
    assert math.isnan(final["grok/test_step_99"])
    assert math.isnan(final["grok/delay"])
    assert final["theory/fraction_over_critical"] == pytest.approx(2.0)


@pytest.mark.slow
def test_generalises_above_twice_the_critical_fraction_not_below_half_of_it() -> None:
    f_c = critical_fraction(M)
    below = _train(0.5 * f_c, steps=3000, eval_every=50)
    above = _train(2.0 * f_c, steps=3000, eval_every=50)
    assert below["train/accuracy"] >= 0.99  # it fits the small training set ...
    assert below["test/accuracy"] < 0.1  # ... and does not generalise
    assert below["grok/reached"] == 0.0
    assert above["test/accuracy"] > 0.95
    assert above["grok/delay"] > 0  # test accuracy reaches 99% after training accuracy does


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"M": 1}, "M"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.0}, "train_fraction"),
    ],
)
def test_bad_modulus_or_fraction_is_bad_input(options: dict[str, float], field: str) -> None:
    suite = Suite.model_validate(
        {
            "name": "bad",
            "tasks": [{"name": "grokking_modadd", "options": options}],
            "rules": [{"name": "adamw"}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )
    with pytest.raises(SpecError, match=rf"suite.yaml: tasks\[0\].options.{field}"):
        expand(suite, Path("suite.yaml"))
