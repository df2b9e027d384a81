"""What a worker needs from a model backend, and the llama-cpp-python backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from worker.core_share import CoreShare, Seat
from worker.hardware import ExtraBuffers
from worker.protocol import Message, SamplingParams, TokenLogprob, Tool
from worker.textstream import TextStream

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    from presets.settings import FlashAttention
    from worker.logprobs import LogprobReader, LogprobText

FinishReason = Literal["stop", "length", "cancelled"]


class Emit(Protocol):
    """Takes the next text of choice `index`, with the log probabilities of the tokens it came from."""

    def __call__(self, text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None: ...


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
    # The template left a reasoning block (`<think>`) open: the text starts as reasoning.
    in_reasoning: bool = False


@dataclass(frozen=True, kw_only=True)
class ChoiceOutcome:
    index: int
    reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class Outcome:
    # Choice 0's reason; completion_tokens sums every choice's.
    reason: FinishReason
    completion_tokens: int
    # With n > 1, each choice's end (choice 0 included).
    choices: tuple[ChoiceOutcome, ...] = ()


class UnsupportedParameter(ValueError):
    """This backend cannot honour a request parameter (say, logprobs on an engine without them): a 400."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class Engine(Protocol):
    """A loaded model. `prepare` and `generate` are blocking and run in a worker thread."""

    model_id: str
    context_length: int
    backend: str

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
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


def refuse_lazy_grammar(params: SamplingParams, *, backend: str) -> None:
    """For a backend without lazy grammars: a strict tool under tool_choice "auto" is a 400 naming tools."""
    if params.grammar_triggers and params.lazy_grammar_required:
        raise UnsupportedParameter(
            f"The {backend} backend cannot hold a call the model starts of its own (tool_choice 'auto') to a strict "
            "tool's schema: serve the model with llama.cpp batching (INFERENCE_BATCHING=true), use tool_choice "
            "'required' or a named function, or drop strict.",
            param="tools",
        )


def check_fits(*, prompt_tokens: int, params: SamplingParams, context_length: int) -> None:
    if prompt_tokens + (params.max_tokens or 1) > context_length:
        raise PromptTooLong(prompt_tokens=prompt_tokens, max_tokens=params.max_tokens, context_length=context_length)


