"""Piccolo Admin and the API docs in a real headless Chromium.

Admin: log in, open the runs, filter by status, see a run. Docs: /docs
(Swagger UI) and /redoc render every operation with the network closed.

Runs the app under real uvicorn on a free port against the test database.
The screenshots land in tests/artifacts/ (gitignored). `make test` installs
Debian's chromium when it is missing; Playwright never downloads a browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from flowforge.commands import seed
from flowforge.db.engine import DB
from tests.live import live_server
from tests.support import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
USERNAME = "browser-admin"
PASSWORD = "browser-test-password-1"
FAILED_RUN_ERROR = "Email team: upstream timed out (attempt 3)"


@pytest.fixture
async def seeded(db: None) -> list[str]:
    """The seed data, and an admin login the browser knows the password of.

    Returns the stored API key hashes (which the admin must never show).
    """
    from piccolo.apps.user.tables import BaseUser

    await seed.seed()
    await DB.fetch("DELETE FROM piccolo_user WHERE username = $1", USERNAME)
    await BaseUser.create_user(
        username=USERNAME, password=PASSWORD, active=True, admin=True, superuser=True
    )
    return [row["key_hash"] for row in await DB.fetch("SELECT key_hash FROM api_keys")]


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian chromium is missing: `make test` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/admin/")
    page.locator("input[name=username]").fill(USERNAME)
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.wait_for_url(re.compile(r".*/admin/#/$"))


def test_admin_log_in_filter_runs_by_status_and_open_a_run(
    seeded: list[str], database_url: str, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with live_server(database_url, ARTIFACTS / "admin-uvicorn.log") as base_url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in(page, base_url)

        page.get_by_role("link", name="Workflow Runs").first.click()
        expect(page.get_by_role("heading", name="Workflow Runs")).to_be_visible()
        # Data rows: the ones linking to a run (the page has other tables too).
        rows = page.locator("tr:has(a[href*='#/workflow_runs/'])")
        expect(rows).to_have_count(10)
        # Foreign keys read as names, not UUIDs.
        expect(page.locator("table").get_by_text("Nightly report").first).to_be_visible()

        page.get_by_text("SHOW FILTERS").click()
        page.locator("select[name=status]").select_option("failed")
        page.get_by_role("button", name="APPLY").click()
        expect(rows).to_have_count(2)
        for row in rows.all():
            expect(row).to_contain_text("Failed")
        page.get_by_text("CLOSE").click()
        # The screenshot waits for the table's fade-in to finish (no running animation).
        page.wait_for_function(
            "document.getAnimations().every(animation => animation.playState !== 'running')"
        )
        page.screenshot(path=str(ARTIFACTS / "admin-runs-filtered-failed.png"), full_page=True)

        row = rows.filter(has_text="Nightly report")
        row.locator("a").first.click()
        expect(
            page.get_by_text("Edit Workflow Run").or_(page.get_by_text("Workflow Run"))
        ).to_be_visible()
        expect(
            page.locator(f"text={FAILED_RUN_ERROR}").or_(page.locator("textarea >> nth=0"))
        ).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "admin-run-detail.png"), full_page=True)


def test_admin_is_read_only_and_never_shows_secrets(
    seeded: list[str], database_url: str, browser: Browser
) -> None:
    hashes = seeded
    assert hashes
    with live_server(database_url, ARTIFACTS / "admin-uvicorn-api.log") as base_url:
        context = browser.new_context()
        page = context.new_page()
        log_in(page, base_url)
        api = f"{base_url}/admin/api/tables"

        keys = page.request.get(f"{api}/api_keys/?__readable=true")
        assert keys.status == 200
        rows = keys.json()["rows"]
        assert rows
        assert all(row.get("key_hash") is None for row in rows)  # secret=True: never sent
        for stored in hashes:
            assert stored not in keys.text()
        single = page.request.get(f"{api}/api_keys/{rows[0]['id']}/")
        assert single.status == 200
        assert single.json().get("key_hash") is None

        csrf = next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
        headers = {"X-CSRFToken": csrf}
        versions = page.request.get(f"{api}/workflow_versions/?__readable=true")
        assert versions.status == 200 and versions.json()["rows"]
        tables = ("outbox", "run_step_logs", "workflow_runs", "workflows", "workflow_versions")
        for table in (*tables, "api_keys"):
            created = page.request.post(f"{api}/{table}/", data={}, headers=headers)
            assert created.status in (403, 405), (table, created.status)
        outbox_row = page.request.get(f"{api}/outbox/?__page_size=1").json()["rows"][0]
        deleted = page.request.delete(f"{api}/outbox/{outbox_row['id']}/", headers=headers)
        assert deleted.status in (403, 405)
        context.close()


@pytest.fixture
async def delayed_run(seeded: list[str]) -> str:
    """A run of a seeded workflow, delayed an hour: its waiting_reason is not_before."""
    rows = await DB.fetch(
        "INSERT INTO workflow_runs (workflow_id, not_before) "
        "SELECT id, now() + interval '1 hour' FROM workflows ORDER BY name LIMIT 1 RETURNING id"
    )
    return str(rows[0]["id"])


def test_admin_form_says_why_a_run_waits(
    delayed_run: str, database_url: str, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with live_server(database_url, ARTIFACTS / "admin-uvicorn-form.log") as base_url:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        log_in(page, base_url)
        page.goto(f"{base_url}/admin/#/forms/why-is-a-run-waiting/")
        field = page.locator("input[name=run_id]")
        field.fill("not-a-run")
        page.locator("[data-uitest=submit_custom_form_button]").click()
        expect(page.get_by_text("is not a run id")).to_be_visible()
        field.fill(delayed_run)
        page.locator("[data-uitest=submit_custom_form_button]").click()
        expect(page.locator("#success_message")).to_contain_text("(not_before)")
        page.screenshot(path=str(ARTIFACTS / "admin-why-is-a-run-waiting.png"), full_page=True)


def test_admin_shows_the_relays_delivery_state_and_hides_secrets() -> None:
    """Dead letters are visible (and filterable) in the admin; key hashes never are."""
    from flowforge.api.admin import table_configs

    configs = {config.table_class._meta.tablename: config for config in table_configs()}
    outbox = configs["outbox"]
    shown = {column._meta.name for column in outbox.visible_columns}
    assert {"attempts", "last_error", "dead_lettered_at", "published_at"} <= shown
    assert "dead_lettered_at" in {column._meta.name for column in outbox.visible_filters}
    keys = {column._meta.name for column in configs["api_keys"].visible_columns}
    assert "key_hash" not in keys


# -- /docs and /redoc without internet ----------------------------------------------------

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
ANY_URL = re.compile(r"https?://", re.IGNORECASE)


def offline_context(browser: Browser, outside: list[str]) -> BrowserContext:
    """A browser context whose every non-localhost request is refused (and recorded)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    return context


