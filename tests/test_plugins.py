"""Plugins (docs/plugins.md): bad plugins are refused, plugin rules and tasks are listed and identified.

Every check that imports a plugin runs the CLI in a new interpreter: a plugin registers names in
the process-wide registries, which a test process must not keep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import benchmark
from benchmark.plugins import folder_version, load_for_run, optimizer_hparams
from benchmark.rules import RULES, BuildOptimizer, HParams, RuleInfo
from benchmark.rules.base import LearningRule, OptimizerRule, steps_without_closure
from benchmark.spec import PluginRef
from tests.conftest import tiny_suite, write_suite
from tests.helpers import make_spec

ROOT = Path(benchmark.__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"

RULE_PLUGIN = """
import benchmark
from benchmark.rules import BuildOptimizer, HParams, RuleInfo
import torch

class LrOnly(HParams):
    lr: float = 0.1

benchmark.register_rule(
    RuleInfo(name={name!r}, description="test rule", hparams=LrOnly, build=BuildOptimizer(torch.optim.SGD))
)
"""


NEEDS_MOMENTUM = """
import torch

class NeedsMomentum(torch.optim.SGD):
    def __init__(self, params, momentum, lr=0.1):
        super().__init__(params, lr=lr, momentum=momentum)
"""


def synapsebench(*args: str, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a new interpreter, with this checkout's package first on the path."""
    path = [str(ROOT), *([str(extra_path)] if extra_path else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _suite_with(tmp_path: Path, plugins: list[str], rules: list[dict[str, object]] | None = None) -> Path:
    suite = tiny_suite(tasks=("digits_mlp",), seeds=(0,))
    suite["plugins"] = plugins
    if rules is not None:
        suite["rules"] = rules
    return write_suite(tmp_path / "suite.yaml", **suite)


def _refused(tmp_path: Path, suite: Path, *args: str) -> str:
    results = tmp_path / "results"
    done = synapsebench(*args, "run", str(suite), "--results", str(results), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert not results.exists(), "nothing may be written on bad input"
    assert "Traceback" not in done.stderr or "--debug" in args
    return done.stderr


def test_missing_plugin_file_is_named(tmp_path: Path) -> None:
    err = _refused(tmp_path, _suite_with(tmp_path, ["rules/missing.py"]))
    assert "suite.yaml: plugins[0]: expected an existing plugin file" in err
    assert str(tmp_path / "rules" / "missing.py") in err


def test_plugin_that_raises_names_itself_and_the_first_line_traceback_only_with_debug(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text('raise RuntimeError("no GPU here\\nsecond line")\n')
    suite = _suite_with(tmp_path, ["boom.py"])
    err = _refused(tmp_path, suite)
    assert f"plugins[0]: expected a plugin that imports cleanly (got {tmp_path / 'boom.py'} raised" in err
    assert "RuntimeError: no GPU here" in err
    assert "second line" not in err
    debug = _refused(tmp_path, suite, "--debug")
    assert "Traceback" in debug
    assert 'boom.py", line 1' in debug


def test_a_taken_name_is_refused_naming_both_places(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"rules_{folder}.py").write_text(RULE_PLUGIN.format(name="my_rule"))
    err = _refused(tmp_path, _suite_with(tmp_path, ["a/rules_a.py", "b/rules_b.py"]))
    assert "plugins[1]: expected a plugin whose names are not already taken" in err
    assert f"rule 'my_rule' is registered by {tmp_path / 'a' / 'rules_a.py'}" in err
    assert f"and again by {tmp_path / 'b' / 'rules_b.py'}" in err

    (tmp_path / "a" / "rules_a.py").write_text(RULE_PLUGIN.format(name="adamw"))
    err = _refused(tmp_path, _suite_with(tmp_path, ["a/rules_a.py"]))
    assert "rule 'adamw' is registered by synapsebench's built-in rules (benchmark.rules)" in err
    assert f"and again by {tmp_path / 'a' / 'rules_a.py'}" in err


def test_a_plugin_file_that_would_shadow_an_installed_module_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "yaml.py").write_text(RULE_PLUGIN.format(name="my_rule"))
    err = _refused(tmp_path, _suite_with(tmp_path, ["mine/yaml.py"]))
    assert (
        f"{tmp_path / 'mine' / 'yaml.py'} would shadow the module 'yaml' at {Path(yaml.__file__).resolve()}"
        in err
    )


def test_optimizer_paths_that_do_not_name_an_optimizer_are_refused(tmp_path: Path) -> None:
    rules = [
        {"name": "lion", "optimizer": "no_such_pkg.optim:Lion"},
        {"name": "linear", "optimizer": "torch.nn:Linear"},
        {"name": "nothing", "optimizer": "torch.optim:NoSuchThing"},
    ]
    err = _refused(tmp_path, _suite_with(tmp_path, [], rules))
    assert "rules[0].optimizer: expected an importable torch.optim.Optimizer subclass" in err
    assert "No module named 'no_such_pkg'" in err
    assert "rules[1].optimizer" in err
    assert "not an Optimizer subclass" in err
    assert "rules[2].optimizer" in err
    assert "has no 'NoSuchThing'" in err


def test_optimizer_hyperparameters_are_checked_against_its_constructor(tmp_path: Path) -> None:
    (tmp_path / "needs_momentum.py").write_text(NEEDS_MOMENTUM)
    rules = [
        {"name": "adagrad", "optimizer": "torch.optim:Adagrad", "hparams": {"lrr": 0.1}},
        {"name": "adagrad2", "optimizer": "torch.optim:Adagrad", "hparams": {"lr": "fast"}},
        {"name": "adagrad3", "optimizer": "torch.optim:Adagrad", "sweep": {"maximize": [False, "sometimes"]}},
        {"name": "heavy_ball", "optimizer": "needs_momentum:NeedsMomentum"},
    ]
    err = _refused(tmp_path, _suite_with(tmp_path, ["needs_momentum.py"], rules))
    assert "rules[3].hparams.momentum: expected a value (the field is required)" in err
    assert "rules[0].hparams.lrr: expected a hyperparameter of 'adagrad'" in err
    assert "rules[1].hparams.lr" in err
    assert "a valid number" in err
    assert "rules[2].sweep.maximize" in err
    assert "a valid boolean" in err


def test_a_search_space_needs_an_optimizer_entry_and_an_ordered_range(tmp_path: Path) -> None:
    rules = [
        {"name": "sgd", "search_space": {"lr": {"low": 0.01, "high": 0.1}}},
        {
            "name": "adagrad",
            "optimizer": "torch.optim:Adagrad",
            "search_space": {"lr": {"low": 0.1, "high": 0.01}},
        },
    ]
    err = _refused(tmp_path, _suite_with(tmp_path, [], rules))
    assert "rules[0]: expected search_space only with optimizer" in err
    assert "rules[1].search_space.lr: expected low < high" in err


def test_list_suite_shows_plugin_rules_and_tasks_marked_and_installed_entry_points(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "myplug-1.0.dist-info").mkdir(parents=True)
    (site / "myplug-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myplug\nVersion: 1.0\n"
    )
    (site / "myplug-1.0.dist-info" / "top_level.txt").write_text("myplug_rules\n")
    (site / "myplug-1.0.dist-info" / "entry_points.txt").write_text(
        "[synapsebench.plugins]\nmyplug = myplug_rules\n"
    )
    (site / "myplug_rules.py").write_text(RULE_PLUGIN.format(name="installed_rule"))

    (tmp_path / "needs_momentum.py").write_text(NEEDS_MOMENTUM)
    example = yaml.safe_load((EXAMPLE / "suite.yaml").read_text())
    example["plugins"] = [str(EXAMPLE / p) for p in example["plugins"]] + ["needs_momentum.py"]
    example["rules"].append({"name": "heavy_ball", "optimizer": "needs_momentum:NeedsMomentum"})
    suite = write_suite(tmp_path / "suite.yaml", **example)
    done = synapsebench("list", "--suite", str(suite), cwd=tmp_path, extra_path=site)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert f"[plugin: {EXAMPLE / 'sign_sgd.py'}]" in lines["sign_sgd"]
    assert "data-parallel" in lines["sign_sgd"], "derived: its step needs no closure"
    assert f"[plugin: {EXAMPLE / 'linear_regression.py'}]" in lines["noisy_linear_regression"]
    assert "[plugin: the optimizer: entry torch.optim:Adagrad]" in lines["adagrad"]
    assert "momentum = (required)" in done.stdout, "an optimizer argument without a default"
    assert "[plugin: myplug]" in lines["installed_rule"], "an installed entry point is loaded by list --suite"
    assert "plugin" not in lines["adamw"]
    assert "plugin" not in lines["digits_mlp"]
    assert "data-parallel" in lines["adamw"]

    plain = synapsebench("list", cwd=tmp_path, extra_path=site)
    assert "sign_sgd" not in plain.stdout, "a plain list loads no plugin"
    assert "installed_rule" not in plain.stdout, "a plain list loads no entry point"


def test_installed_and_path_plugins_are_identified_by_version_or_code_hash(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "myplug-1.0.dist-info").mkdir(parents=True)
    (site / "myplug-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myplug\nVersion: 1.0\n"
    )
    (site / "myplug-1.0.dist-info" / "top_level.txt").write_text("myplug_rules\n")
    (site / "myplug-1.0.dist-info" / "entry_points.txt").write_text(
        "[synapsebench.plugins]\nmyplug = myplug_rules\n"
    )
    (site / "myplug_rules.py").write_text(RULE_PLUGIN.format(name="installed_rule"))
    (site / "loose_rules.py").write_text(RULE_PLUGIN.format(name="loose_rule"))  # on the path, no install
    rules = [{"name": "installed_rule"}, {"name": "loose_rule"}, {"name": "adamw"}]
    suite = _suite_with(tmp_path, ["myplug", "loose_rules"], rules)
    code = textwrap.dedent(f"""
        from benchmark.plan import expand
        from benchmark.spec import PluginRef, load_suite
        for spec in expand(load_suite({str(suite)!r}), {str(suite)!r}).specs:
            print(spec.rule, spec.rule_origin)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    origins = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert origins["adamw"] == "None"
    assert origins["installed_rule"] == "myplug_rules myplug 1.0", "an installed package: its version"
    assert origins["loose_rule"] == f"loose_rules {folder_version_of(site / 'loose_rules.py')}"


def folder_version_of(file: Path) -> str:
    """A lone module's hash, as the plugin loader takes it: that file alone."""
    import hashlib

    digest = hashlib.sha256(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"


def test_a_worker_refuses_a_plugin_file_changed_since_planning(tmp_path: Path) -> None:
    (tmp_path / "plugin_changed_since.py").write_text("x = 1\n")  # registers nothing: safe to import here
    record = PluginRef(
        ref=str(tmp_path / "plugin_changed_since.py"), module="plugin_changed_since", version=""
    )
    spec = make_spec().model_copy(update={"plugins": (record.model_copy(update={"version": "sha256:old"}),)})
    with pytest.raises(RuntimeError, match="changed since the suite was planned"):
        load_for_run(spec)
    assert "plugin_changed_since" not in sys.modules, "nothing of it was imported"


def test_plugins_leave_the_ids_of_built_in_cells_alone(tmp_path: Path) -> None:
    example = yaml.safe_load((EXAMPLE / "suite.yaml").read_text())
    plain = {k: v for k, v in example.items() if k != "plugins"}
    plain["tasks"] = [t for t in example["tasks"] if t["name"] == "digits_mlp"]
    plain["rules"] = [r for r in example["rules"] if r["name"] == "adamw"]
    plain_path = write_suite(tmp_path / "plain.yaml", **plain)
    code = textwrap.dedent(f"""
        from benchmark.plan import expand
        from benchmark.spec import load_suite
        for path in ({str(plain_path)!r}, {str(EXAMPLE / "suite.yaml")!r}):
            specs = expand(load_suite(path), path).specs
            print(*sorted(s.run_id for s in specs if (s.task, s.rule) == ("digits_mlp", "adamw")))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    without, beside_plugins = done.stdout.splitlines()
    assert without == beside_plugins
    assert len(without.split()) == len(example["seeds"])


def test_a_plugin_folder_version_changes_with_any_of_its_python_files(tmp_path: Path) -> None:
    (tmp_path / "rule.py").write_text("x = 1\n")
    (tmp_path / "helper.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not code")
    first = folder_version(tmp_path)
    assert first.startswith("sha256:")
    assert first == folder_version(tmp_path)
    (tmp_path / "notes.txt").write_text("edited, still not code")
    assert folder_version(tmp_path) == first
    (tmp_path / "helper.py").write_text("y = 3\n")
    assert folder_version(tmp_path) != first


def test_optimizer_hyperparameters_come_from_annotations_or_defaults() -> None:
    class Untyped(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1, betas=(0.9, 0.99), steps=5, name=None, *, flag=False):  # type: ignore[no-untyped-def]
            super().__init__(params, {"lr": lr})

    model = optimizer_hparams(Untyped)
    assert set(model.model_fields) == {"lr", "betas", "steps", "name", "flag"}
    assert model.model_validate({"lr": 1, "betas": [0.8, 0.9], "name": [1]}).model_dump()["betas"] == (
        0.8,
        0.9,
    )
    for bad in ({"steps": 2.5}, {"flag": "maybe"}, {"betas": [0.9]}, {"lr": "fast"}, {"momentum": 0.9}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            model.model_validate(bad)
    adagrad = optimizer_hparams(torch.optim.Adagrad)
    assert "params" not in adagrad.model_fields
    assert adagrad().model_dump()["lr"] == torch.optim.Adagrad([torch.zeros(1)]).defaults["lr"]


def test_data_parallel_is_derived_from_the_optimizer_step() -> None:
    assert steps_without_closure(torch.optim.Adagrad)
    assert not steps_without_closure(torch.optim.LBFGS), "L-BFGS re-evaluates the loss on its own batch"

    class LrOnly(HParams):
        lr: float = 0.1

    def rule(optimizer: type[torch.optim.Optimizer]) -> RuleInfo:
        return RuleInfo(name="x", description="", hparams=LrOnly, build=BuildOptimizer(optimizer))

    assert rule(torch.optim.SGD).data_parallel
    assert not rule(torch.optim.LBFGS).data_parallel

    # A function build is read from its declared return: an OptimizerRule steps on gradients alone.
    def wraps_an_optimizer(model: torch.nn.Module, hp: LrOnly) -> OptimizerRule:
        return OptimizerRule(torch.optim.SGD(model.parameters(), lr=hp.lr))

    def owns_its_step(model: torch.nn.Module, hp: LrOnly) -> LearningRule:
        return OptimizerRule(torch.optim.SGD(model.parameters(), lr=hp.lr))

    built = [
        RuleInfo(name="x", description="", hparams=LrOnly, build=b)
        for b in (wraps_an_optimizer, owns_its_step)
    ]
    assert [r.data_parallel for r in built] == [True, False]
    with pytest.raises(TypeError):
        RuleInfo(name="x", description="", hparams=LrOnly, build=owns_its_step, data_parallel=True)  # type: ignore[call-arg]
    library = (
        "lion",
        "ademamix",
        "shampoo",
        "soap",
        "muon",
        "schedule_free_adamw",
        "prodigy",
        "diffgrad",
        "agd",
    )
    for name in ("sgd", "adam", "adamw", "eg_sgd", "eg_adamw", "sgd_signed", *library):
        assert RULES.get(name).data_parallel, f"{name} is built from a closure-free optimizer"
    for name in ("lcp_di", "natgrad_exact", "kfac", "weight_perturbation"):
        assert not RULES.get(name).data_parallel, f"{name} owns its training step"
