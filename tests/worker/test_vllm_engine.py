from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from presets.settings import load_settings
from tests.worker import fake_vllm
from worker.engine import PromptTooLong
from worker.protocol import Message, SamplingParams


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    saved = {name: sys.modules.get(name) for name in ("vllm", "vllm.inputs", "vllm.sampling_params")}
    fake_vllm.install()
    from worker.vllm_engine import VllmEngine

    built = VllmEngine(model_id="m", path=Path("/models/m.gguf"), settings=load_settings(n_ctx=256))
    yield built
    built.close()
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def run(engine: object, params: SamplingParams, cancel: threading.Event | None = None) -> tuple[list[str], object]:
    pieces: list[str] = []
    prompt = engine.prepare([Message("user", "hi")], params)  # type: ignore[attr-defined]
    outcome = engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=pieces.append)  # type: ignore[attr-defined]
    return pieces, outcome


def test_prompt_is_the_models_chat_template_and_is_checked_against_the_context(engine: object) -> None:
    prompt = engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4))  # type: ignore[attr-defined]
    assert "".join(map(chr, prompt.tokens)) == "<user>hi<assistant>"
    assert fake_vllm.INSTANCES[-1].args.max_model_len == 256
    with pytest.raises(PromptTooLong):
        engine.prepare([Message("user", "x" * 300)], SamplingParams(max_tokens=4))  # type: ignore[attr-defined]


def test_deltas_are_emitted_and_tokens_counted(engine: object) -> None:
    pieces, outcome = run(engine, SamplingParams(max_tokens=3, temperature=0))
    assert pieces == ["alpha", " beta", " gamma"]
    assert outcome.reason == "length" and outcome.completion_tokens == 3  # type: ignore[attr-defined]


def test_stop_string_ends_with_stop(engine: object) -> None:
    pieces, outcome = run(engine, SamplingParams(max_tokens=10, stop=["gamma"]))
    assert "".join(pieces) == "alpha beta"
    assert outcome.reason == "stop"  # type: ignore[attr-defined]


def test_cancel_aborts_the_request(engine: object) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def emit(text: str) -> None:
        seen.append(text)
        cancel.set()

    prompt = engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=200))  # type: ignore[attr-defined]
    outcome = engine.generate(prompt, SamplingParams(max_tokens=200), cancel=cancel, emit=emit)  # type: ignore[attr-defined]
    assert outcome.reason == "cancelled" and outcome.completion_tokens < 200  # type: ignore[attr-defined]
    assert fake_vllm.INSTANCES[-1].aborted


def test_concurrent_jobs_are_batched_in_the_same_steps(engine: object) -> None:
    results: list[object] = []
    # Both jobs start together, so their 200 steps of 2 ms overlap even on a busy machine.
    together = threading.Barrier(2)

    def job() -> None:
        together.wait(timeout=10)
        results.append(run(engine, SamplingParams(max_tokens=200)))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2
    assert max(len(batch) for batch in fake_vllm.INSTANCES[-1].steps) == 2
