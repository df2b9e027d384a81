"""A stand-in for the parts of vLLM's async engine API that worker.vllm_engine uses.

Derived from vLLM's documented API (V1 engine, where `vllm.AsyncLLMEngine` is `AsyncLLM`), with
the same names, signatures and fields:

- `AsyncEngineArgs(model, tokenizer, max_model_len, gpu_memory_utilization)`, as built.
- `AsyncLLMEngine.from_engine_args(engine_args)`; `async generate(prompt, sampling_params,
  request_id)` yielding `RequestOutput(request_id, prompt, prompt_token_ids, outputs, finished)`
  whose `outputs` are `CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs,
  finish_reason, stop_reason)`; `async abort(request_id)` (a no-op for a finished or unknown
  request); `async get_tokenizer()`; `shutdown()`.
- `SamplingParams` (max_tokens, temperature, top_p, stop, seed, output_kind), `RequestOutputKind`,
  `vllm.inputs.TokensPrompt` (a TypedDict).

Behaviour it covers: a scheduler task on the loop the engine first runs on (vLLM's output
handler is such a task) advances every running request by one token per step, so requests in
flight together share steps; DELTA outputs; max_tokens and stop strings end a request with
"length" or "stop"; a cancelled generate() aborts its request as vLLM's does; shutdown()
cancels the scheduler task and must run on that loop; the tokenizer fails, as a Hugging Face
fast tokenizer does, when two threads use it at once, and records the threads that used it.

Not covered: real models, tokenization and detokenization (a character is a token), sampling,
EOS tokens, the KV cache and its preemption, logprobs, LoRA, engine-core processes and their
death (AsyncEngineDeadError), and the engine-argument checks (GGUF files, memory fractions).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
import types
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

WORDS = ["alpha", " beta", " gamma", " delta", " epsilon", " zeta"]
# A forward pass takes time: a request added meanwhile joins the next step, as on a GPU.
STEP_S = 0.002


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


@dataclass
class AsyncEngineArgs:
    model: str
    tokenizer: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: None
    outputs: list[CompletionOutput]
    finished: bool


class Tokenizer:
    def __init__(self) -> None:
        self.threads: set[int] = set()
        self._in_use = threading.Lock()

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, add_generation_prompt: bool = False, tokenize: bool = True
    ) -> list[int]:
        assert add_generation_prompt and tokenize
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            self.threads.add(threading.get_ident())
            time.sleep(0.001)  # long enough that two threads at once would meet here
            text = "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"
            return [ord(c) for c in text]
        finally:
            self._in_use.release()


@dataclass
class _Running:
    params: SamplingParams
    outputs: asyncio.Queue[RequestOutput]
    produced: int = 0
    text: str = ""


@dataclass
class AsyncLLMEngine:
    args: AsyncEngineArgs
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    running: dict[str, _Running] = field(default_factory=dict)
    # The request ids of each step, in order.
    steps: list[list[str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    open_streams: int = 0
    shut_down: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _scheduler: asyncio.Task[None] | None = None
    _work: asyncio.Event | None = None

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine:
        engine = cls(engine_args)
        # As vLLM: the output handler starts now when a loop runs, else at the first generate().
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return engine
        engine._start()
        return engine

    def _start(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._work = loop, asyncio.Event()
            self._scheduler = loop.create_task(self._schedule())
        elif loop is not self._loop:
            raise RuntimeError("the engine's output handler runs on another event loop")
        assert self._work is not None
        return self._work

    async def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    async def generate(
        self, prompt: TokensPrompt, sampling_params: SamplingParams, request_id: str, **_: Any
    ) -> AsyncIterator[RequestOutput]:
        work = self._start()
        if self.shut_down:
            raise RuntimeError("the engine is shut down")
        if request_id in self.running:
            raise ValueError(f"request id {request_id} is already running")
        assert sampling_params.output_kind is RequestOutputKind.DELTA, "the fake streams DELTA outputs only"
        assert prompt["prompt_token_ids"]
        running = _Running(sampling_params, asyncio.Queue())
        self.running[request_id] = running
        work.set()
        self.open_streams += 1
        try:
            while True:
                output = await running.outputs.get()
                yield output
                if output.finished:
                    return
        except asyncio.CancelledError:
            # vLLM aborts the request of a generate() whose consumer was cancelled.
            await self.abort(request_id)
            raise
        finally:
            self.open_streams -= 1

    async def abort(self, request_id: str | Iterable[str]) -> None:
        for one in [request_id] if isinstance(request_id, str) else request_id:
            if self.running.pop(one, None) is not None:
                self.aborted.append(one)

    def shutdown(self) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._scheduler is not None:
            # Stricter than the newest vLLM, which cancels its handler thread-safely.
            if loop is not self._loop:
                raise RuntimeError("shutdown() off the loop of the engine's output handler")
            self._scheduler.cancel()
        self.shut_down = True

    async def _schedule(self) -> None:
        assert self._work is not None
        while True:
            await self._work.wait()
            await asyncio.sleep(STEP_S)
            if not self.running:
                self._work.clear()
                continue
            self.steps.append(sorted(self.running))
            for request_id, running in list(self.running.items()):
                running.outputs.put_nowait(self._advance(request_id, running))

    def _advance(self, request_id: str, running: _Running) -> RequestOutput:
        word = WORDS[running.produced % len(WORDS)]
        running.produced += 1
        running.text += word
        finish = None
        if any(stop in running.text for stop in running.params.stop or []):
            finish, word = "stop", ""
        elif running.params.max_tokens is not None and running.produced >= running.params.max_tokens:
            finish = "length"
        if finish is not None:
            del self.running[request_id]
        completion = CompletionOutput(0, word, [running.produced], None, None, finish)
        return RequestOutput(request_id, None, None, None, [completion], finish is not None)


def modules() -> tuple[dict[str, types.ModuleType], list[AsyncLLMEngine]]:
    """Modules to put in sys.modules as `vllm` and its submodules, and the engines they build."""
    built: list[AsyncLLMEngine] = []

    class RecordedEngine(AsyncLLMEngine):
        @classmethod
        def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine:
            engine = super().from_engine_args(engine_args)
            built.append(engine)
            return engine

    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = AsyncEngineArgs  # type: ignore[attr-defined]
    vllm.AsyncLLMEngine = RecordedEngine  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    vllm.TokensPrompt = TokensPrompt  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = TokensPrompt  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    sampling.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    return {"vllm": vllm, "vllm.inputs": inputs, "vllm.sampling_params": sampling}, built
