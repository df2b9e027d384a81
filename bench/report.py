"""The printed tables and docs/benchmarks.md: the goals first, then each comparison's detail."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version

from bench import ceilings
from bench.batching import BatchingResults
from bench.batching import goal_rows as batching_goal_rows
from bench.batching import render as render_batching
from bench.config import BenchConfig
from bench.cpu import CpuUse
from bench.llm_compare import LlmResults, SystemRuns
from bench.metrics import RunSummary, Spread, markdown_table, paired_tpot_ratios, paired_ttft_overheads, ratio
from bench.orchestration_bench import OrchestrationResults
from bench.procs import ROOT
from bench.queue_overhead import CPU_PER_REQUEST_GOAL_MS, SERVICE_PARTS, QueueResults

TTFT_OVERHEAD_GOAL_MS = 10.0
TPOT_RATIO_GOAL = 1.05
# "Match" llama-server's TPOT: within the margin the TPOT goal gives against in-process.
TPOT_MATCH_GOAL = 1.05
SCALING_GOAL_OF_CEILING = 0.9


@dataclass(kw_only=True)
class Results:
    llm: LlmResults | None = None
    batching: BatchingResults | None = None
    queue: QueueResults | None = None
    orchestration: OrchestrationResults | None = None


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if "model name" in line), ""
    )
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": cpu or platform.processor() or "unknown",
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "Python": platform.python_version(),
        "llama-cpp-python": version("llama_cpp_python"),
        "commit": commit.strip() + (" (with uncommitted changes)" if dirty.strip() else ""),
    }


def load_average() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _status(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def _runs(llm: LlmResults, key: str) -> SystemRuns | None:
    found = llm.systems.get(key)
    return None if found is None or found.skipped else found


def _seq(llm: LlmResults, key: str) -> RunSummary | None:
    found = _runs(llm, key)
    return found.sequential if found else None


def _one_at_a_time(llm: LlmResults, key: str) -> float:
    """Output tok/s one request at a time, taken in the same phase as the concurrent run."""
    runs = _runs(llm, key)
    return runs.one_at_a_time.tokens_per_s if runs and runs.one_at_a_time else math.nan


def _scaling(llm: LlmResults, key: str) -> float:
    runs = _runs(llm, key)
    if runs is None or runs.concurrent is None:
        return math.nan
    return ratio(runs.concurrent.tokens_per_s, _one_at_a_time(llm, key))


def _paired(llm: LlmResults, key: str) -> tuple[Spread, Spread] | None:
    """Per-prompt TTFT differences and TPOT ratios of a system against (a)."""
    base, other = _runs(llm, "a"), _runs(llm, key)
    if base is None or other is None or not base.records or not other.records:
        return None
    return (
        Spread.of(paired_ttft_overheads(base.records, other.records)),
        Spread.of(paired_tpot_ratios(base.records, other.records)),
    )


def _llama_server_rows(llm: LlmResults, cfg: BenchConfig) -> list[list[object]]:
    """The aims against llama.cpp's own server: more tok/s at `concurrency` streams, its TPOT at one."""
    server, batched, service = _runs(llm, "d"), _runs(llm, "c4b"), _seq(llm, "c")
    if server is None or server.sequential is None:
        return []
    rows: list[list[object]] = []
    if batched is not None and batched.concurrent is not None and server.concurrent is not None:
        ours, theirs = batched.concurrent.tokens_per_s, server.concurrent.tokens_per_s
        separate = f"{ratio(ours, theirs):.2f} ({ours:.1f} ÷ {theirs:.1f})"
        if llm.head_to_head:
            # The goal reads the rounds that put both systems in the same minute (llm_compare.head_to_head).
            each = [ratio(a, b) for a, b in llm.head_to_head]
            median = Spread.of(each).p50
            measured = (
                f"{median:.2f}, median of {len(each)} alternating rounds ({' '.join(f'{r:.2f}' for r in each)}); "
                f"runs minutes apart: {separate}"
            )
            met = median > 1
        else:
            measured, met = separate, ours > theirs
        rows.append([
            "3", f"output tok/s at {cfg.concurrency} concurrent, (c4b) ÷ (d)", measured, "> 1 (beat llama-server)",
            _status(met),
        ])  # fmt: skip
    if service is not None:
        of_p50s = ratio(service.tpot.p50, server.sequential.tpot.p50)
        rows.append([
            "2", "TPOT one stream, (c) ÷ (d)", f"ratio of p50s {of_p50s:.3f}",
            f"≤ {TPOT_MATCH_GOAL:g} (match llama-server)", _status(of_p50s <= TPOT_MATCH_GOAL),
        ])  # fmt: skip
    return rows


