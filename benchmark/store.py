"""The Parquet results: one file per run, named by its hash, plus a long curves table.

Layout under the results folder::

    <results>/<suite>/runs/<run_id>.parquet     one row: identity, status, final metrics, curve, provenance
    <results>/<suite>/curves/<run_id>.parquet   long table: run_id, step, train_time_s, key, value
    <results>/<suite>/artifacts/<run_id>/       end-of-run files the suite asks for (PNG plots)

Each file is written to a hidden temporary name in the same folder, flushed, then renamed over its
final name, so a reader never sees half a file, a kill leaves only a hidden temporary (which readers
skip), and concurrent writers of different runs cannot touch each other's files. The results folder
may also be a URI (``s3://bucket/prefix``, see :mod:`benchmark.results_location`): there each file is
one put, which an object store makes visible whole or not at all.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from benchmark.atomic import temporary_beside
from benchmark.provenance import git_commit, package_version
from benchmark.result import RunResult
from benchmark.results_location import Location, RemoteFolder
from benchmark.spec import PROTOCOL, RunSpec

COMPLETED = ("ok", "diverged")
"""Statuses that count as done: such a run is skipped on the next invocation (unless --rerun)."""

METRICS = pa.map_(pa.string(), pa.float64())
CURVE_POINT = pa.struct([("step", pa.int64()), ("train_time_s", pa.float64()), ("metrics", METRICS)])
TIMESTAMP = pa.timestamp("us", tz="UTC")

RUN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("suite", pa.string()),
        ("task", pa.string()),
        ("task_options_json", pa.string()),
        ("rule", pa.string()),
        ("rule_display", pa.string()),
        ("hparams_json", pa.string()),
        ("seed", pa.int64()),
        ("budget_steps", pa.int64()),
        ("eval_every", pa.int64()),
        ("target_metric", pa.string()),
        ("target_value", pa.float64()),
        ("target_mode", pa.string()),
        ("selection_metric", pa.string()),
        ("selection_mode", pa.string()),
        ("chance", pa.float64()),
        ("theory", pa.bool_()),
        ("protocol", pa.int64()),
        ("rule_entry", pa.int64()),
        ("track", pa.string()),
        ("rule_origin", pa.string()),
        ("task_origin", pa.string()),
        ("plugins_json", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("steps", pa.int64()),
        ("final", METRICS),
        ("curve", pa.list_(CURVE_POINT)),
        ("train_time_s", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("batch_size", pa.int64()),
        ("package_version", pa.string()),
        ("code_version", pa.string()),
        ("git_commit", pa.string()),
        ("code_dirty", pa.bool_()),
        ("torch_version", pa.string()),
        ("cuda_version", pa.string()),
        ("device_name", pa.string()),
        ("hostname", pa.string()),
        ("node_id", pa.string()),  # the Ray node the run trained on ("" outside Ray)
        ("started_at", TIMESTAMP),
        ("finished_at", TIMESTAMP),
    ]
)

CURVE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("train_time_s", pa.float64()),
        ("key", pa.string()),
        ("value", pa.float64()),
    ]
)


DROPPED_SCHEMA = pa.schema(
    [("task", pa.string()), ("rule", pa.string()), ("reason", pa.string()), ("track", pa.string())]
)
"""The cells the planner left out of a suite's grid, and why: they count as not reaching the target."""


def _location(results: Location) -> Location:
    return results if isinstance(results, RemoteFolder) else Path(results)


def suite_dir(results: Location, suite: str) -> Location:
    return _location(results) / suite


def runs_dir(results: Location, suite: str) -> Location:
    return suite_dir(results, suite) / "runs"


def curves_dir(results: Location, suite: str) -> Location:
    return suite_dir(results, suite) / "curves"


def artifacts_dir(results: Location, spec: RunSpec) -> Location:
    """Where a run's end-of-run files go: ``<results>/<suite>/artifacts/<run_id>/``."""
    return suite_dir(results, spec.suite) / "artifacts" / spec.run_id


def run_row(spec: RunSpec, result: RunResult, node_id: str = "") -> dict[str, Any]:
    """The run's row in :data:`RUN_SCHEMA`, as written on the host (and Ray node) it ran on."""
    commit, dirty = git_commit()
    return {
        "run_id": spec.run_id,
        "suite": spec.suite,
        "task": spec.task,
        "task_options_json": json.dumps(spec.task_options, sort_keys=True),
        "rule": spec.rule,
        "rule_display": spec.rule_display,
        "hparams_json": json.dumps(spec.hparams, sort_keys=True),
        "seed": spec.seed,
        "budget_steps": spec.budget.steps,
        "eval_every": spec.eval_every,
        "target_metric": result.target[0],
        "target_value": result.target[1],
        "target_mode": result.target[2],
        "selection_metric": result.selection[0] or result.target[0],
        "selection_mode": result.selection[1] if result.selection[0] else result.target[2],
        "chance": result.chance,
        "theory": result.theory,
        "protocol": spec.protocol,
        "rule_entry": spec.entry,
        "track": spec.track,
        "rule_origin": None if spec.rule_origin is None else str(spec.rule_origin),
        "task_origin": None if spec.task_origin is None else str(spec.task_origin),
        "plugins_json": spec.plugins_json if spec.plugins else None,
        "status": result.status,
        "error": result.error,
        "steps": result.steps,
        "final": list(result.final.items()),
        "curve": [
            {"step": p.step, "train_time_s": p.train_time_s, "metrics": list(p.metrics.items())}
            for p in result.curve
        ],
        "train_time_s": result.train_time_s,
        "wall_time_s": result.wall_time_s,
        "batch_size": result.batch_size,
        "package_version": package_version(),
        "code_version": spec.code_version,
        "git_commit": commit,
        "code_dirty": dirty,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "device_name": result.device,
        "hostname": socket.gethostname(),
        "node_id": node_id,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
    }


