"""Critique and pipeline DAGs, step by step, with scripted model outputs."""

from __future__ import annotations

from orchestration.store import DagView
from presets.settings import Settings
from tests.orchestration.harness import Harness, team
from worker.protocol import Finished, Summary, Token

CRITIQUE = team("phi-4", "qwen2.5-7b", assignments={"generator": "phi-4", "critic": "qwen2.5-7b"})
PIPELINE = team(
    "phi-4",
    "qwen2.5-7b",
    "llama-3.2-3b",
    assignments={"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b", "validator": "phi-4"},
)


async def test_first_step_carries_the_request_and_streams_nothing(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    first = await dag.take_one()
    request = dag.template
    assert (first.step, first.model, first.dag_id) == ("r1.gen", "phi-4", request.request_id)
    assert first.publish_tokens is False
    assert (first.request_id, first.channel, first.priority, first.deadline_ms) == (
        request.request_id,
        request.channel,
        request.priority,
        request.deadline_ms,
    )
    assert first.messages == request.messages and first.params == request.params
    assert first.orchestration_mode == "critique"


async def test_critique_revises_until_the_score_is_good_enough(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await dag.finish(await dag.take_one(), "2+2 is 5")
    review = await dag.take_one()
    assert (review.step, review.model, review.publish_tokens) == ("r1.critique", "qwen2.5-7b", False)
    assert "2+2 is 5" in review.messages[-1].content and "SCORE: N/10" in review.messages[-1].content
    assert review.params.stop == [] and (review.params.max_tokens or 0) >= 512
    await dag.finish(review, "- the sum is wrong\nSCORE: 3/10")
    revise = await dag.take_one()
    assert (revise.step, revise.model) == ("r2.revise", "phi-4")
    assert revise.messages[-2].content == "2+2 is 5" and "the sum is wrong" in revise.messages[-1].content
    await dag.finish(revise, "2+2 is 4")
    assert await dag.events() == []
    await dag.finish(await dag.take_one(), "None\nSCORE: 9/10")
    assert await dag.queued() == []
    assert await dag.events() == [
        Summary(mode="critique", models_used=["phi-4", "qwen2.5-7b"], rounds=2, confidence=0.9, answer_model="phi-4"),
        Token("2+2 is 4"),
        Finished(reason="stop", model="phi-4", prompt_tokens=0, completion_tokens=0),
    ]
    view = await dag.view()
    assert view.status == "done" and view.final is not None and view.final.text == "2+2 is 4"


async def test_critique_stops_early_on_a_good_first_score(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await dag.finish(await dag.take_one(), "4")
    await dag.finish(await dag.take_one(), "SCORE: 8/10")
    events = await dag.events()
    assert events[0] == Summary(
        mode="critique", models_used=["phi-4", "qwen2.5-7b"], rounds=1, confidence=0.8, answer_model="phi-4"
    )
    assert events[1] == Token("4")


async def test_critique_returns_the_best_version_not_the_last(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await dag.finish(await dag.take_one(), "good answer")
    await dag.finish(await dag.take_one(), "SCORE: 7/10")
    await dag.finish(await dag.take_one(), "worse answer")
    await dag.finish(await dag.take_one(), "SCORE: 5/10")
    summary, token, _ = await dag.events()
    assert token == Token("good answer")
    assert isinstance(summary, Summary) and summary.confidence == 0.7 and summary.rounds == 2


async def test_unreadable_critiques_never_stop_early_and_give_low_confidence(dag: Harness, settings: Settings) -> None:
    dag.settings = settings.model_copy(update={"critique_max_rounds": 3})
    await dag.start("critique", CRITIQUE)
    texts = ["v1", "Looks perfect!", "v2", "SCORE: N/10", "v3", "10 out of ten"]
    for text in texts:
        await dag.finish(await dag.take_one(), text)
    summary, token, finished = await dag.events()
    assert summary == Summary(
        mode="critique", models_used=["phi-4", "qwen2.5-7b"], rounds=3, confidence=0.3, answer_model="phi-4"
    )
    assert token == Token("v3")
    assert isinstance(finished, Finished) and finished.model == "phi-4"


async def run_pipeline(dag: Harness, verdict: str) -> None:
    await dag.start("pipeline", PIPELINE)
    draft = await dag.take_one()
    assert (draft.step, draft.model, draft.publish_tokens) == ("pipeline.draft", "llama-3.2-3b", False)
    await dag.finish(draft, "draft text")
    refine = await dag.take_one()
    assert (refine.step, refine.model) == ("pipeline.refine", "qwen2.5-7b")
    assert refine.messages[-2].content == "draft text"
    await dag.finish(refine, "refined text")
    validate = await dag.take_one()
    assert (validate.step, validate.model) == ("pipeline.validate", "phi-4")
    assert "refined text" in validate.messages[-1].content
    await dag.finish(validate, verdict)


async def test_pipeline_pass_returns_the_refined_text(dag: Harness) -> None:
    await run_pipeline(dag, "Correct and complete.\nVERDICT: PASS")
    assert await dag.queued() == []
    assert await dag.events() == [
        Summary(
            mode="pipeline",
            models_used=["llama-3.2-3b", "qwen2.5-7b", "phi-4"],
            rounds=3,
            confidence=0.9,
            answer_model="qwen2.5-7b",
        ),
        Token("refined text"),
        Finished(reason="stop", model="qwen2.5-7b", prompt_tokens=0, completion_tokens=0),
    ]
    assert (await dag.view()).status == "done"


async def test_pipeline_fail_refines_once_more_and_streams_that(dag: Harness) -> None:
    await run_pipeline(dag, "VERDICT: FAIL\n- misses units")
    fix = await dag.take_one()
    assert (fix.step, fix.model, fix.publish_tokens) == ("pipeline.fix", "qwen2.5-7b", True)
    assert "misses units" in fix.messages[-1].content and fix.messages[-2].content == "refined text"
    assert fix.params == dag.template.params
    # The summary goes out before the streamed answer's first token.
    assert await dag.events() == [
        Summary(
            mode="pipeline",
            models_used=["llama-3.2-3b", "qwen2.5-7b", "phi-4"],
            rounds=4,
            confidence=0.5,
            answer_model="qwen2.5-7b",
        )
    ]
    await dag.finish(fix, "fixed text")
    assert await dag.events() == []
    view = await dag.view()
    assert view.status == "done" and view.final is not None
    assert (view.final.text, view.final.model) == ("fixed text", "qwen2.5-7b")
    assert view.summary is not None and view.summary.confidence == 0.5


async def test_pipeline_unreadable_verdict_is_not_a_pass(dag: Harness) -> None:
    await run_pipeline(dag, "Hmm.")
    fix = await dag.take_one()
    assert fix.step == "pipeline.fix"
    (summary,) = await dag.events()
    assert isinstance(summary, Summary) and summary.confidence == 0.6


async def test_two_stage_pipeline_without_validation_streams_the_refinement(dag: Harness) -> None:
    crew = team("qwen2.5-7b", "llama-3.2-3b", assignments={"drafter": "llama-3.2-3b", "refiner": "qwen2.5-7b"})
    await dag.start("pipeline", crew)
    await dag.finish(await dag.take_one(), "draft")
    refine = await dag.take_one()
    assert (refine.step, refine.publish_tokens) == ("pipeline.refine", True)
    (summary,) = await dag.events()
    assert summary == Summary(
        mode="pipeline", models_used=["llama-3.2-3b", "qwen2.5-7b"], rounds=2, confidence=0.6, answer_model="qwen2.5-7b"
    )
    await dag.finish(refine, "final")
    view: DagView = await dag.view()
    assert view.status == "done" and view.final is not None and view.final.text == "final"


async def test_drafter_and_validator_pipeline_fixes_with_the_drafter(dag: Harness) -> None:
    crew = team("phi-4", "llama-3.2-3b", assignments={"drafter": "llama-3.2-3b", "validator": "phi-4"})
    await dag.start("pipeline", crew)
    await dag.finish(await dag.take_one(), "draft")
    validate = await dag.take_one()
    assert validate.step == "pipeline.validate"
    await dag.finish(validate, "VERDICT: FAIL wrong")
    fix = await dag.take_one()
    assert (fix.step, fix.model, fix.publish_tokens) == ("pipeline.fix", "llama-3.2-3b", True)
