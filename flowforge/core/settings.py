"""Typed, validated settings, read once from the environment (and `.env`).

Every setting is documented in docs/settings.md with its default (a test checks it). Bad values fail at
start-up with one readable message (:func:`load_settings`), never later.
"""

from __future__ import annotations

import sys
import unicodedata
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from zxcvbn import zxcvbn
from zxcvbn.feedback import get_feedback

# The source tree when FlowForge runs from a checkout (editable install, or the
# checkout on sys.path); None when it is installed from a wheel (site-packages).
# flowforge/core/settings.py -> the folder that holds the flowforge package.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
CHECKOUT: Path | None = (
    _PACKAGE_PARENT if (_PACKAGE_PARENT / "piccolo_migrations").is_dir() else None
)


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when FLOWFORGE_DATA_DIR is unset.

    ``<checkout>/.flowforge`` when running from a checkout (whatever the working
    directory), else ``.flowforge`` in the working directory: never inside
    site-packages.
    """
    return (CHECKOUT if CHECKOUT is not None else Path.cwd()) / ".flowforge"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class PoolerMode(StrEnum):
    """What sits between FlowForge and PostgreSQL (docs/decisions/08-transaction-poolers.md)."""

    NONE = "none"  # direct connections (or a session-mode pooler)
    TRANSACTION = "transaction"  # PgBouncer (or alike) in transaction mode


class PublisherKind(StrEnum):
    """Where the outbox relay publishes events (flowforge/relay/publishers.py)."""

    LOG = "log"  # one JSON line per event on stdout: development only
    REDIS = "redis"  # Redis Streams, one stream per aggregate type


class LogFormat(StrEnum):
    """How log lines look (flowforge/core/logs.py)."""

    JSON = "json"  # one JSON object per line: for log shippers
    CONSOLE = "console"  # readable key=value lines: for people


class Settings(BaseSettings):
    """FlowForge settings. Environment variables win over `.env`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # Settings(pool_max_size=2) in code works too, not only DB_POOL_MAX_SIZE.
        populate_by_name=True,
    )

    environment: Environment = Field(
        default=Environment.DEVELOPMENT, validation_alias="FLOWFORGE_ENV"
    )
    # None means: start (or reuse) the embedded PostgreSQL under `data_dir`.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias="FLOWFORGE_DATA_DIR")

    # `transaction` behind PgBouncer in transaction mode: no prepared-statement
    # cache, no session state, timeouts set per transaction (SET LOCAL).
    database_pooler: PoolerMode = Field(default=PoolerMode.NONE, validation_alias="DATABASE_POOLER")
    # asyncpg's prepared-statement cache per connection; unset: 100, or 0 behind
    # a transaction pooler (PgBouncer 1.18 does not track prepared statements).
    statement_cache_size: int | None = Field(
        default=None, ge=0, le=100_000, validation_alias="DB_STATEMENT_CACHE_SIZE"
    )

    # Streaming replicas for read-only endpoints (comma-separated URLs; unset:
    # every read goes to the primary). See docs/decisions/09-read-replicas.md.
    database_replica_urls: str | None = Field(
        default=None, validation_alias="DATABASE_REPLICA_URLS"
    )
    # What sits in front of the replicas: `transaction` when the replica URLs go
    # through a transaction-mode pooler; unset: the same as DATABASE_POOLER.
    database_replica_pooler: PoolerMode | None = Field(
        default=None, validation_alias="DATABASE_REPLICA_POOLER"
    )
    # A replica further behind the primary than this many seconds is skipped.
    replica_max_lag: float = Field(
        default=10.0, gt=0, le=86400, validation_alias="REPLICA_MAX_LAG_SECONDS"
    )
    # How often each replica's state (reachable, replayed position, lag) is checked.
    replica_check_interval: float = Field(
        default=1.0, gt=0, le=3600, validation_alias="REPLICA_CHECK_INTERVAL"
    )

    # Pool sizing (docs/decisions/06-connection-pool.md): a bounded pool that grows
    # on demand from min to max and shrinks back when connections sit idle.
    pool_min_size: int = Field(default=2, ge=0, le=1000, validation_alias="DB_POOL_MIN_SIZE")
    pool_max_size: int = Field(default=20, ge=1, le=1000, validation_alias="DB_POOL_MAX_SIZE")
    # Seconds an authenticated API key is remembered by a worker (flowforge/domain/api_keys.py):
    # a request with a remembered key skips the key lookup. A revoked or deactivated
    # key (or a changed role) takes effect within this bound in every worker; expiry
    # is exact. 0: every request looks its key up.
    auth_cache_seconds: float = Field(
        default=1.0, ge=0, le=60, validation_alias="AUTH_CACHE_SECONDS"
    )
    # Seconds a request waits for a free connection before it gets a 503.
    pool_acquire_timeout: float = Field(
        default=10.0, gt=0, le=600, validation_alias="DB_POOL_ACQUIRE_TIMEOUT"
    )
    # Seconds an idle pooled connection lives before it is closed (`pool_recycle`).
    pool_max_inactive_lifetime: float = Field(
        default=1800.0, ge=0, le=86400, validation_alias="DB_POOL_MAX_INACTIVE_LIFETIME"
    )
    # Seconds a statement may run: enforced by the server (statement_timeout)
    # and, as a backstop for a dead network, by the client (command_timeout).
    statement_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="DB_STATEMENT_TIMEOUT"
    )
    # Seconds to establish a new connection.
    connect_timeout: float = Field(default=5.0, gt=0, le=300, validation_alias="DB_CONNECT_TIMEOUT")

    # The Piccolo Admin login that `piccolo flowforge seed` / `create_admin_login`
    # ensures. No password: one is generated and printed once, when the login is created.
    admin_username: str = Field(
        default="admin",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.@-]+$",
        validation_alias="FLOWFORGE_ADMIN_USERNAME",
    )
    admin_password: SecretStr | None = Field(
        default=None, validation_alias="FLOWFORGE_ADMIN_PASSWORD"
    )

    # --- Outbox relay, reaper and retention (docs/decisions/04-outbox-relay.md) ---
    outbox_publisher: PublisherKind = Field(
        default=PublisherKind.LOG, validation_alias="OUTBOX_PUBLISHER"
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    # Events of aggregate type T go to the stream "<prefix>:T".
    redis_stream_prefix: str = Field(
        default="flowforge:events",
        min_length=1,
        max_length=200,
        validation_alias="REDIS_STREAM_PREFIX",
    )
    # Approximate cap on each stream's length (XADD MAXLEN ~); 0: never trimmed.
    redis_stream_maxlen: int = Field(
        default=1_000_000, ge=0, validation_alias="REDIS_STREAM_MAXLEN"
    )
    # Most events one relay claims, publishes and marks in one transaction.
    relay_batch_size: int = Field(default=500, ge=1, le=10_000, validation_alias="RELAY_BATCH_SIZE")
    # Idle polling: the first sleep after the outbox ran dry, doubled while idle
    # up to the maximum. NOTIFY wakes an idle relay at once when it works.
    relay_poll_min_interval: float = Field(
        default=0.2, gt=0, le=3600, validation_alias="RELAY_POLL_MIN_INTERVAL"
    )
    relay_poll_max_interval: float = Field(
        default=5.0, gt=0, le=3600, validation_alias="RELAY_POLL_MAX_INTERVAL"
    )
    # LISTEN for new events on a dedicated connection (turn off behind a
    # transaction-mode pooler, where NOTIFY never arrives; polling still works).
    relay_listen: bool = Field(default=True, validation_alias="RELAY_LISTEN")
    # A direct connection (not through a transaction pooler) for that LISTEN;
    # unset: DATABASE_URL, unless DATABASE_POOLER=transaction (then no LISTEN).
    relay_listen_database_url: str | None = Field(
        default=None, validation_alias="RELAY_LISTEN_DATABASE_URL"
    )
    # Failed publish attempts before an event is dead-lettered.
    outbox_max_attempts: int = Field(
        default=10, ge=1, le=1000, validation_alias="OUTBOX_MAX_ATTEMPTS"
    )
    # Back-off after the n-th failure: min(base * 2**(n-1), max) seconds.
    outbox_retry_base_delay: float = Field(
        default=1.0, gt=0, le=86400, validation_alias="OUTBOX_RETRY_BASE_DELAY"
    )
    outbox_retry_max_delay: float = Field(
        default=600.0, gt=0, le=86400, validation_alias="OUTBOX_RETRY_MAX_DELAY"
    )
    # Retention (piccolo flowforge prune): published events and finished runs
    # older than this many days are deleted; 0 keeps them forever.
    outbox_retention_days: float = Field(
        default=7.0, ge=0, le=36500, validation_alias="OUTBOX_RETENTION_DAYS"
    )
    run_retention_days: float = Field(
        default=90.0, ge=0, le=36500, validation_alias="RUN_RETENTION_DAYS"
    )
    prune_batch_size: int = Field(
        default=1000, ge=1, le=100_000, validation_alias="PRUNE_BATCH_SIZE"
    )
    # A running run with no heartbeat for this many seconds is failed by the reaper.
    run_lease_timeout: float = Field(
        default=900.0, gt=0, le=30 * 86400, validation_alias="RUN_LEASE_TIMEOUT"
    )
    # A claimed run whose lease lapsed goes back to the queue (awaiting_retry, due
    # now) while it has been claimed fewer times than this (and the step attempt
    # it was running may be retried); then the reaper fails it (issue 18).
    run_max_claims: int = Field(default=3, ge=1, le=1000, validation_alias="RUN_MAX_CLAIMS")
    # Housekeeping inside the relay process, every this many seconds; 0: off
    # (run `piccolo flowforge reap` / `prune` from cron instead).
    relay_reap_interval: float = Field(
        default=60.0, ge=0, le=86400, validation_alias="RELAY_REAP_INTERVAL"
    )
    relay_prune_interval: float = Field(
        default=3600.0, ge=0, le=7 * 86400, validation_alias="RELAY_PRUNE_INTERVAL"
    )
    # The relay's Prometheus metrics on http://0.0.0.0:<port>/metrics; unset: none.
    relay_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, validation_alias="RELAY_METRICS_PORT"
    )

    # --- Logs (flowforge/core/logs.py) ---
    # Unset: json in production, console otherwise.
    log_format: LogFormat | None = Field(default=None, validation_alias="LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="LOG_LEVEL"
    )

    # The share of successful requests (status < 400) that get an access line;
    # 4xx/5xx always do. 1: every request (docs/observability.md gives the cost).
    access_log_sample: float = Field(default=1.0, ge=0, le=1, validation_alias="ACCESS_LOG_SAMPLE")

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        if self.environment is Environment.PRODUCTION:
            return LogFormat.JSON
        return LogFormat.CONSOLE

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", "relay_metrics_port", "database_replica_pooler", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("database_url", "relay_listen_database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"postgres", "postgresql"}:
            raise ValueError(
                "must be a PostgreSQL URL such as postgresql://user:password@host:5432/dbname "
                f"(got scheme {parts.scheme!r}); unset it to use the embedded database"
            )
        if not parts.path.strip("/"):
            raise ValueError("must name a database, e.g. postgresql://host:5432/flowforge")
        # Checked here, not at the first connection: a port that is not a number
        # can never heal, so it is a start-up error (exit 2), not a retry loop.
        # asyncpg accepts several hosts (h1:5432,h2:5433): check each one's port.
        for host in parts.netloc.rpartition("@")[2].split(","):
            port = host.rpartition("]")[2].partition(":")[2]
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(
                    f"has an invalid port {port!r}: expected a number from 1 to 65535, "
                    "as in postgresql://user:password@host:5432/dbname"
                )
        return value

    @field_validator("database_replica_urls")
    @classmethod
    def _check_replica_urls(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for url in value.split(","):
            cls._check_database_url(url.strip())
        return value

    @property
    def replica_urls(self) -> list[str]:
        if self.database_replica_urls is None:
            return []
        return [url.strip() for url in self.database_replica_urls.split(",") if url.strip()]

    @property
    def replica_pooler(self) -> PoolerMode:
        """The pooler in front of the replicas (DATABASE_REPLICA_POOLER, else DATABASE_POOLER)."""
        if self.database_replica_pooler is not None:
            return self.database_replica_pooler
        return self.database_pooler

    @model_validator(mode="after")
    def _check_replica_settings(self) -> Self:
        if self.database_replica_pooler is not None and not self.replica_urls:
            raise ValueError(
                "DATABASE_REPLICA_POOLER is set but DATABASE_REPLICA_URLS is not: "
                "set the replica URLs, or unset DATABASE_REPLICA_POOLER"
            )
        if self.database_url is not None and self.database_url.strip() in self.replica_urls:
            raise ValueError(
                "DATABASE_REPLICA_URLS contains DATABASE_URL itself: a replica URL must "
                "reach a streaming standby (directly or through its own pooler)"
            )
        return self

    @field_validator("admin_password", mode="before")
    @classmethod
    def _blank_password_is_unset(cls, value: object) -> object:
        # `FLOWFORGE_ADMIN_PASSWORD=` (e.g. from compose's `${VAR:-}`) means "generate one".
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a Redis URL such as redis://host:6379/0")
        return value

    @model_validator(mode="after")
    def _check_relay_bounds(self) -> Self:
        if self.relay_poll_min_interval > self.relay_poll_max_interval:
            raise ValueError(
                f"RELAY_POLL_MIN_INTERVAL ({self.relay_poll_min_interval:g}) must not exceed "
                f"RELAY_POLL_MAX_INTERVAL ({self.relay_poll_max_interval:g})"
            )
        if self.outbox_retry_base_delay > self.outbox_retry_max_delay:
            raise ValueError(
                f"OUTBOX_RETRY_BASE_DELAY ({self.outbox_retry_base_delay:g}) must not exceed "
                f"OUTBOX_RETRY_MAX_DELAY ({self.outbox_retry_max_delay:g})"
            )
        return self

    @model_validator(mode="after")
    def _check_pool_bounds(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"DB_POOL_MIN_SIZE ({self.pool_min_size}) must not exceed "
                f"DB_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if self.admin_password is not None and self.environment is not Environment.DEVELOPMENT:
            problem = weak_password_problem(
                self.admin_password.get_secret_value(), self.admin_username
            )
            if problem:
                raise ValueError(
                    f"FLOWFORGE_ADMIN_PASSWORD {problem}; outside FLOWFORGE_ENV=development "
                    "set a real one, or unset it to have one generated"
                )
        if self.environment is Environment.PRODUCTION and self.database_url is None:
            raise ValueError(
                "DATABASE_URL is required when FLOWFORGE_ENV=production: "
                "the embedded database is for development and tests only"
            )
        return self


# Values found in examples and defaults: never acceptable outside development.
PLACEHOLDER_PASSWORDS = frozenset(
    {
        "admin",
        "administrator",
        "password",
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "flowforge",
        "letmein",
        "123456",
        "12345678",
        "qwerty",
        "test",
        "example",
    }
)
MIN_PASSWORD_LENGTH = 12


# zxcvbn's 0-4 scale; 4 is "very unguessable: strong protection from an offline
# slow-hash scenario" (10^10 guesses and more). 3 (10^8) let `Summer2026!!` and
# `Passwordpasswordpassword` through: a word, a year and two symbols is the most
# common shape of an organisation's password, and this one guards every user and key.
MIN_PASSWORD_STRENGTH = 4


def weak_password_problem(password: str, *related: str) -> str | None:
    """Why `password` is not acceptable outside development, or None.

    Strength is zxcvbn's estimate of how many guesses an attacker needs
    (dictionaries, keyboard walks, repeats, dates, l33t), not character classes;
    `related` words (the product, the username) count as guessable too. The
    password is judged in NFKC form: the full-width letters and digits of
    "PASSWORD1234" typed with an East Asian input method are still PASSWORD1234
    to anyone guessing.
    """
    judged = unicodedata.normalize("NFKC", password)
    if judged.strip().lower() in PLACEHOLDER_PASSWORDS or "change" in judged.lower():
        return "is a placeholder"
    if len(judged) < MIN_PASSWORD_LENGTH:
        return f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    # zxcvbn's cost grows with length; the first 100 characters decide.
    estimate = zxcvbn(judged[:100], user_inputs=["flowforge", "admin", *related])
    if estimate["score"] < MIN_PASSWORD_STRENGTH:
        return (
            f"is too easy to guess (zxcvbn strength {estimate['score']}/4, "
            f"{MIN_PASSWORD_STRENGTH} needed: {_weakness(estimate['sequence'])})"
        )
    return None


def _weakness(sequence: list[dict[str, object]]) -> str:
    """zxcvbn's own feedback on the weakest part of a password, as one phrase.

    zxcvbn only gives feedback below strength 3 (its own bar); asked as for a
    weak password, it names what it matched (a common word, a repeat, a year).
    """
    feedback = get_feedback(0, sequence)
    parts = [feedback["warning"], *feedback["suggestions"]]
    return "; ".join(part.rstrip(".") for part in parts if part) or "it follows a common pattern"


class SettingsError(SystemExit):
    """Raised (as a clean exit, status 2) when the environment holds invalid settings."""


def describe_validation_error(error: ValidationError) -> str:
    lines = ["FlowForge cannot start: invalid settings"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        field = Settings.model_fields.get(where)
        name = (
            field.validation_alias if field and isinstance(field.validation_alias, str) else where
        )
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {str(name).upper()}: {message}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, parsed once. Raises :class:`SettingsError` on bad values."""
    try:
        return Settings()
    except ValidationError as error:
        print(describe_validation_error(error), file=sys.stderr)
        raise SettingsError(2) from None
