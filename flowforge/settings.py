"""Typed, validated settings, read once from the environment (and `.env`).

Every setting is documented in the README with its default. Bad values fail at
start-up with one readable message (:func:`load_settings`), never later.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


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
    data_dir: Path = Field(default=REPO_ROOT / ".flowforge", validation_alias="FLOWFORGE_DATA_DIR")

    # Pool sizing (docs/decisions.md, decision 6): a bounded pool that grows
    # on demand from min to max and shrinks back when connections sit idle.
    pool_min_size: int = Field(default=2, ge=0, le=1000, validation_alias="DB_POOL_MIN_SIZE")
    pool_max_size: int = Field(default=20, ge=1, le=1000, validation_alias="DB_POOL_MAX_SIZE")
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

    @field_validator("database_url")
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
        return value

    @field_validator("admin_password", mode="before")
    @classmethod
    def _blank_password_is_unset(cls, value: object) -> object:
        # `FLOWFORGE_ADMIN_PASSWORD=` (e.g. from compose's `${VAR:-}`) means "generate one".
        return None if isinstance(value, str) and value.strip() == "" else value

    @model_validator(mode="after")
    def _check_pool_bounds(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"DB_POOL_MIN_SIZE ({self.pool_min_size}) must not exceed "
                f"DB_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if self.admin_password is not None and self.environment is not Environment.DEVELOPMENT:
            problem = weak_password_problem(self.admin_password.get_secret_value())
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


def weak_password_problem(password: str) -> str | None:
    """Why `password` is not acceptable outside development, or None."""
    if password.strip().lower() in PLACEHOLDER_PASSWORDS or "change" in password.lower():
        return "is a placeholder"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


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
