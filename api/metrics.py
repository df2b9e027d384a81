"""GET /metrics for the whole fleet, and what a front adds to it.

A front counts its chat requests in memory (a Tally) and adds them to `<prefix>:metrics`
every second; workers add theirs with their heartbeats (worker/metrics.py). A scrape reads
that hash, the queues and the workers from Redis, so any front answers for the fleet and two
fronts answer alike. The Prometheus registry is built per scrape around one snapshot: two
scrapes at once share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from api.errors import ServiceError
from api.queue_view import QueueView
from presets.logs import bind
from worker.keys import Keys
from worker.metrics import (
    E2E,
    GENERATION_TOKENS,
    HISTOGRAMS,
    INF,
    PROMPT_TOKENS,
    REQUESTS,
    SEPARATOR,
    Histogram,
    Tally,
    bucket_text,
    field_name,
)

logger = logging.getLogger(__name__)

_FLUSH_S = 1.0
_NAMESPACE = "inference"
# Requests that failed before a model was chosen (an unknown model, a full service): a
# client's model string is not a label value, it could be anything.
UNROUTED = "none"
CLIENT_CLOSED = 499
WORKER_STATES = ("loading", "ready", "busy", "stopping")


@dataclass(kw_only=True)
class RequestAccount:
    """One chat request on its way through the front: what its metrics and logs say of it."""

    mode: str
    started_s: float = field(default_factory=time.monotonic)
    model: str = UNROUTED
    request_id: str | None = None

    def routed(self, *, request_id: str, model: str) -> None:
        """The request has an id and a model (an orchestrated request's model is its mode)."""
        self.request_id = request_id
        self.model = model
        self.bind()

    def bind(self) -> None:
        """Name the request on the current task's log lines."""
        if self.request_id is not None:
            bind(request_id=self.request_id, model=self.model, started_s=self.started_s)


def status_of(exc: BaseException) -> int:
    """The HTTP status a request that raised this ends with, for its count."""
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CLIENT_CLOSED
    return 500


class FrontMetrics:
    """This front's request counts, flushed to Redis in the background; and the scrape."""

    def __init__(
        self, *, redis: Redis, keys: Keys, queue: QueueView, models: Sequence[str], priority_levels: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._models = list(models)
        self._levels = priority_levels
        self._tally = Tally(keys.metrics)
        self._task: asyncio.Task[None] | None = None

    def account(self, *, mode: str) -> RequestAccount:
        return RequestAccount(mode=mode)

    def finished(self, account: RequestAccount, *, status: int) -> None:
        """Count a request that ended with this HTTP status (499: the client went away)."""
        self._tally.add(field_name(REQUESTS, account.model, account.mode, str(status)))
        if status == 200:
            self._tally.observe(E2E, time.monotonic() - account.started_s, account.model)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="metrics flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 2.0)

    async def flush(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            restore = self._tally.write(pipe)
            try:
                await pipe.execute()
            except BaseException:
                restore()
                raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            try:
                await self.flush()
            except Exception:
                # Redis is away: the counts wait in memory for the next flush.
                logger.debug("flushing metrics failed", exc_info=True)

    async def scrape(self) -> bytes:
        """The fleet's metrics in Prometheus' text format."""
        # This front's own counts first, so a scrape right after a request shows it.
        with contextlib.suppress(Exception):
            await self.flush()
        # redis-py types its commands as sync-or-async; on the asyncio client they are awaitable.
        raw = await cast("Awaitable[dict[bytes, bytes]]", self._redis.hgetall(self._keys.metrics))
        queue = await self._queue.snapshot()
        registry = CollectorRegistry(auto_describe=False)
        collector = FleetCollector(totals=parse_totals(raw), queue=queue, models=self._models, levels=self._levels)
        registry.register(collector)
        return generate_latest(registry)


@dataclass
class Totals:
    """The metrics hash, decoded: counters and histograms by their label values."""

    counters: dict[str, dict[tuple[str, ...], int]] = field(default_factory=dict)
    buckets: dict[str, dict[tuple[str, ...], dict[str, int]]] = field(default_factory=dict)
    sums_s: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)


_COUNTERS = (REQUESTS, PROMPT_TOKENS, GENERATION_TOKENS)
_BY_NAME = {h.name: h for h in HISTOGRAMS}
_BY_SUM = {f"{h.name}_sum_us": h for h in HISTOGRAMS}


def parse_totals(raw: Mapping[bytes, bytes]) -> Totals:
    totals = Totals()
    for key, value in raw.items():
        try:
            parts = key.decode().split(SEPARATOR)
            amount = int(value)
        except ValueError:
            continue
        name, labels = parts[0], tuple(parts[1:])
        if name in _COUNTERS:
            per = totals.counters.setdefault(name, {})
            per[labels] = per.get(labels, 0) + amount
        elif name in _BY_NAME and labels:
            per_bucket = totals.buckets.setdefault(name, {}).setdefault(labels[:-1], {})
            per_bucket[labels[-1]] = per_bucket.get(labels[-1], 0) + amount
        elif name in _BY_SUM:
            sums = totals.sums_s.setdefault(_BY_SUM[name].name, {})
            sums[labels] = sums.get(labels, 0.0) + amount / 1_000_000
    return totals


def cumulative(histogram: Histogram, counts: Mapping[str, int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets from per-bucket counts; +Inf counts every observation."""
    running = 0
    found: list[tuple[str, float]] = []
    for bound_s in histogram.buckets_s:
        running += counts.get(bucket_text(bound_s), 0)
        found.append((bucket_text(bound_s), float(running)))
    found.append((INF, float(sum(counts.values()))))
    return found


class FleetCollector(Collector):
    """The metric families of one snapshot of Redis."""

    def __init__(self, *, totals: Totals, queue: Mapping[str, Any], models: Iterable[str], levels: int) -> None:
        self._totals = totals
        self._queue = queue
        self._models = list(models)
        self._levels = [str(level) for level in range(1, levels + 1)]

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._histograms()
        yield from self._gauges()

    def _counters(self) -> Iterator[Metric]:
        specs = (
            (REQUESTS, "Chat requests by model, orchestration mode and HTTP status.", ["model", "mode", "status"]),
            (PROMPT_TOKENS, "Prompt tokens read by the workers.", ["model"]),
            (GENERATION_TOKENS, "Tokens generated by the workers.", ["model"]),
        )
        for name, text, labels in specs:
            family = CounterMetricFamily(f"{_NAMESPACE}_{name}", text, labels=labels)
            for values, amount in sorted(self._totals.counters.get(name, {}).items()):
                if len(values) == len(labels):
                    family.add_metric(list(values), amount)
            yield family

    def _histograms(self) -> Iterator[Metric]:
        for histogram in HISTOGRAMS:
            family = HistogramMetricFamily(f"{_NAMESPACE}_{histogram.name}", histogram.help, labels=["model"])
            sums = self._totals.sums_s.get(histogram.name, {})
            for values, counts in sorted(self._totals.buckets.get(histogram.name, {}).items()):
                if len(values) == 1:
                    family.add_metric(list(values), cumulative(histogram, counts), sum_value=sums.get(values, 0.0))
            yield family

    def _gauges(self) -> Iterator[Metric]:
        reported: Mapping[str, Any] = self._queue.get("models", {})
        depth = GaugeMetricFamily(
            f"{_NAMESPACE}_queue_depth",
            "Jobs waiting for a worker by model and priority.",
            labels=["model", "priority"],
        )
        running = GaugeMetricFamily(f"{_NAMESPACE}_running_jobs", "Jobs running on workers now.", labels=["model"])
        workers = GaugeMetricFamily(
            f"{_NAMESPACE}_workers", "Live workers by model and state.", labels=["model", "state"]
        )
        for model in self._models:
            entry = reported.get(model, {})
            queued: Mapping[str, int] = entry.get("queued", {})
            # Every level of every model, zeros included: a series that comes and goes graphs badly.
            for level in (*self._levels, *sorted(set(queued) - set(self._levels))):
                depth.add_metric([model, level], queued.get(level, 0))
            running.add_metric([model], entry.get("running", 0))
            states = [w["state"] for w in entry.get("workers", [])]
            for state in (*WORKER_STATES, *sorted(set(states) - set(WORKER_STATES))):
                workers.add_metric([model, state], states.count(state))
        yield depth
        yield running
        yield workers
        yield GaugeMetricFamily(
            f"{_NAMESPACE}_admitted_requests",
            "Requests admitted and not yet finished, over all fronts.",
            value=self._queue.get("admitted", 0),
        )
