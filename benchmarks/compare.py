"""The regression guard: compare the cost ratios of two `make bench` results.

    make bench BENCH_ARGS="--compare benchmarks/results/<previous>.json"
    python -m benchmarks.compare OLD.json NEW.json      # two saved results

Not a timed unit test: each ratio is judged against the spread both runs
measured themselves. A ratio is *worse* when every round of the new run cost
more than every round of the old one: the new run's lowest per-round ratio lies
above the old run's highest. If nothing changed, the rounds of both runs are
exchangeable and that happens by chance with probability 1 / C(n_old + n_new,
n_new): 1 in 48,620 for 9 rounds each (the default), 1 in 20 for 3 each. A
ratio is judged only when that chance is at most MAX_CHANCE, so that a full run
of ~40 ratios raises a false flag less than once in 20 runs; smoke runs (3
rounds) are listed, not judged. *Better* is the mirror image; anything else is
within the spread.

The queue section's drain (``"queue"`` in a result) is deliberately *not*
judged: its figures are absolute runs/s and claim latencies of one drain per
side, with no floor run beside them and no rounds, so there is no spread to
judge a change against (and absolute numbers on this shared machine move with
its neighbours). The guard prints them side by side, marked "not judged"; its
hard failures (a run claimed twice, an error, a run left over) fail the run
that measured them, not the comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CHANCE = 1 / 1000  # 7 rounds each and more (1 / 3,432); 6 each is 1 / 924


class BadResult(ValueError):
    """Not a `make bench` result file."""


def load(path: Path) -> dict[str, Any]:
    """A result file, checked enough that the comparison cannot fail on it later."""
    try:
        report = json.loads(path.read_text())
    except OSError as error:
        raise BadResult(f"{path}: {error.strerror or error}") from None
    except ValueError as error:
        raise BadResult(f"{path}: not JSON ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("comparisons"), list):
        raise BadResult(f"{path}: not a `make bench` result (no comparisons)")
    for row in report["comparisons"]:
        if not isinstance(row, dict) or not {"operation", "concurrency", "cost_ratio"} <= set(row):
            raise BadResult(f"{path}: a comparison without operation, concurrency, cost_ratio")
    return report


@dataclass(frozen=True)
class Verdict:
    operation: str
    concurrency: int
    old: tuple[float, float, float]  # ratio, lowest round, highest round
    new: tuple[float, float, float]
    rounds: tuple[int, int]
    # "worse", "better", "same" (within the spread), "no spread", "too few rounds"
    judgement: str

    @property
    def chance(self) -> float:
        """Probability of this verdict's disjoint intervals if nothing changed."""
        return 1 / math.comb(sum(self.rounds), self.rounds[1])


