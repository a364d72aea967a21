"""A real two-node Ray cluster on this machine: a head and a worker node, each `ray start --block`
with one CPU, joined by the CLI as a subprocess with ``--address`` (not the test session's Ray)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmark import store
from tests.conftest import tiny_suite, write_suite
from tests.servers import HEALTH_CHECK, RayNode, free_port, start_ray_node, this_checkout

PROBE = "probe_node"
"""A custom resource only the worker node has: it pins the readiness probe there; cells never ask for it."""

TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
"""Ray's token authentication, as on a real cluster: every node and every driver holds the token."""

_PROBE_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
where = ray.remote(num_cpus=0, resources={sys.argv[2]: 1})(lambda: ray.get_runtime_context().get_node_id())
worker = ray.get(where.remote(), timeout=120)
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
print(json.dumps({"head": head[0], "worker": worker}))
"""


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[RayNode, str]]:
    address = f"127.0.0.1:{free_port()}"
    node = start_ray_node(
        "--head",
        f"--port={address.split(':')[1]}",
        "--include-dashboard=false",
        env={**HEALTH_CHECK, **TOKEN},
    )
    try:
        yield node, address
    finally:
        node.kill()


@pytest.fixture
def cluster(head: tuple[RayNode, str]) -> Iterator[tuple[str, dict[str, str], RayNode]]:
    """The head plus a fresh worker node; yields the address, the node ids and the worker node."""
    _, address = head
    worker = start_ray_node(f"--address={address}", f"--resources={json.dumps({PROBE: 1})}", env=TOKEN)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE_SCRIPT, address, PROBE],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PYTHONPATH": this_checkout(), **TOKEN},
        )
        assert probe.returncode == 0, probe.stderr[-2000:]
        nodes = json.loads(probe.stdout.strip().splitlines()[-1])
        assert nodes["head"] != nodes["worker"]
        yield address, nodes, worker
    finally:
        worker.kill()


def _cli(name: str, steps: int, address: str, tmp_path: Path) -> subprocess.Popen[str]:
    """``synapsebench run`` of four one-CPU cells (``sgd`` on ``digits_mlp``, four seeds) into
    ``tmp_path/results``, as a subprocess joined to the cluster at ``address``."""
    grid = tiny_suite(
        name=name, tasks=("digits_mlp",), rules=({"name": "sgd"},), seeds=(0, 1, 2, 3), steps=steps
    )
    grid["batch"] = "off"  # four trials that Ray can place on either node, not one batched group
    suite = write_suite(tmp_path / f"{name}.yaml", **grid)
    results = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "benchmark", "run", str(suite), "--results", str(results),
        "--tracking-uri", f"sqlite:///{tmp_path}/track.db", "--address", address,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": this_checkout(), **TOKEN},
    )


def test_grid_spreads_over_both_nodes_and_rows_name_their_node(
    cluster: tuple[str, dict[str, str], RayNode], tmp_path: Path
) -> None:
    address, nodes, _ = cluster
    cli = _cli("two", 200, address, tmp_path)
    out, _ = cli.communicate(timeout=240)
    assert cli.returncode == 0, out[-3000:]

    rows = store.read_runs(tmp_path / "results", "two").to_pylist()
    assert len(rows) == 4 == len({r["run_id"] for r in rows})
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["node_id"] for r in rows} == {nodes["head"], nodes["worker"]}, "cells ran on both nodes"
    assert all(r["hostname"] for r in rows)


def test_killed_worker_node_its_cells_rerun_on_the_head_every_cell_once(
    cluster: tuple[str, dict[str, str], RayNode], tmp_path: Path
) -> None:
    address, nodes, worker = cluster
    cli = _cli("lost", 600, address, tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not any(c.startswith("ray::ImplicitFunc.train") for c in worker.commands()):
            assert cli.poll() is None, "the grid ended before a cell started on the worker node"
            assert time.monotonic() < deadline, "no cell started on the worker node"
            time.sleep(0.2)
        killed_at = datetime.now(UTC)
        worker.kill()  # mid-cell: its trial's actor dies with the node
        out, _ = cli.communicate(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out[-3000:]

    rows = store.read_runs(tmp_path / "results", "lost").to_pylist()
    assert len(rows) == 4 == len({r["run_id"] for r in rows}), "every cell exactly once"
    assert {r["status"] for r in rows} == {"ok"}
    after = [r for r in rows if r["started_at"] > killed_at]
    assert after, "the cells still to do ran after the kill"
    assert {r["node_id"] for r in after} == {nodes["head"]}, "on the surviving node"


def test_a_driver_without_the_clusters_token_is_refused(head: tuple[RayNode, str]) -> None:
    _, address = head
    join = f"import ray; ray.init(address={address!r}); print(ray.cluster_resources())"
    for env in ({"RAY_AUTH_MODE": "disabled"}, {**TOKEN, "RAY_AUTH_TOKEN": "0" * 64}):
        refused = subprocess.run(
            [sys.executable, "-c", join],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert refused.returncode != 0, refused.stdout
        assert "Failed to connect" in refused.stderr
