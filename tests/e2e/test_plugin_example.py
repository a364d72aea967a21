"""examples/plugin end to end, as a new user runs it: a copy outside the repository, the CLI in a new
process each time (a plugin's module must not outlive its run), a real local Ray, MLflow and Parquet."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from benchmark import store
from tests.test_plugins import EXAMPLE, synapsebench

SUITE = "plugin-example"


def test_plugin_rule_task_and_optimizer_entry_run_land_and_rerun_when_edited(tmp_path: Path) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__"))
    suite = yaml.safe_load((example / "suite.yaml").read_text())
    suite["seeds"] = [0]
    suite["budget"] = {"steps": 20, "eval_every": 10}
    # The plugin file is importable under its stem, on the driver and on the workers.
    suite["rules"].append({"name": "sign_descent", "optimizer": "sign_sgd:SignSGD", "hparams": {"lr": 0.01}})
    (example / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    results = tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/track.db"
    run = (
        "run",
        str(example / "suite.yaml"),
        "--results",
        str(results),
        "--tracking-uri",
        uri,
        "--num-cpus",
        "2",
    )

    first = synapsebench(*run, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    rows = store.read_runs(results, SUITE).to_pylist()
    assert len(rows) == 8  # 2 tasks × 4 rules × 1 seed
    assert {r["status"] for r in rows} == {"ok"}
    by_rule = {(r["task"], r["rule"]): r for r in rows}
    sign = by_rule[("noisy_linear_regression", "sign_sgd")]
    assert sign["rule_origin"].startswith("sign_sgd sha256:")
    assert sign["task_origin"].startswith("linear_regression sha256:")
    assert str(example / "sign_sgd.py") in sign["plugins_json"]
    assert by_rule[("digits_mlp", "sign_descent")]["rule_origin"].startswith("sign_sgd:SignSGD sha256:")
    assert by_rule[("digits_mlp", "adagrad")]["rule_origin"].startswith("torch.optim:Adagrad torch ")
    assert by_rule[("digits_mlp", "adamw")]["rule_origin"] is None, "a built-in keeps its identity"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(SUITE)
    assert experiment is not None
    tracked = client.search_runs([experiment.experiment_id], "tags.`synapsebench.kind` = 'run'")
    assert {r.data.tags["synapsebench.run_id"] for r in tracked} == {r["run_id"] for r in rows}
    origins = {r.data.params["rule"]: r.data.params.get("rule.origin") for r in tracked}
    assert origins["sign_sgd"] == sign["rule_origin"]
    assert (
        "sign_sgd.py" in next(r for r in tracked if r.data.params["rule"] == "adamw").data.params["plugins"]
    )

    board = (results / SUITE / "leaderboard.md").read_text()
    assert "## noisy_linear_regression" in board
    assert "`sign_sgd[lr=0.003]`" in board
    assert "`sign_descent[lr=0.01]`" in board

    unchanged = synapsebench(*run, "--dry-run", cwd=tmp_path)
    assert "8 runs, 8 already done" in unchanged.stderr

    with (example / "sign_sgd.py").open("a") as fh:
        fh.write("# an edit: every cell of this folder's plugins runs again\n")
    edited = synapsebench(*run, cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    # Rerun: both plugin rules (the file changed) and every rule on the plugin task (same folder);
    # adamw and adagrad on digits_mlp depend on no plugin code and are skipped as done.
    assert "6 run(s) to do, 2 already done and skipped" in edited.stderr
    assert len(store.read_runs(results, SUITE)) == 14

    by_name = synapsebench("leaderboard", SUITE, "--results", str(results), cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    assert "plugin not imported" not in by_name.stderr
