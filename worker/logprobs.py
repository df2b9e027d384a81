"""Log probabilities of sampled tokens, and text released in whole tokens so each carries its own.

The figures are the model's raw distribution (a log-softmax of the logits, before
temperature, penalties or grammar), as OpenAI and vLLM report them.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from worker.protocol import TokenLogprob, TopLogprob
from worker.textstream import TextStream


@dataclass(frozen=True, kw_only=True)
class Scored:
    """A sampled token's log probability and its likeliest alternatives, before its text is known."""

    logprob: float
    top: list[TopLogprob]


class LogprobReader:
    """Reads one output row of the context's logits after a decode, before the next one."""

    def __init__(self, *, ctx: Any, n_vocab: int, piece: Callable[[int], bytes]) -> None:
        self._ctx = ctx
        self._n_vocab = n_vocab
        self._piece = piece

    def score(self, *, row: int, token: int, top: int) -> Scored:
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, row)
        # A view of llama.cpp's buffer, no copy: valid until the next decode.
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        shifted = logits - logits.max()
        log_total = float(np.log(np.exp(shifted).sum(dtype=np.float64)))
        alternatives: list[TopLogprob] = []
        if top > 0:
            best = np.argpartition(shifted, -top)[-top:]
            for candidate in best[np.argsort(-shifted[best], kind="stable")]:
                piece = self._piece(int(candidate))
                alternatives.append(
                    TopLogprob(
                        token=piece.decode("utf-8", errors="replace"),
                        logprob=float(shifted[candidate]) - log_total,
                        bytes=list(piece),
                    )
                )
        return Scored(logprob=float(shifted[token]) - log_total, top=alternatives)


@dataclass
class _Pending:
    score: Scored
    piece: bytes
    # The token's share of the decoded text (empty while it ends inside a UTF-8 character).
    text: str


class LogprobText:
    """A TextStream whose released text always ends on a token boundary, paired with those tokens.

    The tokens' texts concatenate to the released text: a token whose text a stop string cuts
    keeps only the part before it (and is dropped when nothing is left of it), a token inside
    a multi-byte character carries no text and the one completing it carries the character.
    """

    def __init__(self, *, stop: list[str]) -> None:
        self._stream = TextStream(stop=stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._queue: deque[_Pending] = deque()
        # Text the stream released whose tokens are not all released yet.
        self._released = ""
        # Released tokens without text (inside a character, or rendered as nothing), kept for the next text.
        self._carried: list[TokenLogprob] = []

    @property
    def stopped(self) -> bool:
        return self._stream.stopped

    def feed(self, piece: bytes, score: Scored) -> tuple[str, list[TokenLogprob]]:
        if self._stream.stopped:
            return "", []
        self._queue.append(_Pending(score=score, piece=piece, text=self._decoder.decode(piece)))
        self._released += self._stream.feed(piece)
        text, entries = self._take_whole_tokens()
        if self._stream.stopped:
            # What is left was released before the stop string: the part of one token before it.
            if self._released:
                head = self._queue[0]
                entries.append(_entry(head, text=self._released, piece=self._released.encode()))
                text += self._released
            self._released = ""
            self._queue.clear()
        return self._with_carried(text, entries)

    def flush(self) -> tuple[str, list[TokenLogprob]]:
        """The generation ended without a stop string: release the rest, and its tokens."""
        tail = self._decoder.decode(b"", final=True)
        if tail and self._queue:
            self._queue[-1].text += tail
        self._released += self._stream.flush()
        text, entries = self._take_whole_tokens()
        # Whatever the stream still held cannot lack its tokens now; keep the invariant regardless.
        self._queue.clear()
        self._released = ""
        return self._with_carried(text, entries)

    def _with_carried(self, text: str, entries: list[TokenLogprob]) -> tuple[str, list[TokenLogprob]]:
        """Textless tokens wait for a piece of text to go with: an emit always carries text."""
        if not text:
            self._carried += entries
            return "", []
        if self._carried:
            entries, self._carried = [*self._carried, *entries], []
        return text, entries

    def _take_whole_tokens(self) -> tuple[str, list[TokenLogprob]]:
        entries: list[TokenLogprob] = []
        used = 0
        queue = self._queue
        while queue:
            head = queue[0]
            if used + len(head.text) > len(self._released):
                break
            # The last token may still be waiting for the rest of a character.
            if len(queue) == 1 and not head.text and self._decoder.getstate()[0]:
                break
            used += len(head.text)
            entries.append(_entry(queue.popleft(), text=head.text, piece=head.piece))
        text, self._released = self._released[:used], self._released[used:]
        return text, entries


def _entry(pending: _Pending, *, text: str, piece: bytes) -> TokenLogprob:
    return TokenLogprob(token=text, logprob=pending.score.logprob, bytes=list(piece), top=pending.score.top)
