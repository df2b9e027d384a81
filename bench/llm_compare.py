"""Comparisons 1-3: the same prompts on (a) in-process, (b) llama_cpp.server, (c) this service, (d) llama-server.

Each system is started alone, warmed up with one request, then driven sequentially,
at fixed concurrency and with Poisson arrivals, and stopped before the next one starts:
on 2 cores, anything else running would be measured too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ceilings, loadgen
from bench.config import BenchConfig
from bench.inprocess import InProcessLlama
from bench.metrics import RequestRecord, RunSummary, summarize
from bench.procs import (
    clean_prefix,
    running,
    start_front,
    start_llama_cpp_server,
    start_llama_server,
    start_worker,
)
from bench.prompts import CONCURRENT, POISSON, SEQUENTIAL, WARMUP_PROMPT, chat_body, prompt


@dataclass(kw_only=True)
class SystemRuns:
    key: str
    label: str
    sequential: RunSummary | None = None
    concurrent: RunSummary | None = None
    poisson: RunSummary | None = None
    poisson_rate: float | None = None
    # Answers of the sequential run, to check that every system decodes the same tokens.
    texts: list[str] = field(default_factory=list)
    skipped: str | None = None


@dataclass(kw_only=True)
class LlmResults:
    systems: dict[str, SystemRuns]
    libllama_batched: dict[int, float]
    batched_bench: dict[int, float] | None = None
    llama_bench_tg: float | None = None
    tools_note: str = ""


async def _drive(
    key: str,
    label: str,
    send_for: Callable[[int], loadgen.Send],
    cfg: BenchConfig,
    *,
    sequential: bool = True,
    concurrent: bool = True,
    poisson_rate: float | None = None,
) -> SystemRuns:
    """Warm-up, then the load phases; `send_for(offset)` sends prompt offset+i for request i."""
    result = SystemRuns(key=key, label=label)
    warm = await send_for(-1)(0)
    if warm.error:
        raise RuntimeError(f"{label}: warm-up request failed: {warm.error}")
    if sequential:
        run = await loadgen.fixed_concurrency(send_for(SEQUENTIAL), requests=cfg.sequential, concurrency=1)
        result.sequential = summarize(run.records)
        result.texts = [r.text for r in run.records]  # one user: in prompt order
    if concurrent:
        run = await loadgen.fixed_concurrency(
            send_for(CONCURRENT), requests=cfg.concurrent_requests, concurrency=cfg.concurrency
        )
        result.concurrent = summarize(run.records)
    if poisson_rate:
        run = await loadgen.poisson(send_for(POISSON), rate=poisson_rate, requests=cfg.poisson_requests, seed=cfg.seed)
        result.poisson = summarize(run.records)
        result.poisson_rate = poisson_rate
    return result


def _http_send_for(http: Any, url: str, model: str, cfg: BenchConfig, *, usage: bool) -> Callable[[int], loadgen.Send]:
    def send_for(offset: int) -> loadgen.Send:
        def body(index: int) -> dict[str, Any]:
            content = WARMUP_PROMPT if offset < 0 else prompt(offset + index)
            return chat_body(model, content, max_tokens=cfg.max_tokens, usage=usage)

        return loadgen.http_sender(http, url + "/v1/chat/completions", body)

    return send_for


async def _drive_http(
    key: str,
    label: str,
    url: str,
    cfg: BenchConfig,
    *,
    usage: bool,
    poisson_rate: float | None,
    sequential: bool = True,
) -> SystemRuns:
    async with loadgen.client() as http:
        send_for = _http_send_for(http, url, cfg.model, cfg, usage=usage)
        return await _drive(key, label, send_for, cfg, sequential=sequential, poisson_rate=poisson_rate)


def in_process(cfg: BenchConfig, model_path: Path) -> SystemRuns:
    llm = InProcessLlama(model_path, threads=cfg.threads, n_ctx=cfg.n_ctx)
    try:

        def send_for(offset: int) -> loadgen.Send:
            async def send(index: int) -> RequestRecord:
                content = WARMUP_PROMPT if offset < 0 else prompt(offset + index)
                return await asyncio.to_thread(llm.run, content, max_tokens=cfg.max_tokens)

            return send

        label = "(a) llama-cpp-python in-process"
        return asyncio.run(_drive("a", label, send_for, cfg, concurrent=False))
    finally:
        llm.close()


def llama_cpp_server(cfg: BenchConfig, model_path: Path, *, poisson_rate: float | None) -> SystemRuns:
    server, url = start_llama_cpp_server(model_path, threads=cfg.threads, n_ctx=cfg.n_ctx, log_dir=cfg.log_dir)
    with running(server):
        # No usage chunk there: it ignores stream_options (tokens are counted from finish_reason).
        return asyncio.run(_drive_http("b", "(b) llama_cpp.server", url, cfg, usage=False, poisson_rate=poisson_rate))


def this_service(
    cfg: BenchConfig, *, poisson_rate: float | None, engines: int = 1, sequential: bool = True
) -> SystemRuns:
    service = cfg.service()
    extra = {"INFERENCE_MAX_CONCURRENT_PER_MODEL": str(engines)}
    front, url = start_front(service, **extra)
    try:
        with running(front):
            worker = start_worker(service, cfg.model, front_url=url, **extra)
            with running(worker):
                key, label = (
                    ("c", "(c) this service") if engines == 1 else ("c4", f"(c) this service, {engines} engines")
                )
                return asyncio.run(
                    _drive_http(key, label, url, cfg, usage=True, poisson_rate=poisson_rate, sequential=sequential)
                )
    finally:
        clean_prefix(cfg.redis_url, cfg.prefix)


def llama_server(
    cfg: BenchConfig, tools: ceilings.LlamaTools, model_path: Path, *, poisson_rate: float | None
) -> SystemRuns:
    server, url = start_llama_server(
        tools.server, model_path, threads=cfg.threads, n_ctx=cfg.n_ctx, slots=cfg.concurrency, log_dir=cfg.log_dir
    )
    with running(server):
        label = f"(d) llama-server -np {cfg.concurrency}"
        return asyncio.run(_drive_http("d", label, url, cfg, usage=True, poisson_rate=poisson_rate))


def run(cfg: BenchConfig, model_path: Path, *, log: Callable[[str], None] = print) -> LlmResults:
    systems: dict[str, SystemRuns] = {}
    log("(a) llama-cpp-python in-process ...")
    systems["a"] = in_process(cfg, model_path)
    floor = systems["a"].sequential
    poisson_rate = cfg.poisson_rate or (0.6 * floor.requests_per_s if floor else 0.5)
    log(f"(b) llama_cpp.server ... (Poisson at {poisson_rate:.2f} req/s)")
    systems["b"] = llama_cpp_server(cfg, model_path, poisson_rate=poisson_rate)
    log("(c) this service ...")
    systems["c"] = this_service(cfg, poisson_rate=poisson_rate)
    if cfg.four_engines:
        log(f"(c) this service with {cfg.concurrency} engines ...")
        systems["c4"] = this_service(cfg, poisson_rate=None, engines=cfg.concurrency, sequential=False)
    results = LlmResults(systems=systems, libllama_batched={})
    tools = ceilings.LlamaTools.find()
    sequences = (1, cfg.concurrency)
    if tools is None:
        log(ceilings.SKIP_LINE)
        results.tools_note = ceilings.SKIP_LINE
        systems["d"] = SystemRuns(key="d", label=f"(d) llama-server -np {cfg.concurrency}", skipped=ceilings.SKIP_LINE)
    else:
        log(f"(d) llama-server from {tools.server} ...")
        systems["d"] = llama_server(cfg, tools, model_path, poisson_rate=poisson_rate)
        results.batched_bench = ceilings.run_batched_bench(
            tools, model_path, threads=cfg.threads, sequences=sequences, prompt=32, generate=cfg.max_tokens
        )
        results.llama_bench_tg = ceilings.run_llama_bench(
            tools, model_path, threads=cfg.threads, generate=cfg.max_tokens
        )
    log("libllama batched decode (llama-batched-bench's method, in-process) ...")
    results.libllama_batched = ceilings.libllama_batched_decode(
        model_path, threads=cfg.threads, sequences=sequences, prompt=32, generate=cfg.max_tokens
    )
    return results
