"""Async load client: OpenAI chat streaming over aiohttp, at fixed concurrency or Poisson arrivals.

The client shares the cores with the server it measures, so its CPU per streamed chunk
slows what it measures: aiohttp (a C HTTP parser) and msgspec's JSON decoder keep that
cost a fraction of httpx's.

A `Send` is "run request number i and time it"; the HTTP one below and the in-process
one (bench.inprocess) share the two load shapes, so every system is driven the same way.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from bench.metrics import RequestRecord

# A coroutine, not any awaitable: Poisson arrivals start each one as its own task.
Send = Callable[[int], Coroutine[Any, Any, RequestRecord]]
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, kw_only=True)
class Run:
    records: list[RequestRecord]
    # Set for Poisson runs: the arrival rate asked for, to print beside the one achieved.
    offered_rate: float | None = None


def client(*, timeout_s: float = 300) -> aiohttp.ClientSession:
    # No pool limit: a Poisson run must never queue requests inside the client, or the
    # client's own queueing would be measured as server latency.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def sse_lines(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, bytes]]:
    """(arrival time, line) for each non-empty SSE line, without its line break."""
    async for raw in response.content:
        line = raw.rstrip(b"\r\n")
        if line:
            yield time.perf_counter(), line


def completion_tokens(*, usage: int | None, finish_reason: str | None, max_tokens: int, chunks: int) -> int:
    """Output tokens of a streamed answer.

    The usage chunk is exact where a server sends one (ours, llama-server). llama-cpp-python
    sends none, but an answer cut at max_tokens has exactly max_tokens tokens; otherwise a
    chunk per token is the best count there is (one may hold back text near a stop string).
    """
    if usage is not None:
        return usage
    if finish_reason == "length":
        return max_tokens
    return chunks


def http_sender(http: aiohttp.ClientSession, url: str, body_for: Callable[[int], dict[str, Any]]) -> Send:
    async def send(index: int) -> RequestRecord:
        return await stream_chat(http, url, body_for(index))

    return send


async def stream_chat(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> RequestRecord:
    record = RequestRecord(sent=time.perf_counter())
    usage: int | None = None
    finish_reason: str | None = None
    parts: list[str] = []
    try:
        async with http.post(url, json=body) as response:
            if response.status != 200:
                detail = (await response.read())[:200].decode(errors="replace")
                record.error = f"HTTP {response.status}: {detail}"
                return record
            async for at, line in sse_lines(response):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = _decode(line[6:])
                if "error" in chunk:
                    record.error = str(chunk["error"])[:200]
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        record.chunk_times.append(at)
                        parts.append(content)
                    finish_reason = choice.get("finish_reason") or finish_reason
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end = time.perf_counter()
    record.text = "".join(parts)
    record.output_tokens = completion_tokens(
        usage=usage, finish_reason=finish_reason, max_tokens=int(body.get("max_tokens") or 0), chunks=len(parts)
    )
    return record


async def fixed_concurrency(send: Send, *, requests: int, concurrency: int) -> Run:
    """`concurrency` clients, each sending its next request as soon as its last one ends."""
    next_index = iter(range(requests))
    records: list[RequestRecord] = []

    async def user() -> None:
        for index in next_index:
            records.append(await send(index))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return Run(records=records)


def poisson_schedule(*, rate: float, requests: int, seed: int) -> list[float]:
    """Send offsets in seconds: exponential gaps, seeded so every system gets the same schedule."""
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(requests):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


async def poisson(send: Send, *, rate: float, requests: int, seed: int = 0) -> Run:
    """Open-loop arrivals: each request goes out at its time whether or not earlier ones ended."""
    start = time.perf_counter()
    tasks: list[asyncio.Task[RequestRecord]] = []
    for index, offset in enumerate(poisson_schedule(rate=rate, requests=requests, seed=seed)):
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(index)))
    return Run(records=list(await asyncio.gather(*tasks)), offered_rate=rate)
