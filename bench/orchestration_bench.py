"""Comparison 5: a debate's first round, both models at once on their own workers, against the slower one alone.

The front reports each DAG step as an SSE comment (`: step debate.r1.m0 started on
<model>`); the round's wall time is its first `started` to its last `finished`, as the
client sees them. The stream is closed once round 1 is over: that cancels the DAG, so
later rounds do not hold the workers into the next measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import redis

from bench import loadgen
from bench.config import BenchConfig
from bench.cpu import CpuUse, combined, unskewed, wait_for_quiet
from bench.metrics import RequestRecord
from bench.procs import clean_prefix, start_front, start_worker
from bench.prompts import DEBATE_PROMPTS, chat_body
from worker.keys import Keys

_STEP = re.compile(r"^: step (debate\.r1\.m\d+) (started|finished) on (\S+)")


@dataclass(kw_only=True)
class DebateRound:
    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def wall_ms(self) -> float:
        return (max(self.finished.values()) - min(self.started.values())) * 1000

    def step_ms(self, model: str) -> float:
        step = next(name for name, m in self.models.items() if m == model)
        return (self.finished[step] - self.started[step]) * 1000


@dataclass(kw_only=True)
class OrchestrationResults:
    solo_ms: dict[str, list[float]]
    rounds: list[DebateRound]
    cpu: CpuUse | None = None

    @property
    def slower(self) -> str:
        return max(self.solo_ms, key=lambda m: statistics.median(self.solo_ms[m]))

    @property
    def round_ms(self) -> float:
        return statistics.median(r.wall_ms for r in self.rounds)

    @property
    def ratio(self) -> float:
        return self.round_ms / statistics.median(self.solo_ms[self.slower])


async def _debate_round(http: aiohttp.ClientSession, url: str, cfg: BenchConfig, question: str) -> DebateRound:
    body = chat_body("auto", question, max_tokens=cfg.max_tokens, orchestration_mode="debate")
    found = DebateRound()
    participants = len(cfg.debate_models)
    async with http.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            found.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
            return found
        async for at, line in loadgen.sse_lines(response):
            match = _STEP.match(line.decode())
            if match is None:
                continue
            step, state, model = match.groups()
            found.models[step] = model
            (found.started if state == "started" else found.finished)[step] = at
            if len(found.finished) == participants:
                break
    if len(found.finished) < participants:
        found.error = "the stream ended before round 1 finished"
    return found


async def _wait_idle(cfg: BenchConfig, *, timeout_s: float = 60) -> None:
    """Until no worker runs a step of the cancelled debate (its later rounds stop on the cancel)."""
    keys = Keys(prefix=cfg.prefix)
    client = redis.Redis.from_url(cfg.redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(client.hlen(keys.running(model)) == 0 for model in cfg.debate_models):
                return
            await asyncio.sleep(0.05)
    finally:
        client.close()


async def _drive(url: str, cfg: BenchConfig, pids: dict[str, int], log: Callable[[str], None]) -> OrchestrationResults:
    chat_url = url + "/v1/chat/completions"
    async with loadgen.client() as http:

        async def flush(models: tuple[str, ...]) -> None:
            # A redo must not find its prompt in the worker's cache: put another one there.
            for model in models:
                warm = await loadgen.stream_chat(http, chat_url, chat_body(model, "Hi.", max_tokens=8))
                if warm.error:
                    raise RuntimeError(f"{model}: warm-up failed: {warm.error}")

        await flush(cfg.debate_models)
        solo: dict[str, list[float]] = {model: [] for model in cfg.debate_models}
        uses = []
        for index in range(cfg.debate_repeats):
            for model in cfg.debate_models:
                body = chat_body(model, debate_prompt(index), max_tokens=cfg.max_tokens)

                async def alone(attempt: int, model: str = model, body: dict[str, object] = body) -> RequestRecord:
                    if attempt > 1:
                        await flush((model,))
                    return await loadgen.stream_chat(http, chat_url, body)

                record, use = await unskewed(alone, pids=pids, what=f"{model} alone", log=log)
                if record.error:
                    raise RuntimeError(f"{model}: {record.error}")
                solo[model].append(record.latency_ms)
                uses.append(use)
        rounds = []
        for index in range(cfg.debate_repeats):

            async def debate(attempt: int, index: int = index) -> DebateRound:
                if attempt > 1:
                    await flush(cfg.debate_models)
                found = await _debate_round(http, url, cfg, debate_prompt(cfg.debate_repeats + index))
                await _wait_idle(cfg)
                return found

            found, use = await unskewed(debate, pids=pids, what="debate round", log=log)
            if found.error:
                raise RuntimeError(f"debate: {found.error}")
            rounds.append(found)
            uses.append(use)
        return OrchestrationResults(solo_ms=solo, rounds=rounds, cpu=combined(uses))


def debate_prompt(index: int) -> str:
    return DEBATE_PROMPTS[index % len(DEBATE_PROMPTS)]


def run(cfg: BenchConfig, *, log: Callable[[str], None] = print) -> OrchestrationResults:
    service = cfg.service()
    wait_for_quiet(log=log)
    log(f"debate round 1 over {', '.join(cfg.debate_models)} ...")
    try:
        with contextlib.ExitStack() as stack:
            front, url = start_front(service)
            stack.callback(front.stop)
            pids = {"front": front.pid}
            for model in cfg.debate_models:
                worker = start_worker(service, model, front_url=url)
                stack.callback(worker.stop)
                pids[model] = worker.pid
            return asyncio.run(_drive(url, cfg, pids, log))
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)