def head_to_head_lines(llm: LlmResults, cfg: BenchConfig) -> list[str]:
    if not llm.head_to_head:
        return []
    n = cfg.concurrency
    rounds = "; ".join(f"{ours:.1f} vs {theirs:.1f}" for ours, theirs in llm.head_to_head)
    return [
        f"Head to head: (c) with {n} batched slots and (d), {3 * n} requests {n} at a time each in every "
        f"round, the two blocks of a round one after the other (the first alternating), both on the same "
        f"prompts, which neither had seen; output tok/s per round, (c) vs (d): {rounds}.",
        "",
    ]


def goals(results: Results, cfg: BenchConfig) -> str:
    rows: list[list[object]] = []
    llm = results.llm
    if llm is not None:
        a = _seq(llm, "a")
        paired = {key: found for key in ("c", "b", "d") if (found := _paired(llm, key))}
        for key, (ttft, _) in paired.items():
            met = ttft.p50 <= TTFT_OVERHEAD_GOAL_MS if key == "c" else None
            goal = f"≤ {TTFT_OVERHEAD_GOAL_MS:g} ms p50" if key == "c" else "(reference)"
            measured = f"p50 {ttft.p50:+.1f} ms, p95 {ttft.p95:+.1f} ms"
            rows.append(["1", f"TTFT overhead ({key})−(a), idle, per prompt", measured, goal, _status(met)])
        for key, (_, tpot) in paired.items():
            system = _seq(llm, key)
            met = tpot.p50 <= TPOT_RATIO_GOAL if key == "c" else None
            goal = f"≤ {TPOT_RATIO_GOAL:g}" if key == "c" else "(reference)"
            of_p50s = ratio(system.tpot.p50, a.tpot.p50) if system and a else math.nan
            measured = f"median per prompt {tpot.p50:.3f} (ratio of p50s {of_p50s:.3f})"
            rows.append(["2", f"TPOT ({key})÷(a)", measured, goal, _status(met)])
        scalings = ", ".join(
            f"({key}) {_scaling(llm, key):.2f}" for key in ("b", "c", "c4b", "c4", "d") if _runs(llm, key)
        )
        ceiling = ratio(llm.libllama_batched.get(cfg.concurrency, math.nan), llm.libllama_batched.get(1, math.nan))
        # The goal is the batched service's: one worker, `concurrency` slots in one context.
        batched = _scaling(llm, "c4b")
        target = SCALING_GOAL_OF_CEILING * ceiling
        rows.append([
            "3", f"output tok/s at {cfg.concurrency} concurrent ÷ at 1", scalings,
            f"(c4b) ≥ {SCALING_GOAL_OF_CEILING:g} × batched-decode ceiling {ceiling:.2f} = {target:.2f}",
            _status(None if math.isnan(batched) or math.isnan(target) else batched >= target),
        ])  # fmt: skip
        rows += _llama_server_rows(llm, cfg)
    if results.queue is not None:
        for load in results.queue.loads:
            if load.offered_rate is None:
                spent = load.cpu_ms_per_request()
                parts = " + ".join(f"{name} {spent.get(name, 0.0):.2f}" for name in SERVICE_PARTS)
                rows.append([
                    "4", f"CPU per request, null model, {load.label}",
                    f"{spent['service']:.2f} ms ({parts}); load client {spent.get('client', 0.0):.2f} ms",
                    f"≤ {CPU_PER_REQUEST_GOAL_MS:g} ms", _status(spent["service"] <= CPU_PER_REQUEST_GOAL_MS),
                ])  # fmt: skip
                continue
            s = load.summary
            added = (
                f"+{s.latency.p50 - results.queue.direct.p50:.1f} / +{s.latency.p95 - results.queue.direct.p95:.1f} ms"
            )
            rows.append([
                "4", f"null model, Poisson {load.offered_rate:g} req/s, Redis over {load.transport}",
                f"{s.requests_per_s:.0f} req/s served, latency added p50/p95 {added}", "(measure)", "–",
            ])  # fmt: skip
    orch = results.orchestration
    if orch is not None:
        rows.append([
            "5", "debate round 1 wall ÷ slower model alone",
            f"{orch.ratio:.2f} ({_ms(orch.round_ms)} ms ÷ {_ms(statistics.median(orch.solo_ms[orch.slower]))} ms, "
            f"{orch.slower})", "(measure; 1.0 = fully parallel)", "–",
        ])  # fmt: skip
    if results.batching is not None:
        rows += batching_goal_rows(results.batching)
    return markdown_table(["#", "what", "measured", "goal", "status"], rows)


