"""The reference docs stay true to the code they describe.

* Every design decision the code cites exists, under the number it is cited by:
  code cites a decision by its file (``docs/decisions/12-time-partitions.md``),
  prose by number ("decision 12"); both are checked.
* The pictures of the docs site are drawn from the code (docs/_hooks/pictures.py):
  the run state machine has every transition the domain allows.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import REPO_ROOT

DECISIONS = REPO_ROOT / "docs" / "decisions"
CITED_FILE = re.compile(
    r"docs/decisions/([\w.-]+\.md)|\(decisions/([\w.-]+\.md)\)|\]\(([\w.-]+\.md)\)"
)
CITED_NUMBER = re.compile(r"\b[Dd]ecisions? (\d+)\b")
# Text files a citation can stand in: code, configuration, docs.
SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ""}


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [
        REPO_ROOT / name
        for name in listed
        if Path(name).suffix in SUFFIXES and (REPO_ROOT / name).is_file()
    ]


def decision_numbers() -> dict[int, str]:
    numbers = {}
    for path in DECISIONS.glob("[0-9][0-9]-*.md"):
        numbers[int(path.name[:2])] = path.name
    return numbers


def test_the_decisions_are_numbered_one_file_each_and_all_listed() -> None:
    numbers = decision_numbers()
    assert sorted(numbers) == list(range(1, len(numbers) + 1)), numbers
    index = (DECISIONS / "index.md").read_text()
    for number, name in numbers.items():
        text = (DECISIONS / name).read_text()
        assert text.startswith(f"# {number}. "), f"{name} must open with '# {number}. <title>'"
        assert f"]({name})" in index, f"docs/decisions/index.md does not list {name}"


def test_every_cited_decision_exists() -> None:
    numbers = decision_numbers()
    problems = []
    for path in tracked_text_files():
        if path == Path(__file__):
            continue  # its own examples
        text = path.read_text(errors="replace")
        where = path.relative_to(REPO_ROOT)
        if "docs/decisions.md" in text:
            problems.append(f"{where}: cites docs/decisions.md, now docs/decisions/NN-title.md")
        for match in CITED_FILE.finditer(text):
            name = next(group for group in match.groups() if group)
            is_decision = match.group(1) or match.group(2) or path.parent == DECISIONS
            if is_decision and not (DECISIONS / name).exists():
                problems.append(f"{where}: cites docs/decisions/{name}, which does not exist")
        for match in CITED_NUMBER.finditer(text):
            if int(match.group(1)) not in numbers:
                problems.append(f"{where}: cites decision {match.group(1)}, which does not exist")
    assert not problems, "\n".join(problems)


def test_the_citation_check_sees_a_missing_decision(tmp_path: Path) -> None:
    """The checks above can fail: a made-up citation is caught by both patterns."""
    text = "see docs/decisions/99-nothing.md and decision 99"
    assert CITED_FILE.search(text).group(1) == "99-nothing.md"  # type: ignore[union-attr]
    assert int(CITED_NUMBER.search(text).group(1)) not in decision_numbers()  # type: ignore[union-attr]


def load_pictures() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_pictures", REPO_ROOT / "docs" / "_hooks" / "pictures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_run_state_picture_has_every_transition_the_domain_allows() -> None:
    from flowforge.domain.runs import TRANSITIONS

    dot = load_pictures().run_states_dot()
    for action, (target, sources) in TRANSITIONS.items():
        for source in sources:
            assert f'"{source.value}" -> "{target.value}" [label="{action}"]' in dot


def test_the_schema_picture_has_every_table_and_foreign_key() -> None:
    from flowforge.db.tables import TABLES

    dot = load_pictures().schema_dot()
    for table in TABLES:
        assert f'"{table._meta.tablename}" [label=' in dot
        for column in table._meta.foreign_key_columns:
            assert f'"{table._meta.tablename}":"{column._meta.name}" -> ' in dot


@pytest.mark.parametrize("result", [None, {"comparisons": [], "_file": "x.json"}])
def test_the_bench_chart_draws_without_a_result(result: dict[str, object] | None) -> None:
    pictures = load_pictures()
    if result is not None:
        result["comparisons"] = [{"operation": "trigger_run", "concurrency": 1, "cost_ratio": 1.5}]
    svg = pictures.bench_chart(result)
    assert svg.startswith("<svg")
    if result is not None:
        assert "trigger_run c=1" in svg and "#d9534f" in svg  # over the target: red
