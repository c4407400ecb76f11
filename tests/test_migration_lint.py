"""Migrations are linted with squawk: no table rewrite or long lock unless justified.

The SQL is what Piccolo itself prints for the migrations
(``piccolo migrations forwards flowforge --preview`` against an empty
database), one file per migration; the policy and its allow-list, each entry
with its reason, are in ``migration-lint.toml``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import support

POLICY = tomllib.loads((support.REPO_ROOT / "migration-lint.toml").read_text())
REFUSED = set(POLICY["refused_rules"])
SQUAWK = shutil.which("squawk", path=str(Path(sys.executable).parent)) or "squawk"
MIGRATION = re.compile(r"- (\S+) \[preview forwards\]\.\.\.(.*?)ok! ", re.DOTALL)
NO_TRANSACTION = "Automatic transaction disabled"


@dataclass(frozen=True)
class Finding:
    migration: str
    rule: str
    statement: str


def squawk(sql: str, path: Path, *, in_transaction: bool) -> list[dict[str, Any]]:
    path.write_text(sql)
    command = [SQUAWK, "--reporter", "json", "--pg-version", "15", str(path)]
    if in_transaction:
        command.insert(1, "--assume-in-transaction")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr  # 1: findings
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return findings


def lint(preview: str, workdir: Path) -> list[Finding]:
    """squawk's findings in the refused rules, per migration of the preview."""
    found = []
    for migration, chunk in MIGRATION.findall(preview):
        in_transaction = NO_TRANSACTION not in chunk
        sql = chunk.replace(NO_TRANSACTION, "").strip()
        if not sql:
            continue  # raw-SQL only migration: not in the preview
        lines = sql.splitlines()
        for item in squawk(sql, workdir / f"{migration}.sql", in_transaction=in_transaction):
            if item["rule_name"] in REFUSED:
                statement = "\n".join(lines[item["line"] : item["line_end"] + 1])
                found.append(Finding(migration, item["rule_name"], statement))
    return found


def allowed(finding: Finding) -> bool:
    return any(
        entry["migration"] == finding.migration
        and entry["rule"] == finding.rule
        and entry["statement"] in finding.statement
        for entry in POLICY["allow"]
    )


@pytest.fixture(scope="module")
async def preview() -> AsyncIterator[str]:
    name = support.database_name("squawk")
    url = await support.create_database(name)
    try:
        result = support.piccolo(
            "migrations", "forwards", "flowforge", "--preview", database_url=url
        )
        yield result.stdout
    finally:
        await support.drop_database(name)


async def test_the_preview_holds_every_table_migration(preview: str) -> None:
    migrations = dict(MIGRATION.findall(preview))
    files = (support.REPO_ROOT / "piccolo_migrations").glob("flowforge_*.py")
    assert len(migrations) == len(list(files))
    assert 'CREATE TABLE "outbox"' in preview


async def test_migrations_lock_or_rewrite_only_where_justified(
    preview: str, tmp_path: Path
) -> None:
    findings = lint(preview, tmp_path)
    refused = [finding for finding in findings if not allowed(finding)]
    assert not refused, "refused by migration-lint.toml:\n" + "\n".join(
        f"{f.migration} {f.rule}: {f.statement.strip()[:200]}" for f in refused
    )
    stale = [
        entry
        for entry in POLICY["allow"]
        if not any(
            entry["migration"] == f.migration
            and entry["rule"] == f.rule
            and entry["statement"] in f.statement
            for f in findings
        )
    ]
    assert not stale, f"allow-list entries that match nothing: {stale}"
    assert all(entry["reason"].strip() for entry in POLICY["allow"])


def test_squawk_refuses_a_rewrite_and_a_validating_constraint(tmp_path: Path) -> None:
    # What a new migration like migration 3 would be told.
    preview = (
        "  - 2030-01-01T00:00:00:000000 [preview forwards]... \n"
        ' ALTER TABLE "outbox" ADD COLUMN "seq2" BIGSERIAL NOT NULL;\n\n'
        ' ALTER TABLE "outbox" ADD CONSTRAINT outbox_x CHECK (attempts < 100);\n'
        "ok! ✔️\n"
    )
    rules = {finding.rule for finding in lint(preview, tmp_path)}
    assert {"adding-required-field", "constraint-missing-not-valid"} <= rules
    assert not any(allowed(finding) for finding in lint(preview, tmp_path))
