"""The llama.cpp backend with continuous batching: one model, one context, N sequence slots.

One engine serves all of a worker's concurrent jobs (`load_engines` hands the same object
to every slot of the runtime). The weights are loaded once; a `BatchScheduler` thread
decodes every running sequence in one batch per step and samples in C with a sampler chain
per sequence (and the request's grammar, see worker/sampler_chain.py), and turns each
sequence's tokens into its text (detokenizing, stop strings, log probabilities on request).
The n choices of a request are n sequences that share one read of the prompt.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import llama_cpp

from presets.settings import FlashAttention, KvCacheLayout
from worker.chat_prompt import ChatPrompter
from worker.choices import ChoiceText
from worker.core_share import CoreShare
from worker.engine import ChoiceOutcome, Emit, Outcome, Prompt, UnsupportedParameter, check_fits
from worker.hardware import ExtraBuffers
from worker.llama_batch import BatchScheduler, SequenceRequest
from worker.llama_params import flash_attn_type, model_params
from worker.logprobs import LogprobReader
from worker.protocol import Message, SamplingParams, Tool
from worker.sampler_chain import build_sampler

# The most choices one request may ask for, and alternatives per token (OpenAI's limits are 128 and 20).
MAX_CHOICES = 4
MAX_TOP_LOGPROBS = 20
# A job waiting on its sequence checks this often that the scheduler thread still runs.
_CHECK_ALIVE_S = 1.0


class BatchedLlamaEngine:
    backend = "llamacpp"

    def __init__(
        self,
        *,
        model_id: str,
        path: Path,
        n_ctx: int,
        slots: int,
        n_threads: int | None,
        gpu_layers: int,
        main_gpu: int | None = None,
        tensor_split: Sequence[float] | None = None,
        extra_buffers: ExtraBuffers = "auto",
        kv_cache: KvCacheLayout = "split",
        flash_attention: FlashAttention = "auto",
        batch_tokens: int = 512,
        prefill_chunk_tokens: int = 128,
        core_share: CoreShare | None = None,
    ) -> None:
        self.model_id = model_id
        # llama-cpp-python routes llama.cpp's log through this logger; unset, it prints every
        # tensor loaded. Llama(verbose=False) sets the same level.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        # use_extra_bufts is off on CPUs with AMX, where llama.cpp's repacked path crashes.
        params = model_params(
            setting=extra_buffers, gpu_layers=gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split
        )
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        threads = n_threads or os.cpu_count() or 1
        context_params = llama_cpp.llama_context_default_params()
        # n_ctx is the worker's whole window. Split and per_slot give each sequence a stream
        # of cells of its own (llama.cpp's non-unified cache: n_ctx ÷ n_seq_max cells each),
        # so a decode step attends only to that sequence's cells and its logits are
        # bit-identical to a run alone. Shared: one pool of n_ctx cells whose interleaved
        # sequences reorder attention's float sums (greedy text can part at a near tie), and
        # every step of every sequence spans all cells in use, other slots' cached prompts too.
        shared = kv_cache == "shared"
        context_params.n_ctx = n_ctx * slots if kv_cache == "per_slot" else n_ctx
        context_params.n_batch = batch_tokens
        context_params.n_ubatch = batch_tokens
        context_params.n_seq_max = slots
        context_params.kv_unified = shared
        context_params.n_threads = threads
        context_params.n_threads_batch = threads
        context_params.flash_attn_type = flash_attn_type(flash_attention)
        self._ctx = llama_cpp.llama_init_from_model(self._model, context_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} tokens for {path.name}")
        # What one sequence can hold: llama.cpp rounds a stream up to a multiple of 256 cells.
        self.context_length: int = llama_cpp.llama_n_ctx_seq(self._ctx)
        self._pieces: dict[int, bytes] = {}
        self._prompter = ChatPrompter(
            metadata=self._metadata(),
            bos_text=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_text=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            tokenize=self._tokenize,
            source=path.name,
        )
        self._scheduler = BatchScheduler(
            ctx=self._ctx,
            vocab=self._vocab,
            slots=slots,
            shared_cells=self.context_length if shared else None,
            batch_tokens=batch_tokens,
            prefill_chunk_tokens=prefill_chunk_tokens,
            n_swa=llama_cpp.llama_model_n_swa(self._model),
            core_share=core_share,
        )

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens decoded so far; those found in a slot's cache are not counted."""
        return self._scheduler.prefilled_tokens

    @property
    def active_sequences(self) -> int:
        return self._scheduler.active_sequences

    def group_hand_ons(self, scope: Callable[[], AbstractContextManager[None]]) -> None:
        self._scheduler.hand_on_scope = scope

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        rendered = self._prompter.render(messages, tools=tools)
        check_fits(prompt_tokens=len(rendered.tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=rendered.tokens, stop=rendered.stop, in_reasoning=rendered.in_reasoning)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        if not 1 <= params.n <= MAX_CHOICES:
            raise UnsupportedParameter(f"n must be between 1 and {MAX_CHOICES}", param="n")
        if not 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS:
            raise UnsupportedParameter(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
        budget = self.context_length - len(prompt.tokens)
        limit = min(params.max_tokens, budget) if params.max_tokens else budget
        reader = LogprobReader(ctx=self._ctx, n_vocab=self._n_vocab, piece=self._piece) if params.logprobs else None
        choices = [
            ChoiceText(
                index=i,
                stop=[*params.stop, *prompt.stop],
                emit=emit,
                piece=self._piece,
                reader=reader,
                top_logprobs=params.top_logprobs,
            )
            for i in range(params.n)
        ]
        requests: list[SequenceRequest] = []
        try:
            for i, choice in enumerate(choices):
                sampler = build_sampler(params, vocab=self._vocab, n_vocab=self._n_vocab, limit_tokens=limit, choice=i)
                requests.append(
                    SequenceRequest(
                        tokens=list(prompt.tokens),
                        limit_tokens=limit,
                        sampler=sampler,
                        cancel=cancel,
                        on_token=choice.on_token,
                    )
                )
            leader, *followers = requests
            leader.followers = followers
            self._scheduler.submit(leader)
        except Exception:
            for request in requests:
                request.sampler.free()
            raise
        for request in requests:
            while not request.finished.wait(_CHECK_ALIVE_S):
                if not self._scheduler.running:
                    raise RuntimeError("the batch scheduler stopped")
        for request in requests:
            if request.error is not None:
                raise request.error
        for choice, request in zip(choices, requests, strict=True):
            choice.finish(request.reason)
        ends = tuple(
            ChoiceOutcome(index=i, reason=request.reason, completion_tokens=request.produced)
            for i, request in enumerate(requests)
        )
        return Outcome(
            reason=leader.reason,
            completion_tokens=sum(end.completion_tokens for end in ends),
            choices=ends if params.n > 1 else (),
        )

    def close(self) -> None:
        self._scheduler.close()
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)

    def _tokenize(self, text: bytes, add_bos: bool) -> list[int]:
        room = len(text) + 2
        while True:
            buffer = (llama_cpp.llama_token * room)()
            count = llama_cpp.llama_tokenize(self._vocab, text, len(text), buffer, room, add_bos, True)
            if count >= 0:
                return list(buffer[:count])
            room = -count

    def _piece(self, token: int) -> bytes:
        found = self._pieces.get(token)
        if found is None:
            found = self._render(token, special=False)
            # Only the scheduler thread fills it (on_token), so no lock.
            self._pieces[token] = found
        return found

    def _render(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:size]

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._render(token, special=True).decode("utf-8", errors="ignore")

    def _metadata(self) -> dict[str, str]:
        found: dict[str, str] = {}
        buffer = ctypes.create_string_buffer(1024)
        for i in range(llama_cpp.llama_model_meta_count(self._model)):
            key = self._meta_string(llama_cpp.llama_model_meta_key_by_index, i, buffer)
            found[key] = self._meta_string(llama_cpp.llama_model_meta_val_str_by_index, i, buffer)
        return found

    def _meta_string(self, read: Any, index: int, buffer: ctypes.Array[ctypes.c_char]) -> str:
        size = read(self._model, index, buffer, len(buffer))
        if size >= len(buffer):
            # A chat template is often longer than the first buffer: read again with room for it.
            buffer = ctypes.create_string_buffer(size + 1)
            size = read(self._model, index, buffer, len(buffer))
        return buffer.value.decode("utf-8", errors="replace")
