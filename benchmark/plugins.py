"""Plugins: learning rules and tasks declared outside the package, and their identity (docs/plugins.md).

A suite's ``plugins:`` names Python files (relative to the suite file) or importable modules,
including those an installed package declares under the entry-point group ``synapsebench.plugins``.
Each is imported before the suite is planned, on the driver and again on every Ray worker
(:func:`load_for_run`), and registers its entries through :func:`register_rule` and
:func:`register_task` (exported as ``benchmark.register_rule`` and ``benchmark.register_task``), so
the registries stay the single place rules and tasks live. A plugin file is importable under its
file's stem, so an ``optimizer:`` rule entry can name a class in it (``sign_sgd:SignSGD``).

A plugin's identity is its code: a SHA-256 of every ``.py`` file in a plugin file's folder, the
distribution's version for a package installed normally, or a SHA-256 of its package's ``.py`` files
for an editable (or uninstalled) one. A plugin's rules and tasks carry it in their runs' ids, so an
edited plugin's cells run again and an unchanged one's are skipped as done.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import typing
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
from optuna.distributions import FloatDistribution
from pydantic import ConfigDict, create_model

from benchmark.errors import SpecError, SpecErrors
from benchmark.registry import Registry
from benchmark.rules import RULES, HParams, RuleInfo
from benchmark.rules.base import BuildOptimizer
from benchmark.spec import Origin, PluginRef, RuleEntry, RunSpec, Suite
from benchmark.tasks import TASKS, TaskInfo

ENTRY_POINT_GROUP = "synapsebench.plugins"

# What a plugin's errors say was expected.
EXISTING = "an existing plugin file (relative to the suite file)"
CLEAN = "a plugin that imports cleanly"
UNTAKEN = "a plugin whose names are not already taken"


class PluginError(SpecError):
    """A plugin that cannot be loaded or registers a taken name: bad input, with its full reason.

    ``got`` is shown whole (a SpecError shortens it), since it names files and the plugin's own error.
    """

    def __init__(self, path: str | Path | None, field: str, expected: str, got: str) -> None:
        super().__init__(path, field, expected)
        self.got = got
        self.args = (f"{self.args[0]} (got {got})",)


class NameTakenError(ValueError):
    """A registration under a name the registry already holds; the message names both places."""


@dataclass(frozen=True, slots=True)
class Plugin:
    """A loaded plugin: how a suite named it, the module it was imported as, and its code's version."""

    ref: str
    module: str
    version: str

    @property
    def record(self) -> PluginRef:
        return PluginRef(ref=self.ref, module=self.module, version=self.version)


_LOADED: dict[str, Plugin] = {}
"""Plugins imported in this process, by ``ref``."""
_PLACES: dict[tuple[str, str], str] = {}
"""(kind, name) → where it was registered, for every entry not built in: a plugin's ref, or a module."""
_PLUGIN_OF: dict[tuple[str, str], str] = {}
"""(kind, name) → the ref of the plugin that registered it."""
_OPTIMIZER_OF: dict[str, str] = {}
"""Rule name → the class path of the ``optimizer:`` entry it was registered from."""
_loading: list[str] = []
"""Refs of the plugins being imported now (innermost last): their registrations are theirs."""


# --- the public registration API -------------------------------------------------------------


def register_rule(info: RuleInfo) -> RuleInfo:
    """Add a learning rule to ``RULES``, recording the plugin that declared it.

    Raises:
        NameTakenError: the name is already registered; the message says by whom.
    """
    return _register(RULES, info, _caller_module(info.build))