def _spread(summary: RunSummary | None, name: str) -> str:
    if summary is None:
        return "–"
    spread = getattr(summary, name)
    return spread.text() if spread.n else "–"


def _same_text(llm: LlmResults, runs: SystemRuns) -> str:
    floor = [r.text for r in llm.systems["a"].records]
    if not runs.records or not floor or runs.key == "a":
        return "–"
    same = sum(x == y.text for x, y in zip(floor, runs.records, strict=False))
    return f"{same}/{len(runs.records)}"


def latency_table(llm: LlmResults) -> str:
    rows = []
    for runs in llm.systems.values():
        s = runs.sequential
        if runs.skipped:
            rows.append([runs.label, runs.skipped, "", "", "", "", "", ""])
            continue
        if s is None:
            continue
        rows.append([
            runs.label, f"{s.ok}/{s.ok + s.failed}", _spread(s, "ttft"), _spread(s, "tpot"), _spread(s, "itl"),
            _spread(s, "latency"), f"{s.tokens_per_s:.1f}", _same_text(llm, runs),
        ])  # fmt: skip
    headers = ["system", "ok", "TTFT ms p50/p95", "TPOT ms p50/p95", "ITL ms p50/p95/p99", "latency ms p50/p95",
               "out tok/s", "same text as (a)"]  # fmt: skip
    return markdown_table(headers, rows)


