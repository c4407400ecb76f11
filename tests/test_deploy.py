"""docker-compose.yml: valid Compose, healthy-database ordering, no secrets in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_database_has_a_pg_isready_healthcheck_and_the_app_waits_for_it() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["app"]["depends_on"]["db"]["condition"] == "service_healthy"
    command = " ".join(services["app"]["command"])
    migrate, seed, serve = (
        command.index("piccolo migrations forwards all"),
        command.index("piccolo flowforge seed"),
        command.index("uvicorn flowforge.main:app"),
    )
    assert migrate < seed < serve


def test_no_secret_is_written_in_the_compose_file() -> None:
    services = compose()["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${POSTGRES_PASSWORD}" in services["app"]["environment"]["DATABASE_URL"]


def test_the_relay_publishes_to_redis_once_the_app_has_migrated() -> None:
    services = compose()["services"]
    relay = services["relay"]
    assert relay["command"] == ["piccolo", "flowforge", "relay"]
    assert relay["environment"]["OUTBOX_PUBLISHER"] == "redis"
    assert relay["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "${POSTGRES_PASSWORD}" in relay["environment"]["DATABASE_URL"]
    assert relay["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "app": {"condition": "service_healthy"},
    }
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