def register_task(info: TaskInfo) -> TaskInfo:
    """Add a task to ``TASKS``, recording the plugin that declared it.

    A held-out task (not ``theory``) must declare its validation split and choose on it, as the
    built-ins do (docs/protocol.md).

    Raises:
        NameTakenError: the name is already registered; the message says by whom.
        ValueError: a held-out task without a validation split, or targeting a non-``val/`` metric.
    """
    if not info.theory:
        chosen = {info.target.metric, info.selected_by.metric}
        if not info.validation or any(not m.startswith("val/") for m in chosen):
            raise ValueError(
                f"task {info.name!r}: a held-out task declares its validation split (validation=...) "
                f"and targets and selects on val/ metrics (got validation={info.validation!r}, "
                f"metrics {sorted(chosen)}); a task compared with a closed form sets theory=True"
            )
    return _register(TASKS, info, _caller_module(info.load_data))


InfoT = TypeVar("InfoT", RuleInfo, TaskInfo)


def _register(registry: Registry[InfoT], info: InfoT, module: str) -> InfoT:
    key = (registry.kind, info.name)
    here = _loading[-1] if _loading else f"module {module}"
    if info.name in registry:
        raise NameTakenError(
            f"{registry.kind} {info.name!r} is registered by {place(registry.kind, info.name)} "
            f"and again by {here}"
        )
    registry.add(info)
    _PLACES[key] = here
    if _loading:
        _PLUGIN_OF[key] = _loading[-1]
    return info


def _caller_module(fn: object) -> str:
    return str(getattr(fn, "__module__", "") or "?")


def place(kind: str, name: str) -> str:
    """Where a registered rule or task comes from: a plugin, a module, or synapsebench itself."""
    return _PLACES.get((kind, name), f"synapsebench's built-in {kind}s (benchmark.{kind}s)")


def plugin_mark(kind: str, name: str) -> str:
    """How ``synapsebench list`` marks a plugin's rule or task (empty for a built-in)."""
    where = _PLACES.get((kind, name))
    return "" if where is None else f"  [plugin: {where}]"


def plugin_of(kind: str, name: str) -> Plugin | None:
    """The loaded plugin that registered a rule or task; None for a built-in."""
    ref = _PLUGIN_OF.get((kind, name))
    return None if ref is None else _LOADED.get(ref)


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SuitePlugins:
    """What a suite's plugins and ``optimizer:`` entries added, ready to put in its RunSpecs."""

    plugins: tuple[Plugin, ...]

    @property
    def records(self) -> tuple[PluginRef, ...]:
        return tuple(p.record for p in self.plugins)

    def rule_origin(self, name: str) -> Origin | None:
        return origin("rule", name)

    def task_origin(self, name: str) -> Origin | None:
        return origin("task", name)


def origin(kind: str, name: str) -> Origin | None:
    """A plugin rule's or task's identity (None for a built-in): the plugin module and its version,
    or an ``optimizer:`` entry's class path and the version of the code that defines the class."""
    if kind == "rule" and name in _OPTIMIZER_OF:
        path = _OPTIMIZER_OF[name]
        return Origin(source=path, version=module_version(path.partition(":")[0]))
    plugin = plugin_of(kind, name)
    return None if plugin is None else Origin(source=plugin.module, version=plugin.version)


def load_suite_plugins(suite: Suite, path: str | Path) -> SuitePlugins:
    """Import a suite's plugins, then register its ``optimizer:`` rule entries.

    Raises:
        SpecError: a plugin is missing, fails to import, shadows an installed module or registers a
            taken name; an ``optimizer:`` path does not name a torch optimizer. Each names the suite
            file and the field.
    """
    loaded = tuple(load_plugin(ref, path, f"plugins[{i}]") for i, ref in enumerate(suite.plugins))
    errors: list[SpecError] = []
    for j, entry in enumerate(suite.rules):
        if entry.optimizer is not None:
            try:
                register_optimizer(entry, path, j)
            except SpecError as exc:
                errors.append(exc)
    if errors:
        raise SpecErrors(errors)
    return SuitePlugins(loaded)


