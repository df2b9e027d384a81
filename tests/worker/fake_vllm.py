"""A stand-in for the parts of vLLM's async engine API that worker.vllm_engine uses.

Derived from vLLM's documented API (V1 engine, where `vllm.AsyncLLMEngine` is `AsyncLLM`), with
the same names, signatures and fields:

- `AsyncEngineArgs(model, tokenizer, max_model_len, gpu_memory_utilization)`, as built.
- `AsyncLLMEngine.from_engine_args(engine_args)`; `async generate(prompt, sampling_params,
  request_id)` yielding `RequestOutput(request_id, prompt, prompt_token_ids, outputs, finished)`
  whose `outputs` are `CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs,
  finish_reason, stop_reason)`; `async abort(request_id)` (a no-op for a finished or unknown
  request); `async get_tokenizer()`; `shutdown()`.
- `SamplingParams` (n, max_tokens, temperature, top_p, frequency_penalty, presence_penalty, stop,
  seed, logprobs, output_kind, structured_outputs), `StructuredOutputsParams` (one constraint of
  json, regex, choice, grammar, json_object), `RequestOutputKind`, `vllm.inputs.TokensPrompt` (a
  TypedDict), `vllm.logprobs.Logprob(logprob, rank, decoded_token)`. `modules(release="0.10")`
  gives the older API instead: `GuidedDecodingParams` and `SamplingParams.guided_decoding`.
- The tokenizer's `apply_chat_template(conversation, tools=None, add_generation_prompt,
  tokenize)` and `encode(text, add_special_tokens)`, as a Hugging Face tokenizer's.

Behaviour it covers: a scheduler task on the loop the engine first runs on (vLLM's output
handler is such a task) advances every running request by one token per step, so requests in
flight together share steps; DELTA outputs; with n > 1 one child sequence per choice, each
streamed as its own RequestOutput holding that child's CompletionOutput (vLLM's ParentRequest),
finished once every child is; max_tokens and stop strings end a choice with "length" or "stop"
(stop_reason the stop string), the text held back while it may start a stop string and cut
before it as vLLM's detokenizer does; logprobs=k gives per new token {token id: Logprob} with the
sampled token first (its own rank) then the k likeliest, as vLLM's sampler does, and more than
20 (vLLM's default max_logprobs) is refused; a cancelled generate() aborts its request as vLLM's
does; shutdown() cancels the scheduler task and must run on that loop; the tokenizer fails, as
a Hugging Face fast tokenizer does, when two threads use it at once, and records the threads
that used it. Each request's SamplingParams is kept in `requests`.

Not covered: real models, tokenization and detokenization (a character is a prompt token, a
word an output token), sampling (choice i takes the i-th likeliest word of a fixed ranking),
grammar enforcement (recorded, not applied), EOS tokens, the KV cache and its preemption, LoRA,
engine-core processes and their death, and the engine-argument checks (GGUF, memory fractions).
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import threading
import time
import types
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

WORDS = ["alpha", " beta", " gamma", " delta", " epsilon", " zeta"]
# A forward pass takes time: a request added meanwhile joins the next step, as on a GPU.
STEP_S = 0.002


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


# vLLM's default engine argument max_logprobs.
MAX_LOGPROBS = 20


@dataclass
class _Constraint:
    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


@dataclass
class StructuredOutputsParams(_Constraint):
    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.json, self.regex, self.choice, self.grammar, self.json_object))
        if given != 1:
            raise ValueError(f"You must use exactly one kind of structured outputs constraint, {given} given")


@dataclass
class GuidedDecodingParams(_Constraint):
    backend: str | None = None
    whitespace_pattern: str | None = None


@dataclass(kw_only=True)
class _Sampling:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


@dataclass(kw_only=True)
class SamplingParams(_Sampling):
    structured_outputs: StructuredOutputsParams | None = None


@dataclass(kw_only=True)
class OlderSamplingParams(_Sampling):
    """vLLM before StructuredOutputsParams (0.10 and earlier): `guided_decoding` in its place."""

    guided_decoding: GuidedDecodingParams | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


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
    logprobs: list[dict[int, Logprob]] | None
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
        # What the template appends for the assistant's turn; a reasoning model's may open `<think>`.
        self.generation_prompt = "<assistant>"
        # A Hugging Face tokenizer's template source; None where the test leaves it unset.
        self.chat_template: str | None = None

    @contextmanager
    def _borrowed(self) -> Iterator[None]:
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError("Already borrowed")
        try:
            self.threads.add(threading.get_ident())
            time.sleep(0.001)  # long enough that two threads at once would meet here
            yield
        finally:
            self._in_use.release()

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> list[int] | str:
        assert add_generation_prompt
        with self._borrowed():
            text = "".join(f"<tool {json.dumps(t['function'], sort_keys=True)}>" for t in tools or [])
            for m in conversation:
                text += f"<{m['role']}>{m['content']}"
                if "tool_call_id" in m:
                    text += f"<for {m['tool_call_id']}>"
                for call in m.get("tool_calls", []):
                    function = call["function"]
                    text += f"<call {call['id']} {function['name']} {json.dumps(function['arguments'])}>"
            text += self.generation_prompt
            return [ord(c) for c in text] if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._borrowed():
            # A Hugging Face tokenizer adds BOS unless told not to: a rendered template already has it.
            return ([1] if add_special_tokens else []) + [ord(c) for c in text]


@dataclass
class _Child:
    """One choice of a request, as vLLM runs a request with n > 1: a child sequence of its own."""

    index: int
    produced: int = 0
    text: str = ""
    # How much of `text` went out: vLLM holds back what may still start a stop string.
    sent: int = 0
    finished: bool = False


@dataclass
class _Running:
    params: Any
    outputs: asyncio.Queue[RequestOutput]
    children: list[_Child] = field(default_factory=list)


@dataclass
class AsyncLLMEngine:
    args: AsyncEngineArgs
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    running: dict[str, _Running] = field(default_factory=dict)
    # Every request's sampling parameters, by request id.
    requests: dict[str, Any] = field(default_factory=dict)
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
        if sampling_params.logprobs is not None and sampling_params.logprobs > MAX_LOGPROBS:
            raise ValueError(
                f"Requested sample logprobs of {sampling_params.logprobs}, which is greater than max allowed: "
                f"{MAX_LOGPROBS}"
            )
        self.requests[request_id] = sampling_params
        children = [_Child(index) for index in range(sampling_params.n)]
        running = _Running(sampling_params, asyncio.Queue(), children)
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
                for child in running.children:
                    if not child.finished:
                        running.outputs.put_nowait(self._advance(request_id, running, child))

    def _advance(self, request_id: str, running: _Running, child: _Child) -> RequestOutput:
        # This step's ranking of the words: choice i takes the i-th likeliest (choice 0 the likeliest).
        ranked = [WORDS[(child.produced + rank) % len(WORDS)] for rank in range(len(WORDS))]
        word = ranked[child.index % len(WORDS)]
        child.produced += 1
        child.text += word
        params = running.params
        stops = params.stop or []
        finish, stop_reason = None, None
        # As vLLM's detokenizer: the text ends before the stop string, which is not sent.
        found = min(((child.text.find(stop), stop) for stop in stops if stop in child.text), default=None)
        if found is not None:
            (end, stop_reason), finish = found, "stop"
        else:
            end = len(child.text) - max((len(stop) - 1 for stop in stops), default=0)
            if params.max_tokens is not None and child.produced >= params.max_tokens:
                finish, end = "length", len(child.text)
        delta = child.text[child.sent : max(end, child.sent)]
        child.sent = max(end, child.sent)
        child.finished = finish is not None
        finished = all(one.finished for one in running.children)
        if finished:
            del self.running[request_id]
        token_id = token_of(word)
        logprobs = None if params.logprobs is None else [_logprobs(token_id, ranked, params.logprobs)]
        completion = CompletionOutput(child.index, delta, [token_id], None, logprobs, finish, stop_reason)
        return RequestOutput(request_id, None, None, None, [completion], finished)


def token_of(word: str) -> int:
    """The fake vocabulary: each of WORDS is one token."""
    return 100 + WORDS.index(word)


def logprob_of(rank: int) -> float:
    """The fake distribution: the word ranked r has probability 2**-r."""
    return -rank * math.log(2)


def _logprobs(sampled: int, ranked: list[str], k: int) -> dict[int, Logprob]:
    # As vLLM's: the sampled token first, with its own rank, then the k likeliest (k = -1: all).
    rank_of = {token_of(word): rank for rank, word in enumerate(ranked, start=1)}
    top = [token_of(word) for word in ranked[: len(ranked) if k == -1 else k]]
    words = {token_of(word): word for word in ranked}
    return {token: Logprob(logprob_of(rank_of[token]), rank_of[token], words[token]) for token in [sampled, *top]}


def modules(*, release: str = "newest") -> tuple[dict[str, types.ModuleType], list[AsyncLLMEngine]]:
    """Modules to put in sys.modules as `vllm` and its submodules, and the engines they build.

    release "newest" has StructuredOutputsParams; "0.10" has GuidedDecodingParams in its place.
    """
    built: list[AsyncLLMEngine] = []

    class RecordedEngine(AsyncLLMEngine):
        @classmethod
        def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine:
            engine = super().from_engine_args(engine_args)
            built.append(engine)
            return engine

    params: type = SamplingParams if release == "newest" else OlderSamplingParams
    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = AsyncEngineArgs  # type: ignore[attr-defined]
    vllm.AsyncLLMEngine = RecordedEngine  # type: ignore[attr-defined]
    vllm.SamplingParams = params  # type: ignore[attr-defined]
    vllm.TokensPrompt = TokensPrompt  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = TokensPrompt  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = RequestOutputKind  # type: ignore[attr-defined]
    sampling.SamplingParams = params  # type: ignore[attr-defined]
    if release == "newest":
        sampling.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
    else:
        sampling.GuidedDecodingParams = GuidedDecodingParams  # type: ignore[attr-defined]
    logprobs = types.ModuleType("vllm.logprobs")
    logprobs.Logprob = Logprob  # type: ignore[attr-defined]
    vllm.sampling_params = sampling  # type: ignore[attr-defined]
    return {
        "vllm": vllm,
        "vllm.inputs": inputs,
        "vllm.sampling_params": sampling,
        "vllm.logprobs": logprobs,
    }, built
