"""flowforge.core.json: every JSON number decoded and encoded exactly, the common case on C."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from flowforge.core.json import ExactNumber, dumps, loads, unmark_numbers


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("12345678901234567890.5", "12345678901234567890.5"),
        ("1e400", "1" + "0" * 400),
        ("1E-7", "0.0000001"),
        ("2.50", "2.50"),
        ("1.0", "1.0"),
        ("0.1", "0.1"),
        ("-0.0", "-0.0"),
        ("7" * 5000, "7" * 5000),  # past int()'s 4,300 digits
    ],
)
def test_numbers_decode_and_encode_exactly(text: str, written: str) -> None:
    document = loads(f'{{"n": [{text}]}}')
    assert dumps(document) == f'{{"n":[{written}]}}'
    assert loads(dumps(document).encode()) == document


def test_floats_that_write_back_as_sent_stay_floats() -> None:
    assert loads("[0.5, 2.75, -0.0, 1.0, 3]") == [0.5, 2.75, -0.0, 1.0, 3]
    assert [type(n) for n in loads("[0.5, 0.30000000000000001, 1e2, 3]")] == [
        float,
        ExactNumber,
        ExactNumber,
        int,
    ]


def test_sorted_keys_and_other_types_on_the_exact_path() -> None:
    document: dict[str, Any] = {"b": Decimal("1.10"), "a": [None, True, "é\n", 2, 0.5]}
    assert dumps(document, sort_keys=True) == '{"a":[null,true,"é\\n",2,0.5],"b":1.10}'
    assert dumps(document) == json.dumps(
        {"b": 1.1, "a": [None, True, "é\n", 2, 0.5]}, separators=(",", ":"), ensure_ascii=False
    ).replace("1.1", "1.10")


def test_responses_write_exact_numbers_as_numbers_and_leave_strings_alone() -> None:
    class Out(BaseModel):
        document: dict[str, Any]

    # Strings that look like a marked number are strings: their backslash is escaped.
    document = loads('{"n": 0.30000000000000001, "s": "\\\\u00001", "t": "\\"\\\\u00002\\""}')
    body = unmark_numbers(Out(document=document).model_dump_json().encode())
    assert json.loads(body, parse_float=str) == {
        "document": {"n": "0.30000000000000001", "s": "\\u00001", "t": '"\\u00002"'}
    }
    assert Out(document=document).model_dump()["document"]["n"] == Decimal("0.30000000000000001")