def load_plugin(ref: str, suite_path: str | Path, field: str) -> Plugin:
    """Import one plugin as a suite names it: a ``.py`` file (relative to the suite) or a module name."""
    if ref.endswith(".py") or "/" in ref:
        file = (Path(suite_path).parent / ref).resolve()
        if not file.is_file():
            raise PluginError(suite_path, field, EXISTING, str(file))
        return _load_file(file, suite_path, field)
    return _load_module(ref, suite_path, field)


def load_entry_points() -> tuple[Plugin, ...]:
    """Import every plugin that installed packages declare under ``synapsebench.plugins``."""
    names = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
    return tuple(_load_module(name, None, f"entry point {ENTRY_POINT_GROUP}:{name}") for name in names)


def load_for_run(spec: RunSpec) -> None:
    """On a worker, before looking the run's rule and task up: import what the suite's plan imported.

    A plugin file is imported from its path where this machine has it (a local Ray), and checked
    against the version the run was planned with; elsewhere by its module name, from the copy the
    cluster's runtime environment shipped (:func:`shipped_modules`). A module already imported (a
    reused worker, or the shipped copy) is kept.

    Raises:
        RuntimeError: a plugin file changed since the suite was planned, so the run would not be
            the one its id names.
    """
    for record in spec.plugins:
        _load_record(record, check_version=True)
    rule = spec.rule_origin
    if rule is not None and ":" in rule.source and spec.rule not in RULES:
        register_optimizer(RuleEntry(name=spec.rule, optimizer=rule.source), None, 0)


def load_recorded(records: Iterable[PluginRef]) -> list[str]:
    """Import the plugins stored rows record, as they are now (``leaderboard`` by suite name, which
    needs their tasks' theory plots, not their old code); returns what could not be imported."""
    failed = []
    for record in {r.ref: r for r in records}.values():
        try:
            _load_record(record, check_version=False)
        except SpecError as exc:
            failed.append(f"{record.ref}: {exc}")
    return failed


def _load_record(record: PluginRef, check_version: bool) -> None:
    if record.ref in _LOADED:
        return
    file = Path(record.ref)
    if not file.is_file():  # a module, an entry point, or a file the runtime_env shipped
        _load_module(record.module if file.suffix == ".py" else record.ref, None, "plugins")
        return
    version = folder_version(file.parent)
    if check_version and version != record.version:
        raise RuntimeError(
            f"plugin {record.ref} changed since the suite was planned ({record.version} → {version}); "
            "run the suite again"
        )
    if record.module not in sys.modules:
        sys.path.insert(0, str(file.parent))
        _import(record.module, record.ref)
    _LOADED[record.ref] = Plugin(record.ref, record.module, version)


def records_from_json(texts: Iterable[str | None]) -> list[PluginRef]:
    """The distinct plugins of stored rows' ``plugins_json`` values."""
    found = {PluginRef.model_validate(item) for text in texts if text for item in json.loads(text)}
    return sorted(found, key=lambda r: r.ref)


def _load_file(file: Path, suite_path: str | Path | None, field: str) -> Plugin:
    file = file.resolve()
    ref = str(file)
    stem = file.stem
    version = folder_version(file.parent)
    if ref in _LOADED:
        if _LOADED[ref].version != version:
            raise RuntimeError(
                f"plugin {ref} changed after this process imported it; run it in a new process"
            )
        return _LOADED[ref]
    where = suite_path if suite_path is not None else file
    if not stem.isidentifier():
        raise PluginError(where, field, "a plugin file whose name is a Python module name", file.name)
    shadowed = _module_file(stem)
    if shadowed is not None and shadowed != file:
        raise PluginError(
            where,
            field,
            "a plugin file whose stem names no other importable module",
            f"{file} would shadow the module {stem!r} at {shadowed}",
        )
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))  # siblings and ``optimizer: "<stem>:Class"`` import
    _import(stem, ref, where, field)
    plugin = Plugin(ref=ref, module=stem, version=version)
    _LOADED[ref] = plugin
    return plugin


