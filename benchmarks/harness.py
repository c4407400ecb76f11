"""Timing machinery: run an operation at a concurrency, interleave A/B rounds, take medians.

The machine is noisy (2 shared cores), so absolute numbers mean little. Every
comparison is FlowForge vs the raw-asyncpg floor measured in the same run,
interleaved A, B, B, A, ... over several rounds. Each round pairs one FlowForge
run with the floor run next to it, so each round gives one cost ratio; the
reported ratio is the median of those per-round ratios and its spread is their
lowest and highest (the noise the run itself measured, see benchmarks/compare.py
for how two runs are compared with it).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Operation = Callable[[int], Awaitable[Any]]  # called with a per-call sequence number


@dataclass
class RoundResult:
    operations: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run_round(operation: Operation, concurrency: int, operations: int) -> RoundResult:
    """Run `operations` calls spread over `concurrency` workers; time each call."""
    latencies: list[float] = []
    counter = iter(range(operations))

    async def worker() -> None:
        for sequence in counter:
            started = time.perf_counter()
            await operation(sequence)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RoundResult(operations, time.perf_counter() - started, latencies)


def robust_sd(values: list[float]) -> float:
    """The spread of `values` as a standard deviation, from their median absolute
    deviation (x 1.4826: the sd of normal data). Like the median it reports, one
    round disturbed by a neighbour does not swamp it, as it would stdev."""
    if len(values) < 2:
        return float("nan")
    middle = statistics.median(values)
    return 1.4826 * statistics.median(abs(value - middle) for value in values)


@dataclass
class Comparison:
    name: str
    concurrency: int
    unit: str = "ops/s"
    flowforge: list[RoundResult] = field(default_factory=list)
    floor: list[RoundResult] = field(default_factory=list)
    errors: int = 0

    @staticmethod
    def _summary(rounds: list[RoundResult]) -> dict[str, float]:
        latencies = [latency for result in rounds for latency in result.latencies]
        return {
            "throughput": statistics.median(result.throughput for result in rounds),
            "p50_ms": statistics.median(percentile(r.latencies, 0.50) for r in rounds) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "operations": float(sum(result.operations for result in rounds)),
        }

    def ratios(self) -> list[float]:
        """One cost ratio per round: floor throughput / FlowForge throughput of the
        two runs of that round (adjacent in time, ABBA), so a slow moment of the
        machine weighs on both sides of the same ratio."""
        return [
            theirs.throughput / mine.throughput if mine.throughput else float("inf")
            for mine, theirs in zip(self.flowforge, self.floor, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        ours = self._summary(self.flowforge)
        floor = self._summary(self.floor)
        # Cost ratio: how much more each operation costs through FlowForge than
        # through the floor, from throughput (work per second; at concurrency 1
        # the inverse of mean latency). The median of the per-round ratios, so
        # the ratio and its spread describe the same sample.
        per_round = self.ratios()
        ratio = statistics.median(per_round) if per_round else float("nan")
        return {
            "operation": self.name,
            "concurrency": self.concurrency,
            "unit": self.unit,
            "flowforge": ours,
            "floor": floor,
            "cost_ratio": ratio,
            "ratio_spread": [min(per_round), max(per_round)] if per_round else [ratio, ratio],
            "ratio_rounds": per_round,
            "ratio_sd": robust_sd(per_round),
            "rounds": len(self.flowforge),
            "errors": self.errors,
        }


async def compare(
    name: str,
    flowforge: Operation,
    floor: Operation,
    *,
    concurrency: int,
    operations: int,
    rounds: int,
    warmup: int = 20,
    unit: str = "ops/s",
    per_operation_items: int = 1,
    round_seconds: float = 0.0,
) -> Comparison:
    """Interleave FlowForge and floor rounds (A B B A A B ...) and collect them.

    The order alternates each round (ABBA) so neither side always runs on a
    warmer cache or a quieter neighbour. `per_operation_items` scales
    throughput for batch operations (e.g. rows per COPY call). With
    `round_seconds`, a round makes more than `operations` calls if that is what
    it takes (at the warm-up's pace) to last that long: a round of a tenth of a
    second measures the neighbours' scheduling more than the operation.
    """
    comparison = Comparison(name, concurrency, unit)
    paces = [await run_round(side, min(concurrency, warmup), warmup) for side in (flowforge, floor)]
    if round_seconds:
        fastest = max(pace.throughput for pace in paces)
        operations = max(operations, math.ceil(fastest * round_seconds))
    for index in range(rounds):
        order = [("flowforge", flowforge), ("floor", floor)]
        if index % 2:
            order.reverse()
        for side, operation in order:
            result = await run_round(operation, concurrency, operations)
            if per_operation_items != 1:
                result = RoundResult(
                    result.operations * per_operation_items, result.seconds, result.latencies
                )
            getattr(comparison, side).append(result)
    return comparison


# Two runs agree within +/-AGREEMENT on a ratio (95% of the time) when each
# takes at least rounds_needed(sd) rounds (benchmarks/README.md, "Rounds").
AGREEMENT = 0.1


def rounds_needed(sd: float, agreement: float = AGREEMENT) -> int:
    """Rounds per run so that two runs' median ratios differ by less than
    `agreement` 95% of the time, for per-round ratios of standard deviation `sd`.

    The median of n rounds has a standard error of about 1.253 sd / sqrt(n)
    (normal rounds); the difference of two runs' medians sqrt(2) times that;
    95% of differences lie within 1.96 of those standard errors.
    """
    if not math.isfinite(sd):
        return 0
    return max(1, math.ceil(2 * (1.96 * 1.253 * sd / agreement) ** 2))


def format_ratio(row: dict[str, Any]) -> str:
    low, high = row.get("ratio_spread") or (row["cost_ratio"], row["cost_ratio"])
    return f"{row['cost_ratio']:.2f} [{low:.2f}-{high:.2f}]"


def format_table(summaries: list[dict[str, Any]], *, smoke: bool = False) -> str:
    header = (
        f"{'operation':<34} {'conc':>4} {'FlowForge':>12} {'floor':>12} "
        f"{'p50 ms FF/floor':>17} {'p99 ms FF/floor':>17} {'ratio [min-max]':>17} {'sd':>5} "
        f"{'target':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in summaries:
        ours, floor = row["flowforge"], row["floor"]
        target = row.get("target")
        over = target is not None and row["cost_ratio"] > target
        lines.append(
            f"{row['operation']:<34} {row['concurrency']:>4} "
            f"{ours['throughput']:>10.0f}/s {floor['throughput']:>10.0f}/s "
            f"{ours['p50_ms']:>8.2f}/{floor['p50_ms']:<8.2f} "
            f"{ours['p99_ms']:>8.2f}/{floor['p99_ms']:<8.2f} "
            f"{format_ratio(row):>17} {row.get('ratio_sd', float('nan')):>5.2f} "
            f"{'' if target is None else f'<={target}':>6}{' OVER' if over else ''}"
        )
    rounds = sorted({row["rounds"] for row in summaries})
    lines.append(
        f"ratio: FlowForge cost / floor cost, median of {'/'.join(map(str, rounds))} paired "
        "rounds [lowest-highest round]; sd: their robust standard deviation (1.4826 x MAD)"
    )
    noisy = [row for row in summaries if math.isfinite(row.get("ratio_sd", float("nan")))]
    if noisy:
        worst = max(noisy, key=lambda row: row["ratio_sd"])
        lines.append(
            f"noisiest: {worst['operation']} c={worst['concurrency']} (sd {worst['ratio_sd']:.3f}):"
            f" two runs agree within +/-{AGREEMENT} at >= {rounds_needed(worst['ratio_sd'])} "
            "rounds on this machine now"
        )
    if smoke:
        lines.append(SMOKE_BANNER)
    return "\n".join(lines)


SMOKE_BANNER = (
    "SMOKE RUN (--quick): small data set, few rounds; it shows the benchmark works, "
    "its ratios are not a verdict"
)
