"""Timing machinery: run an operation at a concurrency, interleave A/B rounds, take medians.

The machine is noisy (2 shared cores), so absolute numbers mean little. Every
comparison is FlowForge vs the raw-asyncpg floor measured in the same run,
interleaved A, B, A, B, ... over several rounds, reporting the median of the
per-round figures and the cost ratio of the medians.
"""

from __future__ import annotations

import asyncio
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

    def summary(self) -> dict[str, Any]:
        ours = self._summary(self.flowforge)
        floor = self._summary(self.floor)
        # Cost ratio: how much more each operation costs through FlowForge than
        # through the floor. From throughput (work per second), which at
        # concurrency 1 is the inverse of mean latency.
        ratio = floor["throughput"] / ours["throughput"] if ours["throughput"] else float("inf")
        # The spread: each round's ratio (rounds are paired, ABBA), min and max.
        per_round = [
            theirs.throughput / mine.throughput if mine.throughput else float("inf")
            for mine, theirs in zip(self.flowforge, self.floor, strict=True)
        ]
        return {
            "operation": self.name,
            "concurrency": self.concurrency,
            "unit": self.unit,
            "flowforge": ours,
            "floor": floor,
            "cost_ratio": ratio,
            "ratio_spread": (min(per_round), max(per_round)) if per_round else (ratio, ratio),
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
) -> Comparison:
    """Interleave FlowForge and floor rounds (A B B A A B ...) and collect them.

    The order alternates each round (ABBA) so neither side always runs on a
    warmer cache or a quieter neighbour. `per_operation_items` scales
    throughput for batch operations (e.g. rows per COPY call).
    """
    comparison = Comparison(name, concurrency, unit)
    await run_round(flowforge, min(concurrency, warmup), warmup)
    await run_round(floor, min(concurrency, warmup), warmup)
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


def format_table(summaries: list[dict[str, Any]]) -> str:
    header = (
        f"{'operation':<34} {'conc':>4} {'FlowForge':>12} {'floor':>12} "
        f"{'p50 ms FF/floor':>17} {'p99 ms FF/floor':>17} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in summaries:
        ours, floor = row["flowforge"], row["floor"]
        lines.append(
            f"{row['operation']:<34} {row['concurrency']:>4} "
            f"{ours['throughput']:>10.0f}/s {floor['throughput']:>10.0f}/s "
            f"{ours['p50_ms']:>8.2f}/{floor['p50_ms']:<8.2f} "
            f"{ours['p99_ms']:>8.2f}/{floor['p99_ms']:<8.2f} "
            f"{row['cost_ratio']:>6.2f}"
        )
    return "\n".join(lines)
