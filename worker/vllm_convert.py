"""vLLM's terms for our requests, and ours for its outputs.

Messages and tools go to a Hugging Face chat template as its `tools` variable and
`tool_calls` messages; the worker's GBNF grammar goes as structured output; each choice's
DELTA outputs come back as text with the log probabilities of the tokens that text completes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from worker.engine import Emit, FinishReason
from worker.protocol import TokenLogprob, TopLogprob


@dataclass
class ChoiceStream:
    """One choice's stream: its tokens so far, how it ended, the log probabilities not yet sent."""

    pending: PendingLogprobs | None
    top: int = 0
    produced: int = 0
    reason: FinishReason | None = None

    def take(self, completion: Any, *, index: int, emit: Emit) -> None:
        """Hands on a DELTA CompletionOutput: its new text, and the log probabilities that text completes."""
        self.produced += len(completion.token_ids)
        if completion.finish_reason is not None:
            self.reason = finish_reason(completion.finish_reason)
        if self.pending is None:
            if completion.text:
                emit(completion.text, index=index)
            return
        for token_id, alternatives in zip(completion.token_ids, completion.logprobs or [], strict=False):
            self.pending.add(token_logprob(token_id, alternatives, top=self.top))
        logprobs = self.pending.release(completion.text)
        if self.reason is not None:
            # vLLM's logprobs cover a stop string's tokens and the end-of-sequence token, the text does not.
            logprobs += self.pending.finish(cut=self.reason != "length")
        if completion.text or logprobs:
            emit(completion.text, index=index, logprobs=logprobs)


class PendingLogprobs:
    """Holds a choice's token log probabilities until vLLM's text covers their tokens.

    vLLM holds text back while it may still start a stop string, and drops the stop string and
    the end-of-sequence token from the text but not from the log probabilities. Placed by their
    UTF-8 bytes, the tokens go out with the piece of text that completes them, so the tokens
    sent concatenate to the text sent.
    """

    def __init__(self) -> None:
        self._entries: deque[tuple[int, int, TokenLogprob]] = deque()
        self._fed_bytes = 0
        self._released_bytes = 0

    def add(self, entry: TokenLogprob) -> None:
        size = len(entry.bytes)
        self._entries.append((self._fed_bytes, self._fed_bytes + size, entry))
        self._fed_bytes += size

    def release(self, text: str) -> list[TokenLogprob]:
        """The entries whose text is now all out, `text` being what came out just now."""
        self._released_bytes += len(text.encode("utf-8"))
        out: list[TokenLogprob] = []
        while self._entries and self._entries[0][1] <= self._released_bytes:
            out.append(self._entries.popleft()[2])
        return out

    def finish(self, *, cut: bool) -> list[TokenLogprob]:
        """The entries left at the end: all of them, or when the text was cut short, those begun before the cut.

        The token the cut falls in keeps only its text before the cut.
        """
        rest: list[TokenLogprob] = []
        for start, end, entry in self._entries:
            if not cut or end <= self._released_bytes:
                rest.append(entry)
            elif start < self._released_bytes:
                head = bytes(entry.bytes[: self._released_bytes - start])
                rest.append(TokenLogprob(head.decode("utf-8", errors="ignore"), entry.logprob, list(head), entry.top))
        self._entries.clear()
        return rest


def token_logprob(token_id: int, alternatives: dict[int, Any], *, top: int) -> TokenLogprob:
    """vLLM's entry for one token, {token id: Logprob(logprob, rank, decoded_token)}, as OpenAI's."""
    sampled = alternatives[token_id]
    # The sampled token wherever it ranks, then the `top` likeliest ranked 1, 2, ... (it may be among them).
    likeliest = sorted(
        (one for one in alternatives.values() if one.rank is not None and one.rank <= top), key=lambda one: one.rank
    )
    return TokenLogprob(
        _decoded(sampled),
        sampled.logprob,
        list(_decoded(sampled).encode("utf-8")),
        [TopLogprob(_decoded(one), one.logprob, list(_decoded(one).encode("utf-8"))) for one in likeliest],
    )


def _decoded(logprob: Any) -> str:
    return logprob.decoded_token or ""


def structured_output(grammar: str | None) -> dict[str, Any]:
    """The GBNF grammar as this vLLM takes it: StructuredOutputsParams since 0.11, GuidedDecodingParams before."""
    if grammar is None:
        return {}
    import vllm.sampling_params as sampling

    if hasattr(sampling, "StructuredOutputsParams"):
        return {"structured_outputs": sampling.StructuredOutputsParams(grammar=grammar)}
    return {"guided_decoding": sampling.GuidedDecodingParams(grammar=grammar)}


def finish_reason(vllm_reason: str) -> FinishReason:
    # vLLM's finish reasons: "stop" (EOS or a stop string), "length", "abort".
    if vllm_reason == "abort":
        return "cancelled"
    return "stop" if vllm_reason == "stop" else "length"
