"""examples/plugin end to end, as a new user runs it: a copy outside the repository, the CLI in a new
process each time (a plugin's module must not outlive its run), a real local Ray, MLflow and Parquet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from benchmark import store
from benchmark.plugins import folder_version, shipped_modules
from benchmark.spec import PluginRef
from tests.helpers import make_spec
from tests.test_plugins import EXAMPLE, ROOT, synapsebench

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


def test_a_cluster_worker_without_the_plugin_files_imports_the_shipped_copy(
    ray_session: Any, tmp_path: Path
) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = shipped_modules([PluginRef(ref=str(example / "sign_sgd.py"), module="sign_sgd", version="")])
    assert shipped == [str(example / "linear_regression.py"), str(example / "sign_sgd.py")]
    # A driver joins the cluster with the plugins in its runtime_env; its worker, as one on another
    # node, is given a path it does not have, and imports the copy Ray shipped.
    elsewhere = PluginRef(ref="/elsewhere/sign_sgd.py", module="sign_sgd", version=folder_version(example))
    spec = make_spec(rule="adamw").model_copy(update={"plugins": (elsewhere,)})
    driver = textwrap.dedent(f"""
        import ray
        from benchmark.execute.cluster import connect

        connect({ray_session.address_info["address"]!r}, py_modules={shipped!r})

        @ray.remote
        def worker():  # imports inside: a function of __main__ travels with copies of its globals
            import sys
            from benchmark.plugins import load_for_run
            from benchmark.rules import RULES
            from benchmark.spec import RunSpec

            load_for_run(RunSpec.model_validate_json({spec.model_dump_json()!r}))
            return sys.modules["sign_sgd"].__file__, "sign_sgd" in RULES

        print(*ray.get(worker.remote(), timeout=240))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", driver], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    file, registered = done.stdout.split()[-2:]
    assert registered == "True"
    assert not Path(file).is_relative_to(example), "imported from the copy Ray shipped"
    assert "runtime_resources" in file