def concurrency_table(llm: LlmResults, cfg: BenchConfig) -> str:
    rows: list[list[object]] = []
    for key in ("b", "c", "c4b", "c4", "d"):
        runs = llm.systems.get(key)
        if runs is None:
            continue
        if runs.skipped:
            rows.append([runs.label, "–", "–", "–", runs.skipped, ""])
            continue
        many = runs.concurrent
        rows.append([
            runs.label, f"{_one_at_a_time(llm, key):.1f}", f"{many.tokens_per_s:.1f}" if many else "–",
            f"{_scaling(llm, key):.2f}",
            _spread(many, "ttft"), _spread(many, "tpot"),
        ])  # fmt: skip
    batched = llm.libllama_batched
    rows.append([
        "libllama batched decode (llama-batched-bench's method)", f"{batched.get(1, math.nan):.1f}",
        f"{batched.get(cfg.concurrency, math.nan):.1f}",
        f"{ratio(batched.get(cfg.concurrency, math.nan), batched.get(1, math.nan)):.2f}", "decode only", "",
    ])  # fmt: skip
    plain = llm.libllama_batched_plain
    if plain:
        rows.append([
            "libllama batched decode, flash attention off", f"{plain.get(1, math.nan):.1f}",
            f"{plain.get(cfg.concurrency, math.nan):.1f}",
            f"{ratio(plain.get(cfg.concurrency, math.nan), plain.get(1, math.nan)):.2f}", "decode only", "",
        ])  # fmt: skip
    if llm.batched_bench is not None:
        bb = llm.batched_bench
        rows.append([
            "llama-batched-bench S_TG", f"{bb.get(1, math.nan):.1f}", f"{bb.get(cfg.concurrency, math.nan):.1f}",
            f"{ratio(bb.get(cfg.concurrency, math.nan), bb.get(1, math.nan)):.2f}", "decode only", "",
        ])  # fmt: skip
    if llm.llama_bench_tg is not None:
        rows.append(["llama-bench tg (one sequence)", f"{llm.llama_bench_tg:.1f}", "–", "–", "decode only", ""])
    if llm.llama_bench_tg_repacked is not None:
        rows.append([
            "llama-bench tg, weights repacked (AMX; not the worker's layout)",
            f"{llm.llama_bench_tg_repacked:.1f}", "–", "–", "decode only", "",
        ])  # fmt: skip
    headers = ["system", "tok/s @1", f"tok/s @{cfg.concurrency}", "ratio", f"TTFT ms p50/p95 @{cfg.concurrency}",
               f"TPOT ms p50/p95 @{cfg.concurrency}"]  # fmt: skip
    return markdown_table(headers, rows)


def poisson_table(llm: LlmResults) -> str:
    rows = []
    for runs in llm.systems.values():
        s = runs.poisson
        if s is None:
            continue
        rows.append([
            runs.label, f"{runs.poisson_rate:.2f}", f"{s.requests_per_s:.2f}", f"{s.ok}/{s.ok + s.failed}",
            _spread(s, "ttft"), _spread(s, "tpot"), _spread(s, "latency"), f"{s.tokens_per_s:.1f}",
        ])  # fmt: skip
    headers = ["system", "offered req/s", "served req/s", "ok", "TTFT ms p50/p95", "TPOT ms p50/p95",
               "latency ms p50/p95", "out tok/s"]  # fmt: skip
    return markdown_table(headers, rows)


SKEWED_ABOVE = 0.15


def skewed_phases(results: Results) -> list[str]:
    """Phases during which other processes used a noticeable share of the 2 cores."""
    phases: list[tuple[str, CpuUse | None]] = []
    if results.llm is not None:
        for runs in results.llm.systems.values():
            phases += [(f"{runs.label} idle-system", runs.cpu_sequential), (f"{runs.label} under load", runs.cpu_load)]
    if results.queue is not None:
        phases += [(f"null path {load.label}", load.cpu) for load in results.queue.loads]
    if results.orchestration is not None:
        phases.append(("debate", results.orchestration.cpu))
    return [f"{name} ({use.foreign:.2f} cores)" for name, use in phases if use and use.foreign > SKEWED_ABOVE]


def cpu_lines(results: Results) -> list[str]:
    """Cores each process used per phase; "other processes" over ~0.1 means the numbers are skewed."""
    lines = []
    if results.llm is not None:
        for runs in results.llm.systems.values():
            if runs.cpu_sequential:
                lines.append(f"- {runs.label}, idle-system requests: {runs.cpu_sequential.text()}")
            if runs.cpu_load:
                lines.append(f"- {runs.label}, concurrent + Poisson runs: {runs.cpu_load.text()}")
    if results.queue is not None:
        lines += [f"- null path, {load.label}: {load.cpu.text()}" for load in results.queue.loads]
    if results.orchestration is not None and results.orchestration.cpu is not None:
        lines.append(f"- debate section (solo runs and rounds): {results.orchestration.cpu.text()}")
    return lines


