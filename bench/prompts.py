"""The prompts every system answers, and the request body for them.

Each asks for a long answer, so that at temperature 0 nearly every request runs to
max_tokens and all systems decode the same number of tokens. Distinct prompts keep a
server's prompt cache from turning the prefill into a no-op (only the template's shared
head is reused, by every system alike).
"""

from __future__ import annotations

from typing import Any

_TOPICS = (
    "how a refrigerator keeps food cold",
    "the history of the printing press",
    "why the sky is blue",
    "how vaccines train the immune system",
    "the water cycle",
    "how a bicycle stays upright",
    "the life of a honeybee colony",
    "how compilers turn source code into machine code",
    "the causes of the seasons",
    "how bread rises",
    "the rules of chess for a beginner",
    "how volcanoes form",
    "the journey of a letter through the postal system",
    "how solar panels make electricity",
    "the migration of monarch butterflies",
    "how a hash table works",
    "the building of the pyramids",
    "how the heart pumps blood",
    "the phases of the moon",
    "how a jet engine works",
    "the story of the first moon landing",
    "how coffee is grown and roasted",
    "why leaves change colour in autumn",
    "how the internet routes a message",
    "the life cycle of a star",
    "how a lock and key work",
    "the invention of the telephone",
    "how rainbows form",
    "the benefits of regular exercise",
    "how glass is made",
    "the way tides work",
    "how a camera captures a photograph",
)

_TEMPLATES = (
    "Write a detailed, multi-paragraph explanation of {}.",
    "Explain {} to a curious student, in detail and with examples.",
    "Give a long, thorough account of {}.",
    "Describe {} step by step, leaving nothing out.",
    "Tell the whole story of {}, with every detail you know.",
    "Write a long essay on {}, covering it from every side.",
)
PROMPTS: tuple[str, ...] = tuple(template.format(topic) for template in _TEMPLATES for topic in _TOPICS)
# Each load phase starts at its own offset, so no phase re-sends a prompt an earlier one
# left in a server's prompt cache.
# 30 prompts for the idle-system run, 60 for the concurrency blocks, 30 for Poisson arrivals,
# 60 for the head-to-head rounds of the batched service and llama-server.
SEQUENTIAL, CONCURRENT, POISSON, HEAD_TO_HEAD = 0, len(_TOPICS), 3 * len(_TOPICS), 4 * len(_TOPICS)
WARMUP_PROMPT = "Say hello and introduce yourself in two sentences."

# The debate bench's questions: open enough that both models write to max_tokens. Each
# request gets its own, so no worker answers from a prompt it still holds in its cache.
DEBATE_PROMPTS = tuple(
    f"Explain in detail, step by step, {question}"
    for question in (
        "why the sky is blue.",
        "how a rainbow forms.",
        "why ice floats on water.",
        "how plants turn sunlight into food.",
        "why we have day and night.",
        "how a thermometer measures temperature.",
        "why metal feels colder than wood.",
        "how sound travels through air.",
        "why bread goes stale.",
        "how a magnet attracts iron.",
    )
)


def prompt(index: int) -> str:
    return PROMPTS[index % len(PROMPTS)]


def chat_body(model: str, content: str, *, max_tokens: int, usage: bool = True, **extra: object) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body
