"""A model that answers at once with known text: measures the queue path, not a model.

Selected with INFERENCE_BACKEND=null. It exists for the queue-overhead benchmark and for
tests of queue behaviour that need a slow, predictable model (INFERENCE_NULL_TOKEN_DELAY_MS).
It echoes the last user message word by word (so a test can tell answers apart), or
fixed words when there is none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from worker.engine import Emit, Outcome, Prompt, check_fits
from worker.protocol import Message, SamplingParams

_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


class NullEngine:
    backend = "null"

    def __init__(self, *, model_id: str, context_length: int = 2048, token_delay_s: float = 0.0) -> None:
        self.model_id = model_id
        self.context_length = context_length
        self._token_delay_s = token_delay_s

    def prepare(self, messages: Sequence[Message], params: SamplingParams) -> Prompt:
        # One "token" per whitespace-separated word, plus the turn markers a template adds.
        tokens = [0] * sum(len(m.content.split()) + 3 for m in messages)
        check_fits(prompt_tokens=len(tokens), params=params, context_length=self.context_length)
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words = tuple(w if i == 0 else f" {w}" for i, w in enumerate(last_user.split())) or _WORDS
        return Prompt(tokens=tokens, stop=[], script=words)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        limit = params.max_tokens or 16
        for produced in range(limit):
            if cancel.is_set():
                return Outcome(reason="cancelled", completion_tokens=produced)
            if self._token_delay_s:
                time.sleep(self._token_delay_s)
            emit(prompt.script[produced % len(prompt.script)])
        return Outcome(reason="length", completion_tokens=limit)

    def close(self) -> None:
        return None
