"""Settings: documented defaults, and bad values stop start-up with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flowforge.core.settings import (
    Environment,
    PublisherKind,
    Settings,
    SettingsError,
    get_settings,
    weak_password_problem,
)
from flowforge.db.engine import asyncpg_config
from tests.support import REPO_ROOT

DEFAULTS = {
    "database_url": None,
    "pool_min_size": 2,
    "pool_max_size": 20,
    "pool_acquire_timeout": 10.0,
    "pool_max_inactive_lifetime": 1800.0,
    "statement_timeout": 30.0,
    "connect_timeout": 5.0,
    "environment": Environment.DEVELOPMENT,
    "admin_username": "admin",
    "admin_password": None,
    # Outbox relay, reaper and retention (issue 4).
    "outbox_publisher": PublisherKind.LOG,
    "redis_url": "redis://127.0.0.1:6379/0",
    "redis_stream_prefix": "flowforge:events",
    "redis_stream_maxlen": 1_000_000,
    "relay_batch_size": 500,
    "relay_poll_min_interval": 0.2,
    "relay_poll_max_interval": 5.0,
    "relay_listen": True,
    "outbox_max_attempts": 10,
    "outbox_retry_base_delay": 1.0,
    "outbox_retry_max_delay": 600.0,
    "outbox_retention_days": 7.0,
    "run_retention_days": 90.0,
    "prune_batch_size": 1000,
    "run_lease_timeout": 900.0,
    "relay_reap_interval": 60.0,
    "relay_prune_interval": 3600.0,
}
SETTING_VARIABLES = [
    "DATABASE_URL",
    "FLOWFORGE_ENV",
    "FLOWFORGE_DATA_DIR",
    "DB_POOL_MIN_SIZE",
    "DB_POOL_MAX_SIZE",
    "DB_POOL_ACQUIRE_TIMEOUT",
    "DB_POOL_MAX_INACTIVE_LIFETIME",
    "DB_STATEMENT_TIMEOUT",
    "DB_CONNECT_TIMEOUT",
    "FLOWFORGE_ADMIN_USERNAME",
    "FLOWFORGE_ADMIN_PASSWORD",
    "OUTBOX_PUBLISHER",
    "REDIS_URL",
    "REDIS_STREAM_PREFIX",
    "REDIS_STREAM_MAXLEN",
    "RELAY_BATCH_SIZE",
    "RELAY_POLL_MIN_INTERVAL",
    "RELAY_POLL_MAX_INTERVAL",
    "RELAY_LISTEN",
    "OUTBOX_MAX_ATTEMPTS",
    "OUTBOX_RETRY_BASE_DELAY",
    "OUTBOX_RETRY_MAX_DELAY",
    "OUTBOX_RETENTION_DAYS",
    "RUN_RETENTION_DAYS",
    "PRUNE_BATCH_SIZE",
    "RUN_LEASE_TIMEOUT",
    "RELAY_REAP_INTERVAL",
    "RELAY_PRUNE_INTERVAL",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO_ROOT / "tests")  # no .env here
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.data_dir == REPO_ROOT / ".flowforge"


def test_every_setting_is_documented() -> None:
    readme = (REPO_ROOT / "docs" / "settings.md").read_text()
    for name in SETTING_VARIABLES:
        assert f"`{name}`" in readme, name


def test_environment_overrides(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql://u:p@db:5432/app")
    clean_env.setenv("DB_POOL_MIN_SIZE", "1")
    clean_env.setenv("DB_POOL_MAX_SIZE", "4")
    clean_env.setenv("DB_STATEMENT_TIMEOUT", "2.5")
    settings = Settings()
    assert (settings.pool_min_size, settings.pool_max_size) == (1, 4)
    config = asyncpg_config(settings)
    assert config["dsn"] == "postgresql://u:p@db:5432/app"
    assert config["server_settings"]["statement_timeout"] == "2500"
    assert config["command_timeout"] > settings.statement_timeout
    assert config["timeout"] == settings.connect_timeout


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DB_POOL_MAX_SIZE", "lots", "DB_POOL_MAX_SIZE: Input should be a valid integer"),
        ("DB_POOL_MAX_SIZE", "0", "DB_POOL_MAX_SIZE: Input should be greater than or equal to 1"),
        ("DB_POOL_MIN_SIZE", "50", "DB_POOL_MIN_SIZE (50) must not exceed DB_POOL_MAX_SIZE (20)"),
        ("DB_POOL_ACQUIRE_TIMEOUT", "-1", "DB_POOL_ACQUIRE_TIMEOUT: Input should be greater"),
        ("DATABASE_URL", "mysql://localhost/x", "DATABASE_URL: must be a PostgreSQL URL"),
        ("DATABASE_URL", "postgresql://localhost", "DATABASE_URL: must name a database"),
        (
            "DATABASE_URL",
            "postgresql://u:p@db:notaport/app",
            "DATABASE_URL: has an invalid port 'notaport'",
        ),
        ("DATABASE_URL", "postgresql://db:5432,db2:0/app", "DATABASE_URL: has an invalid port '0'"),
        ("FLOWFORGE_ENV", "staging", "FLOWFORGE_ENV: Input should be"),
        ("FLOWFORGE_ENV", "production", "DATABASE_URL is required when FLOWFORGE_ENV=production"),
        ("FLOWFORGE_ADMIN_USERNAME", "has space", "FLOWFORGE_ADMIN_USERNAME: String should match"),
        ("OUTBOX_PUBLISHER", "kafka", "OUTBOX_PUBLISHER: Input should be 'log' or 'redis'"),
        ("REDIS_URL", "http://localhost", "REDIS_URL: must be a Redis URL"),
        (
            "RELAY_POLL_MIN_INTERVAL",
            "9",
            "RELAY_POLL_MIN_INTERVAL (9) must not exceed RELAY_POLL_MAX_INTERVAL (5)",
        ),
        (
            "OUTBOX_RETRY_BASE_DELAY",
            "700",
            "OUTBOX_RETRY_BASE_DELAY (700) must not exceed OUTBOX_RETRY_MAX_DELAY (600)",
        ),
        ("OUTBOX_MAX_ATTEMPTS", "0", "OUTBOX_MAX_ATTEMPTS: Input should be greater than"),
        ("RUN_RETENTION_DAYS", "-1", "RUN_RETENTION_DAYS: Input should be greater than"),
    ],
)
def test_invalid_settings_fail_with_a_clear_message(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    clean_env.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("FlowForge cannot start: invalid settings")
    assert message in err


def test_several_hosts_and_default_ports_are_valid(clean_env: pytest.MonkeyPatch) -> None:
    for url in (
        "postgresql://u:p@db1:5432,db2:5433/app",
        "postgresql://u:p@db/app",
        "postgresql://u:p@[::1]:5432/app",
        "postgresql:///app?host=/var/run/postgresql",
    ):
        clean_env.setenv("DATABASE_URL", url)
        assert Settings().database_url == url


def test_empty_database_url_means_embedded(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "")
    assert Settings().database_url is None


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "piccolo.main", "migrations", "check"],
        [sys.executable, "-c", "import flowforge.main"],
    ],
    ids=["piccolo-cli", "app-import"],
)
def test_entry_points_exit_2_without_traceback_on_bad_settings(command: list[str]) -> None:
    env = {**os.environ, "DB_POOL_MAX_SIZE": "lots"}
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "DB_POOL_MAX_SIZE: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_can_be_built_in_code_by_field_name(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(pool_min_size=1, pool_max_size=2, database_url="postgresql://h/db")
    assert (settings.pool_min_size, settings.pool_max_size) == (1, 2)
    assert settings.database_url == "postgresql://h/db"


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("change-me", "is a placeholder"),
        ("admin", "is a placeholder"),
        ("Password", "is a placeholder"),
        ("please-change-this", "is a placeholder"),
        ("short-Pw1", "is shorter than 12 characters"),
        # Long enough, and still guessed at once (zxcvbn's strength estimate).
        ("password1234", "is too easy to guess"),
        ("aaaaaaaaaaaa", "is too easy to guess"),
        ("qwertyuiop12", "is too easy to guess"),
        ("flowforge2026!", "is too easy to guess"),
        ("letmein12345", "is too easy to guess"),
        # Strength 3 of 4 (10^8 guesses) passed before: 4 is needed, and the
        # message says why in zxcvbn's words.
        ("Summer2026!!", "is too easy to guess (zxcvbn strength 3/4, 4 needed: This is similar"),
        ("Passwordpasswordpassword", "is too easy to guess (zxcvbn strength 3/4, 4 needed: "),
        # Full-width forms are judged as their ASCII (NFKC): PASSWORD1234.
        (
            "\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24\uff11\uff12\uff13\uff14",
            "is too easy to guess (zxcvbn strength 1/4, 4 needed: This is similar",
        ),
        (
            "\uff43\uff48\uff41\uff4e\uff47\uff45-\uff4d\uff45-\uff50\uff4c\uff45\uff41\uff53\uff45",
            "is a placeholder",
        ),
    ],
)
@pytest.mark.parametrize("environment", ["test", "production"])
def test_placeholder_admin_passwords_are_refused_outside_development(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environment: str,
    password: str,
    problem: str,
) -> None:
    clean_env.setenv("FLOWFORGE_ENV", environment)
    clean_env.setenv("DATABASE_URL", "postgresql://u:p@db:5432/app")
    clean_env.setenv("FLOWFORGE_ADMIN_PASSWORD", password)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError):
            get_settings()
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert f"FLOWFORGE_ADMIN_PASSWORD {problem}" in err
    assert password not in err.replace(f"FLOWFORGE_ADMIN_PASSWORD {problem}", "")


def test_admin_password_rules(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FLOWFORGE_ADMIN_PASSWORD", "change-me")
    # Development accepts anything, placeholders included.
    assert Settings().admin_password is not None
    clean_env.setenv("FLOWFORGE_ENV", "production")
    clean_env.setenv("DATABASE_URL", "postgresql://u:p@db:5432/app")
    clean_env.setenv("FLOWFORGE_ADMIN_PASSWORD", "correct horse battery staple")
    settings = Settings()
    assert settings.admin_password is not None
    assert "correct horse" not in repr(settings)  # a secret, never printed
    for strong in ["Tq8#vL2!rW9zK4pX", "fjord-Pelican-42-mangle-Vortex"]:
        clean_env.setenv("FLOWFORGE_ADMIN_PASSWORD", strong)
        assert weak_password_problem(strong, "admin") is None
        assert Settings().admin_password is not None
    clean_env.delenv("FLOWFORGE_ADMIN_PASSWORD")
    assert Settings().admin_password is None  # generated on first use
    clean_env.setenv("FLOWFORGE_ADMIN_PASSWORD", "")
    assert Settings().admin_password is None  # compose's ${VAR:-}
