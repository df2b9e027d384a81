"""Counters and histograms kept in memory and added to one Redis hash in batches.

Every process of the fleet (workers and fronts) counts into the same hash, so a scrape of
any front sees the whole fleet. Nothing goes to Redis per request: a Tally adds in memory
(a dict increment and a bisect per observation) and a flush sends what piled up since the
last one as HINCRBYs in one pipeline; a worker flushes with its heartbeat, a front on a timer.

Fields of `<prefix>:metrics` (the label values joined by "|", model ids have no "|"):
  `<counter>|<labels>`            a counter's total
  `<histogram>|<labels>|<le>`     observations in the bucket that ends at `le` (not cumulative;
                                  "+Inf" for those above the last bound)
  `<histogram>_sum_us|<labels>`   the observations' sum in microseconds
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SEPARATOR = "|"
INF = "+Inf"


@dataclass(frozen=True)
class Histogram:
    name: str
    buckets_s: tuple[float, ...]
    help: str

    def bucket_label(self, value_s: float) -> str:
        index = bisect_left(self.buckets_s, value_s)
        return INF if index == len(self.buckets_s) else bucket_text(self.buckets_s[index])


def bucket_text(bound_s: float) -> str:
    """The `le` label of a bucket bound, written the same way by every process."""
    return repr(float(bound_s))


TTFT = Histogram(
    "time_to_first_token_seconds",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    "From a worker taking the job to its first token.",
)
TPOT = Histogram(
    "time_per_output_token_seconds",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0),
    "Per output token after the first: (end - first token) / (tokens - 1).",
)
E2E = Histogram(
    "e2e_request_latency_seconds",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    "A chat request at the front, from its arrival to its last byte.",
)
HISTOGRAMS = (TTFT, TPOT, E2E)
PROMPT_TOKENS = "prompt_tokens_total"
GENERATION_TOKENS = "generation_tokens_total"
REQUESTS = "requests_total"


def field_name(name: str, *labels: str) -> str:
    return SEPARATOR.join((name, *labels))


class Tally:
    """Increments waiting for the next flush into `<prefix>:metrics`."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._pending: dict[str, int] = {}

    def add(self, field: str, amount: int = 1) -> None:
        self._pending[field] = self._pending.get(field, 0) + amount

    def observe(self, histogram: Histogram, value_s: float, *labels: str) -> None:
        self.add(field_name(histogram.name, *labels, histogram.bucket_label(value_s)))
        self.add(field_name(f"{histogram.name}_sum_us", *labels), round(value_s * 1_000_000))

    def write(self, pipe: Any) -> Callable[[], None]:
        """Queue the pending increments on a Redis pipeline; call the result if it fails."""
        taken, self._pending = self._pending, {}
        for field, amount in taken.items():
            pipe.hincrby(self._key, field, amount)

        def restore() -> None:
            # The pipeline failed (Redis away): the counts go out with a later flush.
            for field, amount in taken.items():
                self.add(field, amount)

        return restore


class WorkerMetrics(Tally):
    """What one worker's jobs add: token counts, time to first token, time per output token."""

    def __init__(self, key: str, *, model: str) -> None:
        super().__init__(key)
        self._model = model
        self._prompt_field = field_name(PROMPT_TOKENS, model)
        self._generation_field = field_name(GENERATION_TOKENS, model)

    def job_done(
        self, *, prompt_tokens: int, completion_tokens: int, started_s: float, first_token_s: float | None, end_s: float
    ) -> None:
        """One generation ended; times are time.monotonic() readings."""
        self.add(self._prompt_field, prompt_tokens)
        self.add(self._generation_field, completion_tokens)
        if first_token_s is None:
            return
        self.observe(TTFT, max(first_token_s - started_s, 0.0), self._model)
        if completion_tokens > 1:
            self.observe(TPOT, max(end_s - first_token_s, 0.0) / (completion_tokens - 1), self._model)
