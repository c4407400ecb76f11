"""Piccolo Admin answers bad query input with a clear 4xx, never a 500 or a traceback.

Through the real admin API (the one its UI calls) with a real session login.
Piccolo's CRUD raised (500, traceback) on an unknown `__order` column and
rendered no `/new/` defaults for the outbox; its own error handler logged every
failure, the database's refusals of a client's value too, as ``Server error``.
Its requests were counted as ``<unmatched>``.
"""

from __future__ import annotations

import logging
import random
import string
import time

import httpx
import pytest

from flowforge.db.tables import TABLES
from tests.api.conftest import Caller
from tests.metrics_support import parse

TABLE_NAMES = [table._meta.tablename for table in TABLES]
COLUMNS = sorted({column._meta.name for table in TABLES for column in table._meta.columns})
COLUMNS_OF = {
    table._meta.tablename: [column._meta.name for column in table._meta.columns] for table in TABLES
}


def problems_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Lines above INFO, or with a traceback: a client's mistake causes neither."""
    return [
        f"{record.levelname} {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno > logging.INFO or record.exc_info
    ]


@pytest.mark.parametrize(
    "query",
    [
        "__order=KEY_HASH",
        "__order=%2Bkey_hash",
        "__order=+key_hash",
        "__order=key_hash%00",
        "__order=user_id.email",
        "__order=nonexistent",
        "__order=",
        "__order=prefix,",
        "__order=prefix%00",
        "__page_size=-1",
        "__page_size=0",
        "__page_size=abc",
        "__page_size=1&__page_size=2",
        "__page=0",
        "__page=99999999999999999999",
        "prefix=%00",
        "name=" + "n" * 101,  # longer than the column: Piccolo's filter model refuses it
    ],
)
async def test_bad_admin_query_parameters_are_a_400_without_a_traceback(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    caplog.clear()
    for path in ["/admin/api/tables/api_keys/", "/admin/api/tables/api_keys/count/"]:
        response = await admin_session.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.text)
        error = response.json()["error"]
        assert error["code"] in ("bad_request", "secret_column"), error
        assert error["message"]
    assert problems_logged(caplog) == []


async def test_an_unknown_order_column_names_the_columns_to_choose_from(
    admin_session: httpx.AsyncClient,
) -> None:
    response = await admin_session.get("/admin/api/tables/api_keys/?__order=nonexistent")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "'nonexistent' is not a column of api_keys" in error["message"]
    assert "prefix" in error["details"]["columns"]
    assert "key_hash" not in error["details"]["columns"]  # secret: not even its name


@pytest.mark.parametrize("table", TABLE_NAMES)
async def test_new_row_defaults_are_refused_by_the_read_only_admin(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, table: str
) -> None:
    caplog.clear()
    response = await admin_session.get(f"/admin/api/tables/{table}/new/")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "read_only"
    assert problems_logged(caplog) == []