class LlamaEngine:
    """llama-cpp-python: the model's own chat template, token-exact usage counts.

    One sequence at a time: with n > 1 the choices run one after the other, and Llama's prefix
    match keeps the prompt's KV cache, so only the first choice pays for the prefill. A request
    seed gives choice i the seed `seed + i`. A grammar joins llama.cpp's sampler chain. Log
    probabilities are the raw model distribution, before the sampling settings and the grammar.
    """

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
        flash_attention: FlashAttention = "auto",
        core_share: CoreShare | None = None,
    ) -> None:
        from worker.chat_prompt import ChatPrompter
        from worker.llama_params import gpu_options, open_llama

        self.model_id = model_id
        self._llm: Llama = open_llama(
            path=path,
            extra_buffers=extra_buffers,
            flash_attention=flash_attention,
            n_ctx=n_ctx,
            n_threads=n_threads,
            seed=seed,
            **gpu_options(gpu_layers=gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split),
            verbose=False,
        )
        self.context_length = self._llm.n_ctx()
        llm = self._llm
        self._cores = core_share or CoreShare.fixed(llm.n_threads)
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

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        refuse_lazy_grammar(params, backend="non-batching llama.cpp")
        if params.eager_grammar is not None:
            self._check_grammar(params.eager_grammar)
        rendered = self._prompter.render(messages, tools=tools)
        check_fits(prompt_tokens=len(rendered.tokens), params=params, context_length=self.context_length)
        return Prompt(tokens=rendered.tokens, stop=rendered.stop, in_reasoning=rendered.in_reasoning)

    def _check_grammar(self, grammar: str) -> None:
        from worker.grammar import check_grammar

        # One llama.cpp cannot parse would leave the sampler chain with a null sampler: a crash.
        check_grammar(grammar, vocab=self._llm._model.vocab)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = None
        # Llama takes no lazy grammar: a call the model starts of its own (tool_choice auto) is
        # parsed but not constrained on this backend.
        if params.eager_grammar is not None:
            # Checked again: the worker may have wrapped the grammar since prepare() (room for reasoning).
            self._check_grammar(params.eager_grammar)
            grammar = LlamaGrammar.from_string(params.eager_grammar, verbose=False)
        ends: list[ChoiceOutcome] = []
        with self._cores.seat() as seat:
            for index in range(max(params.n, 1)):
                if ends and ends[-1].reason == "cancelled":
                    ends.append(ChoiceOutcome(index=index, reason="cancelled", completion_tokens=0))
                    continue
                choice = self._choice(prompt, params, index=index, grammar=grammar, cancel=cancel, emit=emit, seat=seat)
                ends.append(choice)
        return outcome_of(ends)

    def _choice(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        index: int,
        grammar: LlamaGrammar | None,
        cancel: threading.Event,
        emit: Emit,
        seat: Seat,
    ) -> ChoiceOutcome:
        llm = self._llm
        ctx = llm._ctx.ctx
        # The generator decodes the prompt on its first step and each token on the next.
        seat.apply_to(ctx)
        budget = self.context_length - len(prompt.tokens)
        limit = min(params.max_tokens, budget) if params.max_tokens else budget
        # Always seed: without a request seed, draw one, so runs (and choices) differ like other servers'.
        llm.set_seed(params.seed + index if params.seed is not None else int.from_bytes(_random_bytes(4), "little"))
        text = _ChoiceText(llm, stop=[*params.stop, *prompt.stop], params=params)
        produced = 0
        reason: FinishReason = "length"
        tokens: Any = llm.generate(
            prompt.tokens,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.0,
            # Over the last 64 tokens sampled (Llama's last_n_tokens_size), not the whole completion.
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if llm_token_is_eog(llm, token) or token in self._eos:
                    reason = "stop"
                    break
                produced += 1
                # Read before the generator decodes this token: the logits it was sampled from.
                piece, logprobs = text.feed(token)
                if piece or logprobs:
                    emit(piece, index=index, logprobs=logprobs)
                if text.stopped:
                    reason = "stop"
                    break
                if produced >= limit:
                    break
                seat.apply_to(ctx)
        finally:
            # The next choice's generate() replaces the sampler this one still refers to.
            tokens.close()
        if reason != "cancelled":
            tail, logprobs = text.flush()
            if tail or logprobs:
                emit(tail, index=index, logprobs=logprobs)
        return ChoiceOutcome(index=index, reason=reason, completion_tokens=produced)

    def close(self) -> None:
        self._llm.close()


class _ChoiceText:
    """One choice's text, with each token's log probabilities when the request asks for them.

    They are read from the logits the token was sampled from: the context keeps the last
    step's until the next decode, so no `logits_all` buffer is needed.
    """

    def __init__(self, llm: Llama, *, stop: list[str], params: SamplingParams) -> None:
        self._llm = llm
        self._top = params.top_logprobs
        self._plain: TextStream | None = None
        self._scored: tuple[LogprobText, LogprobReader] | None = None
        if params.logprobs:
            from worker.logprobs import LogprobReader, LogprobText

            reader = LogprobReader(
                ctx=llm._ctx.ctx, n_vocab=llm.n_vocab(), piece=lambda t: llm.detokenize([t], special=True)
            )
            self._scored = (LogprobText(stop=stop), reader)
        else:
            self._plain = TextStream(stop=stop)

    @property
    def stopped(self) -> bool:
        if self._scored is not None:
            return self._scored[0].stopped
        assert self._plain is not None
        return self._plain.stopped

    def feed(self, token: int) -> tuple[str, list[TokenLogprob]]:
        raw = self._llm.detokenize([token])
        if self._scored is None:
            assert self._plain is not None
            return self._plain.feed(raw), []
        stream, reader = self._scored
        return stream.feed(raw, reader.score(row=-1, token=token, top=self._top))

    def flush(self) -> tuple[str, list[TokenLogprob]]:
        if self._scored is None:
            assert self._plain is not None
            return self._plain.flush(), []
        return self._scored[0].flush()


def outcome_of(ends: Sequence[ChoiceOutcome]) -> Outcome:
    """The job's outcome from each choice's: choice 0's reason, every choice's tokens."""
    return Outcome(
        reason=ends[0].reason,
        completion_tokens=sum(end.completion_tokens for end in ends),
        choices=tuple(ends) if len(ends) > 1 else (),
    )


def _random_bytes(n: int) -> bytes:
    import os

    return os.urandom(n)


def llm_token_is_eog(llm: Llama, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
