"""Getting a first user in: an API key and a Piccolo Admin login, from the command line.

* ``piccolo flowforge create_user --email ops@example.com --role admin --issue_key``
  creates a user (the first one of a production database) and, with
  ``--issue_key``, its API key with every scope the role allows.
* ``piccolo flowforge create_api_key --email admin@flowforge.local`` issues a key
  and prints it (the only time it is ever shown).
* ``piccolo flowforge create_admin_login`` makes sure the Piccolo Admin login
  ``FLOWFORGE_ADMIN_USERNAME`` exists (password: ``FLOWFORGE_ADMIN_PASSWORD``, or
  generated and printed once).
* ``piccolo flowforge seed`` does both for the seeded admin (see :func:`bootstrap`),
  so ``make run`` prints everything needed to call the API and open /admin/.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys

from piccolo.apps.user.tables import BaseUser
from piccolo.query.functions.string import Lower
from piccolo.querystring import QueryString

from flowforge.commands.cliargs import program
from flowforge.core.errors import AppError, translated_db_errors
from flowforge.core.settings import get_settings
from flowforge.db.engine import DB
from flowforge.db.tables import ApiKey, Role, Scope, User
from flowforge.domain import api_keys, users
from flowforge.domain.principal import SCOPES_BY_ROLE
from flowforge.domain.records import ApiKeyRecord

# A person's key never claims runs: `worker` is a scope of its own, issued on a
# key of its own (docs/runs.md, "The run queue"), so a leaked dashboard key
# cannot drain a queue.
WORKER_ONLY: frozenset[Scope] = frozenset({Scope.WORKER})

BOOTSTRAP_EMAIL = "admin@flowforge.local"
BOOTSTRAP_KEY_NAME = "bootstrap"


def api_url() -> str:
    """Where the server listens: HOST and PORT, as `make run` passes them to uvicorn,
    else UVICORN_HOST and UVICORN_PORT (uvicorn's own variables: the image sets them).

    A command cannot ask the server; set PORT when running one against a server
    started with `make run PORT=...`. A wildcard address (0.0.0.0, ::) is shown
    as 127.0.0.1, which reaches it.
    """

    def setting(*names: str) -> str:
        return next((value for name in names if (value := os.environ.get(name, "").strip())), "")

    host = setting("HOST", "UVICORN_HOST") or "127.0.0.1"
    port = setting("PORT", "UVICORN_PORT") or "8000"
    if host in {"0.0.0.0", "::", "[::]"}:  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def describe_key(email: str, key: ApiKeyRecord, full_key: str) -> str:
    scopes = ",".join(key["scopes"])
    return (
        f"API key for {email} (scopes {scopes}) - shown only now, store it:\n"
        f"  {full_key}\n"
        f'  try: curl -H "Authorization: Bearer {full_key}" {api_url()}/api/v1/me'
    )


async def issue_key_for_email(
    email: str, name: str, scopes: list[Scope], expires_at: datetime.datetime | None = None
) -> tuple[ApiKeyRecord, str]:
    """Issue a key to the user with `email` (in the current transaction)."""
    DB.require_transaction()
    user = await (
        User.select(User.id)
        .where(Lower(User.email) == Lower(QueryString("{}", email)))
        .first()
        .run()
    )
    if user is None:
        raise SystemExit(f"No user with email {email!r}; create one first (or run the seed).")
    return await api_keys.create_api_key(
        user["id"], name=name, scopes=scopes, expires_at=expires_at
    )


async def create_user(
    email: str = "",
    role: str = "",
    display_name: str = "",
    issue_key: bool = False,
) -> None:
    """Create a user (e.g. the first one of a production database), with its user.created event.

    :param email: the user's email address (unique, case-insensitive)
    :param role: admin, developer or viewer
    :param display_name: the name shown for the user; defaults to the email's local part
    :param issue_key: also issue an API key with every scope the role allows except
        worker (a worker key is issued on its own, with --scopes worker), printed once
    """
    roles = ", ".join(role.value for role in Role)
    if not email.strip():
        raise SystemExit("--email is required")
    if role not in {r.value for r in Role}:
        raise SystemExit(f"--role must be one of: {roles} (got {role!r})")
    email = email.strip()
    name = display_name or email.split("@", 1)[0]
    try:
        async with translated_db_errors(), DB.transaction():
            user = await users.create_user(email, name, Role(role))
            issued = (
                await api_keys.create_api_key(
                    user["id"], name="cli", scopes=sorted(SCOPES_BY_ROLE[Role(role)] - WORKER_ONLY)
                )
                if issue_key
                else None
            )
    except AppError as error:
        raise SystemExit(f"Cannot create the user: {error.message}") from None
    # After COMMIT: what is printed exists.
    print(f"user {user['email']} created (role {user['role']}, id {user['id']})")
    if issued is None:
        print(f"  its API key: {program(sys.argv)} create_api_key --email {user['email']}")
    else:
        print(describe_key(user["email"], *issued))


async def create_api_key(
    email: str = BOOTSTRAP_EMAIL,
    name: str = "cli",
    scopes: str = "read,write",
    expires_in_days: int = 0,
) -> None:
    """Issue an API key to a user and print it once.

    :param email: the user's email address
    :param name: a name to tell the key apart
    :param scopes: comma-separated: read, write, admin, worker (within the user's role)
    :param expires_in_days: days until the key expires; 0 means never
    """
    names = [scope.strip() for scope in str(scopes).split(",") if scope.strip()]
    valid = ", ".join(scope.value for scope in Scope)
    unknown = [scope for scope in names if scope not in {s.value for s in Scope}]
    if unknown or not names:
        raise SystemExit(f"--scopes must be a comma-separated subset of: {valid} (got {scopes!r})")
    try:
        days = int(expires_in_days)
        if not 0 <= days <= 36500:
            raise ValueError
    except (TypeError, ValueError):
        raise SystemExit(
            f"--expires_in_days must be a whole number of days from 0 (never) to 36500 "
            f"(got {expires_in_days!r})"
        ) from None
    expires_at = (
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days) if days else None
    )
    try:
        async with translated_db_errors(), DB.transaction():
            key, full_key = await issue_key_for_email(
                email, name, [Scope(scope) for scope in names], expires_at
            )
    except AppError as error:
        raise SystemExit(f"Cannot issue the key: {error.message}") from None
    print(describe_key(email, key, full_key))  # after COMMIT: a printed key works


async def ensure_bootstrap_key() -> str:
    """Give the seeded admin a key named "bootstrap", once; returns what to print.

    Idempotent: while an unrevoked bootstrap key exists nothing is written
    (its secret cannot be shown again; issue another with create_api_key).
    Print the result only after the transaction commits.
    """
    DB.require_transaction()
    existing = await (
        ApiKey.select(ApiKey.prefix)
        .where(
            Lower(ApiKey.user_id.email) == BOOTSTRAP_EMAIL,
            ApiKey.name == BOOTSTRAP_KEY_NAME,
            ApiKey.revoked_at.is_null(),
        )
        .first()
        .run()
    )
    if existing is not None:
        return (
            f"bootstrap API key for {BOOTSTRAP_EMAIL} exists (prefix {existing['prefix']}); "
            "a new one: "
            f"{program(sys.argv)} create_api_key --email {BOOTSTRAP_EMAIL} --scopes read,write,admin"
        )
    key, full_key = await issue_key_for_email(
        BOOTSTRAP_EMAIL, BOOTSTRAP_KEY_NAME, [Scope.READ, Scope.WRITE, Scope.ADMIN]
    )
    return describe_key(BOOTSTRAP_EMAIL, key, full_key)


async def create_admin_login() -> None:
    """Make sure the Piccolo Admin login FLOWFORGE_ADMIN_USERNAME exists.

    With FLOWFORGE_ADMIN_PASSWORD set, the login gets that password (created,
    or updated if it differs). Without it, a new login gets a generated
    password, printed once; an existing login is left alone.
    """
    settings = get_settings()
    username = settings.admin_username
    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    existing = await BaseUser.select(BaseUser.id).where(BaseUser.username == username).first()
    if existing is None:
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(18)
        await BaseUser.create_user(
            username=username,
            password=password,
            email=f"{username}@flowforge.local" if "@" not in username else username,
            active=True,
            admin=True,
            superuser=True,
        )
        shown = f"password {password} - shown only now" if generated else "FLOWFORGE_ADMIN_PASSWORD"
        print(f"admin login for /admin/ created: username {username}, {shown}")
        return
    if password is not None and await BaseUser.login(username, password) is None:
        await BaseUser.update_password(username, password)
        print(f"admin login {username}: password set from FLOWFORGE_ADMIN_PASSWORD")
    await BaseUser.update({BaseUser.active: True, BaseUser.admin: True}).where(
        BaseUser.username == username
    )
    print(f"admin login for /admin/ exists: username {username}")
