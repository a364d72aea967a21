"""Real servers on 127.0.0.1 for the tests, started and stopped by them: S3 (moto), PostgreSQL, MLflow.

Every port is ephemeral, every process is this test session's own, and each context manager tears
its server down even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
"""Debian's PostgreSQL 15 (`apt-get install postgresql`)."""

S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "synapsebench-test",
    "AWS_SECRET_ACCESS_KEY": "synapsebench-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # The SDK must never probe the instance-metadata address for credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def this_checkout() -> str:
    """A PYTHONPATH that makes a subprocess started in any folder import this very ``benchmark``."""
    import benchmark

    here = str(Path(benchmark.__file__).resolve().parents[1])
    return os.pathsep.join([here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


@contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 holding an empty ``bucket``; yields its endpoint URL.

    The caller sets :data:`S3_KEYS` and ``AWS_ENDPOINT_URL`` (the endpoint) in the environment.
    """
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        pafs.S3FileSystem(
            endpoint_override=endpoint,
            scheme="http",
            access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            region=S3_KEYS["AWS_DEFAULT_REGION"],
            allow_bucket_creation=True,
        ).create_dir(bucket)
        yield endpoint
    finally:
        server.stop()


@dataclass(frozen=True)
class Postgres:
    url: str  # a SQLAlchemy URL with the psycopg (3) driver
    folder: Path


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, run by the ``postgres`` user.

    PostgreSQL refuses to run as root, and pytest's ``tmp_path`` is mode 0700 (the ``postgres``
    user cannot enter it), so the cluster lives in a folder of its own, owned by ``postgres``,
    removed afterwards.
    """
    folder = Path(tempfile.mkdtemp(prefix="sb_pg_"))
    shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        subprocess.run(
            _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"),
            check=True,
            capture_output=True,
        )
        options = f"-k {folder} -h 127.0.0.1 -p {port} -c fsync=off -c full_page_writes=off"
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log")]
        subprocess.run(_as_postgres(*pg_ctl, "-w", "start"), check=True, capture_output=True)
        try:
            subprocess.run(
                _as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "mlflow"),
                check=True,
                capture_output=True,
            )
            yield Postgres(f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow", folder)
        finally:
            subprocess.run(
                _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                capture_output=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def create_database(cluster: Postgres, name: str) -> str:
    """A new, empty database in ``cluster``; its plain ``postgresql://`` URL (as a user types it)."""
    port = cluster.url.rsplit(":", 1)[1].split("/", 1)[0]
    subprocess.run(
        _as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", port, name),
        check=True,
        capture_output=True,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the server and its workers (its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_mlflow(backend: str, artifacts: Path, port: int | None = None) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 (one worker), backed by ``backend``; returns once it answers."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", "1",
    ]  # fmt: skip
    artifacts.mkdir(parents=True, exist_ok=True)
    with (artifacts.parent / f"mlflow-{port}.log").open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", process)
    try:
        health = f"{server.uri}/health"
        wait_for(lambda: urllib.request.urlopen(health, timeout=2).status == 200, 120, "MLflow")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def mlflow_server(backend: str, artifacts: Path) -> Iterator[MlflowServer]:
    server = start_mlflow(backend, artifacts)
    try:
        yield server
    finally:
        server.stop()


def _session_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[3])


def kill_session(leader: int) -> int:
    """SIGKILL every process in the session ``leader`` started (with ``start_new_session``); returns
    how many. Ray's workers put themselves in process groups of their own, but not in new sessions."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _session_of(int(entry.name)) == leader:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
    return killed


def session_commands(leader: int) -> list[str]:
    """The command lines (process titles, for Ray's workers) of the processes in a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _session_of(int(entry.name)) == leader:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except (OSError, IndexError, ValueError):
                continue
    return found


HEALTH_CHECK = {
    # A dead node is declared dead after about 3 s rather than Ray's default 30 s or so.
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class RayNode:
    """One ``ray start --block`` node: the start command leads a session of its own, so killing the
    session kills exactly this node's processes (``ray stop`` would stop every node on the machine)."""

    process: subprocess.Popen[bytes]
    temp_dir: Path

    def commands(self) -> list[str]:
        return session_commands(self.process.pid)

    def kill(self) -> None:
        if self.process.poll() is None:
            kill_session(self.process.pid)
        self.process.wait()
        kill_session(self.process.pid)  # what outlived the leader
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_node(*args: str, env: dict[str, str] | None = None) -> RayNode:
    """``ray start --block`` with one CPU, a small object store and no dashboard, in a short temp dir
    of its own (AF_UNIX socket paths cap at 107 bytes)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rsb", dir="/tmp"))
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", *args, "--node-ip-address=127.0.0.1",
        "--num-cpus=1", f"--temp-dir={temp_dir}", f"--object-store-memory={96 * 1024**2}",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip
    log = temp_dir / "start.log"
    process = subprocess.Popen(
        cmd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": this_checkout(), **(env or {})},
    )
    node = RayNode(process, temp_dir)
    try:
        wait_for(lambda: b"Ray runtime started" in log.read_bytes() or process.poll() is not None, 120, "Ray")
        if process.poll() is not None:
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
    except BaseException:
        node.kill()
        raise
    return node
