"""The whole path with the real embedded model (SmolLM2-135M) in a real worker process."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from presets.embedded import resolve_embedded
from tests.conftest import StartFront, StartWorker
from worker.llama_params import open_llama

MODEL = "smollm2-135m"
pytestmark = [pytest.mark.redis, pytest.mark.model]


@pytest.fixture(scope="module")
def reference_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The same model called in-process: what the service must reproduce at temperature 0."""
    path = resolve_embedded(MODEL, models_dir=tmp_path_factory.mktemp("ref"))
    # With the worker's CPU choice: llama.cpp's default buffers crash on CPUs with AMX.
    llm = open_llama(path=path, extra_buffers="auto", flash_attention="auto", n_ctx=4096, n_threads=2, verbose=False)
    yield llm
    llm.close()


def reference(llm: Any, content: str, max_tokens: int) -> dict[str, Any]:
    result: dict[str, Any] = llm.create_chat_completion(
        messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )
    return result


def test_plain_and_streamed_answers_match_the_model_in_process(
    start_worker: StartWorker, start_front: StartFront, reference_llm: Any
) -> None:
    start_worker(MODEL)
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    question = "What is the capital of France?"
    expected = reference(reference_llm, question, 24)

    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    assert plain.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert plain.usage is not None
    assert plain.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert plain.usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert plain.model == MODEL

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_stop_sequence_and_max_tokens(start_worker: StartWorker, start_front: StartFront, reference_llm: Any) -> None:
    start_worker(MODEL)
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    full = reference(reference_llm, "Count from one to ten in words.", 40)["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) > 3, full
    stop_word = words[2]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to ten in words."}],
        max_tokens=40,
        temperature=0,
        stop=[stop_word],
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == full[: full.index(stop_word)]

    short = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=5, temperature=0
    )
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_a_400_before_generation(
    start_worker: StartWorker, start_front: StartFront, stream: bool
) -> None:
    start_worker(MODEL, INFERENCE_N_CTX="128")
    url = start_front()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "word " * 400}],
        "stream": stream,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    # llama.cpp rounds the context up to its block size; the message names the real one.
    cards = {card["id"]: card for card in httpx.get(f"{url}/v1/models").json()["data"]}
    context_length = cards[MODEL]["context_length"]
    assert 128 <= context_length < 400
    assert f"maximum context length is {context_length} tokens" in error["message"]


def test_eight_concurrent_streams_get_the_answers_they_would_get_alone(
    start_worker: StartWorker, start_front: StartFront, reference_llm: Any
) -> None:
    start_worker(MODEL)
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    topics = ["cats", "the sea", "bread", "rain", "chess", "trains", "music", "snow"]
    prompts = [f"Write one sentence about {topic}." for topic in topics]
    expected = [reference(reference_llm, p, 16)["choices"][0]["message"]["content"] for p in prompts]
    assert len(set(expected)) == len(expected)

    def run(prompt: str) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, prompts))
    assert answers == expected


def test_a_worker_with_four_batched_slots_gives_each_stream_its_answer_alone(
    start_worker: StartWorker, start_front: StartFront, reference_llm: Any
) -> None:
    # The default split KV cache: batched sequences decode bit-identically to a sequence alone.
    start_worker(MODEL, INFERENCE_MAX_CONCURRENT_PER_MODEL="4")
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    prompts = [f"Write one sentence about {topic}." for topic in ("owls", "glass", "maps", "tea")]
    expected = [reference(reference_llm, p, 24)["choices"][0]["message"]["content"] for p in prompts]

    def run(prompt: str) -> str:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0
        )
        return answer.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(run, prompts)) == expected


def test_gemma_worker_answers_with_real_usage(
    start_worker: StartWorker, start_front: StartFront, models_dir: Path
) -> None:
    start_worker("gemma3-270m")
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=0
    )
    assert answer.model == "gemma3-270m"
    assert answer.usage is not None and answer.usage.prompt_tokens > 5
    assert answer.usage.completion_tokens >= 1
    assert (models_dir / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf").is_file()


def test_a_stream_interval_batches_tokens_without_changing_the_text(
    start_worker: StartWorker, start_front: StartFront, reference_llm: Any
) -> None:
    start_worker(MODEL, INFERENCE_STREAM_INTERVAL_MS="200")
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    question = "Describe a forest in three sentences."
    expected = reference(reference_llm, question, 40)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == expected["choices"][0]["message"]["content"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected["usage"]["completion_tokens"] > 20
    assert 1 < len(pieces) < expected["usage"]["completion_tokens"]
