"""Suite files and run specifications: their structure, validation and identity.

A suite YAML names tasks (with options), learning rules (with hyperparameters, optionally swept),
seeds and a budget. :func:`load_suite` checks its *structure*; :mod:`benchmark.plan` resolves the
names against the registries and expands the grid into :class:`RunSpec` s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, ValidationError, model_validator

from benchmark.errors import SpecError, SpecErrors

SUITE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

PROTOCOL = 2
"""The evaluation protocol a run was made under; part of every run's identity and stored in its row.

1. Targets and selection on the test split (before validation splits existed).
2. Held-out tasks train on a training split, report ``val/...`` beside ``test/...`` at every
   evaluation, and their targets and every selection (leaderboard, tuning) read validation only.

Rows of another protocol are never skipped as done and never scored (docs/protocol.md).
"""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Frozen):
    """How long each run trains and how often it is evaluated (in optimizer steps)."""

    steps: Annotated[StrictInt, Field(gt=0)]
    eval_every: Annotated[StrictInt, Field(gt=0)] | None = None
    probe_every: Annotated[StrictInt, Field(gt=0)] | None = None
    """Steps between implied-metric probes of the rule's update; off when None."""
    workers: Annotated[StrictInt, Field(gt=1)] | None = None
    """Data-parallel processes per run (DDP through Ray Train), each with the task's resources and a
    batch of the task's ``batch_size``: the global batch is ``workers × batch_size``. One process
    when None."""
    warmup_steps: Annotated[StrictInt, Field(gt=0)] | None = None
    """Linear learning-rate warm-up: step ``t`` runs at ``lr · min(1, t / warmup_steps)`` (Power et al.
    2022 warm up over 10 steps). For rules whose step is a torch optimizer's with an ``lr``; the planner
    drops the others' cells. None: the full ``lr`` from the first step."""

    @model_validator(mode="after")
    def _probe_runs_in_one_process(self) -> Budget:
        if self.workers is not None and self.probe_every is not None:
            raise ValueError("probe_every needs one process: the probe reads one model's step, not workers'")
        return self


class TaskEntry(_Frozen):
    """A task of the suite, with its options; ``budget`` overrides the suite's for this task.

    ``sweep`` lists option values to try, like a rule's: ``sweep: {depth: [2, 8, 20]}`` gives one
    task variant per value, each shown on the leaderboard as ``task[depth=8]``.
    """

    name: str
    options: dict[str, JsonValue] = {}
    sweep: dict[str, Annotated[list[JsonValue], Field(min_length=1)]] = {}
    budget: Budget | None = None


OPTIMIZER_PATH_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class SearchRange(_Frozen):
    """A tuning range of one hyperparameter of an ``optimizer:`` rule entry."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError("low < high (and low > 0 on a log scale)")
        return self


class RuleEntry(_Frozen):
    """A learning rule of the suite.

    ``hparams`` fixes hyperparameters; ``sweep`` lists values to try, and the grid takes their
    Cartesian product, so ``sweep: {lr: [0.01, 0.1]}`` gives two cells per task and seed;
    ``tuned`` takes each task's best values from a tuned-config file.
    """

    name: str
    hparams: dict[str, JsonValue] = {}
    sweep: dict[str, Annotated[list[JsonValue], Field(min_length=1)]] = {}
    tuned: str | None = None
    """A tuned-config file written by ``synapsebench tune`` (relative to the suite file); ``hparams``
    still override what it holds."""
    tasks: Annotated[list[str], Field(min_length=1)] | None = None
    """Run this rule on these of the suite's tasks only, all of them when left out: a task name, or
    a name with option values (``saxe_depth[depth=6]``) to pick some variants of a swept task."""
    optimizer: Annotated[str, Field(pattern=OPTIMIZER_PATH_PATTERN)] | None = None
    """A ``torch.optim.Optimizer`` subclass by import path (``my_pkg.optim:Lion``), registered in the
    rule registry under ``name`` when the suite is planned (docs/plugins.md)."""
    search_space: dict[str, SearchRange] = {}
    """With ``optimizer``: the ranges ``synapsebench tune`` searches; the rule is not tuned without one."""

    @model_validator(mode="after")
    def _search_space_needs_optimizer(self) -> RuleEntry:
        if self.search_space and self.optimizer is None:
            raise ValueError("search_space only with optimizer (a registered rule has its own)")
        return self


class Suite(_Frozen):
    """A whole suite file: the grid is tasks × rules (× sweeps) × seeds."""

    name: Annotated[str, Field(pattern=SUITE_NAME_PATTERN)]
    description: str = ""
    tasks: Annotated[list[TaskEntry], Field(min_length=1)]
    rules: Annotated[list[RuleEntry], Field(min_length=1)]
    plugins: list[Annotated[str, Field(min_length=1)]] = []
    """Python files (relative to the suite file) or importable module names that register rules and
    tasks, imported before planning (docs/plugins.md)."""
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
    budget: Budget
    artifacts: list[Literal["weight_histogram"]] = []
    """End-of-run files each run writes and MLflow keeps: ``weight_histogram`` is a PNG of each
    layer's weight magnitudes (log10 |w|) at init and at the end, with a log-normal fit."""
    batch: Literal["auto", "off"] | Annotated[StrictInt, Field(ge=1)] = "auto"
    """Runs that differ only in seed train as one stacked model, in groups of up to this many
    (``auto``: as many as fit, up to 64; ``off``: each alone); see :mod:`benchmark.batching`. Not
    part of any RunSpec: it changes how runs are scheduled, not their ids."""


NOT_HASHED = {"suite", "code_version", "shown", "artifacts", "entry", "track", "plugins"}
"""RunSpec fields that do not change a run's result: recorded beside it, not part of its id."""


