"""Turns a model's token pieces into client text: UTF-8 reassembly and stop strings.

A piece can end inside a multi-byte character, and a stop string can arrive split over
several pieces, so text that might still turn out to be part of either is held back.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, *, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def _hold_back(self) -> int:
        """Length of the longest tail of the pending text that could start a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text now safe to send (may be empty)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._hold_back()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        """The generation ended without a stop string: release what was held back."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out