def _load_module(name: str, suite_path: str | Path | None, field: str) -> Plugin:
    if name in _LOADED:
        return _LOADED[name]
    points = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    where = suite_path if suite_path is not None else name
    module = name
    if points:  # an installed package's entry point: a module, or a function that registers
        point = next(iter(points))
        module = point.module
        with _registering(name):
            try:
                loaded = point.load()
                if callable(loaded) and not isinstance(loaded, ModuleType):
                    loaded()
            except NameTakenError as exc:
                raise PluginError(where, field, UNTAKEN, str(exc)) from exc
            except Exception as exc:  # a plugin is user code: any error, its first line
                raise PluginError(where, field, CLEAN, _first_line(name, exc)) from exc
    elif importlib.util.find_spec(name.partition(".")[0]) is None:
        raise PluginError(where, field, "a plugin file (ending in .py) or an importable module name", name)
    else:
        _import(name, name, where, field)
    plugin = Plugin(ref=name, module=module, version=module_version(module))
    _LOADED[name] = plugin
    return plugin


@contextmanager
def _registering(ref: str) -> Iterator[None]:
    _loading.append(ref)
    try:
        yield
    finally:
        _loading.pop()


def _import(module: str, ref: str, where: str | Path | None = None, field: str = "plugins") -> ModuleType:
    """Import a plugin's module, its registrations recorded as ``ref``'s; a failure is bad input."""
    try:
        with _registering(ref):
            return importlib.import_module(module)
    except NameTakenError as exc:
        raise PluginError(where or ref, field, UNTAKEN, str(exc)) from exc
    except Exception as exc:  # a plugin is user code: any error, its first line
        raise PluginError(where or ref, field, CLEAN, _first_line(ref, exc)) from exc


