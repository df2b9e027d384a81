"""Comparison 4: what the path front -> Redis -> worker -> pub/sub -> SSE costs, with a model that costs nothing.

The worker runs the null engine (INFERENCE_BACKEND=null), which answers at once, so
every millisecond of latency here is the service's own: HTTP, the queue, the worker's
job handling, pub/sub and the SSE relay. The null engine called directly is the floor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench import loadgen
from bench.config import BenchConfig
from bench.cpu import CpuUse, unskewed, wait_for_quiet
from bench.inprocess import null_engine_direct_ms
from bench.metrics import RunSummary, Spread, summarize
from bench.procs import clean_prefix, running, start_front, start_worker
from bench.prompts import chat_body

# Sixteen words: the null engine echoes them, one word per "token".
NULL_PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


# The service's own processes, whose CPU per request goal 4's budget covers.
SERVICE_PARTS = ("front", "worker", "redis")
CPU_PER_REQUEST_GOAL_MS = 1.5


@dataclass(frozen=True, kw_only=True)
class NullLoad:
    label: str
    offered_rate: float | None
    summary: RunSummary
    cpu: CpuUse

    def cpu_ms_per_request(self) -> dict[str, float]:
        """Milliseconds of CPU each process spent per request over the phase ("service": the sum of
        front, worker and Redis)."""
        requests = max(self.summary.ok + self.summary.failed, 1)
        spent = {name: cores * self.cpu.wall_s * 1000 / requests for name, cores in self.cpu.cores.items()}
        spent["service"] = sum(spent.get(name, 0.0) for name in SERVICE_PARTS)
        return spent


@dataclass(frozen=True, kw_only=True)
class QueueResults:
    direct: Spread
    loads: list[NullLoad]


async def _drive(url: str, cfg: BenchConfig, pids: Mapping[str, int], log: Callable[[str], None]) -> list[NullLoad]:
    async with loadgen.client(timeout_s=60) as http:

        def body(_: int) -> dict[str, Any]:
            return chat_body(cfg.model, NULL_PROMPT, max_tokens=cfg.null_max_tokens)

        send = loadgen.http_sender(http, url + "/v1/chat/completions", body)
        # Warm-up: connections, the worker's first jobs, the front's first routes.
        await loadgen.fixed_concurrency(send, requests=20, concurrency=1)
        loads = []

        async def one_at_a_time(_: int) -> loadgen.Run:
            return await loadgen.fixed_concurrency(send, requests=cfg.null_sequential, concurrency=1)

        run, use = await unskewed(one_at_a_time, pids=pids, what="null path, sequential", log=log)
        loads.append(NullLoad(label="sequential (idle)", offered_rate=None, summary=summarize(run.records), cpu=use))
        for rate in cfg.null_rates:
            log(f"  Poisson {rate:g} req/s for {cfg.null_seconds:g}s ...")

            async def arrivals(_: int, rate: float = rate) -> loadgen.Run:
                requests = max(int(rate * cfg.null_seconds), 1)
                return await loadgen.poisson(send, rate=rate, requests=requests, seed=cfg.seed)

            run, use = await unskewed(arrivals, pids=pids, what=f"null path, Poisson {rate:g}/s", log=log)
            summary = summarize(run.records)
            loads.append(NullLoad(label=f"Poisson {rate:g}/s", offered_rate=rate, summary=summary, cpu=use))
        return loads


def run(cfg: BenchConfig, *, log: Callable[[str], None] = print) -> QueueResults:
    direct = Spread.of(null_engine_direct_ms(calls=2000, max_tokens=cfg.null_max_tokens, content=NULL_PROMPT))
    service = cfg.service()
    wait_for_quiet(log=log)
    log("null worker: sequential, then Poisson ...")
    front, url = start_front(service)
    try:
        with running(front):
            worker = start_worker(service, cfg.model, front_url=url, INFERENCE_BACKEND="null")
            with running(worker):
                loads = asyncio.run(_drive(url, cfg, {"front": front.pid, "worker": worker.pid}, log))
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)
    return QueueResults(direct=direct, loads=loads)
