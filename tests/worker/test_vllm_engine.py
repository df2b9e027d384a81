"""The vLLM engine against tests/worker/fake_vllm.py (vLLM itself needs CUDA)."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from presets.placement import Placement
from presets.settings import Settings
from tests.worker import fake_vllm
from worker.engine import ChoiceOutcome, Outcome, PromptTooLong
from worker.protocol import Message, SamplingParams, TokenLogprob, Tool, ToolCall, TopLogprob
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


@dataclass
class Emitted:
    """What an engine emitted, by choice."""

    pieces: dict[int, list[str]] = field(default_factory=dict)
    logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)

    def __call__(self, text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
        self.pieces.setdefault(index, []).append(text)
        self.logprobs.setdefault(index, []).extend(logprobs)

    def text(self, index: int = 0) -> str:
        return "".join(self.pieces.get(index, []))


def generate(engine: VllmEngine, params: SamplingParams) -> tuple[Emitted, Outcome]:
    emitted = Emitted()
    prompt = engine.prepare([Message("user", "hi")], params)
    return emitted, engine.generate(prompt, params, cancel=threading.Event(), emit=emitted)


def run(engine: VllmEngine, params: SamplingParams) -> tuple[list[str], Outcome]:
    emitted, outcome = generate(engine, params)
    return emitted.pieces.get(0, []), outcome


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
    assert "".join(pieces) == "alpha beta "
    assert outcome.reason == "stop"


def test_cancel_aborts_the_request_and_ends_its_stream(built: Built) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def emit(text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
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

    def emit(_: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
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


def test_n_choices_stream_by_index_and_each_ends_on_its_own(built: Built) -> None:
    emitted, outcome = generate(built.engine, SamplingParams(max_tokens=3, n=2, seed=7))
    assert built.fake.requests["m-0"].n == 2 and built.fake.requests["m-0"].seed == 7
    assert emitted.text(0) == "alpha beta gamma"
    assert emitted.text(1) == " beta gamma delta"
    assert outcome == Outcome(
        reason="length",
        completion_tokens=6,
        choices=(
            ChoiceOutcome(index=0, reason="length", completion_tokens=3),
            ChoiceOutcome(index=1, reason="length", completion_tokens=3),
        ),
    )


def test_one_choice_reports_no_choices(built: Built) -> None:
    _, outcome = generate(built.engine, SamplingParams(max_tokens=2))
    assert outcome.choices == ()


def _top(word: str, rank: int) -> TopLogprob:
    return TopLogprob(word, -rank * math.log(2), list(word.encode()))


def test_logprobs_give_the_sampled_token_and_the_likeliest_in_rank_order(built: Built) -> None:
    emitted, _ = generate(built.engine, SamplingParams(max_tokens=2, n=2, logprobs=True, top_logprobs=2))
    assert built.fake.requests["m-0"].logprobs == 2
    first, second = emitted.logprobs[0]
    assert first == TokenLogprob("alpha", -math.log(2), list(b"alpha"), [_top("alpha", 1), _top(" beta", 2)])
    assert second.token == " beta" and [t.token for t in second.top] == [" beta", " gamma"]
    # Choice 1 took the second likeliest word: its own log probability, the same alternatives.
    other = emitted.logprobs[1][0]
    assert other == TokenLogprob(" beta", -2 * math.log(2), list(b" beta"), [_top("alpha", 1), _top(" beta", 2)])


def test_logprobs_without_alternatives_ask_vllm_for_none(built: Built) -> None:
    emitted, _ = generate(built.engine, SamplingParams(max_tokens=2, logprobs=True))
    assert built.fake.requests["m-0"].logprobs == 0
    assert [(t.token, t.top) for t in emitted.logprobs[0]] == [("alpha", []), (" beta", [])]


def test_no_logprobs_asked_none_sent(built: Built) -> None:
    emitted, _ = generate(built.engine, SamplingParams(max_tokens=2))
    assert built.fake.requests["m-0"].logprobs is None
    assert emitted.logprobs[0] == []


def test_logprob_tokens_concatenate_to_the_text_without_the_stop_strings_tokens(built: Built) -> None:
    emitted, outcome = generate(built.engine, SamplingParams(max_tokens=10, n=2, stop=["gamma"], logprobs=True))
    assert outcome.reason == "stop"
    for index in (0, 1):
        tokens = emitted.logprobs[index]
        assert "".join(t.token for t in tokens) == emitted.text(index) != ""
        assert all(bytes(t.bytes).decode() == t.token for t in tokens)
    # The token the stop string begins in keeps its text before it, the next is left out.
    assert [t.token for t in emitted.logprobs[0]] == ["alpha", " beta", " "]
    assert [t.token for t in emitted.logprobs[1]] == [" beta", " "]


def test_grammar_goes_to_vllm_as_structured_output(built: Built) -> None:
    run(built.engine, SamplingParams(max_tokens=2, grammar='root ::= "{}"'))
    structured = built.fake.requests["m-0"].structured_outputs
    assert isinstance(structured, fake_vllm.StructuredOutputsParams)
    assert structured.grammar == 'root ::= "{}"'
    run(built.engine, SamplingParams(max_tokens=2))
    assert built.fake.requests["m-1"].structured_outputs is None


def test_an_older_vllm_takes_the_grammar_as_guided_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    modules, built = fake_vllm.modules(release="0.10")
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    engine = VllmEngine(model_id="older", options=OPTIONS)
    try:
        run(engine, SamplingParams(max_tokens=2, grammar='root ::= "{}"'))
    finally:
        engine.close()
    guided = built[-1].requests["older-0"].guided_decoding
    assert isinstance(guided, fake_vllm.GuidedDecodingParams) and guided.grammar == 'root ::= "{}"'


def test_penalties_are_passed_on(built: Built) -> None:
    run(built.engine, SamplingParams(max_tokens=2, frequency_penalty=0.5, presence_penalty=-0.25))
    sent = built.fake.requests["m-0"]
    assert (sent.frequency_penalty, sent.presence_penalty) == (0.5, -0.25)


def test_tools_and_tool_calls_reach_the_chat_template(built: Built) -> None:
    weather = Tool(name="weather", description="Weather in a city", parameters={"type": "object"})
    messages = [
        Message("user", "Paris?"),
        Message("assistant", "", tool_calls=[ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}')]),
        Message("tool", "sunny", tool_call_id="call_1"),
    ]
    prompt = built.engine.prepare(messages, SamplingParams(max_tokens=4), tools=[weather])
    assert "".join(map(chr, prompt.tokens)) == (
        '<tool {"description": "Weather in a city", "name": "weather", "parameters": {"type": "object"}}>'
        '<user>Paris?<assistant><call call_1 weather {"city": "Paris"}><tool>sunny<for call_1><assistant>'
    )


def test_a_prompt_ending_in_an_open_think_block_starts_as_reasoning(built: Built) -> None:
    assert not built.engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4)).in_reasoning
    built.fake.tokenizer.generation_prompt = "<assistant><think>\n"
    assert built.engine.prepare([Message("user", "hi")], SamplingParams(max_tokens=4)).in_reasoning


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


def test_a_template_without_tools_gets_them_and_earlier_calls_as_text(
    fake_modules: list[fake_vllm.AsyncLLMEngine],
) -> None:
    engine = VllmEngine(model_id="m", options=replace(OPTIONS, context_tokens=4096))
    built = Built(engine, fake_modules[-1])
    built.fake.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    weather = Tool(name="weather", description="Weather in a city", parameters={"type": "object"})
    messages = [
        Message("user", "Paris?"),
        Message("assistant", "", tool_calls=[ToolCall(id="call_1", name="weather", arguments='{"city": "Paris"}')]),
        Message("tool", "sunny", tool_call_id="call_1"),
    ]
    text = "".join(map(chr, built.engine.prepare(messages, SamplingParams(max_tokens=4), tools=[weather]).tokens))
    # The registry's model "m" is unknown: Hermes, the default format, lists the tools in a system turn.
    assert text.startswith("<system>") and '"name": "weather"' in text and "<tool " not in text
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_call_id" not in text and "<for call_1>" not in text
    engine.close()
