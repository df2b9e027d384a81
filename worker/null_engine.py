"""A model that answers at once with known text: measures the queue path, not a model.

Selected with INFERENCE_BACKEND=null. It exists for the queue-overhead benchmark and for
tests of queue behaviour that need a slow, predictable model (INFERENCE_NULL_TOKEN_DELAY_MS).
It echoes the last user message word by word (so a test can tell answers apart), or
fixed words when there is none.

Request parameters, honestly: with n > 1 every choice is the same echo, word for word in step.
The echo is certain, so each word's log probability is 0.0 and its only alternative with any
probability is itself: `top_logprobs` lists that one entry however many were asked for. A
grammar (a response format or a forced tool call) is refused: an echo cannot follow one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from worker.engine import (
    ChoiceOutcome,
    Emit,
    Outcome,
    Prompt,
    UnsupportedParameter,
    check_fits,
    outcome_of,
    refuse_lazy_grammar,
)
from worker.protocol import Message, SamplingParams, TokenLogprob, Tool, TopLogprob

_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


class NullEngine:
    backend = "null"

    def __init__(self, *, model_id: str, context_length: int = 2048, token_delay_s: float = 0.0) -> None:
        self.model_id = model_id
        self.context_length = context_length
        self._token_delay_s = token_delay_s

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        refuse_lazy_grammar(params, backend="null")
        # A lazy grammar (a call the model may start) is otherwise let be: the echo starts none.
        if params.eager_grammar is not None:
            raise UnsupportedParameter(
                "The null backend echoes the prompt and cannot follow a response format or a forced tool call; "
                "serve the model with the llamacpp or vllm backend for them",
                param="response_format",
            )
        # One "token" per whitespace-separated word, plus the turn markers a template adds.
        tokens = [0] * sum(len(m.content.split()) + 3 for m in messages)
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words = tuple(w if i == 0 else f" {w}" for i, w in enumerate(last_user.split())) or _WORDS
        return Prompt(tokens=tokens, stop=[], script=words)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        limit = params.max_tokens or 16
        choices = range(max(params.n, 1))
        for produced in range(limit):
            if cancel.is_set():
                return outcome_of(
                    [ChoiceOutcome(index=i, reason="cancelled", completion_tokens=produced) for i in choices]
                )
            if self._token_delay_s:
                time.sleep(self._token_delay_s)
            word = prompt.script[produced % len(prompt.script)]
            logprobs = [_certain(word, top=params.top_logprobs)] if params.logprobs else []
            for index in choices:
                emit(word, index=index, logprobs=logprobs)
        return outcome_of([ChoiceOutcome(index=i, reason="length", completion_tokens=limit) for i in choices])

    def close(self) -> None:
        return None


def _certain(word: str, *, top: int) -> TokenLogprob:
    raw = list(word.encode("utf-8"))
    return TokenLogprob(word, 0.0, raw, [TopLogprob(word, 0.0, raw)] if top > 0 else [])
