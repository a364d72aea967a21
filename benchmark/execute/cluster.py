"""Start a local Ray or join a cluster, with the settings that work on our machines (stack.md §4)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

LOCAL_TEMP_DIR = "/tmp/ray_sb"  # AF_UNIX socket paths cap at 107 bytes: keep this short


def _quiet_defaults() -> None:
    # Our trials use absolute paths; keep their working directory where it is.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints nothing
    # Tune's TensorBoard and CSV loggers would write every report into a scratch folder that is
    # deleted after the fit (the store and MLflow keep the results), at a cost of driver CPU that
    # the workers need; the grid adds back the JSON logger, which Tune's end-of-fit analysis reads.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _no_idle_workers() -> None:
    # A local raylet pre-starts one idle task worker per CPU, but Tune's trials are actors, which
    # always get new processes: the idle ones only import Ray on cores the driver needs at start-up.
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")


@dataclass(frozen=True, slots=True)
class Connection:
    resources: dict[str, Any]
    started_here: bool  # a local instance this call started: the caller may shut it down early


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    env: dict[str, str] | None = None,
    py_modules: Sequence[str] = (),
) -> Connection:
    """Join Ray at ``address`` (or ``RAY_ADDRESS``), else start a local instance.

    ``env`` is set for the driver and every worker (a local Ray's workers inherit the driver's
    environment; a cluster's get it through the runtime environment). ``py_modules`` (a suite's
    plugin files and folders) are shipped to a cluster's workers the same way; a local Ray's
    workers import them from where they are. Reuses an instance this process already started
    (tests keep one per session). Returns the cluster's total resources
    and whether this call started a local instance.
    """
    _quiet_defaults()
    os.environ.update(env or {})
    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            runtime_env: dict[str, Any] = {"env_vars": dict(env or {})}
            if py_modules:
                runtime_env["py_modules"] = list(py_modules)
            ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        else:
            # This process's own Ray has no token to share; a cluster keeps its authentication
            # (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN on every node and driver: docker/compose.yaml).
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            _no_idle_workers()
            started_here = True
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                _temp_dir=LOCAL_TEMP_DIR,
                configure_logging=False,
            )
    return Connection(dict(ray.cluster_resources()), started_here)  # type: ignore[no-untyped-call]


def shutdown_in_background() -> threading.Thread:
    """Stop this process's Ray on a thread, and return the thread (join it before exiting).

    Shutting a local instance down is mostly waiting for its processes to die, which can overlap the
    caller's remaining work; left to ``atexit``, Ray also sleeps half a second first.
    """
    thread = threading.Thread(target=ray.shutdown, name="ray-shutdown")
    thread.start()
    return thread