async def test_a_filter_value_that_is_not_json_for_a_jsonb_column_is_a_400(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    response = await admin_session.get("/admin/api/tables/outbox/?payload=x")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["problems"][0]["parameter"] == "payload"
    assert problems_logged(caplog) == []


async def test_a_value_the_database_refuses_is_not_logged_as_a_server_error(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    # A valid integer for the query, out of range for the int4 column.
    response = await admin_session.get("/admin/api/tables/outbox/?attempts=99999999999")
    assert response.status_code == 422, response.text
    assert problems_logged(caplog) == []


async def test_good_admin_queries_still_work(admin_session: httpx.AsyncClient) -> None:
    response = await admin_session.get(
        "/admin/api/tables/api_keys/?__order=-prefix,name&__page_size=1000&__page=1"
        "&__visible_fields=id,prefix"
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["rows"]) == 1


def _requests_by_route(samples: dict[str, float]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for key, value in samples.items():
        if key.startswith("flowforge_http_requests_total{"):
            route = key.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0.0) + value
    return counts


async def test_admin_requests_are_labelled_by_route_template(
    admin_session: httpx.AsyncClient, developer: Caller
) -> None:
    paths = {
        "/admin/api/tables/api_keys/": 200,
        "/admin/api/tables/api_keys/count/": 200,
        f"/admin/api/tables/api_keys/{developer.key_id}/": 200,
        "/admin/api/tables/no_such_table/": 404,
        "/admin/": 200,
        "/admin/public/meta/": 200,
    }
    before = _requests_by_route(parse((await admin_session.get("/metrics")).text))
    for path, status in paths.items():
        assert (await admin_session.get(path)).status_code == status, path
    after = _requests_by_route(parse((await admin_session.get("/metrics")).text))
    added = {route for route, count in after.items() if count > before.get(route, 0.0)}
    assert added - {"/metrics"} == {
        "/admin/api/tables/api_keys/",
        "/admin/api/tables/api_keys/count/",
        "/admin/api/tables/api_keys/{row_id}/",
        "/admin/api/{path}",  # no such table: the mounted app's template
        "/admin/",
        "/admin/public/meta/",
    }
    # The login (admin_session) went under its template too; no raw id is a label.
    assert "/admin/public/login/{path}" in after
    assert not [route for route in after if str(developer.key_id) in route]


def _random_text(rng: random.Random) -> str:
    # NUL, accents, a right-to-left override, full-width letters, a math digit.
    alphabet = string.printable + "\x00\u00e9\u00df\u202e\uff21\uff22\U0001d7d8"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _random_order(rng: random.Random) -> str:
    items = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.5:
            item = rng.choice(COLUMNS)
            item = rng.choice(["", "-", "+", " ", "--"]) + item
            item += rng.choice(["", "", ".id", ".email", "\x00", " ", ".", "__match"])
            if rng.random() < 0.2:
                item = item.upper()
        else:
            item = _random_text(rng)
        items.append(item)
    return ",".join(items)


def _random_filter(rng: random.Random, table: str) -> tuple[str, str]:
    """A filter on one of `table`'s columns, with an operator or match type now and then."""
    column = rng.choice(COLUMNS_OF[table])
    value = rng.choice(
        [
            _random_text(rng),
            _random_number(rng),
            "x" * rng.choice([99, 100, 101, 300, 5000]),
            '{"a": 1}',
            "[1, 2]",
            "null",
            "2026-01-01T00:00:00Z",
            "00000000-0000-0000-0000-000000000000",
        ]
    )
    suffix = rng.choice(["", "", "", "__operator", "__match"])
    if suffix == "__operator":
        return f"{column}__operator", rng.choice(["gt", "lte", "is_null", "is_not_null", "e", "x"])
    if suffix == "__match":
        return f"{column}__match", rng.choice(["exact", "starts", "ends", "contains", "x"])
    return column, value


def _random_number(rng: random.Random) -> str:
    return rng.choice(
        [
            str(rng.randint(-(2**70), 2**70)),
            str(rng.randint(-5, 1100)),
            f"{rng.uniform(-10, 10):.2f}",
            _random_text(rng),
            "1e3",
            "",
        ]
    )


async def test_fuzzed_admin_query_parameters_never_answer_5xx(
    admin_session: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    seed = time.time_ns()
    rng = random.Random(seed)
    caplog.clear()
    statuses: dict[int, int] = {}
    for _ in range(400):
        table = rng.choice(TABLE_NAMES)
        path = f"/admin/api/tables/{table}/" + rng.choice(["", "", "count/"])
        params: list[tuple[str, str]] = []
        for _ in range(rng.randint(1, 4)):
            name = rng.choice(
                ["__order", "__order", "__page_size", "__page", "__visible_fields", "filter"]
            )
            if name == "filter":
                params.append(_random_filter(rng, table))
            elif name in ("__order", "__visible_fields"):
                params.append((name, _random_order(rng)))
            else:
                params.append((name, _random_number(rng)))
        response = await admin_session.get(path, params=params)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (seed, path, params, response.text)
    assert problems_logged(caplog) == [], seed
    assert statuses.get(200, 0) and statuses.get(400, 0), statuses  # both sides were reached
