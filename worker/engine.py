"""What a worker needs from a model backend, and the llama-cpp-python backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
        """Tokenize the chat prompt; raise PromptTooLong when it cannot fit."""
        ...

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome: ...

    def close(self) -> None: ...


def check_fits(*, prompt_tokens: int, params: SamplingParams, context_length: int) -> None:
    if prompt_tokens + (params.max_tokens or 1) > context_length:
        raise PromptTooLong(prompt_tokens=prompt_tokens, max_tokens=params.max_tokens, context_length=context_length)


class LlamaEngine:
    """llama-cpp-python: the model's own chat template, token-exact usage counts."""

    backend = "llamacpp"

    def __init__(
        self, *, model_id: str, path: Path, n_ctx: int, n_threads: int | None, gpu_layers: int, seed: int = 0
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model_id = model_id
        self._llm: Llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=gpu_layers,
            seed=seed,
            verbose=False,
        )
        self.context_length = self._llm.n_ctx()
        llm = self._llm
        self._eos = {llm.token_eos()}
        template = llm.metadata.get("tokenizer.chat_template") or fallback_template(llm.metadata)
        if not template:
            raise ValueError(f"{path.name} carries no chat template and its architecture has no known one")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llm.token_eos()),
            bos_token=self._token_text(llm.token_bos()),
        )

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self._llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        rendered = self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages])  # type: ignore[misc]
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        tokens = self._llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=tokens, stop=[s for s in stop if s])

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


# Gemma 3's published chat format, for GGUF files converted without their template:
# no system role, so a system message is prepended to the first user turn.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ (prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_FALLBACK_TEMPLATES = {"gemma": _GEMMA_TEMPLATE, "gemma2": _GEMMA_TEMPLATE, "gemma3": _GEMMA_TEMPLATE}


def fallback_template(metadata: dict[str, str]) -> str | None:
    return _FALLBACK_TEMPLATES.get(metadata.get("general.architecture", ""))


def _random_bytes(n: int) -> bytes:
    import os

    return os.urandom(n)


def llm_token_is_eog(llm: Llama, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
