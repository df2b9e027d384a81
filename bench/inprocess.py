"""The floors: llama-cpp-python called in this process, and the null engine called directly."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.loadgen import completion_tokens
from bench.metrics import RequestRecord


class InProcessLlama:
    """`Llama.create_chat_completion(stream=True)` timed like an HTTP client times a server."""

    def __init__(self, model_path: Path, *, threads: int, n_ctx: int) -> None:
        from worker.llama_params import open_llama

        # The same construction as the worker's engine and llama_cpp.server: the model's own
        # chat template, n_ctx and thread counts as given, the worker's CPU buffer choice
        # (llama.cpp's default crashes on CPUs with AMX) and its flash attention default.
        self._llm = open_llama(
            path=model_path,
            extra_buffers="auto",
            flash_attention="auto",
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def run(self, content: str, *, max_tokens: int) -> RequestRecord:
        record = RequestRecord(sent=time.perf_counter())
        parts: list[str] = []
        finish_reason: str | None = None
        stream: Any = self._llm.create_chat_completion(
            messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0, stream=True
        )
        for chunk in stream:
            choice = chunk["choices"][0]
            text = choice["delta"].get("content")
            if text:
                record.chunk_times.append(time.perf_counter())
                parts.append(text)
            finish_reason = choice.get("finish_reason") or finish_reason
        record.end = time.perf_counter()
        record.text = "".join(parts)
        record.output_tokens = completion_tokens(
            usage=None, finish_reason=finish_reason, max_tokens=max_tokens, chunks=len(parts)
        )
        return record

    def close(self) -> None:
        self._llm.close()


def null_engine_direct_ms(*, calls: int, max_tokens: int, content: str) -> list[float]:
    """Wall time of the worker's null engine alone (prepare + generate), per call."""
    from worker.null_engine import NullEngine
    from worker.protocol import Message, SamplingParams

    engine = NullEngine(model_id="null")
    messages = [Message(role="user", content=content)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, stop=[], seed=None)
    cancel = threading.Event()
    times: list[float] = []
    pieces: list[str] = []

    def emit(piece: str, /, *, index: int = 0, logprobs: object = ()) -> None:
        pieces.append(piece)

    for _ in range(calls):
        pieces.clear()
        started = time.perf_counter()
        prepared = engine.prepare(messages, params)
        engine.generate(prepared, params, cancel=cancel, emit=emit)
        times.append((time.perf_counter() - started) * 1000)
    return times
