"""Per-request timings and the serving metrics vLLM's benchmark reports, plus table printing.

Times are `time.perf_counter()` seconds; every derived figure is in milliseconds except
throughputs. Definitions (as in vLLM's benchmark_serving):

- TTFT: request sent -> first chunk that carries content (a role-only chunk does not count).
- TPOT: per request, (latency - TTFT) / (output tokens - 1): the decode pace after the first token.
- ITL: every gap between consecutive content chunks, pooled over all requests.
- latency: request sent -> end of the stream.
- output tok/s: all output tokens / wall time from the first send to the last end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class RequestRecord:
    sent: float
    end: float = 0.0
    # Arrival time of each chunk that carried content, in order.
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_times)

    @property
    def ttft_ms(self) -> float:
        return (self.chunk_times[0] - self.sent) * 1000

    @property
    def latency_ms(self) -> float:
        return (self.end - self.sent) * 1000

    @property
    def tpot_ms(self) -> float | None:
        return tpot_ms(latency_ms=self.latency_ms, ttft_ms=self.ttft_ms, output_tokens=self.output_tokens)

    def itls_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


def tpot_ms(*, latency_ms: float, ttft_ms: float, output_tokens: int) -> float | None:
    """None for a one-token answer: it has no decode phase to time."""
    if output_tokens < 2:
        return None
    return (latency_ms - ttft_ms) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p50 of [1, 2] is 1.5."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# A p99 of fewer samples is just the maximum with extra steps: only print it past this.
P99_MIN_SAMPLES = 100


@dataclass(frozen=True, kw_only=True)
class Spread:
    p50: float
    p95: float
    p99: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        p99 = percentile(values, 99) if len(values) >= P99_MIN_SAMPLES else None
        return cls(p50=percentile(values, 50), p95=percentile(values, 95), p99=p99, n=len(values))

    def text(self, digits: int = 1) -> str:
        parts = [f"{self.p50:.{digits}f}", f"{self.p95:.{digits}f}"]
        if self.p99 is not None:
            parts.append(f"{self.p99:.{digits}f}")
        return " / ".join(parts)


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    ok: int
    failed: int
    duration_s: float
    ttft: Spread
    tpot: Spread
    itl: Spread
    latency: Spread
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else math.nan


def summarize(records: Iterable[RequestRecord], *, serial: bool = False, duration_s: float | None = None) -> RunSummary:
    """`serial`: the requests ran one at a time but not back to back (interleaved with other
    systems'), so the run's duration is the sum of their latencies, not first send to last end.
    `duration_s`: the run's duration where the caller knows it (a run taken in blocks)."""
    records = list(records)
    good = [r for r in records if r.ok]
    if duration_s is not None:
        duration = duration_s
    elif serial:
        duration = sum(r.end - r.sent for r in records)
    else:
        # From the first send, failed requests included, to the last successful end.
        duration = max(r.end for r in good) - min(r.sent for r in records) if good else 0.0
    tpots = [t for r in good if (t := r.tpot_ms) is not None]
    return RunSummary(
        ok=len(good),
        failed=len(records) - len(good),
        duration_s=duration,
        ttft=Spread.of([r.ttft_ms for r in good]),
        tpot=Spread.of(tpots),
        itl=Spread.of([gap for r in good for gap in r.itls_ms()]),
        latency=Spread.of([r.latency_ms for r in good]),
        output_tokens=sum(r.output_tokens for r in good),
    )


def paired_ttft_overheads(base: Sequence[RequestRecord], other: Sequence[RequestRecord]) -> list[float]:
    """TTFT of `other` minus `base`, request by request (the same prompt, sent back to back).

    Pairing cancels what both share (the prompt's prefill, a slow spell of the machine),
    which differences of separately taken percentiles do not.
    """
    return [o.ttft_ms - b.ttft_ms for b, o in zip(base, other, strict=True) if b.ok and o.ok]


def paired_tpot_ratios(base: Sequence[RequestRecord], other: Sequence[RequestRecord]) -> list[float]:
    return [
        o_tpot / b_tpot
        for b, o in zip(base, other, strict=True)
        if b.ok and o.ok and (b_tpot := b.tpot_ms) and (o_tpot := o.tpot_ms) is not None
    ]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub table whose columns line up in a terminal too."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return str(value)
