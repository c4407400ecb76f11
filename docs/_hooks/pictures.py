"""mkdocs hook: draw the site's pictures from the code, at every build.

Nothing here is committed as a picture: the schema diagram comes from the Table
classes (Piccolo's own ``schema graph`` template), the run state machine from
``flowforge.domain.runs.TRANSITIONS`` and the reaper, and the benchmark chart from the
newest ``make bench`` result in ``benchmarks/results/``. A picture therefore
cannot drift from what it shows. Graphviz's ``dot`` renders the first two
(Debian's ``graphviz``; ``make docs`` installs it).
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
OUT = DOCS / "generated"
RESULTS = ROOT / "benchmarks" / "results"


def on_pre_build(config: Any) -> None:
    """Write docs/generated/*.svg before mkdocs collects the files."""
    OUT.mkdir(exist_ok=True)
    _write(OUT / "schema.svg", _render(schema_dot()))
    _write(OUT / "run-states.svg", _render(run_states_dot()))
    _write(OUT / "bench-ratios.svg", bench_chart(newest_bench_result()))


def schema_dot() -> str:
    """The entity-relationship diagram of FlowForge's tables, as DOT: one box per
    Table class with its columns (key, type, NOT NULL), one arrow per foreign key
    labelled with its ON DELETE. The same introspection as Piccolo's
    ``piccolo schema graph``, laid out compactly."""
    from piccolo.columns import ForeignKey

    from flowforge.db.tables import TABLES

    lines = [
        "digraph schema {",
        '  rankdir="RL"; nodesep=0.4; ranksep=0.9;',
        '  node [shape=plaintext, fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555", arrowtail=crow];',
    ]
    for table in TABLES:
        name = table._meta.tablename
        rows = [
            f'<TR><TD COLSPAN="2" BGCOLOR="#4c89c8" ALIGN="CENTER">'
            f'<FONT COLOR="white"><B>{name}</B></FONT></TD></TR>'
        ]
        for column in table._meta.columns:
            kind = column.__class__.__name__
            if isinstance(column, ForeignKey):
                kind = f"→ {column._foreign_key_meta.resolved_references._meta.tablename}"
            column_name = html.escape(column._meta.name)
            if column._meta.primary_key:
                column_name = f"<B>{column_name}</B>"
            nullable = "" if column._meta.null else " ·"
            rows.append(
                f'<TR><TD ALIGN="LEFT" PORT="{column._meta.name}">{column_name}</TD>'
                f'<TD ALIGN="LEFT"><FONT COLOR="#555555">{html.escape(kind)}{nullable}</FONT></TD></TR>'
            )
        label = "".join(rows)
        lines.append(
            f'  "{name}" [label=<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" '
            f'CELLPADDING="3">{label}</TABLE>>];'
        )
    for table in TABLES:
        for column in table._meta.foreign_key_columns:
            target = column._foreign_key_meta.resolved_references._meta.tablename
            on_delete = column._foreign_key_meta.on_delete.value
            lines.append(
                f'  "{table._meta.tablename}":"{column._meta.name}" -> "{target}" '
                f'[label="{on_delete}", dir=back];'
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def run_states_dot() -> str:
    """The run state machine: every transition the domain allows, and the reaper's."""
    from flowforge.db.tables import RunStatus
    from flowforge.domain.runs import TRANSITIONS

    lines = [
        "digraph run_states {",
        '  rankdir="LR"; fontname="Helvetica";',
        '  node [shape=box, style="rounded,filled", fillcolor="#e8eef7", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
        "  trigger [shape=point, width=0.15];",
        f'  trigger -> "{RunStatus.PENDING.value}" [label="trigger"];',
    ]
    for action, (target, sources) in TRANSITIONS.items():
        for source in sources:
            lines.append(f'  "{source.value}" -> "{target.value}" [label="{action}"];')
    # The reaper fails a running run whose heartbeat lease lapsed (flowforge/jobs/reaper.py).
    lines.append(
        f'  "{RunStatus.RUNNING.value}" -> "{RunStatus.FAILED.value}" '
        '[label="reaper: lease lapsed", style=dashed];'
    )
    # ... or, for a claimed run with claims (and step attempts) left, requeues it (issue 18).
    lines.append(
        f'  "{RunStatus.RUNNING.value}" -> "{RunStatus.AWAITING_RETRY.value}" '
        '[label="reaper: lease lapsed, claims left", style=dashed];'
    )
    terminal = {target for target, _ in TRANSITIONS.values()} - {
        source for _, sources in TRANSITIONS.values() for source in sources
    }
    for status in sorted(terminal, key=lambda s: s.value):
        lines.append(f'  "{status.value}" [peripheries=2];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def newest_bench_result() -> dict[str, Any] | None:
    """The newest `make bench` result (files named bench-*.json), or None."""
    candidates = [(json.loads(path.read_text()), path) for path in RESULTS.glob("bench-*.json")]
    candidates = [(data, path) for data, path in candidates if data.get("comparisons")]
    if not candidates:
        return None
    data, path = max(candidates, key=lambda item: item[0].get("when", ""))
    data["_file"] = path.name
    return data


def bench_chart(result: dict[str, Any] | None, *, target: float = 1.25) -> str:
    """A horizontal bar chart of FlowForge/floor cost ratios, one bar per
    operation and concurrency, with the target drawn as a line (plain SVG)."""
    if result is None:
        return _svg(400, 40, ['<text x="10" y="25">No benchmark result yet.</text>'])
    rows = [
        (f"{c['operation']} c={c['concurrency']}", float(c["cost_ratio"]))
        for c in result["comparisons"]
    ]
    # The lowest and highest round's ratio, where the result has them (a whisker).
    spreads = [c.get("ratio_spread") for c in result["comparisons"]]
    label_width, bar_width, row_height, top = 230, 420, 20, 48
    highest = max([ratio for _, ratio in rows] + [float(s[1]) for s in spreads if s])
    scale = bar_width / max(2.0, highest * 1.05)
    height = top + row_height * len(rows) + 30
    parts = [
        f'<text x="10" y="18" font-weight="bold">Cost ratio FlowForge / raw-asyncpg floor '
        f"({html.escape(result['_file'])}, {result.get('through', '')}, "
        f"{result.get('rounds', '?')} rounds)</text>",
    ]
    if result.get("smoke") or "quick" in result["_file"]:
        parts.append(
            '<text x="10" y="34" fill="#d9534f">A smoke run (--quick): few rounds on a small '
            "data set; it shows the benchmark works, its ratios are not a verdict.</text>"
        )
    for index, (label, ratio) in enumerate(rows):
        y = top + index * row_height
        colour = "#4c89c8" if ratio <= target else "#d9534f"
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>'
        )
        parts.append(
            f'<rect x="{label_width}" y="{y + 2}" width="{ratio * scale:.1f}" '
            f'height="{row_height - 5}" fill="{colour}"/>'
        )
        right = max(ratio, float(spreads[index][1]) if spreads[index] else ratio)
        parts.append(
            f'<text x="{label_width + right * scale + 4:.1f}" y="{y + 13}">{ratio:.2f}</text>'
        )
        spread = spreads[index]
        if spread:
            low, high = (label_width + float(value) * scale for value in spread)
            mid = y + row_height / 2 - 1
            parts.append(
                f'<line x1="{low:.1f}" y1="{mid:.1f}" x2="{high:.1f}" y2="{mid:.1f}" '
                'stroke="#222" stroke-width="1.5"/>'
            )
    for mark, style in ((1.0, "#888"), (target, "#d9534f")):
        x = label_width + mark * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 24}" '
            f'stroke="{style}" stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{mark:g}</text>')
    return _svg(label_width + bar_width + 60, height, parts)


def _svg(width: int, height: int, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="Helvetica, Arial, sans-serif" font-size="12">\n{body}\n</svg>\n'
    )


def _render(dot: str) -> str:
    binary = shutil.which("dot")
    if binary is None:
        raise RuntimeError("Graphviz's `dot` is not installed (make docs installs it with apt)")
    # A fixed binary and arguments; the DOT text goes in on stdin.
    return subprocess.run(  # noqa: S603
        [binary, "-Tsvg"], input=dot, capture_output=True, text=True, check=True
    ).stdout


def _write(path: Path, text: str) -> None:
    # Unchanged pictures are not rewritten, so `mkdocs serve` does not rebuild in a loop.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
