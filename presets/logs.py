"""Logging for the front, the worker and the fleet: readable text or one JSON object per line.

A request's lines carry its request id, model, worker id and step wherever they are known:
the front binds them when it routes a request, the worker when it takes a job. They live in
contextvars, so every line logged from the request's task (and the tasks it starts) gets
them without passing them around, and a log call that does not know about requests at all
still says which request caused it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

from presets.settings import Settings

ContextField = Literal["request_id", "model", "worker_id", "step"]
CONTEXT_FIELDS: tuple[ContextField, ...] = ("request_id", "model", "worker_id", "step")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that bring their own handlers (arq's CLI and uvicorn configure them): their lines
# go through ours instead, so that a deployment's log is in one format.
_TAKEN_OVER = ("arq", "uvicorn", "uvicorn.error", "uvicorn.access")

_context: dict[str, ContextVar[str | None]] = {name: ContextVar(f"log_{name}", default=None) for name in CONTEXT_FIELDS}
# When the bound request started (time.monotonic()): lines carry the milliseconds since.
_started_s: ContextVar[float | None] = ContextVar("log_started_s", default=None)


def bind(*, started_s: float | None = None, **fields: str | None) -> None:
    """Attach fields to every later line of the current task and the tasks it starts."""
    for name, value in fields.items():
        _context[name].set(value)
    if started_s is not None:
        _started_s.set(started_s)


def bound() -> dict[str, Any]:
    """The fields bound in the current context (None ones left out), with elapsed_ms."""
    found: dict[str, Any] = {name: var.get() for name, var in _context.items() if var.get() is not None}
    started_s = _started_s.get()
    if started_s is not None:
        found["elapsed_ms"] = round((time.monotonic() - started_s) * 1000, 1)
    return found


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a text format may name them too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = bound()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the bound fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "context", None) or {})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the request's fields appended when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", None)
        if not context:
            return line
        return line + " [" + " ".join(f"{key}={value}" for key, value in context.items()) + "]"


def configure_logging(settings: Settings) -> None:
    """Send every logger's lines to stderr in the configured format; safe to call again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    formatter: logging.Formatter = JsonFormatter() if settings.log_format == "json" else TextFormatter(_TEXT_FORMAT)
    if isinstance(formatter, JsonFormatter):
        # Timestamps in UTC, as the trailing Z says.
        formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in _TAKEN_OVER:
        taken = logging.getLogger(name)
        for old in list(taken.handlers):
            taken.removeHandler(old)
        taken.propagate = True