def queue_table(queue: QueueResults) -> str:
    rows = [["null engine called directly", "–", "–", "–", "–", queue.direct.text(3), "–", "–"]]
    for load in queue.loads:
        s = load.summary
        added = f"+{s.latency.p50 - queue.direct.p50:.1f} / +{s.latency.p95 - queue.direct.p95:.1f}"
        rows.append([
            f"front→Redis→worker→SSE, {load.label}", f"{load.offered_rate:g}" if load.offered_rate else "–",
            f"{s.requests_per_s:.1f}", f"{s.ok}/{s.ok + s.failed}", _spread(s, "ttft"), _spread(s, "latency"), added,
            _cpu_cell(load.cpu_ms_per_request()),
        ])  # fmt: skip
    headers = ["path", "offered req/s", "served req/s", "ok", "TTFT ms p50/p95(/p99)", "latency ms p50/p95(/p99)",
               "added ms p50 / p95", "CPU ms/request front / worker / Redis (client)"]  # fmt: skip
    return markdown_table(headers, rows)


def _cpu_cell(spent: dict[str, float]) -> str:
    parts = " / ".join(f"{spent.get(name, 0.0):.2f}" for name in SERVICE_PARTS)
    return f"{parts} ({spent.get('client', 0.0):.2f})"


def orchestration_table(orch: OrchestrationResults) -> str:
    rows: list[list[object]] = []
    for model, times in orch.solo_ms.items():
        rows.append([f"{model} alone (whole request)", _ms(statistics.median(times)), " ".join(_ms(t) for t in times)])
    for model in orch.solo_ms:
        steps = [r.step_ms(model) for r in orch.rounds]
        rows.append([f"{model} in the debate (its r1 step)", _ms(statistics.median(steps)), " ".join(map(_ms, steps))])
    walls = [r.wall_ms for r in orch.rounds]
    rows.append(["debate round 1 (first started → last finished)", _ms(orch.round_ms), " ".join(map(_ms, walls))])
    rows.append([f"ratio round 1 ÷ {orch.slower} alone", f"{orch.ratio:.2f}", ""])
    return markdown_table(["what", "median ms", "each run ms"], rows)


def notes(cfg: BenchConfig) -> Iterator[str]:
    yield (
        "Idle-system requests are interleaved: request i goes to (a), (b), (c) (and (d)) in turn, the first of "
        "them rotating, while the other systems sit idle; so a slow spell of the machine hits every system alike."
    )
    yield (
        f"Every system runs {cfg.model} with {cfg.threads} threads, n_ctx {cfg.n_ctx}, temperature 0 and "
        f"max_tokens {cfg.max_tokens} on the prompts of bench/prompts.py; one warm-up request precedes each "
        "system's runs."
    )
    yield (
        "The load client runs on the same 2 cores as the server it measures (as vLLM's benchmark does on one host): "
        "its CPU per streamed chunk (aiohttp's C parser and msgspec's JSON decoder, a fraction of httpx's) slows (b), "
        "(c) and (d) a little and (a), which has no client, not at all."
    )
    yield (
        "llama_cpp.server runs with `--interrupt_requests False`: its default cancels a running stream whenever "
        "another request arrives. It serves one request at a time behind a lock."
    )
    yield (
        "On 2 cores batching gains less than on a GPU: one decode step already keeps both cores busy, so batching "
        f"{cfg.concurrency} sequences only amortises the weight reads; the batched-decode ceiling row measures how "
        "far that goes on this machine, in this run."
    )
    if not ceilings.repack_weights():
        yield (
            "This CPU has AMX: the worker keeps the weights in their file's layout (llama-cpp-python's llama.cpp "
            "crashes in its AMX kernels), and llama.cpp's own tools run with the same layout (`--no-repack`) so that "
            "(d) and the ceilings measure the same kernels. Their newer llama.cpp's AMX path is the last row of the "
            "concurrency table: what the service would gain once llama-cpp-python ships a llama.cpp with it fixed."
        )
    yield (
        "Queue path: the worker runs INFERENCE_BACKEND=null (an echoing model that costs microseconds), "
        f"max_tokens {cfg.null_max_tokens}; admission control is lifted so overload shows as latency, not 429s."
    )
    yield (
        "Queue path CPU per request is each process's CPU time over the phase divided by its requests. A request "
        "takes 3 Redis round trips from the front (read the fleet; admit and queue in one script; drop the kept "
        "final event and the slot) and 4 from the worker (the queue read, whose script also claims and reads the "
        "job for arq; the running entry; the events with the job's end; arq's finish); each costs ~65-160 µs of "
        "client CPU in redis-py. `python -m bench.trace_path` lists them on one timeline."
    )
    yield (
        "Each run waits for the machine to be quiet; a phase (or an idle-system round) during which other "
        "processes used more than 0.15 cores is redone after a quiet spell, up to 3 tries."
    )
    yield (
        "Goals 1 and 2 pair each request with (a)'s request for the same prompt, sent right before or after it: "
        "the percentiles of those per-prompt differences and ratios are immune to the drift of this VM's speed "
        "over a run, which can reach 20% between phases."
    )
    yield (
        "llama-cpp-python's libggml-cpu is built with OpenMP and ggml's threads spin at every barrier of a decode "
        "step: with 2 threads on 2 cores, any other runnable thread (front, worker event loop, Redis, client) "
        "stalls both threads, so it costs decode time out of proportion to its own CPU."
    )
    yield (
        "Debate: both models' workers run at once on the same 2 cores, each capped at 2 threads; while both "
        "generate, the core share (worker/core_share.py) gives each 1 thread, so neither spins at barriers that "
        "wait for the other's threads; a model alone decodes with 2. The stream is closed after round 1."
    )