def test_docs_and_redoc_render_every_operation_with_the_network_closed(
    db: None, database_url: str, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    outside: list[str] = []
    with live_server(database_url, ARTIFACTS / "docs-uvicorn.log") as base_url:
        spec = httpx.get(f"{base_url}/openapi.json").json()
        operations = sum(len(methods) for methods in spec["paths"].values())
        for page_path in ("/docs", "/redoc"):
            html = httpx.get(f"{base_url}{page_path}").text
            assert not ANY_URL.search(html), f"{page_path} refers to another host"

        context = offline_context(browser, outside)
        page = context.new_page()
        page.goto(f"{base_url}/docs")
        # Swagger UI rendered the spec: one block per operation.
        expect(page.locator(".opblock")).to_have_count(operations, timeout=30_000)
        expect(page.get_by_text("/api/v1/workflows/{workflow_id}/runs").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "docs-offline.png"), full_page=False)

        page.goto(f"{base_url}/redoc")
        # ReDoc rendered the spec: its menu lists the operations by summary.
        expect(
            page.locator("[role=menuitem]").filter(has_text="Trigger a run").first
        ).to_be_attached(timeout=30_000)
        expect(page.get_by_role("heading", name="FlowForge").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "redoc-offline.png"), full_page=False)
        context.close()
    assert outside == []  # nothing was needed from the internet
