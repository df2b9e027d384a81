"""Which request arguments a chat completion takes: OpenAI's that this service does not do are
refused by name, unknown ones as OpenAI refuses them, and free-form JSON is checked to fit a job."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

# Error type api.errors reads: its message goes to the client as written, `param` names the field.
REFUSED = "refused"
# Free-form JSON (a schema, tool parameters) deeper than this is no schema anyone writes.
MAX_JSON_DEPTH = 64
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_SHOWN_NAME_CHARS = 64


def refused(message: str, *, param: str) -> PydanticCustomError:
    """A validation error whose message is the client's 400 as it stands, naming `param`.

    Raised inside a nested model, `param` is relative to it: api.errors prefixes its location.
    """
    # Braces in the message would be read as placeholders of the context.
    return PydanticCustomError(REFUSED, message.replace("{", "(").replace("}", ")"), {"param": param})


def shown(name: str) -> str:
    """A client's text fit to quote in an error: valid UTF-8, not too long."""
    text = name[:_SHOWN_NAME_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    return text + ("…" if len(name) > _SHOWN_NAME_CHARS else "")


@dataclass(frozen=True)
class Unsupported:
    """An OpenAI argument this service does not do; `harmless` values (its off state) pass."""

    message: str
    harmless: Callable[[Any], bool] = lambda value: value is None


# OpenAI's chat completion arguments this service cannot honour. Their off values are accepted
# and dropped, so clients that send every argument with its default keep working.
UNSUPPORTED: Mapping[str, Unsupported] = {
    "logit_bias": Unsupported(
        "logit_bias is not supported: this service does not change token probabilities.",
        lambda value: value is None or value == {},
    ),
    "functions": Unsupported("functions is deprecated and not supported: use tools."),
    "function_call": Unsupported("function_call is deprecated and not supported: use tool_choice."),
    "audio": Unsupported("Audio output is not supported."),
    "modalities": Unsupported(
        'Only the text modality is supported: modalities must be ["text"].',
        lambda value: value is None or value == ["text"],
    ),
    "prediction": Unsupported("Predicted outputs (prediction) are not supported."),
    "web_search_options": Unsupported("Web search (web_search_options) is not supported."),
    "reasoning_effort": Unsupported(
        "reasoning_effort is not supported: a reasoning model thinks for as long as it needs."
    ),
    "verbosity": Unsupported("verbosity is not supported."),
    "store": Unsupported(
        "Stored completions are not supported: store must be false.", lambda value: value is None or value is False
    ),
}


def known_arguments(data: dict[Any, Any], *, fields: Mapping[str, object]) -> dict[Any, Any]:
    """The request without the off values of unsupported arguments; a 400 for any other argument."""
    for name, value in data.items():
        if name in fields:
            continue
        text = shown(str(name))
        rule = UNSUPPORTED.get(str(name))
        if rule is None:
            raise refused(f"Unrecognized request argument supplied: {text}", param=text)
        if not rule.harmless(value):
            raise refused(rule.message, param=text)
    return {name: value for name, value in data.items() if name in fields}


def portable_json(value: Any) -> Any:
    """Free-form JSON that a job can carry: msgpack's integers, UTF-8 text, bounded depth."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        if isinstance(item, int):
            if not _INT64_MIN <= item <= _UINT64_MAX:
                raise ValueError("holds an integer outside the 64-bit range")
        elif isinstance(item, str):
            encodable(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise ValueError("has an object key that is not a string")
                encodable(key)
                stack.append((inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in item)
        else:
            raise ValueError("is not JSON")
    return value


def encodable(value: str) -> str:
    """The text, if UTF-8 can carry it (msgpack, the tokenizer, our own error messages)."""
    # JSON's \ud800 escapes decode to lone surrogates.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value
