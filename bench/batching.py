"""Continuous batching, measured on the engine itself (no queue, no HTTP), all in one run:

- output tok/s with `concurrency` streams ÷ one stream, beside llama.cpp's batched-decode
  ceiling measured in the same run;
- process RSS with the model loaded and `concurrency` streams run: 1 slot, N slots, and
  N one-context engines (the worker before batching);
- TPOT of one stream, per prompt, against llama-cpp-python's `Llama` in the same process;
- the TTFT a cached shared prefix (a long system prompt) saves.

    .venv/bin/python -m bench.batching [--quick]   # this section alone, about 3 minutes (--quick: 1)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ceilings
from bench.config import BenchConfig
from bench.cpu import wait_for_quiet
from bench.inprocess import InProcessLlama
from bench.metrics import RequestRecord, Spread, markdown_table, paired_tpot_ratios, ratio
from bench.procs import ROOT
from bench.prompts import CONCURRENT, SEQUENTIAL, WARMUP_PROMPT, prompt

# A system prompt long enough (~500 tokens) that reading it shows in the TTFT.
_SYSTEM = " ".join(
    f"Rule {i}: answer questions about shipment {i} politely, cite the tracking number, and never guess a date."
    for i in range(1, 21)
)
PREFIX_ROUNDS = 8
# Other engineers' jobs share this machine: wait this long for quiet, then measure anyway.
QUIET_WAIT_S = 120.0


@dataclass(kw_only=True)
class BatchingResults:
    concurrency: int
    ceiling: dict[int, float]
    ceiling_ratios: list[float] = field(default_factory=list)
    one_stream_tok_s: float = math.nan
    concurrent_tok_s: float = math.nan
    # Per round: tok/s with `concurrency` streams ÷ with one, measured next to each other.
    round_ratios: list[float] = field(default_factory=list)
    # label -> {"rss_mb", "peak_mb"} of a process that loaded the engine(s) and ran a round.
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    tpot_ratios: list[float] = field(default_factory=list)
    tpot_engine_ms: float = math.nan
    tpot_llama_ms: float = math.nan
    ttft_cold_ms: list[float] = field(default_factory=list)
    ttft_warm_ms: list[float] = field(default_factory=list)
    prefill_cold_tokens: float = math.nan
    prefill_warm_tokens: float = math.nan

    @property
    def scaling(self) -> float:
        """The median round's ratio: robust to the machine's speed drifting between rounds."""
        return Spread.of(self.round_ratios).p50 if self.round_ratios else math.nan

    @property
    def ceiling_scaling(self) -> float:
        return Spread.of(self.ceiling_ratios).p50 if self.ceiling_ratios else math.nan

    def memory_ratio(self, label: str) -> float:
        one = self.memory.get("1 slot", {}).get("rss_mb", math.nan)
        return ratio(self.memory.get(label, {}).get("rss_mb", math.nan), one)


def open_engine(model_path: Path, *, slots: int, threads: int, n_ctx: int, kv_cache: str = "split") -> Any:
    from worker.batched_engine import BatchedLlamaEngine

    return BatchedLlamaEngine(
        model_id="bench", path=model_path, n_ctx=n_ctx, slots=slots, n_threads=threads, gpu_layers=0,
        kv_cache=kv_cache,
    )  # fmt: skip


def stream(engine: Any, content: str, *, max_tokens: int, system: str | None = None) -> RequestRecord:
    """One request through prepare + generate, timed like a client times a stream."""
    from worker.protocol import Message, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    messages = [Message("system", system)] if system else []
    record = RequestRecord(sent=time.perf_counter())
    parts: list[str] = []

    def emit(piece: str, /, *, index: int = 0, logprobs: object = ()) -> None:
        record.chunk_times.append(time.perf_counter())
        parts.append(piece)

    outcome = engine.generate(engine.prepare([*messages, Message("user", content)], params), params,
                              cancel=threading.Event(), emit=emit)  # fmt: skip
    record.end = time.perf_counter()
    record.text = "".join(parts)
    record.output_tokens = outcome.completion_tokens
    return record


def scaling(engine: Any, cfg: BenchConfig) -> tuple[float, float, list[float]]:
    """Output tok/s one stream at a time and `concurrency` at a time, in short alternating rounds.

    Each round runs 2 requests one after the other and `concurrency` at once, next to each
    other, so a busy spell of this shared machine lands on both sides of that round's ratio.
    """
    n = cfg.concurrency
    tokens = {1: 0, n: 0}
    seconds = {1: 0.0, n: 0.0}
    ratios: list[float] = []
    offset = CONCURRENT
    for round_index in range(max(cfg.concurrent_requests // n, 2)):
        rate: dict[int, float] = {}
        for width in (1, n) if round_index % 2 == 0 else (n, 1):
            count = 2 if width == 1 else n
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=width) as pool:
                records = list(pool.map(lambda i: stream(engine, prompt(i), max_tokens=cfg.max_tokens),
                                        range(offset, offset + count)))  # fmt: skip
            spent = time.perf_counter() - started
            made = sum(r.output_tokens for r in records)
            seconds[width] += spent
            tokens[width] += made
            rate[width] = made / spent
            offset += count
        ratios.append(rate[n] / rate[1])
    return tokens[1] / seconds[1], tokens[n] / seconds[n], ratios


def ceiling(model_path: Path, cfg: BenchConfig, *, tries: int = 3) -> tuple[dict[int, float], list[float]]:
    """llama.cpp's batched decode, `tries` times: the run with the median ratio, and every ratio."""
    runs = [
        ceilings.libllama_batched_decode(
            model_path, threads=cfg.threads, sequences=(1, cfg.concurrency), prompt=32, generate=cfg.max_tokens
        )
        for _ in range(tries)
    ]
    runs.sort(key=lambda found: ratio(found[cfg.concurrency], found[1]))
    return runs[len(runs) // 2], [ratio(found[cfg.concurrency], found[1]) for found in runs]


def tpot_against_llama(engine: Any, model_path: Path, cfg: BenchConfig) -> tuple[list[float], float, float]:
    """Per prompt, engine TPOT ÷ `Llama.create_chat_completion` TPOT, the two sent back to back."""
    llm = InProcessLlama(model_path, threads=cfg.threads, n_ctx=cfg.n_ctx)
    try:
        llm.run(WARMUP_PROMPT, max_tokens=cfg.max_tokens)
        base: list[RequestRecord] = []
        ours: list[RequestRecord] = []
        for i in range(cfg.sequential):
            content = prompt(SEQUENTIAL + i)
            if i % 2:
                ours.append(stream(engine, content, max_tokens=cfg.max_tokens))
                base.append(llm.run(content, max_tokens=cfg.max_tokens))
            else:
                base.append(llm.run(content, max_tokens=cfg.max_tokens))
                ours.append(stream(engine, content, max_tokens=cfg.max_tokens))
    finally:
        llm.close()

    def p50(records: list[RequestRecord]) -> float:
        return Spread.of([t for r in records if (t := r.tpot_ms) is not None]).p50

    return paired_tpot_ratios(base, ours), p50(ours), p50(base)


def prefix_reuse(engine: Any) -> tuple[list[float], list[float], float, float]:
    """TTFT with the system prompt cached in a free slot (warm) and not (cold), alternating."""
    cold: list[float] = []
    warm: list[float] = []
    prefilled: dict[str, list[int]] = {"cold": [], "warm": []}
    stream(engine, "Hello.", max_tokens=2, system=_SYSTEM)
    for i in range(PREFIX_ROUNDS):
        question = prompt(i)
        for kind in ("cold", "warm"):
            # A different first word makes the cold prompt share only the template's opening.
            system = _SYSTEM if kind == "warm" else f"Session {i}. {_SYSTEM}"
            before = engine.prefilled_tokens
            record = stream(engine, question, max_tokens=4, system=system)
            prefilled[kind].append(engine.prefilled_tokens - before)
            (warm if kind == "warm" else cold).append(record.ttft_ms)
    mean = {k: sum(v) / len(v) for k, v in prefilled.items()}
    return cold, warm, mean["cold"], mean["warm"]


def memory(model_path: Path, cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Each configuration in a fresh process: what the worker holds with it."""
    found: dict[str, dict[str, float]] = {}
    n = cfg.concurrency
    configurations = (
        ("1 slot", 1, 0, "split"), (f"{n} slots", n, 0, "split"),
        (f"{n} slots, one pool of cells (INFERENCE_KV_CACHE=shared)", n, 0, "shared"),
        (f"{n} slots, a whole window per slot (INFERENCE_KV_CACHE=per_slot)", n, 0, "per_slot"),
        (f"{n} engines, no batching", 1, n, "split"),
    )  # fmt: skip
    for label, slots, engines, kv in configurations:
        argv = [sys.executable, "-m", "bench.batching", "--rss-probe", str(model_path), "--slots", str(slots),
                "--engines", str(engines), "--width", str(n), "--threads", str(cfg.threads),
                "--n-ctx", str(cfg.n_ctx), "--kv", kv]  # fmt: skip
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
        found[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def _probe(
    model_path: Path, *, slots: int, engines: int, width: int, threads: int, n_ctx: int, kv_cache: str
) -> dict[str, float]:
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    if engines:
        from worker.engine import LlamaEngine

        loaded = [LlamaEngine(model_id="bench", path=model_path, n_ctx=n_ctx, n_threads=threads, gpu_layers=0)
                  for _ in range(engines)]  # fmt: skip
    else:
        loaded = [open_engine(model_path, slots=slots, threads=threads, n_ctx=n_ctx, kv_cache=kv_cache)] * width
    with ThreadPoolExecutor(max_workers=width) as pool:
        list(pool.map(lambda i: stream(loaded[i], prompt(i), max_tokens=16), range(width)))
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_mb": int(status["VmHWM"].split()[0]) / 1024}


def run(cfg: BenchConfig, model_path: Path, *, log: Callable[[str], None] = print) -> BatchingResults:
    results = BatchingResults(concurrency=cfg.concurrency, ceiling={})
    log("batching: process memory with 1 slot, N slots, N engines ...")
    results.memory = memory(model_path, cfg)
    engine = open_engine(model_path, slots=cfg.concurrency, threads=cfg.threads, n_ctx=cfg.n_ctx)
    try:
        stream(engine, WARMUP_PROMPT, max_tokens=cfg.max_tokens)
        wait_for_quiet(max_wait_s=QUIET_WAIT_S, log=log)
        log(f"batching: engine output tok/s at 1 and {cfg.concurrency} streams ...")
        results.one_stream_tok_s, results.concurrent_tok_s, results.round_ratios = scaling(engine, cfg)
        wait_for_quiet(max_wait_s=QUIET_WAIT_S, log=log)
        log("batching: TPOT against llama-cpp-python in-process ...")
        results.tpot_ratios, results.tpot_engine_ms, results.tpot_llama_ms = tpot_against_llama(engine, model_path, cfg)
        wait_for_quiet(max_wait_s=QUIET_WAIT_S, log=log)
        log("batching: prefix reuse TTFT ...")
        cold, warm, results.prefill_cold_tokens, results.prefill_warm_tokens = prefix_reuse(engine)
        results.ttft_cold_ms, results.ttft_warm_ms = cold, warm
    finally:
        engine.close()
    wait_for_quiet(max_wait_s=QUIET_WAIT_S, log=log)
    log("batching: libllama batched-decode ceiling ...")
    results.ceiling, results.ceiling_ratios = ceiling(model_path, cfg)
    return results


def goal_rows(found: BatchingResults) -> list[list[object]]:
    n = found.concurrency
    target = 0.9 * found.ceiling_scaling
    mem = found.memory_ratio(f"{n} slots")
    tpot = Spread.of(found.tpot_ratios)
    saved = Spread.of(found.ttft_cold_ms).p50 - Spread.of(found.ttft_warm_ms).p50
    status = {True: "**met**", False: "**missed**"}
    return [
        ["B1", f"engine output tok/s {n} streams ÷ 1", f"{found.scaling:.2f} (ceiling {found.ceiling_scaling:.2f})",
         f"≥ 0.9 × ceiling = {target:.2f}", status[found.scaling >= target]],
        ["B2", f"process RSS {n} slots ÷ 1 slot", f"{mem:.2f}", "≤ 1.3", status[mem <= 1.3]],
        ["B3", "TPOT one stream, engine ÷ Llama in-process", f"median per prompt {tpot.p50:.3f}", "≤ 1.05",
         status[tpot.p50 <= 1.05]],
        ["B4", "TTFT saved by a cached ~500-token system prompt", f"{saved:.1f} ms (p50 cold − p50 warm)",
         "(measure)", "–"],
    ]  # fmt: skip


def render(found: BatchingResults) -> list[str]:
    n = found.concurrency
    memory_rows = [[label, f"{m['rss_mb']:.0f}", f"{m['peak_mb']:.0f}", f"{found.memory_ratio(label):.2f}"]
                   for label, m in found.memory.items()]  # fmt: skip
    cold, warm = Spread.of(found.ttft_cold_ms), Spread.of(found.ttft_warm_ms)
    return [
        f"## 6. Continuous batching, on the engine ({n} slots, one llama.cpp context, split KV cache)",
        "",
        markdown_table(
            ["what", "@1", f"@{n}", "ratio"],
            [
                [
                    "BatchedLlamaEngine output tok/s",
                    f"{found.one_stream_tok_s:.1f}",
                    f"{found.concurrent_tok_s:.1f}",
                    f"{found.scaling:.2f}",
                ],
                [
                    "libllama batched decode tok/s (ceiling, decode only)",
                    f"{found.ceiling.get(1, math.nan):.1f}",
                    f"{found.ceiling.get(n, math.nan):.1f}",
                    f"{found.ceiling_scaling:.2f}",
                ],
            ],
        ),
        "",
        "Ratio: the engine's is the median over rounds, each round timing 2 requests one after the other "
        f"and {n} at once next to each other (each round: {' '.join(f'{r:.2f}' for r in found.round_ratios)}); "
        "the tok/s columns are totals over all rounds. The ceiling's is the median of "
        f"{len(found.ceiling_ratios)} runs ({' '.join(f'{r:.2f}' for r in found.ceiling_ratios)}), "
        "its tok/s those of the median run; it decodes without prompts, the engine's requests read theirs.",
        "",
        f"Memory of a process that loaded the model and ran {n} streams at once:",
        "",
        markdown_table(["configuration", "RSS MB", "peak MB", "÷ 1 slot"], memory_rows),
        "",
        f"One stream: TPOT p50 {found.tpot_engine_ms:.2f} ms (engine) vs {found.tpot_llama_ms:.2f} ms "
        f"(`Llama` in-process); per-prompt ratio p50/p95 {Spread.of(found.tpot_ratios).text(3)}.",
        "",
        f"Prefix reuse ({PREFIX_ROUNDS} rounds, cold and warm alternating): TTFT p50/p95 cold {cold.text()} ms, "
        f"warm {warm.text()} ms; prompt tokens decoded per request cold {found.prefill_cold_tokens:.0f}, "
        f"warm {found.prefill_warm_tokens:.0f}.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rss-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kv", choices=("split", "shared", "per_slot"), default="split", help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--engines", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--n-ctx", type=int, default=4096, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.rss_probe:
        found = _probe(args.rss_probe, slots=args.slots, engines=args.engines, width=args.width,
                       threads=args.threads, n_ctx=args.n_ctx, kv_cache=args.kv)  # fmt: skip
        print(json.dumps(found))
        return 0
    from bench.run_all import config_from, parse_args
    from presets.embedded import resolve_embedded

    # The rest are run_all's options (--quick, --max-tokens, ...).
    cfg = config_from(parse_args([*rest, "--only", "batching"]))
    from bench.report import load_average, machine

    print(f"load average before: {load_average()}; " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    results = run(cfg, resolve_embedded(cfg.model, models_dir=cfg.models_dir))
    print(markdown_table(["#", "what", "measured", "goal", "status"], goal_rows(results)))
    print("\n".join(render(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
