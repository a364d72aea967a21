"""Bad input: every error names the file, the field and what was expected; exit 2; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.cli import main
from tests.conftest import tiny_suite, write_suite


def _run(suite: Path, results: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(suite), "--results", str(results)])
    return code, capsys.readouterr().err


def _suite(**changes: object) -> dict[str, object]:
    suite = tiny_suite()
    suite.update(changes)
    return suite


CASES = {
    "unknown rule": (_suite(rules=[{"name": "adamww"}]), "rules[0].name", "did you mean 'adamw'"),
    "unknown task": (_suite(tasks=[{"name": "digit_mlp"}]), "tasks[0].name", "did you mean 'digits_mlp'"),
    "unknown hyperparameter": (
        _suite(rules=[{"name": "sgd", "hparams": {"lrr": 0.1}}]),
        "rules[0].hparams.lrr",
        "a hyperparameter of 'sgd'",
    ),
    "wrong type": (
        _suite(rules=[{"name": "sgd", "hparams": {"lr": "fast"}}]),
        "rules[0].hparams.lr",
        "a valid number",
    ),
    "out of range": (
        _suite(rules=[{"name": "sgd", "hparams": {"lr": -0.1}}]),
        "rules[0].hparams.lr",
        "greater than 0",
    ),
    "bad sweep value": (
        _suite(rules=[{"name": "sgd", "sweep": {"lr": [0.1, -1.0]}}]),
        "rules[0].sweep.lr",
        "greater than 0",
    ),
    "unknown task option": (
        _suite(tasks=[{"name": "digits_mlp", "options": {"widht": 3}}]),
        "tasks[0].options.widht",
        "no such field",
    ),
    "bad task sweep value": (
        _suite(tasks=[{"name": "digits_mlp", "sweep": {"width": [8, 0]}}]),
        "tasks[0].sweep.width",
        "greater than 0",
    ),
    "task sweep of a fixed option": (
        _suite(tasks=[{"name": "digits_mlp", "options": {"width": 8}, "sweep": {"width": [8, 16]}}]),
        "tasks[0].sweep.width",
        "not also fixed in options",
    ),
    "rule limited to a task not in the suite": (
        _suite(rules=[{"name": "sgd", "tasks": ["digits_mlp", "cifar10_vgg"]}]),
        "rules[0].tasks[1]",
        "a task of this suite",
    ),
    "non-integer seed": (_suite(seeds=[0, 1.5]), "seeds[1]", "a valid integer"),
    "string seed": (_suite(seeds=["zero"]), "seeds[0]", "a valid integer"),
    "empty grid": (_suite(tasks=[]), "tasks", "at least 1 item"),
    "no seeds": (_suite(seeds=[]), "seeds", "at least 1 item"),
    "non-positive warm-up": (
        _suite(budget={"steps": 30, "warmup_steps": 0}),
        "budget.warmup_steps",
        "greater than 0",
    ),
    "missing budget": ({k: v for k, v in _suite().items() if k != "budget"}, "budget", "required"),
    "unknown top-level field": (_suite(sedes=[1]), "sedes", "no such field"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_suite_is_refused_with_file_and_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, field, expected = CASES[case]
    suite = write_suite(tmp_path / "bad.yaml", **content)
    results = tmp_path / "results"
    code, err = _run(suite, results, capsys)
    assert code == 2
    assert str(suite) in err
    assert field in err
    assert expected in err
    assert not results.exists(), "nothing may be written on bad input"


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "broken.yaml"
    suite.write_text("name: x\ntasks: [digits_mlp\nrules: {\n")
    code, err = _run(suite, tmp_path / "results", capsys)
    assert code == 2
    assert f"{suite}: line" in err
    assert "well-formed YAML" in err
    assert not (tmp_path / "results").exists()


def test_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "list.yaml"
    suite.write_text("- a\n- b\n")
    code, err = _run(suite, tmp_path / "results", capsys)
    assert code == 2
    assert "expected a mapping" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "nope.yaml"
    code, err = _run(suite, tmp_path / "results", capsys)
    assert code == 2
    assert str(suite) in err
    assert "no such file" in err


def test_all_errors_of_a_file_are_reported_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = _suite(rules=[{"name": "sgdd"}, {"name": "adamw", "hparams": {"lr": 0}}])
    code, err = _run(write_suite(tmp_path / "two.yaml", **content), tmp_path / "r", capsys)
    assert code == 2
    assert "rules[0].name" in err
    assert "rules[1].hparams.lr" in err


def test_duplicate_cells_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content = _suite(rules=[{"name": "adamw"}, {"name": "adamw", "hparams": {"lr": 0.001}}])
    code, err = _run(write_suite(tmp_path / "dup.yaml", **content), tmp_path / "r", capsys)
    assert code == 2
    assert "each cell of the grid once" in err


def test_results_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.write_text("not a folder")
    code, err = _run(write_suite(tmp_path / "ok.yaml", **_suite()), results, capsys)
    assert code == 2
    assert "--results" in err


def test_leaderboard_of_unknown_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["leaderboard", "never-ran", "--results", str(tmp_path)])
    assert code == 2
    assert "never-ran" in capsys.readouterr().err


def test_tuned_file_missing_or_for_another_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = write_suite(tmp_path / "m.yaml", **_suite(rules=[{"name": "sgd", "tuned": "tuned/m/sgd.yaml"}]))
    code, err = _run(missing, tmp_path / "r", capsys)
    assert code == 2
    assert f"{tmp_path}/tuned/m/sgd.yaml" in err
    assert "synapsebench tune" in err

    tuned = tmp_path / "tuned" / "m" / "sgd.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text(yaml.safe_dump({"rule": "sgd", "tasks": {"digits_mlp": {"hparams": {"lr": 0.1}}}}))
    code, err = _run(missing, tmp_path / "r", capsys)
    assert code == 2
    assert "tasks.mnist1d_mlp: expected tuned values for task 'mnist1d_mlp'" in err
    assert not (tmp_path / "r").exists()