def _first_line(ref: str, exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{ref} raised {type(exc).__name__}" + (f": {lines[0]}" if lines else "")


def _module_file(name: str) -> Path | None:
    """The file an ``import name`` would load now (None if nothing would)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        return Path(file).resolve() if file else Path(f"<built-in module {name}>")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    return Path(found.origin).resolve() if found.origin and found.has_location else Path(f"<{found.origin}>")


# --- identity ---------------------------------------------------------------------------------


def folder_version(folder: Path) -> str:
    """``sha256:<hex>`` of every ``.py`` file directly in ``folder`` (names and contents, sorted)."""
    return _files_version(sorted(folder.glob("*.py")), folder)


def _files_version(files: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return f"sha256:{digest.hexdigest()}"


@functools.cache
def module_version(module: str) -> str:
    """The version of the code behind an importable module.

    A plugin file's folder hash for its module; the distribution's ``name version`` when it is
    installed normally; otherwise (an editable install, or a module found on the path) a SHA-256 of
    its top-level package's ``.py`` files.
    """
    top = module.partition(".")[0]
    for plugin in _LOADED.values():
        if plugin.module == top and Path(plugin.ref).is_file():
            return plugin.version
    for dist_name in metadata.packages_distributions().get(top, []):
        dist = metadata.distribution(dist_name)
        if not _editable(dist):
            return f"{dist.metadata['Name']} {dist.version}"
    found = importlib.util.find_spec(top)
    if found is None or not found.origin:
        return "unknown"
    if found.submodule_search_locations:
        root = Path(next(iter(found.submodule_search_locations)))
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        return _files_version(files, root)
    origin = Path(found.origin)
    return _files_version([origin], origin.parent)


def _editable(dist: metadata.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    return bool(text) and bool(json.loads(text or "{}").get("dir_info", {}).get("editable", False))


def shipped_modules(records: Iterable[PluginRef]) -> list[str]:
    """What a cluster's workers need of the plugins (Ray ``runtime_env`` ``py_modules``): the ``.py``
    files of each plugin file's folder, and the package folder of a plugin module that no normal
    install provides. A normally installed package is expected on the workers' image."""
    shipped: list[str] = []
    for record in records:
        if Path(record.ref).is_file():
            shipped += [str(p) for p in sorted(Path(record.ref).parent.glob("*.py"))]
            continue
        found = importlib.util.find_spec(record.module.partition(".")[0])
        if found is None or not record.version.startswith("sha256:"):
            continue
        if found.submodule_search_locations:
            shipped.append(next(iter(found.submodule_search_locations)))
        elif found.origin:
            shipped.append(found.origin)
    return sorted(dict.fromkeys(shipped))


# --- the ``optimizer:`` shorthand -------------------------------------------------------------


class OptimizerHParams(HParams):
    """Hyperparameters read from a torch optimizer's constructor (its annotations may name Tensor)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def register_optimizer(entry: RuleEntry, path: str | Path | None, j: int) -> RuleInfo:
    """Register a suite's ``{name, optimizer: "module:Class"}`` rule entry in ``RULES``.

    The hyperparameters are the constructor's keyword arguments, typed by its annotations or else
    by its defaults; ``data_parallel`` is derived from its ``step``. Registering the same entry
    again (a second plan in one process) returns the rule already registered.

    Raises:
        SpecError: the path does not import, does not name a ``torch.optim.Optimizer`` subclass, or
            the name is taken by another rule.
    """
    class_path = entry.optimizer or ""
    field = f"rules[{j}].optimizer"
    if _OPTIMIZER_OF.get(entry.name) == class_path:
        return RULES.get(entry.name)
    optimizer = _optimizer_class(class_path, path, field)
    if entry.name in RULES:
        raise PluginError(
            path,
            f"rules[{j}].name",
            "a rule name not already taken",
            f"{entry.name!r} is registered by {place('rule', entry.name)}",
        )
    info = RuleInfo(
        name=entry.name,
        description=f"{optimizer.__qualname__} from {class_path} (a suite's optimizer: entry)",
        hparams=optimizer_hparams(optimizer),
        build=BuildOptimizer(optimizer),
        search_space={k: FloatDistribution(r.low, r.high, log=r.log) for k, r in entry.search_space.items()},
        reference=class_path,
    )
    try:
        RULES.add(info)
    except ValueError as exc:  # the registry's name check
        raise PluginError(path, f"rules[{j}].name", "a registry name", str(exc)) from None
    _PLACES[("rule", entry.name)] = f"the optimizer: entry {class_path}"
    _OPTIMIZER_OF[entry.name] = class_path
    return info


def _optimizer_class(class_path: str, path: str | Path | None, field: str) -> type[torch.optim.Optimizer]:
    module_name, _, attr = class_path.partition(":")
    expected = "an importable torch.optim.Optimizer subclass, as module:Class"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # user code: any error, its first line
        raise PluginError(path, field, expected, _first_line(class_path, exc)) from exc
    found = getattr(module, attr, None)
    if found is None:
        raise PluginError(path, field, expected, f"{class_path}: module {module_name!r} has no {attr!r}")
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise PluginError(path, field, expected, f"{class_path} is {found!r}, not an Optimizer subclass")
    return found


def optimizer_hparams(optimizer: type[torch.optim.Optimizer]) -> type[HParams]:
    """A pydantic model of an optimizer's constructor arguments (all but ``params``).

    A type comes from the annotation, else from the default's type (a default of None accepts
    anything); an argument without a default is required.
    """
    try:
        hints = typing.get_type_hints(optimizer.__init__)
    except (NameError, TypeError, AttributeError):  # annotations that do not resolve: use the defaults
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(optimizer.__init__).parameters.items():
        if name in ("self", "params") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        kind = hints.get(name, _type_of(default))
        fields[name] = (kind, ...) if default is param.empty else (kind, default)
    model: type[HParams] = create_model(
        f"{optimizer.__name__}HParams", __base__=OptimizerHParams, __module__=optimizer.__module__, **fields
    )
    return model


def _type_of(default: object) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return Any
    if isinstance(default, tuple):
        return tuple.__class_getitem__(tuple(_type_of(v) for v in default))
    return type(default)
