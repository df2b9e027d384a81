"""The vLLM engine against tests/worker/fake_vllm.py (vLLM itself needs CUDA)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from presets.placement import Placement
from presets.settings import Settings
from tests.worker import fake_vllm
from worker.engine import Outcome, PromptTooLong
from worker.protocol import Message, SamplingParams
from worker.vllm_engine import SplitGgufError, VllmEngine, VllmOptions, vllm_options

OPTIONS = VllmOptions(model="/models/m.gguf", tokenizer="org/m", context_tokens=256, gpu_memory_utilization=0.45)


@dataclass
class Built:
    engine: VllmEngine
    fake: fake_vllm.AsyncLLMEngine


@pytest.fixture
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> list[fake_vllm.AsyncLLMEngine]:
    modules, built = fake_vllm.modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return built


@pytest.fixture
def built(fake_modules: list[fake_vllm.AsyncLLMEngine]) -> Iterator[Built]:
    engine = VllmEngine(model_id="m", options=OPTIONS)
    yield Built(engine, fake_modules[-1])
    engine.close()


def run(engine: VllmEngine, params: SamplingParams, cancel: threading.Event | None = None) -> tuple[list[str], Outcome]:
    pieces: list[str] = []
    prompt = engine.prepare([Message("user", "hi")], params)
    outcome = engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=pieces.append)
    return pieces, outcome


def test_the_engine_gets_the_models_options(built: Built) -> None:
    args = built.fake.args
    assert (args.model, args.tokenizer, args.max_model_len, args.gpu_memory_utilization) == (
        "/models/m.gguf",
        "org/m",
        256,
        0.45,
    )


def test_prompt_is_the_models_chat_template_and_is_checked_against_the_context(built: Built) -> None:
    prompt = built.engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4))
    assert "".join(map(chr, prompt.tokens)) == "<user>hi<assistant>"
    with pytest.raises(PromptTooLong):
        built.engine.prepare([Message("user", "x" * 300)], SamplingParams(max_tokens=4))


def test_concurrent_prompts_use_the_tokenizer_from_one_thread(built: Built) -> None:
    together = threading.Barrier(6)

    def prepare(_: int) -> int:
        together.wait(timeout=10)
        return len(built.engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4)).tokens)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(prepare, range(6))) == [19] * 6
    # One thread, the engine's own, and none of the callers'.
    assert len(built.fake.tokenizer.threads) == 1
    assert threading.get_ident() not in built.fake.tokenizer.threads


def test_deltas_are_emitted_and_tokens_counted(built: Built) -> None:
    pieces, outcome = run(built.engine, SamplingParams(max_tokens=3, temperature=0))
    assert pieces == ["alpha", " beta", " gamma"]
    assert outcome == Outcome(reason="length", completion_tokens=3)


def test_stop_string_ends_with_stop(built: Built) -> None:
    pieces, outcome = run(built.engine, SamplingParams(max_tokens=10, stop=["gamma"]))
    assert "".join(pieces) == "alpha beta"
    assert outcome.reason == "stop"


def test_cancel_aborts_the_request_and_ends_its_stream(built: Built) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def emit(text: str) -> None:
        seen.append(text)
        cancel.set()

    prompt = built.engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=200))
    outcome = built.engine.generate(prompt, SamplingParams(max_tokens=200), cancel=cancel, emit=emit)
    assert outcome.reason == "cancelled" and outcome.completion_tokens < 200
    assert built.fake.aborted == ["m-0"] and built.fake.open_streams == 0
    steps_before = len(built.fake.steps)
    _, after = run(built.engine, SamplingParams(max_tokens=3))
    assert after.completion_tokens == 3
    assert all(step == ["m-1"] for step in built.fake.steps[steps_before:])


def test_concurrent_jobs_are_batched_in_the_same_steps(built: Built) -> None:
    results: list[tuple[list[str], Outcome]] = []
    # Both jobs start together, so their 200 steps of 2 ms overlap even on a busy machine.
    together = threading.Barrier(2)

    def job() -> None:
        together.wait(timeout=10)
        results.append(run(built.engine, SamplingParams(max_tokens=200)))

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [outcome.completion_tokens for _, outcome in results] == [200, 200]
    assert max(len(batch) for batch in built.fake.steps) == 2


def test_close_ends_a_running_job_shuts_the_engine_down_and_stops_its_thread(built: Built) -> None:
    started, closed = threading.Event(), threading.Event()
    outcomes: list[Outcome] = []

    def emit(_: str) -> None:
        # The job holds at its first piece until close() is done, so it cannot finish first.
        started.set()
        closed.wait(timeout=30)

    def job() -> None:
        prompt = built.engine.prepare([Message("user", "hi")], SamplingParams())
        outcomes.append(built.engine.generate(prompt, SamplingParams(), cancel=threading.Event(), emit=emit))

    running = threading.Thread(target=job)
    running.start()
    assert started.wait(timeout=30)
    built.engine.close()
    closed.set()
    running.join(timeout=30)
    assert [o.reason for o in outcomes] == ["cancelled"]
    assert built.fake.shut_down and built.fake.open_streams == 0
    assert "vllm-m" not in {thread.name for thread in threading.enumerate()}
    built.engine.close()  # a second close (the fixture's) does nothing


def test_an_engine_that_fails_to_load_leaves_no_thread(
    fake_modules: list[fake_vllm.AsyncLLMEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(cls: type, engine_args: fake_vllm.AsyncEngineArgs) -> fake_vllm.AsyncLLMEngine:
        raise ValueError("no CUDA device")

    monkeypatch.setattr(sys.modules["vllm"].AsyncLLMEngine, "from_engine_args", classmethod(refuse))
    with pytest.raises(ValueError, match="no CUDA device"):
        VllmEngine(model_id="broken", options=OPTIONS)
    assert "vllm-broken" not in {thread.name for thread in threading.enumerate()}


def test_a_vllm_whose_get_tokenizer_is_a_plain_method_is_served_too(
    fake_modules: list[fake_vllm.AsyncLLMEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_vllm.AsyncLLMEngine, "get_tokenizer", lambda self: self.tokenizer)
    engine = VllmEngine(model_id="newer", options=OPTIONS)
    try:
        prompt = engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4))
        assert "".join(map(chr, prompt.tokens)) == "<user>hi<assistant>"
    finally:
        engine.close()


def _no_file() -> Path:
    raise AssertionError("the .gguf file is not needed when a model is named")


def test_a_models_own_settings_win_over_the_global_ones() -> None:
    settings = Settings(vllm_model="org/global", vllm_tokenizer="org/global-tok", vllm_gpu_memory_utilization=0.9)
    own = Placement(vllm_model="org/own", vllm_tokenizer="org/own-tok", vllm_gpu_memory_utilization=0.4)
    options = vllm_options(placement=own, settings=settings, context_tokens=4096, gguf_path=_no_file)
    assert options == VllmOptions(
        model="org/own", tokenizer="org/own-tok", context_tokens=4096, gpu_memory_utilization=0.4
    )
    fallback = vllm_options(placement=Placement(), settings=settings, context_tokens=4096, gguf_path=_no_file)
    assert (fallback.model, fallback.tokenizer, fallback.gpu_memory_utilization) == (
        "org/global",
        "org/global-tok",
        0.9,
    )


def test_without_a_named_model_the_gguf_file_is_served() -> None:
    options = vllm_options(
        placement=Placement(), settings=Settings(), context_tokens=512, gguf_path=lambda: Path("/m/phi-4-Q4_K_S.gguf")
    )
    assert options.model == "/m/phi-4-Q4_K_S.gguf" and options.tokenizer is None


@pytest.mark.parametrize(
    ("placement", "gguf"),
    [
        (Placement(), "/m/big/model-Q4_K_M-00001-of-00003.gguf"),
        (Placement(vllm_model="/m/big/model-Q4_K_M-00001-of-00003.gguf"), "/m/small.gguf"),
    ],
)
def test_a_split_gguf_is_refused_with_the_merge_command(placement: Placement, gguf: str) -> None:
    with pytest.raises(SplitGgufError) as caught:
        vllm_options(placement=placement, settings=Settings(), context_tokens=512, gguf_path=lambda: Path(gguf))
    message = str(caught.value)
    assert "\n" not in message
    assert "llama-gguf-split --merge /m/big/model-Q4_K_M-00001-of-00003.gguf /m/big/model-Q4_K_M.gguf" in message