def curve_rows(run_id: str, result: RunResult) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in CURVE_SCHEMA.names}
    for point in result.curve:
        for key, value in point.metrics.items():
            columns["run_id"].append(run_id)
            columns["step"].append(point.step)
            columns["train_time_s"].append(point.train_time_s)
            columns["key"].append(key)
            columns["value"].append(value)
    return columns


def write_run(results: Location, spec: RunSpec, result: RunResult, node_id: str = "") -> Location:
    """Write the run's curves, then its row, each atomically. Returns the row's path."""
    curves = pa.Table.from_pydict(curve_rows(spec.run_id, result), schema=CURVE_SCHEMA)
    _write_atomic(curves, curves_dir(results, spec.suite) / f"{spec.run_id}.parquet")
    row = pa.Table.from_pylist([run_row(spec, result, node_id)], schema=RUN_SCHEMA)
    return _write_atomic(row, runs_dir(results, spec.suite) / f"{spec.run_id}.parquet")


def write_dropped(results: Location, suite: str, cells: Iterable[tuple[str, str, str, str]]) -> Location:
    """Record the suite's dropped (task, rule, reason, track) cells, replacing the previous record."""
    rows = [dict(zip(DROPPED_SCHEMA.names, cell, strict=True)) for cell in dict.fromkeys(cells)]
    table = pa.Table.from_pylist(rows, schema=DROPPED_SCHEMA)
    return _write_atomic(table, suite_dir(results, suite) / "dropped.parquet")


def read_dropped(results: Location, suite: str) -> list[tuple[str, str, str, str]]:
    """The dropped cells the last ``run`` of the suite recorded (none if it recorded none)."""
    path = suite_dir(results, suite) / "dropped.parquet"
    if not path.is_file():
        return []
    return [tuple(row.values()) for row in _read_table(path, DROPPED_SCHEMA).to_pylist()]


def _write_atomic(table: pa.Table, path: Location) -> Location:
    if isinstance(path, RemoteFolder):  # one put: an object store shows it whole or not at all
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        path.write_bytes(sink.getvalue().to_pybytes())
        return path
    with temporary_beside(path) as tmp:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return path


def _data_files(folder: Location) -> list[Location]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))), key=str)


def _read_table(path: Location, schema: pa.Schema) -> pa.Table:
    if isinstance(path, RemoteFolder):
        return pq.read_table(path.path, filesystem=path.fs, schema=schema)
    return pq.read_table(path, schema=schema)


def read_runs(results: Location, suite: str, protocol: int | None = PROTOCOL) -> pa.Table:
    """The run rows of ``suite`` made under ``protocol`` (every row when None).

    An empty table with :data:`RUN_SCHEMA` when there is none. Rows written before the protocol
    was stored read as protocol 1.
    """
    table = _read(_data_files(runs_dir(results, suite)), RUN_SCHEMA)
    if protocol is None:
        return table
    return table.filter(pc.equal(pc.fill_null(table.column("protocol"), 1), protocol))


def stale_runs(results: Location, suite: str) -> int:
    """How many stored rows of ``suite`` were made under another protocol than :data:`PROTOCOL`."""
    every: int = read_runs(results, suite, protocol=None).num_rows
    current: int = read_runs(results, suite).num_rows
    return every - current


def stale_message(results: Location, suite: str, count: int) -> str:
    """What to tell a user whose results folder holds rows of an older protocol."""
    return (
        f"{count} stored run(s) of suite {suite!r} under {results} were made under an older evaluation "
        f"protocol (before protocol {PROTOCOL}: validation splits and selection on validation) and are "
        "neither skipped as done nor scored; `synapsebench run` reruns their cells under the current "
        "protocol (add --rerun to rerun cells already done), or pass a new --results folder"
    )


def read_curves(results: Location, suite: str, run_ids: Iterable[str] | None = None) -> pa.Table:
    folder = curves_dir(results, suite)
    files = (
        _data_files(folder)
        if run_ids is None
        else [p for p in (folder / f"{r}.parquet" for r in run_ids) if p.is_file()]
    )
    return _read(files, CURVE_SCHEMA)


def _read(files: list[Location], schema: pa.Schema) -> pa.Table:
    if not files:
        return schema.empty_table()
    return pa.concat_tables(_read_table(f, schema) for f in files)


def done_ids(results: Location, suite: str) -> set[str]:
    """Run ids of ``suite`` that already have a completed (ok or diverged) row."""
    table = read_runs(results, suite).select(["run_id", "status"]).to_pylist()
    return {row["run_id"] for row in table if row["status"] in COMPLETED}


def find_runs(results: Location, prefix: str) -> list[Location]:
    """The stored run files, across every suite under ``results``, whose run id starts with ``prefix``."""
    return sorted(
        (
            p
            for p in _location(results).glob(f"*/runs/{prefix}*.parquet")
            if not p.name.startswith((".", "_"))
        ),
        key=str,
    )


def read_run(path: Location) -> dict[str, Any]:
    """One run's row, as a dict (final metrics and curve as plain Python values)."""
    row: dict[str, Any] = _read_table(path, RUN_SCHEMA).to_pylist()[0]
    return row
