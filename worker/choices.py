"""One choice of a batched generation: its sampled tokens become emitted text, with log probabilities on request."""

from __future__ import annotations

from collections.abc import Callable

from worker.engine import Emit, FinishReason
from worker.logprobs import LogprobReader, LogprobText
from worker.textstream import TextStream


class ChoiceText:
    """Detokenizes and stops one choice's tokens and emits its text under its index.

    `on_token` runs on the scheduler thread between two decodes, while the logits of the
    token's output row are still readable; without a reader it does no numeric work at all.
    """

    def __init__(
        self,
        *,
        index: int,
        stop: list[str],
        emit: Emit,
        piece: Callable[[int], bytes],
        reader: LogprobReader | None = None,
        top_logprobs: int = 0,
    ) -> None:
        self._index = index
        self._emit = emit
        self._piece = piece
        self._reader = reader
        self._top = top_logprobs
        self._plain = TextStream(stop=stop) if reader is None else None
        self._scored = LogprobText(stop=stop) if reader is not None else None

    def on_token(self, token: int, row: int) -> bool:
        """Takes the next sampled token (decoded at batch row `row`); True once a stop string ended the text."""
        plain = self._plain
        if plain is not None:
            out = plain.feed(self._piece(token))
            if out:
                self._send(out)
            return plain.stopped
        scored, reader = self._scored, self._reader
        assert scored is not None and reader is not None
        text, entries = scored.feed(self._piece(token), reader.score(row=row, token=token, top=self._top))
        if text:
            self._emit(text, index=self._index, logprobs=entries)
        return scored.stopped

    def finish(self, reason: FinishReason) -> None:
        """Emits what the stream held back, unless the choice was cancelled."""
        if self._plain is not None:
            tail = self._plain.flush()
            if tail and reason != "cancelled":
                self._send(tail)
            return
        assert self._scored is not None
        text, entries = self._scored.flush()
        if text and reason != "cancelled":
            self._emit(text, index=self._index, logprobs=entries)

    def _send(self, text: str) -> None:
        # Choice 0 without log probabilities passes the text alone: one-argument emits keep working.
        if self._index:
            self._emit(text, index=self._index)
        else:
            self._emit(text)
