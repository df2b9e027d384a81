"""The vLLM backend (INFERENCE_BACKEND=vllm), for CUDA servers.

One vLLM engine per worker, shared by all of the worker's concurrent jobs: a stepper
thread runs `LLMEngine.step()` while any request is in flight, so concurrent jobs are
batched by vLLM's scheduler (set INFERENCE_MAX_CONCURRENT_PER_MODEL to 4 or more).
Each job's thread adds its request and reads its own deltas; a cancelled job aborts its
request. Written against vLLM's LLMEngine API (from_engine_args, add_request, step,
abort_request, get_tokenizer) and tested against a fake of that API: vLLM needs CUDA,
which the development and CI machines do not have.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from presets.settings import Settings
from worker.engine import Emit, FinishReason, Outcome, Prompt, PromptRejected, check_fits
from worker.protocol import Message, SamplingParams


class VllmEngine:
    backend = "vllm"

    def __init__(self, *, model_id: str, path: Path, settings: Settings) -> None:
        from vllm import EngineArgs, LLMEngine

        self.model_id = model_id
        if settings.n_ctx is None:
            # load_engines resolves each model's window (presets.context) before it builds an engine.
            raise ValueError("VllmEngine needs settings.n_ctx set to the model's context")
        args = EngineArgs(
            model=settings.vllm_model or str(path),
            tokenizer=settings.vllm_tokenizer,
            max_model_len=settings.n_ctx,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        )
        self._engine: Any = LLMEngine.from_engine_args(args)
        self._tokenizer: Any = self._engine.get_tokenizer()
        self.context_length: int = settings.n_ctx
        self._lock = threading.Lock()
        self._inboxes: dict[str, queue.SimpleQueue[Any]] = {}
        self._work = threading.Event()
        self._closed = False
        self._ids = itertools.count()
        self._stepper = threading.Thread(target=self._step_loop, name="vllm-step", daemon=True)
        self._stepper.start()

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        from jinja2 import TemplateError

        try:
            tokens = list(self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
        except TemplateError as exc:
            raise PromptRejected(exc.message or type(exc).__name__) from None
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=tokens, stop=[])

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        request_id = f"{self.model_id}-{next(self._ids)}"
        sampling = VllmSamplingParams(
            max_tokens=params.max_tokens or self.context_length - len(prompt.tokens),
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            self._inboxes[request_id] = inbox
            self._engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt.tokens), sampling)
        self._work.set()
        produced = 0
        reason: FinishReason = "length"
        try:
            while True:
                try:
                    output = inbox.get(timeout=0.05)
                except queue.Empty:
                    if cancel.is_set():
                        with self._lock:
                            self._engine.abort_request([request_id])
                        return Outcome(reason="cancelled", completion_tokens=produced)
                    continue
                completion = output.outputs[0]
                produced += len(completion.token_ids)
                if completion.text:
                    emit(completion.text)
                if completion.finish_reason is not None:
                    reason = "stop" if completion.finish_reason == "stop" else "length"
                if output.finished:
                    break
                if cancel.is_set():
                    with self._lock:
                        self._engine.abort_request([request_id])
                    return Outcome(reason="cancelled", completion_tokens=produced)
        finally:
            with self._lock:
                self._inboxes.pop(request_id, None)
        return Outcome(reason=reason, completion_tokens=produced)

    def _step_loop(self) -> None:
        while not self._closed:
            self._work.wait(timeout=0.5)
            with self._lock:
                if not self._engine.has_unfinished_requests():
                    self._work.clear()
                    continue
                outputs = self._engine.step()
                for output in outputs:
                    inbox = self._inboxes.get(output.request_id)
                    if inbox is not None:
                        inbox.put(output)

    def close(self) -> None:
        self._closed = True
        self._work.set()
        self._stepper.join(timeout=5)
