"""Suite → RunSpecs: resolve names in the registries, validate hyperparameters and options, expand the grid.

The suite's plugins are imported first (:mod:`benchmark.plugins`), so their rules and tasks resolve
like the built-ins. Cells a rule cannot run (say AGD on a model with biases) are dropped with the
rule's reason rather than failing later on a worker. Every error names the suite file (or the
tuned-config file) and the field, and all errors of a file are reported together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from benchmark.errors import SpecError, SpecErrors
from benchmark.registry import UnknownNameError
from benchmark.rules import RULES
from benchmark.spec import (
    Budget,
    RuleEntry,
    RunSpec,
    Suite,
    compact_value,
    errors_from_validation,
    parse_display_name,
)


@dataclass(frozen=True, slots=True)
class DroppedCell:
    task: str
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The grid of a suite: what will run, in a stable order, and what was dropped and why."""

    suite: Suite
    specs: tuple[RunSpec, ...]
    dropped: tuple[DroppedCell, ...]


class TunedTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hparams: dict[str, JsonValue]
    metric: str = ""
    value: float | None = None
    trials: int = 0
    provenance: dict[str, JsonValue] = Field(default_factory=dict)
    """How the values were found: sampler, studies, trials per study, storage, ASHA (``tune`` writes it)."""


class TunedConfig(BaseModel):
    """A tuned-config file, written by ``synapsebench tune``: one rule, its best hyperparameters per task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    suite: str = ""
    seed: int = 0
    tasks: dict[str, TunedTask]


def tuned_path(suite_path: str | Path, reference: str) -> Path:
    """Where a rule entry's ``tuned:`` reference points: relative to the suite file's folder."""
    return (Path(suite_path).parent / reference).resolve()


def load_tuned(path: Path) -> TunedConfig:
    if not path.is_file():
        raise SpecError(path, "", "a tuned-config file (run `synapsebench tune` to write it)", "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(path, "", "well-formed YAML", str(exc)) from None
    try:
        return TunedConfig.model_validate(raw)
    except ValidationError as exc:
        raise errors_from_validation(exc, path) from None


def expand(suite: Suite, path: str | Path, code_version: str = "") -> Plan:
    """Resolve and expand ``suite`` (read from ``path``, which errors name).

    Raises:
        SpecError: an unknown rule, task or hyperparameter, a bad value, or an empty grid.
    """
    from benchmark.plugins import load_suite_plugins
    from benchmark.tasks import TASKS  # tasks may be heavy to import; only the planner needs them

    plugins = load_suite_plugins(suite, path)  # before any name is looked up: they register names
    errors: list[SpecError] = []
    tasks: list[tuple[Any, Any, Budget]] = []
    for i, entry in enumerate(suite.tasks):
        try:
            info = TASKS.get(entry.name)
        except UnknownNameError as exc:
            errors.append(SpecError(path, f"tasks[{i}].name", _registered_hint(exc), entry.name))
            continue
        budget = entry.budget or suite.budget
        eval_every = min(budget.eval_every or info.eval_every, budget.steps)
        budget = budget.model_copy(update={"eval_every": eval_every})
        option_sets, option_errors = _expand_options(info, entry, path, i)
        errors.extend(option_errors)
        tasks.extend((info, options, budget) for options in option_sets)

    rules: list[tuple[Any, RuleEntry, int, TunedConfig | None]] = []
    entry_keys: dict[str, set[str]] = {}
    for j, rule_entry in enumerate(suite.rules):
        try:
            rule_info = RULES.get(rule_entry.name)
        except UnknownNameError as exc:
            errors.append(SpecError(path, f"rules[{j}].name", _registered_hint(exc), rule_entry.name))
            continue
        tuned = None
        if rule_entry.tuned is not None:
            try:
                tuned = load_tuned(tuned_path(path, rule_entry.tuned))
            except SpecError as exc:
                errors.extend(exc.errors if isinstance(exc, SpecErrors) else [exc])
                continue
            if tuned.rule != rule_info.name:
                errors.append(
                    SpecError(
                        tuned_path(path, rule_entry.tuned),
                        "rule",
                        f"tuned values of {rule_info.name!r}",
                        tuned.rule,
                    )
                )
                continue
        for k, selector in enumerate(rule_entry.tasks or ()):
            if not any(selects(selector, task.name, options) for task, options, _ in tasks):
                names = ", ".join(sorted({t.name for t in suite.tasks}))
                expected = f"a task of this suite ({names}), optionally with options, e.g. task[depth=6]"
                errors.append(SpecError(path, f"rules[{j}].tasks[{k}]", expected, selector))
        rules.append((rule_info, rule_entry, j, tuned))
        shown = set(rule_entry.hparams) | set(rule_entry.sweep)
        if tuned is not None:
            shown |= {k for t in tuned.tasks.values() for k in t.hparams}
        entry_keys.setdefault(rule_info.name, set()).update(shown)

    cells: list[tuple[Any, Any, Budget, Any, int, list[Any]]] = []
    checked: dict[tuple[int, str], list[Any]] = {}
    for (task, options, budget), (rule, entry, j, tuned) in itertools.product(tasks, rules):
        if entry.tasks is not None and not any(selects(sel, task.name, options) for sel in entry.tasks):
            continue
        fixed = dict(entry.hparams)
        if tuned is not None:
            found = tuned.tasks.get(task.name)
            if found is None:
                errors.append(
                    SpecError(
                        tuned_path(path, entry.tuned or ""),
                        f"tasks.{task.name}",
                        f"tuned values for task {task.name!r} (run `synapsebench tune` on this suite)",
                        sorted(tuned.tasks),
                    )
                )
                continue
            fixed = {**found.hparams, **fixed}
        key = (j, task.name if tuned is not None else "")
        if key not in checked:
            sets, rule_errors = _expand_hparams(rule, fixed, entry.sweep, path, j)
            errors.extend(e for e in rule_errors if str(e) not in {str(x) for x in errors})
            checked[key] = sets
        cells.append((task, options, budget, rule, j, checked[key]))

    if len(set(suite.seeds)) != len(suite.seeds):
        errors.append(SpecError(path, "seeds", "distinct seeds", suite.seeds))
    if errors:
        raise SpecErrors(errors)

    specs: list[RunSpec] = []
    dropped: list[DroppedCell] = []
    seen: dict[str, str] = {}
    for task, options, budget, rule, j, hparam_sets in cells:
        reason = rule.unsupported(task, options)
        if reason is None and budget.workers is not None and not rule.data_parallel:
            reason = f"budget.workers = {budget.workers}: its update is not a gradient step DDP can average"
        if reason is None and budget.warmup_steps is not None and not rule.warms_up:
            reason = f"budget.warmup_steps = {budget.warmup_steps}: its step has no optimizer lr to warm up"
        if reason is not None:
            dropped.append(DroppedCell(task.name, rule.name, reason))
            continue
        for hp, seed in itertools.product(hparam_sets, suite.seeds):
            spec = RunSpec(
                suite=suite.name,
                task=task.name,
                task_options=options.model_dump(mode="json"),
                rule=rule.name,
                hparams=hp.model_dump(mode="json"),
                seed=seed,
                budget=budget,
                code_version=code_version,
                shown=tuple(sorted(entry_keys[rule.name])),
                artifacts=tuple(suite.artifacts),
                entry=j,
                track=rule.track,
                plugins=plugins.records,
                rule_origin=plugins.rule_origin(rule.name),
                task_origin=plugins.task_origin(task.name),
            )
            label = f"{task.name} × {spec.rule_display} × seed {seed}"
            if spec.run_id in seen:
                raise SpecError(path, "rules", "each cell of the grid once", f"{label} twice")
            seen[spec.run_id] = label
            specs.append(spec)

    if not specs:
        why = "; ".join(f"{d.rule} on {d.task}: {d.reason}" for d in dropped)
        raise SpecError(path, "rules", "at least one (task, rule) cell that can run", why or "no cells")
    specs.sort(key=lambda s: (s.task, s.rule, s.rule_display, s.seed))
    return Plan(suite=suite, specs=tuple(specs), dropped=tuple(dropped))


def selects(selector: str, task: str, options: Any) -> bool:
    """Whether a rule's ``tasks`` entry picks this task variant.

    ``saxe_depth`` picks every variant of the task; ``saxe_depth[depth=6]`` (the leaderboard's
    display form) picks those whose options have these values.
    """
    name, wanted = parse_display_name(selector)
    if name != task:
        return False
    values = options.model_dump(mode="json")
    return all(key in values and compact_value(values[key]) == text for key, text in wanted.items())


def _expand_options(info: Any, entry: Any, path: str | Path, i: int) -> tuple[list[Any], list[SpecError]]:
    """Validated task options, one per point of the entry's option sweep."""
    errors: list[SpecError] = []
    for key in entry.sweep:
        if key in entry.options:
            errors.append(SpecError(path, f"tasks[{i}].sweep.{key}", "a name not also fixed in options", key))
    if errors:
        return [], errors
    keys = sorted(entry.sweep)
    option_sets: list[Any] = []
    for values in itertools.product(*(entry.sweep[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        try:
            option_sets.append(info.options.model_validate({**entry.options, **combo}))
        except ValidationError as exc:
            for err in errors_from_validation(exc, path, ("tasks", i, "options")).errors:
                name = err.field.removeprefix(f"tasks[{i}].options.").split(".")[0].split("[")[0]
                if name in combo:
                    err = SpecError(path, f"tasks[{i}].sweep.{name}", err.expected, combo[name])
                if str(err) not in {str(e) for e in errors}:
                    errors.append(err)
    return option_sets, errors


def _expand_hparams(
    info: Any, fixed: dict[str, Any], sweep: dict[str, list[Any]], path: str | Path, j: int
) -> tuple[list[Any], list[SpecError]]:
    errors: list[SpecError] = []
    known = set(info.hparams.model_fields)
    expected = f"a hyperparameter of {info.name!r}: {', '.join(sorted(known))}"
    for key in sweep:
        if key not in known:
            errors.append(SpecError(path, f"rules[{j}].sweep.{key}", expected, key))
        elif key in fixed:
            errors.append(SpecError(path, f"rules[{j}].sweep.{key}", "a name not also fixed in hparams", key))
    if errors:
        return [], errors
    keys = sorted(sweep)
    sets = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        combo = dict(zip(keys, values, strict=True))
        try:
            sets.append(info.hparams.model_validate({**fixed, **combo}))
        except ValidationError as exc:
            for err in errors_from_validation(exc, path, ("rules", j, "hparams")).errors:
                name = err.field.rsplit(".", 1)[-1]
                if err.expected == "no such field":
                    err = SpecError(path, err.field, expected, name)
                elif name in combo:
                    err = SpecError(path, f"rules[{j}].sweep.{name}", err.expected, combo[name])
                if str(err) not in {str(e) for e in errors}:
                    errors.append(err)
    return sets, errors


def _registered_hint(exc: UnknownNameError) -> str:
    text = f"a registered {exc.kind} ({', '.join(exc.known)})"
    return f"{text}; {exc.suggestion}" if exc.suggestion else text
