"""The batching llama.cpp engine with the real SmolLM2-135M: slots, cancels, prefix reuse, sampling."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from presets.embedded import resolve_embedded
from tests.worker.conftest import MakeEngine
from worker.batched_engine import BatchedLlamaEngine
from worker.engine import LlamaEngine, Outcome, PromptTooLong
from worker.llama_batch import common_prefix_length
from worker.protocol import Message, SamplingParams

pytestmark = pytest.mark.model

QUESTIONS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Count to five.",
    "Name three colors.",
)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


def ask(
    engine: BatchedLlamaEngine | LlamaEngine,
    question: str,
    params: SamplingParams = GREEDY,
    *,
    cancel: threading.Event | None = None,
    emit: Callable[[str], None] | None = None,
) -> tuple[str, Outcome]:
    pieces: list[str] = []

    def collect(piece: str, *, index: int = 0, logprobs: object = ()) -> None:
        assert index == 0
        pieces.append(piece)
        if emit is not None:
            emit(piece)

    prompt = engine.prepare([Message("user", question)], params)
    outcome = engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=collect)
    return "".join(pieces), outcome


def ignore(piece: str, *, index: int = 0, logprobs: object = ()) -> None:
    pass


def ask_together(engine: BatchedLlamaEngine, questions: tuple[str, ...]) -> list[tuple[str, Outcome]]:
    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        return list(pool.map(lambda q: ask(engine, q), questions))


def test_one_sequence_gives_the_text_of_the_one_context_engine(make_engine: MakeEngine, model_path: Path) -> None:
    reference = LlamaEngine(model_id="smollm2-135m", path=model_path, n_ctx=1024, n_threads=2, gpu_layers=0)
    try:
        expected = [ask(reference, q) for q in QUESTIONS[:2]]
    finally:
        reference.close()
    engine = make_engine(slots=1)
    assert [ask(engine, q) for q in QUESTIONS[:2]] == expected


@pytest.mark.parametrize("kv_cache", ["split", "per_slot"])
def test_with_a_kv_stream_per_slot_a_batch_of_four_gives_each_text_of_its_run_alone(
    make_engine: MakeEngine, kv_cache: str
) -> None:
    engine = make_engine(kv_cache=kv_cache)
    alone = [ask(engine, q) for q in QUESTIONS]
    assert ask_together(engine, QUESTIONS) == alone


def test_a_split_cache_gives_each_slot_its_share_of_the_window(make_engine: MakeEngine) -> None:
    assert make_engine(n_ctx=2048, slots=4).context_length == 512
    assert make_engine(n_ctx=2048, slots=4, kv_cache="per_slot").context_length == 2048
    assert make_engine(n_ctx=2048, slots=4, kv_cache="shared").context_length == 2048


def test_a_split_slot_refuses_what_only_the_whole_window_would_hold(make_engine: MakeEngine) -> None:
    engine = make_engine(n_ctx=2048, slots=4)
    words = SamplingParams(max_tokens=16, temperature=0.0)
    with pytest.raises(PromptTooLong):
        engine.prepare([Message("user", "word " * 600)], words)
    assert make_engine(n_ctx=2048, slots=4, kv_cache="shared").prepare([Message("user", "word " * 600)], words)


def test_a_request_goes_to_the_free_slot_that_cached_its_prompt(make_engine: MakeEngine) -> None:
    # Each of four slots caches another prompt in its own stream; asking one again reads one token.
    engine = make_engine()
    together = ask_together(engine, QUESTIONS)
    before = engine.prefilled_tokens
    assert ask(engine, QUESTIONS[2]) == together[2]
    assert engine.prefilled_tokens - before == 1


def test_a_shared_kv_cache_runs_four_sequences_at_once(make_engine: MakeEngine) -> None:
    # Interleaved cells reorder attention's float sums, so texts may part from the runs alone
    # at a near tie (see BatchedLlamaEngine); what holds is that every sequence runs to its end.
    engine = make_engine(kv_cache="shared")
    peak = 0
    stop_watching = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop_watching.wait(0.002):
            peak = max(peak, engine.active_sequences)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = ask_together(engine, QUESTIONS)
    finally:
        stop_watching.set()
        watcher.join()
    for text, outcome in results:
        assert text
        assert outcome.reason in ("stop", "length")
        assert 0 < outcome.completion_tokens <= GREEDY.max_tokens
    assert peak > 1
    assert engine.active_sequences == 0


def test_a_step_hands_on_every_sequence_s_text_inside_one_scope(make_engine: MakeEngine) -> None:
    engine = make_engine()
    groups: list[int] = []
    inside = False
    outside = 0

    @contextmanager
    def scope() -> Iterator[None]:
        nonlocal inside
        groups.append(0)
        inside = True
        try:
            yield
        finally:
            inside = False

    def count(_: str) -> None:
        nonlocal outside
        if inside:
            groups[-1] += 1
        else:
            outside += 1

    engine.group_hand_ons(scope)
    with ThreadPoolExecutor(max_workers=len(QUESTIONS)) as pool:
        list(pool.map(lambda q: ask(engine, q, emit=count), QUESTIONS))
    # Only a stream's held-back tail (flushed when it ends) comes from the job's own thread.
    assert outside <= len(QUESTIONS)
    assert max(groups) > 1


def test_a_pool_too_small_for_all_queues_the_rest_until_cells_free(make_engine: MakeEngine) -> None:
    # 512 shared cells; each request claims its prompt (about 35 tokens) plus 200: two at a time.
    engine = make_engine(n_ctx=512, kv_cache="shared")
    params = SamplingParams(max_tokens=200, temperature=0.0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: ask(engine, q, params), QUESTIONS))
    assert all(outcome.reason in ("stop", "length") and text for text, outcome in results)


def test_cancel_ends_the_sequence_and_frees_its_slot(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    cancel = threading.Event()
    params = SamplingParams(max_tokens=500, temperature=0.0)
    _, outcome = ask(engine, "Tell me a long story.", params, cancel=cancel, emit=lambda _: cancel.set())
    assert outcome.reason == "cancelled"
    assert outcome.completion_tokens < 500
    # The one slot serves the next request.
    text, outcome = ask(engine, QUESTIONS[0])
    assert text and outcome.reason in ("stop", "length")
    assert engine.active_sequences == 0


def test_a_request_cancelled_while_it_waits_for_a_slot_never_runs(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1)
    first_cancel, waiting_cancel = threading.Event(), threading.Event()
    started = threading.Event()
    params = SamplingParams(max_tokens=500, temperature=0.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(
            ask, engine, "Tell me a long story.", params, cancel=first_cancel, emit=lambda _: started.set()
        )
        assert started.wait(30)
        waiting = pool.submit(ask, engine, QUESTIONS[0], cancel=waiting_cancel)
        waiting_cancel.set()
        text, outcome = waiting.result(timeout=30)
        first_cancel.set()
        first.result(timeout=30)
    assert (text, outcome.reason, outcome.completion_tokens) == ("", "cancelled", 0)


def test_a_prompt_already_in_a_free_slot_decodes_only_its_last_token(make_engine: MakeEngine) -> None:
    engine = make_engine()
    first = ask(engine, QUESTIONS[0])
    before = engine.prefilled_tokens
    assert ask(engine, QUESTIONS[0]) == first
    assert engine.prefilled_tokens - before == 1


def test_a_shared_beginning_is_read_once(make_engine: MakeEngine) -> None:
    engine = make_engine()
    system = Message("system", "You are a terse assistant. Answer in one short sentence, without any preamble.")
    first = engine.prepare([system, Message("user", QUESTIONS[0])], GREEDY)
    second = engine.prepare([system, Message("user", QUESTIONS[1])], GREEDY)
    shared = common_prefix_length(first.tokens, second.tokens)
    assert shared > 10
    engine.generate(first, GREEDY, cancel=threading.Event(), emit=ignore)
    before = engine.prefilled_tokens
    engine.generate(second, GREEDY, cancel=threading.Event(), emit=ignore)
    assert engine.prefilled_tokens - before == len(second.tokens) - shared


def test_a_stop_string_ends_the_text_before_it(make_engine: MakeEngine) -> None:
    engine = make_engine()
    text, _ = ask(engine, QUESTIONS[1])
    stop = text.split()[3]
    cut, outcome = ask(engine, QUESTIONS[1], SamplingParams(max_tokens=24, temperature=0.0, stop=[stop]))
    assert outcome.reason == "stop"
    assert cut == text[: text.index(stop)]


def test_sampling_options_and_penalties_are_accepted(make_engine: MakeEngine) -> None:
    engine = make_engine()
    penalised = SamplingParams(max_tokens=24, temperature=0.0, frequency_penalty=1.5, presence_penalty=1.0)
    text, outcome = ask(engine, QUESTIONS[2], penalised)
    assert text and outcome.completion_tokens > 0
    seeded = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, seed=7, frequency_penalty=0.5)
    assert ask(engine, QUESTIONS[1], seeded) == ask(engine, QUESTIONS[1], seeded)


def test_a_prompt_that_cannot_fit_is_refused_before_it_runs(make_engine: MakeEngine) -> None:
    engine = make_engine(n_ctx=256)
    with pytest.raises(PromptTooLong):
        engine.prepare([Message("user", "word " * 300)], GREEDY)


def test_a_sliding_window_model_batches_and_reuses_prefixes(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Gemma 3 mixes sliding-window layers into its KV cache: the prefix check must hold there too.
    path = resolve_embedded("gemma3-270m", models_dir=tmp_path_factory.mktemp("gemma"))
    engine = BatchedLlamaEngine(model_id="gemma3-270m", path=path, n_ctx=1024, slots=2, n_threads=2, gpu_layers=0)
    try:
        params = SamplingParams(max_tokens=8, temperature=0.0)
        with ThreadPoolExecutor(max_workers=2) as pool:
            together = list(pool.map(lambda q: ask(engine, q, params), QUESTIONS[:2]))
        assert all(text and outcome.completion_tokens > 0 for text, outcome in together)
        before = engine.prefilled_tokens
        assert ask(engine, QUESTIONS[0], params)[0]
        assert engine.prefilled_tokens - before == 1
    finally:
        engine.close()


def test_another_seat_on_the_host_halves_the_threads_and_leaving_restores_them(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    import llama_cpp

    from worker.core_share import CoreShare

    share = CoreShare(directory=tmp_path, cores=2, max_threads=2, refresh_s=0.0)
    engine = make_engine(core_share=share)
    seen: list[int] = []

    def read_threads(_: str) -> None:
        seen.append(llama_cpp.llama_n_threads(engine._ctx))

    alone, _ = ask(engine, QUESTIONS[0], emit=read_threads)
    assert set(seen) == {2}
    seen.clear()
    with share.seat():
        beside, _ = ask(engine, QUESTIONS[0], emit=read_threads)
    assert set(seen) == {1}
    # The thread count changes the speed, never the text.
    assert beside == alone
