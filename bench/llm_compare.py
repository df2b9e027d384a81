"""Comparisons 1-3: the same prompts on (a) in-process, (b) llama_cpp.server, (c) this service, (d) llama-server.

All systems are started together and warmed up with one request each. The idle-system
run interleaves them, request i going to each system in turn (rotating who goes first),
so that a slow spell of this shared 2-core VM lands on every system alike instead of
on whichever ran during it; only one system ever has work, the others sit idle. The
concurrency and Poisson runs then take each server in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import ceilings, loadgen
from bench.config import BenchConfig
from bench.cpu import CpuMeter, CpuUse, combined, skewed, unskewed, wait_for_quiet
from bench.inprocess import InProcessLlama
from bench.metrics import RequestRecord, RunSummary, summarize
from bench.procs import (
    clean_prefix,
    start_front,
    start_llama_cpp_server,
    start_llama_server,
    start_worker,
)
from bench.prompts import CONCURRENT, HEAD_TO_HEAD, POISSON, SEQUENTIAL, WARMUP_PROMPT, chat_body, prompt

# A system's sender: offset -> (request index -> timed request of prompt offset + index).
SendFor = Callable[[int], loadgen.Send]
# An idle-system round that another process disturbed is redone, at most this many times in all.
ROUND_TRIES = 3


@dataclass(kw_only=True)
class SystemRuns:
    key: str
    label: str
    sequential: RunSummary | None = None
    concurrent: RunSummary | None = None
    poisson: RunSummary | None = None
    poisson_rate: float | None = None
    # The idle-system run's requests in prompt order: paired with (a)'s for the overheads,
    # and their texts show whether every system decodes the same tokens.
    records: list[RequestRecord] = field(default_factory=list)
    # One request at a time, in the same phase as the concurrent run (for the scaling ratio).
    one_at_a_time: RunSummary | None = None
    skipped: str | None = None
    cpu_sequential: CpuUse | None = None
    cpu_load: CpuUse | None = None


@dataclass(kw_only=True)
class LlmResults:
    systems: dict[str, SystemRuns]
    libllama_batched: dict[int, float]
    # The same with llama.cpp's plain attention kernel (INFERENCE_FLASH_ATTENTION=off).
    libllama_batched_plain: dict[int, float] = field(default_factory=dict)
    batched_bench: dict[int, float] | None = None
    llama_bench_tg: float | None = None
    # Where the worker keeps the plain weight layout (AMX CPUs): llama-bench with llama.cpp's repacked one.
    llama_bench_tg_repacked: float | None = None
    # Output tok/s at `concurrency` streams of (c4b) and (d), per round of alternating blocks.
    head_to_head: list[tuple[float, float]] = field(default_factory=list)
    tools_note: str = ""


@dataclass(frozen=True, kw_only=True)
class Contender:
    key: str
    label: str
    # Builds the sender once the shared HTTP client exists.
    make: Callable[[aiohttp.ClientSession], SendFor]
    pids: Mapping[str, int]
    # (a) is a library call: no concurrency or Poisson runs for it.
    server: bool = True


def http_contender(
    key: str, label: str, url: str, cfg: BenchConfig, *, pids: Mapping[str, int], usage: bool, **extra: object
) -> Contender:
    def make(http: aiohttp.ClientSession) -> SendFor:
        def send_for(offset: int) -> loadgen.Send:
            def body(index: int) -> dict[str, Any]:
                content = WARMUP_PROMPT if offset < 0 else prompt(offset + index)
                return chat_body(cfg.model, content, max_tokens=cfg.max_tokens, usage=usage, **extra)

            return loadgen.http_sender(http, url + "/v1/chat/completions", body)

        return send_for

    return Contender(key=key, label=label, make=make, pids=pids)


def in_process_contender(llm: InProcessLlama, cfg: BenchConfig) -> Contender:
    def make(_: aiohttp.ClientSession) -> SendFor:
        def send_for(offset: int) -> loadgen.Send:
            async def send(index: int) -> RequestRecord:
                content = WARMUP_PROMPT if offset < 0 else prompt(offset + index)
                # Timed inside the thread: the hop into it is not part of the floor.
                return await asyncio.to_thread(llm.run, content, max_tokens=cfg.max_tokens)

            return send

        return send_for

    return Contender(key="a", label="(a) llama-cpp-python in-process", make=make, pids={}, server=False)


async def _timed(send: loadgen.Send, index: int, pids: Mapping[str, int]) -> tuple[RequestRecord, CpuUse]:
    meter = CpuMeter(pids)
    found = await send(index)
    return found, meter.stop()


async def measure(contenders: list[Contender], cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, SystemRuns]:
    results = {c.key: SystemRuns(key=c.key, label=c.label) for c in contenders}
    async with loadgen.client() as http:
        senders = {c.key: c.make(http) for c in contenders}
        for c in contenders:
            warm = await senders[c.key](-1)(0)
            if warm.error:
                raise RuntimeError(f"{c.label}: warm-up request failed: {warm.error}")
        wait_for_quiet(log=log)
        log(
            f"idle system: {cfg.sequential} requests to each of {', '.join(c.key for c in contenders)}, interleaved ..."
        )
        records: dict[str, list[RequestRecord]] = {c.key: [] for c in contenders}
        cpu: dict[str, list[CpuUse]] = {c.key: [] for c in contenders}
        sequential = {c.key: senders[c.key](SEQUENTIAL) for c in contenders}
        for index in range(cfg.sequential):
            turn = index % len(contenders)
            for attempt in range(1, ROUND_TRIES + 1):
                found = {
                    c.key: await _timed(sequential[c.key], index, c.pids) for c in contenders[turn:] + contenders[:turn]
                }
                if attempt == ROUND_TRIES or not any(skewed(use) for _, use in found.values()):
                    break
                log(f"  round {index}: other processes were busy; redoing it when the machine is quiet")
                wait_for_quiet(log=log)
                # Each server still holds this prompt in its cache: replace it, or the redo skips the prefill.
                for c in contenders:
                    await senders[c.key](-1)(0)
            for key, (record, use) in found.items():
                records[key].append(record)
                cpu[key].append(use)
        for c in contenders:
            results[c.key].sequential = summarize(records[c.key], serial=True)
            results[c.key].records = records[c.key]
            results[c.key].cpu_sequential = combined(cpu[c.key])
        floor = results["a"].sequential if "a" in results else None
        rate = cfg.poisson_rate or (0.6 * floor.requests_per_s if floor and floor.ok else 0.5)
        for c in contenders:
            if c.server:
                wait_for_quiet(log=log)
                log(f"{c.label}: {cfg.concurrency} concurrent, then Poisson at {rate:.2f} req/s ...")
                await _load(results[c.key], senders[c.key], c.pids, cfg, poisson_rate=rate, log=log)
    return results


async def _load(
    result: SystemRuns,
    send_for: SendFor,
    pids: Mapping[str, int],
    cfg: BenchConfig,
    *,
    poisson_rate: float | None,
    log: Callable[[str], None],
) -> None:
    """1 and `concurrency` requests at a time in alternating halves, then Poisson arrivals.

    The scaling ratio compares two runs; taking them in alternating blocks of the same
    phase keeps a drift of the machine's speed between phases out of it.
    """

    async def blocks(_: int) -> None:
        await _blocks(result, send_for, cfg)

    _, result.cpu_load = await unskewed(blocks, pids=pids, what=f"{result.label} concurrency blocks", log=log)
    if poisson_rate:

        async def arrivals(_: int) -> loadgen.Run:
            return await loadgen.poisson(
                send_for(POISSON), rate=poisson_rate, requests=cfg.poisson_requests, seed=cfg.seed
            )

        run, _ = await unskewed(arrivals, pids=pids, what=f"{result.label} Poisson run", log=log)
        result.poisson = summarize(run.records)
        result.poisson_rate = poisson_rate


async def _blocks(result: SystemRuns, send_for: SendFor, cfg: BenchConfig) -> None:
    ones: list[RequestRecord] = []
    manys: list[RequestRecord] = []
    one_s = many_s = 0.0
    half_one, half_many = max(cfg.concurrent_requests // 4, 1), max(cfg.concurrent_requests // 2, 1)
    for block in range(2):
        run = await loadgen.fixed_concurrency(
            _shifted(send_for(CONCURRENT), block * half_one), requests=half_one, concurrency=1
        )
        ones += run.records
        one_s += summarize(run.records).duration_s
        run = await loadgen.fixed_concurrency(
            _shifted(send_for(CONCURRENT), 2 * half_one + block * half_many),
            requests=half_many,
            concurrency=cfg.concurrency,
        )
        manys += run.records
        many_s += summarize(run.records).duration_s
    result.one_at_a_time = summarize(ones, duration_s=one_s)
    result.concurrent = summarize(manys, duration_s=many_s)


def _shifted(send: loadgen.Send, by: int) -> loadgen.Send:
    """Request i sends prompt i + by: each block gets prompts no other block sent."""

    async def shifted(index: int) -> RequestRecord:
        return await send(index + by)

    return shifted


def _start_all(
    stack: contextlib.ExitStack, cfg: BenchConfig, model_path: Path, tools: ceilings.LlamaTools | None
) -> list[Contender]:
    """(a), (b), (c) and, where its binary exists, (d): each registered on `stack` to be stopped."""
    llm = InProcessLlama(model_path, threads=cfg.threads, n_ctx=cfg.n_ctx)
    stack.callback(llm.close)
    contenders = [in_process_contender(llm, cfg)]
    server, url = start_llama_cpp_server(model_path, threads=cfg.threads, n_ctx=cfg.n_ctx, log_dir=cfg.log_dir)
    stack.callback(server.stop)
    # It sends no usage chunk (tokens are counted from finish_reason there), and its requests
    # default to repeat_penalty 1.1 where create_chat_completion and the others use 1.0.
    contenders.append(
        http_contender(
            "b", "(b) llama_cpp.server", url, cfg, pids={"server": server.pid}, usage=False, repeat_penalty=1.0
        )
    )
    service = cfg.service()
    stack.callback(clean_prefix, cfg.redis_url, cfg.prefix)
    front, url = start_front(service)
    stack.callback(front.stop)
    worker = start_worker(service, cfg.model, front_url=url)
    stack.callback(worker.stop)
    pids = {"front": front.pid, "worker": worker.pid}
    contenders.append(http_contender("c", "(c) this service", url, cfg, pids=pids, usage=True))
    if tools is not None:
        contenders.append(_start_llama_server(stack, cfg=cfg, model_path=model_path, tools=tools))
    return contenders


def _start_llama_server(
    stack: contextlib.ExitStack, *, cfg: BenchConfig, model_path: Path, tools: ceilings.LlamaTools
) -> Contender:
    server, url = start_llama_server(
        tools.server,
        model_path,
        threads=cfg.threads,
        n_ctx=cfg.n_ctx,
        slots=cfg.concurrency,
        log_dir=cfg.log_dir,
        repack=ceilings.repack_weights(),
    )
    stack.callback(server.stop)
    label = f"(d) llama-server -np {cfg.concurrency}" + ("" if ceilings.repack_weights() else " --no-repack")
    return http_contender("d", label, url, cfg, pids={"server": server.pid}, usage=True)


def four_slots(
    cfg: BenchConfig,
    log: Callable[[str], None],
    *,
    batching: bool,
    rival: Callable[[contextlib.ExitStack], Contender] | None = None,
) -> tuple[SystemRuns, list[tuple[float, float]]]:
    """The service with one worker running `concurrency` jobs: batched in one context, or one engine each.

    With a `rival` (llama-server), also the head-to-head rounds against it (see `head_to_head`).
    """
    service = cfg.service()
    extra = {"INFERENCE_MAX_CONCURRENT_PER_MODEL": str(cfg.concurrency), "INFERENCE_BATCHING": str(batching).lower()}
    if batching:
        result = SystemRuns(key="c4b", label=f"(c) this service, {cfg.concurrency} batched slots")
    else:
        result = SystemRuns(key="c4", label=f"(c) this service, {cfg.concurrency} engines, no batching")
    rounds: list[tuple[float, float]] = []
    try:
        with contextlib.ExitStack() as stack:
            front, url = start_front(service, **extra)
            stack.callback(front.stop)
            worker = start_worker(service, cfg.model, front_url=url, **extra)
            stack.callback(worker.stop)
            contender = http_contender(
                result.key, result.label, url, cfg, pids={"front": front.pid, "worker": worker.pid}, usage=True
            )
            other = rival(stack) if rival is not None else None

            async def drive() -> None:
                async with loadgen.client() as http:
                    send_for = contender.make(http)
                    await send_for(-1)(0)
                    wait_for_quiet(log=log)
                    log(f"{result.label}: {cfg.concurrency} concurrent ...")
                    await _load(result, send_for, contender.pids, cfg, poisson_rate=None, log=log)
                    if other is not None:
                        theirs = other.make(http)
                        await theirs(-1)(0)
                        wait_for_quiet(log=log)
                        log(f"{result.label} and {other.label}: alternating blocks of {cfg.concurrency} concurrent ...")
                        rounds.extend(await head_to_head(send_for, theirs, cfg))

            asyncio.run(drive())
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)
    return result, rounds


HEAD_TO_HEAD_ROUNDS = 4


async def head_to_head(ours: SendFor, theirs: SendFor, cfg: BenchConfig) -> list[tuple[float, float]]:
    """Output tok/s at `concurrency` streams of two systems, in blocks that alternate, the first rotating.

    Measured one after the other, minutes apart, the two runs fall on different spells of a
    shared machine's speed; each round here puts both systems in the same minute, and both
    read the same prompts, fresh to either's cache.
    """
    per_block = 3 * cfg.concurrency
    rounds: list[tuple[float, float]] = []
    for index in range(HEAD_TO_HEAD_ROUNDS):
        offset = HEAD_TO_HEAD + index * per_block
        rates: dict[str, float] = {}
        order = [("ours", ours), ("theirs", theirs)]
        for name, send_for in order[index % 2 :] + order[: index % 2]:
            run = await loadgen.fixed_concurrency(send_for(offset), requests=per_block, concurrency=cfg.concurrency)
            rates[name] = summarize(run.records).tokens_per_s
        rounds.append((rates["ours"], rates["theirs"]))
    return rounds


def run(cfg: BenchConfig, model_path: Path, *, log: Callable[[str], None] = print) -> LlmResults:
    tools = ceilings.LlamaTools.find()
    if tools is None:
        log(ceilings.SKIP_LINE)
    log("starting (a) in-process, (b) llama_cpp.server, (c) front + worker" + (", (d) llama-server" if tools else ""))
    with contextlib.ExitStack() as stack:
        contenders = _start_all(stack, cfg, model_path, tools)
        systems = asyncio.run(measure(contenders, cfg, log))
    results = LlmResults(systems=systems, libllama_batched={})
    rival = functools.partial(_start_llama_server, cfg=cfg, model_path=model_path, tools=tools) if tools else None
    systems["c4b"], results.head_to_head = four_slots(cfg, log, batching=True, rival=rival)
    if cfg.four_engines:
        systems["c4"], _ = four_slots(cfg, log, batching=False)
    sequences = (1, cfg.concurrency)
    if tools is None:
        results.tools_note = ceilings.SKIP_LINE
        systems["d"] = SystemRuns(key="d", label=f"(d) llama-server -np {cfg.concurrency}", skipped=ceilings.SKIP_LINE)
    else:
        wait_for_quiet(log=log)
        log("llama-batched-bench and llama-bench ...")
        results.batched_bench = ceilings.run_batched_bench(
            tools, model_path, threads=cfg.threads, sequences=sequences, prompt=32, generate=cfg.max_tokens
        )
        results.llama_bench_tg = ceilings.run_llama_bench(
            tools, model_path, threads=cfg.threads, generate=cfg.max_tokens
        )
        if not ceilings.repack_weights():
            # What the layout the worker cannot use here would give, for reference.
            results.llama_bench_tg_repacked = ceilings.run_llama_bench(
                tools, model_path, threads=cfg.threads, generate=cfg.max_tokens, repack=True
            )
    wait_for_quiet(log=log)
    log("libllama batched decode (llama-batched-bench's method, in-process) ...")
    results.libllama_batched = ceilings.libllama_batched_decode(
        model_path, threads=cfg.threads, sequences=sequences, prompt=32, generate=cfg.max_tokens
    )
    results.libllama_batched_plain = ceilings.libllama_batched_decode(
        model_path, threads=cfg.threads, sequences=sequences, prompt=32, generate=cfg.max_tokens,
        flash_attention="off",
    )  # fmt: skip
    return results
