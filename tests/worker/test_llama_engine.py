"""The one-sequence llama.cpp engine with the real SmolLM2-135M: grammar, logprobs, n choices."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from msgspec.structs import replace

from presets.embedded import resolve_embedded
from worker.engine import ChoiceOutcome, LlamaEngine, Outcome
from worker.grammar import InvalidSchema, json_object_grammar, json_schema_grammar
from worker.protocol import Message, SamplingParams, TokenLogprob

pytestmark = pytest.mark.model

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaEngine]:
    path: Path = resolve_embedded("smollm2-135m", models_dir=tmp_path_factory.mktemp("models"))
    built = LlamaEngine(model_id="smollm2-135m", path=path, n_ctx=1024, n_threads=2, gpu_layers=0)
    yield built
    built.close()


@dataclass
class Emitted:
    calls: list[tuple[int, str, list[TokenLogprob]]] = field(default_factory=list)

    def __call__(self, text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
        self.calls.append((index, text, list(logprobs)))

    def text(self, index: int = 0) -> str:
        return "".join(text for i, text, _ in self.calls if i == index)

    def logprobs(self, index: int = 0) -> list[TokenLogprob]:
        return [entry for i, _, entries in self.calls if i == index for entry in entries]


def ask(
    engine: LlamaEngine, question: str, params: SamplingParams, *, cancel: threading.Event | None = None
) -> tuple[Emitted, Outcome]:
    emitted = Emitted()
    prompt = engine.prepare([Message("user", question)], params)
    return emitted, engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=emitted)


def test_a_json_object_grammar_makes_a_json_object(engine: LlamaEngine) -> None:
    params = SamplingParams(max_tokens=200, temperature=0.0, grammar=json_object_grammar())
    emitted, outcome = ask(engine, "Describe a cat.", params)
    assert outcome.reason == "stop"
    assert isinstance(json.loads(emitted.text()), dict)


def test_a_schema_grammar_makes_json_valid_against_it(engine: LlamaEngine) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    params = SamplingParams(max_tokens=64, temperature=0.8, seed=3, grammar=json_schema_grammar(schema))
    emitted, outcome = ask(engine, "What is two plus two?", params)
    answer = json.loads(emitted.text())
    assert outcome.reason == "stop" and list(answer) == ["answer"] and isinstance(answer["answer"], int)


def test_a_grammar_llama_cpp_cannot_parse_is_refused_not_run(engine: LlamaEngine) -> None:
    broken = SamplingParams(grammar="root ::= ( unclosed")
    with pytest.raises(InvalidSchema):
        engine.prepare([Message("user", "hi")], broken)
    # Nor when it only reaches generate(), as a grammar the worker changed after prepare() would.
    prompt = engine.prepare([Message("user", "hi")], SamplingParams())
    with pytest.raises(InvalidSchema):
        engine.generate(prompt, broken, cancel=threading.Event(), emit=Emitted())


def test_logprob_tokens_concatenate_to_the_text_and_greedy_takes_the_likeliest(engine: LlamaEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=True, top_logprobs=3)
    emitted, outcome = ask(engine, "Name three colors.", params)
    entries = emitted.logprobs()
    assert len(entries) == outcome.completion_tokens
    assert "".join(entry.token for entry in entries) == emitted.text() != ""
    for entry in entries:
        assert entry.logprob <= 0.0 and len(entry.top) == 3
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        # Greedy sampling with no penalties takes the likeliest token of the raw distribution.
        assert entry.bytes == entry.top[0].bytes and math.isclose(entry.logprob, entry.top[0].logprob)
    # The same text as without logprobs: reading them changes nothing.
    plain, _ = ask(engine, "Name three colors.", SamplingParams(max_tokens=24, temperature=0.0))
    assert plain.text() == emitted.text()


def test_logprobs_leave_out_the_stop_strings_tokens(engine: LlamaEngine) -> None:
    free, _ = ask(engine, "Count to five.", SamplingParams(max_tokens=24, temperature=0.0))
    stop = free.text()[6:9]
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=True, stop=[stop])
    emitted, outcome = ask(engine, "Count to five.", params)
    assert outcome.reason == "stop" and stop not in emitted.text()
    assert "".join(entry.token for entry in emitted.logprobs()) == emitted.text()
    assert all(entry.top == [] for entry in emitted.logprobs())


def test_n_greedy_choices_are_the_same_text_each_with_its_index(engine: LlamaEngine) -> None:
    emitted, outcome = ask(engine, "Write one sentence about the sea.", replace(GREEDY, n=2))
    single, alone = ask(engine, "Write one sentence about the sea.", GREEDY)
    assert emitted.text(0) == emitted.text(1) == single.text() != ""
    assert outcome == Outcome(
        reason=alone.reason,
        completion_tokens=2 * alone.completion_tokens,
        choices=(
            ChoiceOutcome(index=0, reason=alone.reason, completion_tokens=alone.completion_tokens),
            ChoiceOutcome(index=1, reason=alone.reason, completion_tokens=alone.completion_tokens),
        ),
    )


def test_seeded_choice_i_is_the_one_choice_of_seed_plus_i(engine: LlamaEngine) -> None:
    sampled = SamplingParams(max_tokens=16, temperature=1.0, seed=11)
    emitted, _ = ask(engine, "Tell me a story.", replace(sampled, n=2))
    first, _ = ask(engine, "Tell me a story.", sampled)
    second, _ = ask(engine, "Tell me a story.", replace(sampled, seed=12))
    assert (emitted.text(0), emitted.text(1)) == (first.text(), second.text())
    assert emitted.text(0) != emitted.text(1)


def test_penalties_change_what_is_sampled(engine: LlamaEngine) -> None:
    plain, _ = ask(engine, "Count to five.", GREEDY)
    penalised, _ = ask(engine, "Count to five.", replace(GREEDY, presence_penalty=2.0, frequency_penalty=2.0))
    assert penalised.text() != plain.text()


def test_cancel_in_the_first_choice_cancels_them_all(engine: LlamaEngine) -> None:
    cancel = threading.Event()
    emitted = Emitted()

    def emit(text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
        emitted(text, index=index, logprobs=logprobs)
        cancel.set()

    params = SamplingParams(max_tokens=24, temperature=0.0, n=2)
    prompt = engine.prepare([Message("user", "Count to five.")], params)
    outcome = engine.generate(prompt, params, cancel=cancel, emit=emit)
    assert [c.reason for c in outcome.choices] == ["cancelled", "cancelled"]
    assert {index for index, _, _ in emitted.calls} == {0}


def test_another_seat_on_the_host_halves_the_threads(tmp_path: Path) -> None:
    import llama_cpp

    from worker.core_share import CoreShare

    path = resolve_embedded("smollm2-135m", models_dir=tmp_path / "models")
    share = CoreShare(directory=tmp_path / "cores", cores=2, max_threads=2, refresh_s=0.0)
    engine = LlamaEngine(model_id="smollm2-135m", path=path, n_ctx=512, n_threads=2, gpu_layers=0, core_share=share)
    try:
        seen: list[int] = []

        def emit(text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
            seen.append(llama_cpp.llama_n_threads(engine._llm._ctx.ctx))

        prompt = engine.prepare([Message("user", "Name three colors.")], GREEDY)
        with share.seat():
            engine.generate(prompt, GREEDY, cancel=threading.Event(), emit=emit)
        assert seen and set(seen) == {1}
        seen.clear()
        engine.generate(prompt, GREEDY, cancel=threading.Event(), emit=emit)
        assert seen and set(seen) == {2}
    finally:
        engine.close()