class Origin(_Frozen):
    """Where a plugin's rule or task comes from; part of the identity of the runs that use it."""

    source: str
    """The plugin module that registered it (``sign_sgd``), or an ``optimizer:`` entry's class path."""
    version: str
    """``sha256:<hex>`` of the plugin's code, or the version of the distribution that installed it."""

    def __str__(self) -> str:
        """As the store and MLflow record it: ``sign_sgd sha256:…``."""
        return f"{self.source} {self.version}"


class PluginRef(_Frozen):
    """A plugin a run imports before it looks its rule and task up, and the version it was planned with."""

    ref: str
    """An absolute ``.py`` path, or a module or ``synapsebench.plugins`` entry-point name."""
    module: str
    version: str


class RunSpec(_Frozen):
    """One cell of the grid, fully resolved: defaults are filled in, so equal runs hash equal."""

    suite: str
    task: str
    task_options: dict[str, JsonValue]
    rule: str
    hparams: dict[str, JsonValue]
    seed: int
    budget: Budget
    code_version: str = ""
    shown: tuple[str, ...] | None = None
    """Hyperparameters to show in the display name (the suite's explicit ones); None shows all."""
    artifacts: tuple[str, ...] = ()
    """End-of-run files to write (the suite's ``artifacts``); they do not change the result."""
    protocol: int = PROTOCOL
    """The evaluation protocol (:data:`PROTOCOL`): hashed, so a new protocol never reuses old rows."""
    entry: int | None = None
    """Index of the suite's rule entry the cell came from: the leaderboard selects one point per entry."""
    track: Literal["tuned", "self_tuning"] = "tuned"
    """The rule's scoring track (AlgoPerf's external tuning vs self-tuning), copied from the registry."""
    plugins: tuple[PluginRef, ...] = ()
    """The suite's plugins, which a worker imports first; recorded, not hashed (the origins are)."""
    rule_origin: Origin | None = None
    """Set for a plugin's rule: editing the plugin changes the run's id, so its cells run again."""
    task_origin: Origin | None = None
    """Set for a plugin's task, as ``rule_origin``."""

    def identity(self) -> dict[str, Any]:
        """Everything that changes the run's result (the code version is recorded, not hashed).

        Unset optional fields are left out, so adding one later keeps earlier runs' hashes.
        """
        return self.model_dump(
            mode="json",
            exclude=NOT_HASHED,
            exclude_none=True,
        )

    @property
    def run_id(self) -> str:
        """Stable content hash of :meth:`identity`: the run's name everywhere."""
        return content_hash(self.identity())

    @property
    def plugins_json(self) -> str:
        """The plugins as the store and MLflow record them: JSON text of their refs and versions."""
        return json.dumps([p.model_dump() for p in self.plugins])

    @property
    def rule_display(self) -> str:
        """benchopt-style display name, e.g. ``sgd[lr=0.1,momentum=0.9]``."""
        shown = self.hparams if self.shown is None else {k: self.hparams[k] for k in self.shown}
        return display_name(self.rule, shown)

    @property
    def eval_every(self) -> int:
        if self.budget.eval_every is None:
            raise ValueError("a planned RunSpec always has budget.eval_every")
        return self.budget.eval_every


def content_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def display_name(name: str, params: Mapping[str, Any]) -> str:
    if not params:
        return name
    inner = ",".join(f"{k}={compact_value(v)}" for k, v in sorted(params.items()))
    return f"{name}[{inner}]"


def parse_display_name(display: str) -> tuple[str, dict[str, str]]:
    """:func:`display_name` read back as text: ``saxe_depth[depth=6]`` → ``("saxe_depth", {"depth": "6"})``.

    Values stay in :func:`compact_value`'s form (a tuple value's commas are not split out).
    """
    name, _, inner = display.partition("[")
    params: dict[str, str] = {}
    for part in filter(None, inner.rstrip("]").split(",")):
        key, _, text = part.partition("=")
        params[key.strip()] = text.strip()
    return name.strip(), params


def compact_value(value: Any) -> str:
    """A value as display names show it: ``0.1``, ``1e-08``, ``(0.9,0.999)``."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "(" + ",".join(compact_value(v) for v in value) + ")"
    return str(value)


def field_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """Pydantic's ``("rules", 1, "hparams", "lr")`` as ``rules[1].hparams.lr``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def errors_from_validation(
    exc: ValidationError, path: str | Path, prefix: tuple[int | str, ...] = ()
) -> SpecErrors:
    """Turn pydantic's errors into ours, each naming the file and the field."""
    errors = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        expected = _expected_text(err)
        got = err.get("input")
        if err["type"] == "missing":
            got = None
        errors.append(SpecError(path, field_path(loc), expected, got))
    return SpecErrors(errors)


def _expected_text(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "missing":
        return "a value (the field is required)"
    if kind == "extra_forbidden":
        return "no such field"
    msg = str(err["msg"])
    for lead in ("Input should be ", "Value error, "):
        if msg.startswith(lead):
            msg = msg[len(lead) :]
    return msg


def load_suite(path: str | Path) -> Suite:
    """Read and structurally validate a suite file.

    Raises:
        SpecError: the file is missing, is not YAML, or does not have a suite's structure.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(path, "", "an existing suite file (YAML)", "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(path, where, "well-formed YAML", problem) from None
    except UnicodeDecodeError as exc:
        raise SpecError(path, "", "a UTF-8 text file", str(exc)) from None
    if not isinstance(raw, dict):
        raise SpecError(path, "", "a mapping with name, tasks, rules, seeds and budget", type(raw).__name__)
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        raise errors_from_validation(exc, path) from None