TOOLS = (
    "Where the time goes: `.venv/bin/python -m bench.trace_path [--backend llamacpp]` prints one request's "
    "Redis commands on a timeline (front, worker and client on one clock); `.venv/bin/python -m bench.profile "
    "--backend null --rate 200` samples the front and the worker with py-spy under load."
)


def render(
    results: Results, cfg: BenchConfig, *, command: str, started: str, load_before: str, elapsed_s: float
) -> str:
    info = machine()
    out = [
        "# Benchmarks",
        "",
        f"Latest run: {started}, {elapsed_s / 60:.1f} min, load average before it: {load_before}.",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        *(
            [f"**Skewed**: other processes were busy during {', '.join(skewed)}; rerun those numbers.", ""]
            if (skewed := skewed_phases(results))
            else []
        ),
        "## Goals",
        "",
        goals(results, cfg),
        "",
    ]
    if results.llm is not None:
        llm = results.llm
        out += [
            f"## 1-2. Idle latency and decode speed ({cfg.sequential} sequential requests)",
            "",
            latency_table(llm),
            "",
            f"## 3. Concurrency ({cfg.concurrent_requests // 2} requests one at a time and {cfg.concurrent_requests} "
            f"{cfg.concurrency} at a time, in alternating blocks of one phase)",
            "",
            concurrency_table(llm, cfg),
            "",
            *head_to_head_lines(llm, cfg),
            f"Poisson arrivals ({cfg.poisson_requests} requests, same schedule for every system):",
            "",
            poisson_table(llm),
            "",
        ]
        if llm.tools_note:
            out += [f"(d): {llm.tools_note}", ""]
    if results.batching is not None:
        out += render_batching(results.batching)
    if results.queue is not None:
        out += [
            f"## 4. Queue path with the null model ({cfg.null_seconds:g} s per rate)",
            "",
            queue_table(results.queue),
            "",
        ]
    if results.orchestration is not None:
        out += ["## 5. Orchestration: debate round 1", "", orchestration_table(results.orchestration), ""]
    cpu = cpu_lines(results)
    if cpu:
        out += ["## CPU used during each system's runs (cores)", "", *cpu, ""]
    out += ["## Notes", "", *(f"- {line}" for line in notes(cfg)), "", TOOLS, ""]
    return "\n".join(out)
