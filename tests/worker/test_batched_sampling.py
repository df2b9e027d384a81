"""The batching engine with the real SmolLM2-135M: grammars, log probabilities, n choices from one prefill."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
import msgspec
import pytest

from presets.embedded import resolve_embedded
from tests.worker.conftest import MakeEngine
from worker import batched_engine
from worker.batched_engine import BatchedLlamaEngine
from worker.engine import ChoiceOutcome, Outcome
from worker.grammar import InvalidSchema, json_object_grammar, json_schema_grammar
from worker.protocol import Message, SamplingParams, TokenLogprob
from worker.sampler_chain import ChainSampler

pytestmark = pytest.mark.model

QUESTION = "Count to five."
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "windy": {"type": "boolean"},
    },
    "required": ["city", "unit", "windy"],
}


@dataclass
class Answer:
    outcome: Outcome
    # Per choice, each emit's text and the log probabilities that came with it.
    emits: dict[int, list[tuple[str, list[TokenLogprob]]]] = field(default_factory=dict)

    def text(self, index: int = 0) -> str:
        return "".join(text for text, _ in self.emits.get(index, []))

    def logprobs(self, index: int = 0) -> list[TokenLogprob]:
        return [entry for _, entries in self.emits.get(index, []) for entry in entries]


def ask(
    engine: BatchedLlamaEngine,
    params: SamplingParams,
    question: str = QUESTION,
    *,
    cancel: threading.Event | None = None,
    on_emit: Callable[[], None] | None = None,
) -> Answer:
    emits: dict[int, list[tuple[str, list[TokenLogprob]]]] = {}

    def emit(text: str, *, index: int = 0, logprobs: tuple[TokenLogprob, ...] | list[TokenLogprob] = ()) -> None:
        emits.setdefault(index, []).append((text, list(logprobs)))
        if on_emit is not None:
            on_emit()

    prompt = engine.prepare([Message("user", question)], params)
    outcome = engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=emit)
    return Answer(outcome=outcome, emits=emits)


def test_a_json_object_grammar_makes_a_greedy_run_end_in_an_object(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    params = SamplingParams(max_tokens=120, temperature=0.0, grammar=json_object_grammar())
    answer = ask(engine, params, "Describe Paris as JSON.")
    assert answer.outcome.reason == "stop"
    assert isinstance(json.loads(answer.text()), dict)


def test_a_schema_grammar_yields_its_required_properties_and_an_enum_value(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    params = SamplingParams(max_tokens=80, temperature=0.0, grammar=json_schema_grammar(WEATHER_SCHEMA))
    answer = ask(engine, params, "What is the weather in Oslo?")
    assert answer.outcome.reason == "stop"
    document = json.loads(answer.text())
    assert set(document) == {"city", "unit", "windy"}
    assert document["unit"] in ("celsius", "fahrenheit")
    assert isinstance(document["windy"], bool)


def test_checking_the_pick_first_gives_the_text_of_a_grammar_first_chain(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(slots=1)
    params = SamplingParams(max_tokens=80, temperature=0.0, grammar=json_schema_grammar(WEATHER_SCHEMA))
    checked = ask(engine, params, "What is the weather in Oslo?").text()

    def grammar_first(params: SamplingParams, *, vocab: object, **_: object) -> ChainSampler:
        assert params.grammar is not None
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
        )
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return ChainSampler(chain)

    monkeypatch.setattr(batched_engine, "build_sampler", grammar_first)
    assert ask(engine, params, "What is the weather in Oslo?").text() == checked


def test_a_grammar_also_holds_while_sampling_at_a_temperature(make_engine: MakeEngine) -> None:
    engine = make_engine()
    schema = json_schema_grammar(WEATHER_SCHEMA)
    params = SamplingParams(max_tokens=80, temperature=1.0, seed=3, n=3, grammar=schema)
    answer = ask(engine, params, "What is the weather in Oslo?")
    for index in range(3):
        assert set(json.loads(answer.text(index))) == {"city", "unit", "windy"}


def test_a_lazy_grammar_leaves_the_text_free_until_its_trigger_then_binds(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    greedy = SamplingParams(max_tokens=40, temperature=0.0)
    free = ask(engine, greedy, "Name three colors.").text()
    word = next(w for w in ("Red", "red", "Blue", "blue") if w in free)
    lazy = msgspec.structs.replace(
        greedy,
        grammar=f'root ::= "{word}, and nothing else."',
        grammar_triggers=[r"[\s\S]*?(" + word + r")[\s\S]*"],
    )
    bound = ask(engine, lazy, "Name three colors.")
    # Up to the trigger the model wrote what it writes free; from it on, only what the grammar allows.
    assert bound.text() == free[: free.index(word)] + f"{word}, and nothing else."
    assert bound.outcome.reason == "stop"


def test_a_grammar_llama_cpp_refuses_is_an_invalid_schema_and_the_engine_goes_on(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    with pytest.raises(InvalidSchema):
        ask(engine, SamplingParams(max_tokens=8, temperature=0.0, grammar='root ::= "a" undefined'))
    assert ask(engine, SamplingParams(max_tokens=8, temperature=0.0)).text()


def test_log_probabilities_name_each_token_of_the_text(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    plain = ask(engine, SamplingParams(max_tokens=24, temperature=0.0))
    scored = ask(engine, SamplingParams(max_tokens=24, temperature=0.0, logprobs=True, top_logprobs=3))
    assert scored.text() == plain.text()
    assert all(not entries for _, entries in plain.emits[0])
    for text, entries in scored.emits[0]:
        assert "".join(entry.token for entry in entries) == text
    entries = scored.logprobs()
    assert len(entries) == scored.outcome.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0.0
        assert bytes(entry.bytes).decode() == entry.token
        assert len(entry.top) == 3
        assert [alt.logprob for alt in entry.top] == sorted((alt.logprob for alt in entry.top), reverse=True)
        # Greedy takes the likeliest token of the raw distribution.
        assert (entry.top[0].token, entry.top[0].logprob) == (entry.token, pytest.approx(entry.logprob))
    assert sum(math.exp(alt.logprob) for alt in entries[0].top) <= 1.0 + 1e-6


def test_log_probabilities_stop_where_a_stop_string_cuts_the_text(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    full = ask(engine, SamplingParams(max_tokens=24, temperature=0.0)).text()
    stop = full.split()[3]
    params = SamplingParams(max_tokens=24, temperature=0.0, stop=[stop], logprobs=True)
    answer = ask(engine, params)
    assert answer.outcome.reason == "stop"
    assert answer.text() == full[: full.index(stop)]
    assert "".join(entry.token for entry in answer.logprobs()) == answer.text()


def test_three_greedy_choices_share_one_prefill_and_equal_the_single_answer(make_engine: MakeEngine) -> None:
    alone = ask(make_engine(slots=1), SamplingParams(max_tokens=24, temperature=0.0)).text()
    engine = make_engine(slots=4)
    params = SamplingParams(max_tokens=24, temperature=0.0, n=3)
    prompt_tokens = len(engine.prepare([Message("user", QUESTION)], params).tokens)
    answer = ask(engine, params)
    assert engine.prefilled_tokens == prompt_tokens
    assert [answer.text(i) for i in range(3)] == [alone] * 3
    ends = answer.outcome.choices
    assert [end.index for end in ends] == [0, 1, 2]
    assert answer.outcome.reason == ends[0].reason
    assert answer.outcome.completion_tokens == sum(end.completion_tokens for end in ends)


@pytest.mark.parametrize("kv_cache", ["per_slot", "shared"])
def test_choices_share_the_prompt_in_every_cache_layout(make_engine: MakeEngine, kv_cache: str) -> None:
    alone = ask(make_engine(slots=1), SamplingParams(max_tokens=16, temperature=0.0)).text()
    engine = make_engine(kv_cache=kv_cache)
    params = SamplingParams(max_tokens=16, temperature=0.0, n=2)
    prompt_tokens = len(engine.prepare([Message("user", QUESTION)], params).tokens)
    answer = ask(engine, params)
    assert engine.prefilled_tokens == prompt_tokens
    if kv_cache == "per_slot":
        assert [answer.text(i) for i in range(2)] == [alone] * 2
    else:
        # Shared cells reorder attention's sums (see BatchedLlamaEngine): each choice still runs to its end.
        assert all(answer.text(i) and answer.outcome.choices[i].completion_tokens > 0 for i in range(2))


def test_choices_beyond_the_free_slots_run_one_after_another(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    single = ask(engine, SamplingParams(max_tokens=16, temperature=0.0)).text()
    params = SamplingParams(max_tokens=16, temperature=0.0, n=3)
    before = engine.prefilled_tokens
    answer = ask(engine, params)
    assert [answer.text(i) for i in range(3)] == [single] * 3
    # Each choice finds the prompt in the slot's cache and reads only its last token.
    assert engine.prefilled_tokens - before == 3
    assert [end.reason for end in answer.outcome.choices] == ["length"] * 3
    assert engine.active_sequences == 0


def test_seeded_choices_at_a_temperature_differ_and_repeat(make_engine: MakeEngine) -> None:
    engine = make_engine()
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=11, n=3)
    first = ask(engine, params)
    again = ask(engine, params)
    texts = [first.text(i) for i in range(3)]
    assert len(set(texts)) > 1
    assert [again.text(i) for i in range(3)] == texts


def test_cancel_ends_every_choice(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=2)
    cancel = threading.Event()
    params = SamplingParams(max_tokens=400, temperature=0.0, n=3)
    answer = ask(engine, params, "Tell me a long story.", cancel=cancel, on_emit=cancel.set)
    assert answer.outcome.reason == "cancelled"
    assert [end.reason for end in answer.outcome.choices] == ["cancelled"] * 3
    assert all(isinstance(end, ChoiceOutcome) and end.completion_tokens < 400 for end in answer.outcome.choices)
    assert engine.active_sequences == 0
    assert ask(engine, SamplingParams(max_tokens=8, temperature=0.0)).text()


def test_a_sliding_window_model_shares_the_prompt_between_choices(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Gemma 3's cache holds a sliding-window part beside the full one: both are copied.
    path = resolve_embedded("gemma3-270m", models_dir=tmp_path_factory.mktemp("gemma"))
    engines: list[BatchedLlamaEngine] = []

    def load() -> BatchedLlamaEngine:
        engine = BatchedLlamaEngine(model_id="gemma3-270m", path=path, n_ctx=1024, slots=2, n_threads=2, gpu_layers=0)
        engines.append(engine)
        return engine

    try:
        alone = ask(load(), SamplingParams(max_tokens=8, temperature=0.0), "Name three colors.").text()
        engine = load()
        params = SamplingParams(max_tokens=8, temperature=0.0, n=2)
        prompt_tokens = len(engine.prepare([Message("user", "Name three colors.")], params).tokens)
        answer = ask(engine, params, "Name three colors.")
        assert engine.prefilled_tokens == prompt_tokens
        assert [answer.text(0), answer.text(1)] == [alone, alone]
    finally:
        for engine in engines:
            engine.close()