def _interval(row: dict[str, Any]) -> tuple[float, float, float] | None:
    spread = row.get("ratio_spread")
    if not spread or int(row.get("rounds", 0)) < 2:
        return None  # a result from before spreads were recorded, or one round
    return float(row["cost_ratio"]), float(spread[0]), float(spread[1])


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The ratios of a result: vs the floor, and the HTTP layer vs in-process."""
    http = report.get("http_vs_in_process")
    return [*report["comparisons"], *(http if isinstance(http, list) else [])]


def judge(old: dict[str, Any], new: dict[str, Any]) -> list[Verdict]:
    """One verdict per operation x concurrency present in both results."""
    before = {(row["operation"], row["concurrency"]): row for row in _rows(old)}
    verdicts = []
    for row in _rows(new):
        key = (row["operation"], row["concurrency"])
        if key not in before:
            continue
        was, now = _interval(before[key]), _interval(row)
        rounds = (int(before[key].get("rounds", 0)), int(row.get("rounds", 0)))
        if was is None or now is None:
            point_was = (float(before[key]["cost_ratio"]),) * 3
            point_now = (float(row["cost_ratio"]),) * 3
            verdicts.append(Verdict(*key, was or point_was, now or point_now, rounds, "no spread"))
            continue
        if 1 / math.comb(sum(rounds), rounds[1]) > MAX_CHANCE:
            judgement = "too few rounds"
        elif now[1] > was[2]:
            judgement = "worse"
        elif now[2] < was[1]:
            judgement = "better"
        else:
            judgement = "same"
        verdicts.append(Verdict(*key, was, now, rounds, judgement))
    return verdicts


def regressions(verdicts: list[Verdict]) -> list[Verdict]:
    return [verdict for verdict in verdicts if verdict.judgement == "worse"]


def format_verdicts(verdicts: list[Verdict], old_name: str, new_name: str) -> str:
    header = (
        f"{'operation':<34} {'conc':>4} {'before [min-max]':>17} {'now [min-max]':>17} "
        f"{'change':>7}  verdict"
    )
    lines = [f"cost ratios: {old_name} -> {new_name}", header, "-" * len(header)]
    for verdict in verdicts:
        was, now = verdict.old, verdict.new
        label = {
            "worse": "WORSE (every round above the old spread)",
            "better": "better (every round below the old spread)",
            "same": "within the spread",
            "no spread": "not judged (a side has no per-round spread)",
            "too few rounds": f"not judged (rounds {verdict.rounds[0]} vs {verdict.rounds[1]}: "
            f"chance 1/{math.comb(sum(verdict.rounds), verdict.rounds[1])})",
        }[verdict.judgement]
        lines.append(
            f"{verdict.operation:<34} {verdict.concurrency:>4} "
            f"{f'{was[0]:.2f} [{was[1]:.2f}-{was[2]:.2f}]':>17} "
            f"{f'{now[0]:.2f} [{now[1]:.2f}-{now[2]:.2f}]':>17} "
            f"{now[0] - was[0]:>+7.2f}  {label}"
        )
    judged = [v for v in verdicts if v.judgement not in ("no spread", "too few rounds")]
    if judged:
        chance = max(verdict.chance for verdict in judged)
        lines.append(
            f"{len(regressions(verdicts))} worse of {len(judged)} judged; by chance alone each "
            f"flag has probability <= {chance:.2g} (rounds {judged[0].rounds[0]} vs "
            f"{judged[0].rounds[1]})"
        )
    else:
        lines.append(
            "nothing judged: no ratio in both results with a spread and enough rounds "
            f"(chance <= 1/{round(1 / MAX_CHANCE)}, e.g. 7 rounds each)"
        )
    return "\n".join(lines)


def warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences that make the two results less comparable (not errors)."""
    found = []
    for field in ("through", "sizes"):
        if old.get(field) != new.get(field):
            found.append(f"{field} differ: {old.get(field)} vs {new.get(field)}")
    if old.get("smoke") or new.get("smoke"):
        found.append("a smoke run (--quick) is compared: too few rounds to judge its ratios")
    return found


QUEUE_SIDES = (("drain_in_process", "in-process"), ("drain_http", "over HTTP"))


def queue_lines(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The queue drain's figures of both results, listed and not judged (module docstring)."""
    lines = []
    for side, label in QUEUE_SIDES:
        rows = [(report.get("queue") or {}).get(side) for report in (old, new)]
        if not any(isinstance(row, dict) for row in rows):
            continue
        was, now = (
            f"{row['runs_per_second']} runs/s, claim p99 {row['claim_p99_ms']} ms"
            if isinstance(row, dict) else "-"
            for row in rows
        )  # fmt: skip
        lines.append(f"queue drain {label}: {was} -> {now} (not judged: one drain, no spread)")
    return lines


def report(old: dict[str, Any], new: dict[str, Any], old_name: str, new_name: str) -> int:
    """Print the comparison; 1 when a ratio got worse beyond the spread, else 0."""
    for warning in warnings(old, new):
        print(f"note: {warning}")
    verdicts = judge(old, new)
    print(format_verdicts(verdicts, old_name, new_name))
    for line in queue_lines(old, new):
        print(line)
    return 1 if regressions(verdicts) else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("old", type=Path, help="the earlier result (JSON)")
    parser.add_argument("new", type=Path, help="the later result (JSON)")
    args = parser.parse_args(argv)
    try:
        old, new = load(args.old), load(args.new)
    except BadResult as error:
        print(error, file=sys.stderr)
        return 2
    return report(old, new, args.old.name, args.new.name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
