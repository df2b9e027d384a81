"""A worker decodes one token before it registers as ready.

A broken llama.cpp build or model file then fails once, at start-up, with one clear line,
instead of at a user's first request. A crash inside llama.cpp (SIGSEGV) kills the process
before it registers, which the fleet supervisor counts as a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from worker.engine import Engine
from worker.protocol import Message, SamplingParams, TokenLogprob

_PROMPT = (Message(role="user", content="Hi"),)
_PARAMS = SamplingParams(max_tokens=1, temperature=0.0, seed=0)


class SelfCheckFailed(RuntimeError):
    pass


def _discard(text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
    return None


def self_check(engine: Engine) -> None:
    """Tokenize a short chat and decode one token; SelfCheckFailed (one line) otherwise."""
    try:
        prompt = engine.prepare(_PROMPT, _PARAMS)
        engine.generate(prompt, _PARAMS, cancel=threading.Event(), emit=_discard)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SelfCheckFailed(f"model {engine.model_id} failed its self-check (decoding one token): {detail}") from exc
