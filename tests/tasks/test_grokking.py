"""grokking_modadd: memorise, then generalise, only above Tian's critical fraction 2.7482 ln M/M;
and Power et al.'s transformer option, trained here at tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.rules import RULES
from benchmark.spec import Budget, RunSpec, Suite
from benchmark.tasks import TASKS
from benchmark.tasks.grokking import GrokkingOptions, critical_fraction
from benchmark.tasks.grokking_transformer import ModularTransformer, equation_tokens
from tests.helpers import make_spec

M = 23
# Tian's code: Adam at lr 1e-3 with a coupled L2 penalty of 1e-4, full batch.
ADAM = {"lr": 1e-3, "weight_decay": 1e-4}
# A tiny transformer (Power et al.'s is width 128, 4 heads, 2 layers at p = 97) with their betas, at a
# larger lr and no decay so that it fits its training pairs in 100 steps on one CPU thread.
TINY_TRANSFORMER = {
    "model": "transformer",
    "M": 7,
    "train_fraction": 0.6,
    "width": 32,
    "heads": 4,
    "layers": 2,
}
TINY_ADAMW = {"lr": 3e-3, "betas": [0.9, 0.98], "weight_decay": 0.0}


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


def _transformer_spec(
    steps: int, eval_every: int, warmup_steps: int | None = None, **options: object
) -> RunSpec:
    # Not make_spec: its base is the quadratic test options, whose `hidden` the transformer refuses.
    task_options = GrokkingOptions.model_validate({**TINY_TRANSFORMER, **options}).model_dump(mode="json")
    return RunSpec(
        suite="test",
        task="grokking_modadd",
        task_options=task_options,
        rule="adamw",
        hparams=RULES.get("adamw").hparams.model_validate(TINY_ADAMW).model_dump(mode="json"),
        seed=0,
        budget=Budget(steps=steps, eval_every=eval_every, warmup_steps=warmup_steps),
    )


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


def _suite_with(options: dict[str, object]) -> Suite:
    return Suite.model_validate(
        {
            "name": "bad",
            "tasks": [{"name": "grokking_modadd", "options": options}],
            "rules": [{"name": "adamw"}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"M": 1}, "M"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.0}, "train_fraction"),
    ],
)
def test_bad_modulus_or_fraction_is_bad_input(options: dict[str, float], field: str) -> None:
    suite = _suite_with(options)
    with pytest.raises(SpecError, match=rf"suite.yaml: tasks\[0\].options.{field}"):
        expand(suite, Path("suite.yaml"))


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"model": "mlp"}, "options.model", "'quadratic' or 'transformer'"),
        ({"model": "transformer", "hidden": 64}, "options", "no hidden with model 'transformer'"),
        ({"width": 64}, "options", "no width with model 'quadratic'"),
        ({"model": "transformer", "width": 30, "heads": 4}, "options", "width a multiple of heads"),
        ({"model": "transformer", "M": 5, "batch_size": 19}, "options", "at most the 18 training pairs"),
        ({"model": "transformer", "batch_size": 0}, "options.batch_size", "greater than or equal to 1"),
    ],
)
def test_impossible_transformer_options_are_bad_input(
    options: dict[str, object], field: str, message: str
) -> None:
    suite = _suite_with(options)
    with pytest.raises(SpecError, match=rf"suite.yaml: tasks\[0\].{field}: expected .*{message}"):
        expand(suite, Path("suite.yaml"))


def test_quadratic_runs_keep_their_options_and_ids() -> None:
    # The transformer option must not rename the existing quadratic runs (the run id hashes the options).
    assert TASKS.get("grokking_modadd").defaults() == {"M": 23, "train_fraction": 0.7, "hidden": 512}
    dumped = GrokkingOptions(model="transformer", M=97, train_fraction=0.5).model_dump(mode="json")
    assert dumped == {
        "M": 97,
        "train_fraction": 0.5,
        "model": "transformer",
        "width": 128,
        "heads": 4,
        "layers": 2,
        "batch_size": None,
    }
    assert GrokkingOptions.model_validate(dumped).model_dump(mode="json") == dumped


def test_transformer_is_powers_size_at_p_97() -> None:
    # Power et al.: "about 4·10⁵ non-embedding parameters" for width 128, 4 heads, 2 layers.
    model = ModularTransformer(97, width=128, heads=4, layers=2)
    embedding = model.token.weight.numel() + model.position.weight.numel()
    assert 3.5e5 < sum(p.numel() for p in model.parameters()) - embedding < 4.5e5


def test_transformer_reads_the_answer_at_the_last_position_with_causal_attention() -> None:
    torch.manual_seed(0)
    model = ModularTransformer(11, width=16, heads=4, layers=2).eval()
    tokens = equation_tokens(torch.tensor([3, 5]), torch.tensor([4, 9]), 11)
    assert tokens.tolist() == [[3, 11, 4, 12], [5, 11, 9, 12]]  # a ∘ b =, with ∘ = p and = = p + 1
    assert model(tokens).shape == (2, 11)  # logits over the p answers, one row per equation

    changed = tokens.clone()
    changed[:, 2] = torch.tensor([7, 0])  # another b
    before, after = model.hidden_states(tokens), model.hidden_states(changed)
    assert torch.allclose(before[:, :2], after[:, :2])  # earlier positions do not see later tokens ...
    assert not torch.allclose(model(tokens), model(changed))  # ... the read-out position sees them all


def test_transformer_trains_on_power_minibatches() -> None:
    spec = _transformer_spec(steps=1, eval_every=1)
    options = GrokkingOptions.model_validate(spec.task_options)
    info = TASKS.get("grokking_modadd")
    x, y = next(info.load_data(options, torch.device("cpu")).train_batches(torch.Generator().manual_seed(0)))
    assert options.train_examples == 29  # round(0.6 · 49)
    assert x.shape == (15, 4)  # min(512, ⌈29/2⌉) equations of 4 tokens
    assert x.dtype == torch.long
    assert torch.equal(y, (x[:, 0] + x[:, 2]) % 7)
    assert GrokkingOptions(model="transformer", M=97, train_fraction=0.5).train_batch_size == 512


def test_transformer_asks_for_a_gpu_the_quadratic_net_does_not() -> None:
    info = TASKS.get("grokking_modadd")
    assert info.resources_for(_transformer_spec(steps=1, eval_every=1).task_options).gpus > 0
    assert info.resources_for(info.test_options).gpus == 0


def test_transformer_memorises_its_training_pairs() -> None:
    # With Power et al.'s 10-step linear warm-up of the learning rate.
    result = train.run(
        _transformer_spec(steps=100, eval_every=50, warmup_steps=10), device=torch.device("cpu")
    )
    assert result.status == "ok"
    final = result.final
    assert result.curve[0].metrics["train/accuracy"] < 0.5
    assert final["train/accuracy"] == 1.0
    assert final["grok/train_step_99"] <= 100
    assert {"grok/test_step_99", "grok/delay", "grok/reached"} <= set(final)
    assert not any(key.startswith("theory/") for key in final)  # f_c is Tian's law, not the transformer's
