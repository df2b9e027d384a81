"""What a worker needs from a model backend, and the llama-cpp-python backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from worker.hardware import ExtraBuffers
from worker.protocol import Message, SamplingParams
from worker.textstream import TextStream

if TYPE_CHECKING:
    from llama_cpp import Llama

FinishReason = Literal["stop", "length", "cancelled"]
Emit = Callable[[str], None]


class PromptTooLong(ValueError):
    def __init__(self, *, prompt_tokens: int, max_tokens: int | None, context_length: int) -> None:
        asked = f"{prompt_tokens} tokens in the messages"
        if max_tokens:
            asked += f" plus {max_tokens} requested for the completion"
        super().__init__(
            f"This model's maximum context length is {context_length} tokens; the request asked for {asked}."
        )


class PromptRejected(ValueError):
    """The model's chat template refused the conversation (say, roles that do not alternate)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"The model's chat template rejected the messages: {reason}")


@dataclass(frozen=True, kw_only=True)
class Prompt:
    tokens: list[int]
    # Stop strings the chat template adds (its end-of-turn marker) beside the request's own.
    stop: list[str]
    # The null engine's predetermined answer; real engines leave it empty.
    script: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Outcome:
    reason: FinishReason
    completion_tokens: int


class Engine(Protocol):
    """A loaded model. `prepare` and `generate` are blocking and run in a worker thread."""

    model_id: str
    context_length: int
    backend: str

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        """Tokenize the chat prompt; PromptTooLong when it cannot fit, PromptRejected when the template refuses it."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome: ...

    def close(self) -> None: ...


@runtime_checkable
class GroupsHandOns(Protocol):
    """An engine whose own thread emits several jobs' text at once (a batched decode step).

    It runs each such group inside the scope given here, so the worker can wake its event
    loop once per group instead of once per job.
    """

    def group_hand_ons(self, scope: Callable[[], AbstractContextManager[None]]) -> None: ...


def check_fits(*, prompt_tokens: int, params: SamplingParams, context_length: int) -> None:
    if prompt_tokens + (params.max_tokens or 1) > context_length:
        raise PromptTooLong(prompt_tokens=prompt_tokens, max_tokens=params.max_tokens, context_length=context_length)


class LlamaEngine:
    """llama-cpp-python: the model's own chat template, token-exact usage counts."""

    backend = "llamacpp"

    def __init__(
        self,
        *,
        model_id: str,
        path: Path,
        n_ctx: int,
        n_threads: int | None,
        gpu_layers: int,
        main_gpu: int | None = None,
        tensor_split: Sequence[float] | None = None,
        seed: int = 0,
        extra_buffers: ExtraBuffers = "auto",
    ) -> None:
        from worker.chat_prompt import ChatPrompter
        from worker.llama_params import gpu_options, open_llama

        self.model_id = model_id
        self._llm: Llama = open_llama(
            path=path,
            extra_buffers=extra_buffers,
            n_ctx=n_ctx,
            n_threads=n_threads,
            seed=seed,
            **gpu_options(gpu_layers=gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split),
            verbose=False,
        )
        self.context_length = self._llm.n_ctx()
        llm = self._llm
        self._eos = {llm.token_eos()}
        self._prompter = ChatPrompter(
            metadata=llm.metadata,
            bos_text=self._token_text(llm.token_bos()),
            eos_text=self._token_text(llm.token_eos()),
            tokenize=lambda text, add_bos: llm.tokenize(text, add_bos=add_bos, special=True),
            source=path.name,
        )

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        tokens, stop = self._prompter.render(messages)
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=tokens, stop=stop)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        llm = self._llm
        budget = self.context_length - len(prompt.tokens)
        limit = min(params.max_tokens, budget) if params.max_tokens else budget
        # Always seed: without a request seed, draw one, so runs differ like other servers'.
        llm.set_seed(params.seed if params.seed is not None else int.from_bytes(_random_bytes(4), "little"))
        text = TextStream(stop=[*params.stop, *prompt.stop])
        produced = 0
        reason: FinishReason = "length"
        tokens: Any = llm.generate(
            prompt.tokens, temp=params.temperature, top_p=params.top_p, top_k=40, min_p=0.05, repeat_penalty=1.0
        )
        for token in tokens:
            if cancel.is_set():
                reason = "cancelled"
                break
            if llm_token_is_eog(llm, token) or token in self._eos:
                reason = "stop"
                break
            produced += 1
            piece = text.feed(llm.detokenize([token]))
            if piece:
                emit(piece)
            if text.stopped:
                reason = "stop"
                break
            if produced >= limit:
                break
        tail = text.flush()
        if tail and reason != "cancelled":
            emit(tail)
        return Outcome(reason=reason, completion_tokens=produced)

    def close(self) -> None:
        self._llm.close()


def _random_bytes(n: int) -> bytes:
    import os

    return os.urandom(n)


def llm_token_is_eog(llm: Llama, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
