"""INFERENCE_FLASH_ATTENTION reaches the llama.cpp context of both engines (real SmolLM2-135M).

llama.cpp has no getter for a context's attention kernel, but the fused kernel sums in another
order than the plain one: the log probabilities of the same greedy run tell them apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import llama_cpp
import pytest

from presets.settings import FlashAttention
from worker.batched_engine import BatchedLlamaEngine
from worker.engine import LlamaEngine
from worker.llama_params import flash_attn_type
from worker.protocol import Message, SamplingParams, TokenLogprob

pytestmark = pytest.mark.model

MAX_TOKENS = 12
PARAMS = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, top_logprobs=2)
SETTINGS: tuple[FlashAttention, ...] = ("off", "on", "auto")


def test_each_setting_names_its_llama_cpp_type() -> None:
    assert [flash_attn_type(s) for s in SETTINGS] == [
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    ]


def read_logprobs(engine: BatchedLlamaEngine | LlamaEngine) -> list[float]:
    entries: list[TokenLogprob] = []

    def collect(piece: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
        entries.extend(logprobs)

    try:
        prompt = engine.prepare([Message("user", "Tell me about the sea.")], PARAMS)
        engine.generate(prompt, PARAMS, cancel=threading.Event(), emit=collect)
    finally:
        engine.close()
    return [value for entry in entries for value in (entry.logprob, *(t.logprob for t in entry.top))]


def batched(model_path: Path, setting: FlashAttention) -> BatchedLlamaEngine:
    return BatchedLlamaEngine(
        model_id="smollm2-135m", path=model_path, n_ctx=512, slots=2, n_threads=2, gpu_layers=0,
        flash_attention=setting,
    )  # fmt: skip


def one_context(model_path: Path, setting: FlashAttention) -> LlamaEngine:
    return LlamaEngine(
        model_id="smollm2-135m", path=model_path, n_ctx=512, n_threads=2, gpu_layers=0, flash_attention=setting
    )


@pytest.mark.parametrize("build", [batched, one_context], ids=["batched", "one-context"])
def test_auto_takes_the_fused_kernel_on_a_cpu_and_off_the_plain_one(
    model_path: Path, build: Callable[[Path, FlashAttention], BatchedLlamaEngine | LlamaEngine]
) -> None:
    runs = {setting: read_logprobs(build(model_path, setting)) for setting in SETTINGS}
    assert len(runs["on"]) == 3 * MAX_TOKENS
    # The same kernel twice gives the same floats; the other kernel, others.
    assert runs["auto"] == runs["on"]
    assert runs["off"] != runs["on"]
