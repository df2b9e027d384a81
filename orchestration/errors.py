"""Errors the orchestration layer raises to its callers."""

from __future__ import annotations


class NotEnoughModels(ValueError):
    """The requested mode needs more loaded models than there are; the front answers 400."""

    def __init__(self, *, mode: str, needed: int, loaded: int) -> None:
        super().__init__(
            f"orchestration mode {mode!r} needs at least {needed} loaded models, but {loaded} "
            f"{'is' if loaded == 1 else 'are'} loaded"
        )
        self.mode = mode
        self.needed = needed
        self.loaded = loaded


class UnknownMode(ValueError):
    """The orchestration mode is none of single, critique, debate, ensemble, pipeline."""

    def __init__(self, mode: str) -> None:
        super().__init__(f"unknown orchestration mode {mode!r} (use single, critique, debate, ensemble or pipeline)")
        self.mode = mode
