"""docker-compose.yml: valid Compose, healthy-database ordering, no secrets in the file."""

from __future__ import annotations

import json
import re
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


def test_database_has_a_pg_isready_healthcheck_and_migrate_waits_for_it() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}


def test_migrations_run_once_in_a_one_shot_service_that_app_and_relay_wait_for() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    command = " ".join(migrate["command"])
    # The locked command (tests/test_migrate_command.py), then the seed in development only.
    assert command.index("flowforge migrate &&") < command.index("flowforge seed")
    assert '[ "$$FLOWFORGE_ENV" = "development" ]' in command
    assert "piccolo migrations forwards" not in COMPOSE.read_text()
    assert migrate["restart"] == "no"
    for name in ("app", "relay"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["restart"] == "unless-stopped"
        assert "command" not in services[name] or "migrate" not in str(services[name]["command"])
    # The app runs the image's CMD (uvicorn), and is healthy once ready.
    assert "command" not in services["app"]
    assert "/readyz" in " ".join(services["app"]["healthcheck"]["test"])


def test_no_secret_is_written_in_the_compose_file() -> None:
    services = compose()["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${POSTGRES_PASSWORD}" in services["app"]["environment"]["DATABASE_URL"]


def test_the_relay_publishes_to_redis_once_migrations_completed() -> None:
    services = compose()["services"]
    relay = services["relay"]
    assert relay["command"] == ["flowforge", "relay"]
    assert relay["environment"]["OUTBOX_PUBLISHER"] == "redis"
    assert relay["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "${POSTGRES_PASSWORD}" in relay["environment"]["DATABASE_URL"]
    assert relay["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]


def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def exec_form(instruction: str) -> list[str]:
    """The JSON array of the Dockerfile's `instruction` (as .ci/prod_smoke.py reads it)."""
    text = dockerfile().replace("\\\n", " ")
    match = re.search(rf"^{instruction}\b.*?(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert match, instruction
    parsed: list[str] = json.loads(match.group(1))
    return parsed


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_from_the_lock_without_extras_and_runs_as_non_root() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2  # build stage, then a runtime stage with the venv only
    assert "pip install -c requirements.lock /wheels/flowforge-*.whl" in text
    assert "[embedded]" not in text and "[dev" not in text and " -e " not in text
    runtime = text[text.rindex("FROM ") :]
    assert "COPY --from=build /opt/flowforge /opt/flowforge" in runtime
    assert "pip " not in runtime.replace("# ", "")  # nothing installed in the final stage
    user = re.findall(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert "PICCOLO_CONF=flowforge.piccolo_conf" in runtime


def test_the_image_serves_uvicorn_and_checks_healthz() -> None:
    assert exec_form("CMD")[:2] == ["uvicorn", "flowforge.main:app"]
    healthcheck = exec_form("HEALTHCHECK.*?CMD")
    assert healthcheck[0] == "python" and "/healthz" in healthcheck[-1]


def test_the_ci_smoke_builds_the_wheel_from_what_the_image_copies() -> None:
    from tests.test_production_install import prod_smoke

    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile(), flags=re.MULTILINE)
    sources = {name.removeprefix("./") for line in copied for name in line.split()}
    assert sources == set(prod_smoke().BUILD_CONTEXT)


def test_the_docker_context_leaves_out_local_state_and_secrets() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".flowforge", ".env", "tests"} <= ignored


# -- the optional `scale` profile: PgBouncer and a streaming replica ---------------

SCALE = {"replica", "pgbouncer", "pgbouncer-replica", "app-scaled", "relay-scaled"}


def interpolated(value: str) -> str:
    """`value` with compose's ${VAR...} replaced by what a .env would give."""
    env = {"POSTGRES_USER": "flowforge", "POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "flowforge"}
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda match: env.get(match[1], ""), value)


def test_the_default_stack_is_unchanged_by_the_scale_profile() -> None:
    services = compose()["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"db", "redis", "migrate", "app", "relay"}
    assert {name for name, service in services.items() if service.get("profiles")} == SCALE
    for name in SCALE:
        assert services[name]["profiles"] == ["scale"]
    # Migrations always run direct, never through the pooler.
    assert "@db:5432/" in services["migrate"]["environment"]["DATABASE_URL"]
    assert "DATABASE_POOLER" not in services["migrate"]["environment"]


def test_the_scaled_app_goes_through_pgbouncer_and_reads_from_the_replica() -> None:
    from flowforge.core.settings import PoolerMode, Settings

    services = compose()["services"]
    env = services["app-scaled"]["environment"]
    assert "@pgbouncer:6432/" in env["DATABASE_URL"]
    assert env["DATABASE_POOLER"] == "transaction"
    assert "@pgbouncer-replica:6432/" in env["DATABASE_REPLICA_URLS"]
    # The settings FlowForge would build from it are valid and what they say.
    settings = Settings(
        database_url=interpolated(env["DATABASE_URL"]),
        database_pooler=env["DATABASE_POOLER"],
        database_replica_urls=interpolated(env["DATABASE_REPLICA_URLS"]),
    )
    assert settings.replica_pooler is PoolerMode.TRANSACTION
    assert services["app-scaled"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert services["app-scaled"]["depends_on"]["pgbouncer"] == {"condition": "service_healthy"}
    # Not the default app's port.
    assert services["app-scaled"]["ports"] != services["app"]["ports"]


def test_the_scaled_relay_listens_on_a_direct_connection() -> None:
    services = compose()["services"]
    env = services["relay-scaled"]["environment"]
    assert "@pgbouncer:6432/" in env["DATABASE_URL"] and env["DATABASE_POOLER"] == "transaction"
    assert env["RELAY_LISTEN_DATABASE_URL"] == services["relay"]["environment"]["DATABASE_URL"]
    assert "@db:5432/" in env["RELAY_LISTEN_DATABASE_URL"]
    assert services["relay-scaled"]["command"] == ["flowforge", "relay"]


def test_pgbouncers_run_in_transaction_mode_in_front_of_primary_and_replica() -> None:
    services = compose()["services"]
    for name, server in (("pgbouncer", "db"), ("pgbouncer-replica", "replica")):
        env = services[name]["environment"]
        assert (env["DB_HOST"], env["POOL_MODE"], env["LISTEN_PORT"]) == (
            server,
            "transaction",
            "6432",
        )
        assert env["DB_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
        # The replica's PgBouncer waits only for it to start (its first base
        # backup can take long; the app skips a replica that is not serving).
        condition = "service_started" if server == "replica" else "service_healthy"
        assert services[name]["depends_on"] == {server: {"condition": condition}}
        assert "pg_isready" in services[name]["healthcheck"]["test"]


def test_the_replica_is_a_base_backup_of_the_healthy_primary() -> None:
    services = compose()["services"]
    replica = services["replica"]
    assert replica["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert replica["image"] == services["db"]["image"]  # same major version
    command = " ".join(replica["command"])
    assert "pg_basebackup -h db -p 5432" in command and " -R " in command
    assert "hot_standby=on" in command
    # A replication slot keeps the WAL the standby still needs (without one, a
    # standby that falls behind a checkpoint or two never catches up), bounded
    # on the primary so that a dead replica cannot fill its disk.
    assert "-C -S flowforge_replica" in command and "-R" in command
    assert "pg_drop_replication_slot" in command  # a re-run after a failed copy
    assert any("max_slot_wal_keep_size=" in part for part in services["db"]["command"])
    assert replica["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "replicadata" in compose()["volumes"]
    # The primary lets it replicate: an init script adds the pg_hba line.
    mounts = services["db"]["volumes"]
    script = next(m for m in mounts if "docker-entrypoint-initdb.d" in m).split(":")[0]
    assert "host replication all all scram-sha-256" in (REPO_ROOT / script).read_text()


# -- client addresses behind a reverse proxy ---------------------------------------


def image_env() -> dict[str, str]:
    """The runtime stage's ENV values (``KEY=value`` pairs; comments left out)."""
    runtime = dockerfile()[dockerfile().rindex("FROM ") :]
    lines = [line for line in runtime.splitlines() if not line.strip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.+)$", text, flags=re.MULTILINE):
        env.update(re.findall(r"(\w+)=(\S+)", block))
    return env


def test_forwarded_headers_are_trusted_from_a_setting_with_a_safe_default() -> None:
    assert "--proxy-headers" in exec_form("CMD")
    # Only the container itself unless the deployer names the proxy.
    assert image_env()["FORWARDED_ALLOW_IPS"] == "127.0.0.1"
    services = compose()["services"]
    for name in ("app", "app-scaled"):
        setting = services[name]["environment"]["FORWARDED_ALLOW_IPS"]
        assert setting == "${FORWARDED_ALLOW_IPS:-127.0.0.1}", name
    assert "FORWARDED_ALLOW_IPS=" in (REPO_ROOT / ".env.example").read_text()


def client_seen(tmp_path: Path, forwarded_allow_ips: str) -> str:
    """Serve with the Dockerfile's CMD (as .ci/prod_smoke.py does, outside Docker),
    send a request through a "proxy" at 127.0.0.1 that says the client is
    203.0.113.7, and return the client address of its access line."""
    import os
    import time

    import httpx

    from tests.live import free_port
    from tests.support import json_log_lines

    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {
        **os.environ,
        **image_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "UVICORN_HOST": "127.0.0.1",
        "UVICORN_PORT": str(port),
        "FORWARDED_ALLOW_IPS": forwarded_allow_ips,
        "FLOWFORGE_ENV": "test",  # the image's production settings need secrets
        "LOG_FORMAT": "json",
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            exec_form("CMD"), env=env, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/healthz",
                    headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "proxied-1"},
                    timeout=2,
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [
        line
        for line in json_log_lines(log.read_text())
        if line.get("event") == "http.request" and line.get("request_id") == "proxied-1"
    ]
    assert len(lines) == 1, log.read_text()
    return str(lines[0]["client"])


def test_a_trusted_proxy_passes_the_client_address_to_the_access_log(tmp_path: Path) -> None:
    # The image's default trusts a proxy on 127.0.0.1 (the test's client).
    assert client_seen(tmp_path, image_env()["FORWARDED_ALLOW_IPS"]) == "203.0.113.7"
    # A proxy network set by the deployer (CIDR); the header of a peer outside it,
    # here 127.0.0.1, is ignored: a client cannot claim another address.
    assert client_seen(tmp_path, "10.0.0.0/8") == "127.0.0.1"
    assert client_seen(tmp_path, "10.0.0.0/8,127.0.0.1") == "203.0.113.7"
