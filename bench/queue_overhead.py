"""Comparison 4: what the path front -> Redis -> worker -> pub/sub -> SSE costs, with a model that costs nothing.

The worker runs the null engine (INFERENCE_BACKEND=null), which answers at once, so
every millisecond of latency here is the service's own: HTTP, the queue, the worker's
job handling, pub/sub and the SSE relay. The null engine called directly is the floor.

It runs twice side by side: the front and worker on the run's Redis over TCP, and another
pair on a private redis-server reached over a Unix socket (INFERENCE_REDIS_URL=unix://...).
The sequential phase alternates blocks between the two, so that a change in the machine's
speed during the run falls on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from bench import loadgen
from bench.config import BenchConfig
from bench.cpu import CpuUse, combined, unskewed, wait_for_quiet
from bench.inprocess import null_engine_direct_ms
from bench.metrics import RequestRecord, RunSummary, Spread, summarize
from bench.procs import clean_prefix, running, start_front, start_socket_redis, start_worker
from bench.prompts import chat_body

# Sixteen words: the null engine echoes them, one word per "token".
NULL_PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


# The service's own processes, whose CPU per request goal 4's budget covers.
SERVICE_PARTS = ("front", "worker", "redis")
CPU_PER_REQUEST_GOAL_MS = 1.5
TCP = "TCP"
UNIX_SOCKET = "a Unix socket"
# Turns each transport takes in the sequential phase.
_SEQUENTIAL_BLOCKS = 4


@dataclass(frozen=True, kw_only=True)
class NullLoad:
    label: str
    offered_rate: float | None
    summary: RunSummary
    cpu: CpuUse
    # How the front and the worker reach Redis: TCP or UNIX_SOCKET.
    transport: str = TCP

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


@dataclass(frozen=True, kw_only=True)
class _Path:
    transport: str
    url: str
    pids: Mapping[str, int]


async def _sequential(paths: list[_Path], send_for: Mapping[str, loadgen.Send], cfg: BenchConfig,
                      log: Callable[[str], None]) -> list[NullLoad]:  # fmt: skip
    per_block = max(cfg.null_sequential // _SEQUENTIAL_BLOCKS, 1)
    records: dict[str, list[RequestRecord]] = {path.transport: [] for path in paths}
    uses: dict[str, list[CpuUse]] = {path.transport: [] for path in paths}
    # The blocks of one transport are not back to back: its rate counts only its own blocks.
    busy_s: dict[str, float] = {path.transport: 0.0 for path in paths}
    for block in range(_SEQUENTIAL_BLOCKS):
        # ABBA: neither transport always goes first.
        for path in paths if block % 2 == 0 else paths[::-1]:

            async def one_at_a_time(_: int, send: loadgen.Send = send_for[path.transport]) -> loadgen.Run:
                return await loadgen.fixed_concurrency(send, requests=per_block, concurrency=1)

            what = f"null path over {path.transport}, sequential"
            run, use = await unskewed(one_at_a_time, pids=path.pids, what=what, log=log)
            records[path.transport] += run.records
            uses[path.transport].append(use)
            busy_s[path.transport] += summarize(run.records).duration_s
    return [
        NullLoad(
            label=f"sequential (idle), Redis over {path.transport}",
            offered_rate=None,
            summary=summarize(records[path.transport], duration_s=busy_s[path.transport]),
            cpu=combined(uses[path.transport]),
            transport=path.transport,
        )
        for path in paths
    ]


async def _drive(paths: list[_Path], cfg: BenchConfig, log: Callable[[str], None]) -> list[NullLoad]:
    async with loadgen.client(timeout_s=60) as http:

        def body(_: int) -> dict[str, Any]:
            return chat_body(cfg.model, NULL_PROMPT, max_tokens=cfg.null_max_tokens)

        send_for = {p.transport: loadgen.http_sender(http, p.url + "/v1/chat/completions", body) for p in paths}
        for send in send_for.values():
            # Warm-up: connections, the worker's first jobs, the front's first routes.
            await loadgen.fixed_concurrency(send, requests=20, concurrency=1)
        loads = await _sequential(paths, send_for, cfg, log)
        for rate in cfg.null_rates:
            for path in paths:
                log(f"  Poisson {rate:g} req/s for {cfg.null_seconds:g}s, Redis over {path.transport} ...")

                async def arrivals(
                    _: int, rate: float = rate, send: loadgen.Send = send_for[path.transport]
                ) -> loadgen.Run:
                    requests = max(int(rate * cfg.null_seconds), 1)
                    return await loadgen.poisson(send, rate=rate, requests=requests, seed=cfg.seed)

                what = f"null path over {path.transport}, Poisson {rate:g}/s"
                run, use = await unskewed(arrivals, pids=path.pids, what=what, log=log)
                loads.append(
                    NullLoad(
                        label=f"Poisson {rate:g}/s, Redis over {path.transport}",
                        offered_rate=rate,
                        summary=summarize(run.records),
                        cpu=use,
                        transport=path.transport,
                    )
                )
        return loads


def run(cfg: BenchConfig, *, log: Callable[[str], None] = print) -> QueueResults:
    direct = Spread.of(null_engine_direct_ms(calls=2000, max_tokens=cfg.null_max_tokens, content=NULL_PROMPT))
    service = cfg.service()
    wait_for_quiet(log=log)
    log("null worker over TCP and over a Unix socket: sequential, then Poisson ...")
    paths: list[_Path] = []
    try:
        with ExitStack() as stack:
            redis_server, socket_url = start_socket_redis(log_dir=cfg.log_dir)
            stack.enter_context(running(redis_server))
            for transport, config in ((TCP, service), (UNIX_SOCKET, replace(service, redis_url=socket_url))):
                tag = "" if transport == TCP else "-socket"
                front, url = start_front(config, name=f"front{tag}")
                stack.enter_context(running(front))
                worker = start_worker(
                    config, cfg.model, front_url=url, name=f"worker-null{tag}", INFERENCE_BACKEND="null"
                )
                stack.enter_context(running(worker))
                paths.append(_Path(transport=transport, url=url, pids={"front": front.pid, "worker": worker.pid}))
            loads = asyncio.run(_drive(paths, cfg, log))
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)
    return QueueResults(direct=direct, loads=loads)
