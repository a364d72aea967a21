"""docker/: the compose file is valid Compose, publishes nothing beyond loopback, pins its images,
keeps its secrets in an uncommitted env file and runs Ray with token authentication.

The schema is the Compose Specification's JSON schema as check-jsonschema ships it
(``--builtin-schema vendor.compose-spec``), not Debian's docker-compose, which is Compose v1.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    check = _check_compose(COMPOSE)
    assert check.returncode == 0, check.stdout + check.stderr


def test_schema_check_catches_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  web:\n    image: x:1.0\n    ports: {not: a list}\n")
    check = _check_compose(broken)
    assert check.returncode == 1, check.stdout + check.stderr


def test_every_published_port_binds_to_loopback(compose: dict[str, Any]) -> None:
    published = [
        (name, port) for name, service in compose["services"].items() for port in service.get("ports", [])
    ]
    assert published, "the MLflow UI and the Ray dashboard are published"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_images_are_pinned_to_exact_tags(compose: dict[str, Any]) -> None:
    bases = [
        line.split()[1]
        for dockerfile in DOCKER.glob("*Dockerfile")
        for line in dockerfile.read_text().splitlines()
        if line.startswith("FROM ")
    ]
    pulled = [s["image"] for s in compose["services"].values() if "image" in s and "build" not in s]
    for image in [*bases, *pulled]:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?(-[\w.-]+)?", image), f"{image} is not an exact tag"


def test_secrets_come_from_an_uncommitted_env_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used == set(example) == {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"}
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(DOCKER / ".env")], cwd=DOCKER, capture_output=True
    )
    assert ignored.returncode == 0, "docker/.env must never be committed"


def test_ray_nodes_use_token_authentication(compose: dict[str, Any]) -> None:
    for name in ("ray-head", "ray-gpu-worker"):
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    assert "RAY_AUTH_MODE=disabled" not in (DOCKER / "Dockerfile").read_text()


def test_mlflow_image_installs_from_the_lock() -> None:
    text = (DOCKER / "mlflow.Dockerfile").read_text()
    assert "-c requirements-lock.txt" in text
    assert not re.search(r"mlflow[<>=]", text), "versions come from the lock, not the Dockerfile"
