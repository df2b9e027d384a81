"""Typed errors of the presets package.

``ConfigError`` is what start-up reports: its ``str()`` is always one line that names the
problem, so the CLI and the fronts can print it without a traceback. The lookup errors
carry the offending id so HTTP handlers can map them (404 for unknown, 503 for not loaded).
"""

from __future__ import annotations

from collections.abc import Iterable


def _one_line(text: str) -> str:
    return " ".join(text.split())


class PresetsError(Exception):
    """Base class of every error raised by this package."""


class ConfigError(PresetsError):
    """The active configuration cannot run; the message is one readable line."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class UnknownPresetError(ConfigError):
    """INFERENCE_CONFIG names no preset."""

    def __init__(self, name: str, *, known: Iterable[str] = ()) -> None:
        self.name = name
        known_list = sorted(known)
        hint = f" (known: {', '.join(known_list)})" if known_list else ""
        super().__init__(f"unknown preset {name!r}{hint}")


class UnknownModelError(PresetsError, LookupError):
    """A model id (or alias) that the registry does not know."""

    def __init__(self, model_id: str, *, known: Iterable[str] = ()) -> None:
        self.model_id = model_id
        known_list = sorted(known)
        hint = f" (known: {', '.join(known_list)})" if known_list else ""
        super().__init__(_one_line(f"unknown model {model_id!r}{hint}"))


class ModelNotLoadedError(PresetsError, LookupError):
    """A known model (or a role) that no loaded worker serves right now."""

    def __init__(self, model_id: str, *, loaded: Iterable[str] = ()) -> None:
        self.model_id = model_id
        self.loaded = tuple(loaded)
        loaded_text = ", ".join(self.loaded) if self.loaded else "none"
        super().__init__(_one_line(f"model {model_id!r} is not loaded (loaded: {loaded_text})"))
