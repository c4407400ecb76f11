"""The README's first curl session, run verbatim with bash against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flowforge.db.engine import DB
from tests import support
from tests.live import live_server

SESSION = re.compile(r"A session, from the checkout.*?```sh\n(.*?)```", re.DOTALL)


def json_documents(text: str) -> list[Any]:
    """The JSON documents curl printed one after the other."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def run_session(session: str, database_url: str, base_url: str) -> str:
    result = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-c", session],
        cwd=support.REPO_ROOT,  # `.venv/bin/piccolo`, as the README says
        env={**os.environ, "DATABASE_URL": database_url, "PORT": str(urlsplit(base_url).port)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_the_readme_curl_session_runs_verbatim(
    db: None, database_url: str, tmp_path: Path
) -> None:
    support.piccolo("flowforge", "seed", database_url=database_url)
    [session] = SESSION.findall((support.REPO_ROOT / "README.md").read_text())
    with live_server(database_url, tmp_path / "uvicorn.log") as base_url:
        output = run_session(session, database_url, base_url)
    key, run, listed = json_documents(output)
    assert (key["name"], key["scopes"]) == ("laptop", ["read", "write"])
    assert (run["status"], run["inputs"], run["idempotency_key"]) == (
        "pending",
        {"order": 42},
        "order-42",
    )
    assert [item["id"] for item in listed["items"]] == [run["id"]]
    workflows = await DB.fetch("SELECT id FROM workflows WHERE name = 'Hello'")
    assert [str(row["id"]) for row in workflows] == [run["workflow_id"]]
