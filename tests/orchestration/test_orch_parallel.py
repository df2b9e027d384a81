"""Debate and ensemble DAGs: parallel answers and the atomic join behind them."""

from __future__ import annotations

import asyncio

from presets.settings import Settings
from tests.orchestration.harness import Harness, team
from worker.protocol import Finished, Summary, Token

TRIO = team("phi-4", "deepseek-r1-7b", "qwen2.5-7b")
AGREE = "The capital of France is Paris."
DISAGREE = ["Paris is the capital.", "Lyon, surely.", "Marseille obviously"]


async def test_debate_rounds_show_each_model_the_others_answers(dag: Harness) -> None:
    await dag.start("debate", TRIO)
    first = await dag.take()
    assert [(j.step, j.model, j.publish_tokens) for j in first] == [
        ("debate.r1.m0", "phi-4", False),
        ("debate.r1.m1", "deepseek-r1-7b", False),
        ("debate.r1.m2", "qwen2.5-7b", False),
    ]
    assert all(j.messages == dag.template.messages for j in first)
    for job, text in zip(first, DISAGREE, strict=True):
        await dag.finish(job, text)
    second = await dag.take()
    assert [j.step for j in second] == ["debate.r2.m0", "debate.r2.m1", "debate.r2.m2"]
    own, ask = second[1].messages[-2:]
    assert own.content == "Lyon, surely."
    assert "Paris is the capital." in ask.content and "Marseille obviously" in ask.content
    assert "Lyon" not in ask.content
    for job in second:
        await dag.finish(job, AGREE)
    reconcile = await dag.take_one()
    assert (reconcile.step, reconcile.model, reconcile.publish_tokens) == ("debate.reconcile", "phi-4", True)
    assert reconcile.params == dag.template.params
    assert await dag.events() == [
        Summary(
            mode="debate",
            models_used=["phi-4", "deepseek-r1-7b", "qwen2.5-7b"],
            rounds=2,
            confidence=1.0,
            answer_model="phi-4",
        )
    ]
    await dag.finish(reconcile, "Paris.")
    view = await dag.view()
    assert view.status == "done" and view.final is not None and view.final.text == "Paris."
    assert await dag.events() == []


async def test_debate_stops_after_max_rounds(dag: Harness, settings: Settings) -> None:
    dag.settings = settings.model_copy(update={"debate_max_rounds": 2, "debate_reconcile_model": "thinker"})
    await dag.start("debate", team("phi-4", "deepseek-r1-7b"))
    for _ in range(2):
        for job, text in zip(await dag.take(), DISAGREE, strict=False):
            await dag.finish(job, text)
    reconcile = await dag.take_one()
    assert (reconcile.step, reconcile.model) == ("debate.reconcile", "deepseek-r1-7b")
    assert "Paris is the capital." in reconcile.messages[-1].content
    (summary,) = await dag.events()
    assert isinstance(summary, Summary) and summary.rounds == 2 and summary.confidence < 0.8


async def test_ensemble_synthesizes_and_flags_low_agreement(dag: Harness) -> None:
    await dag.start("ensemble", TRIO)
    answers = await dag.take()
    assert [j.step for j in answers] == ["ensemble.m0", "ensemble.m1", "ensemble.m2"]
    for job, text in zip(answers, DISAGREE, strict=True):
        await dag.finish(job, text)
    synth = await dag.take_one()
    assert (synth.step, synth.model, synth.publish_tokens) == ("ensemble.synth", "phi-4", True)
    assert all(text in synth.messages[-1].content for text in DISAGREE)
    (summary,) = await dag.events()
    assert isinstance(summary, Summary)
    assert summary.models_used == ["phi-4", "deepseek-r1-7b", "qwen2.5-7b"] and summary.rounds == 1
    assert summary.low_confidence is True and summary.confidence < 0.7


async def test_ensemble_agreement_is_confident(dag: Harness) -> None:
    await dag.start("ensemble", team("phi-4", "deepseek-r1-7b"))
    for job in await dag.take():
        await dag.finish(job, AGREE)
    (summary,) = await dag.events()
    assert summary == Summary(
        mode="ensemble",
        models_used=["phi-4", "deepseek-r1-7b"],
        rounds=1,
        confidence=1.0,
        low_confidence=False,
        answer_model="phi-4",
    )


async def test_join_waits_for_every_answer(dag: Harness) -> None:
    await dag.start("ensemble", TRIO)
    first, second, third = await dag.take()
    await dag.finish(first, AGREE)
    await dag.finish(second, AGREE)
    assert await dag.queued() == [] and await dag.events() == []
    await dag.finish(third, AGREE)
    assert [j.step for j in await dag.queued()] == ["ensemble.synth"]


async def test_parallel_finishers_join_exactly_once(dag: Harness) -> None:
    await dag.start("debate", TRIO)
    jobs = await dag.take()
    await asyncio.gather(*(dag.finish(job, text) for job, text in zip(jobs, DISAGREE, strict=True)))
    assert [j.step for j in await dag.take()] == ["debate.r2.m0", "debate.r2.m1", "debate.r2.m2"]
    assert await dag.pool.scard(dag.keys.dag_claims(dag.template.request_id)) == 1  # type: ignore[misc]


async def test_parallel_finishers_and_their_retries_join_exactly_once(dag: Harness) -> None:
    await dag.start("ensemble", TRIO)
    jobs = await dag.take()
    # Every answer arrives twice, as when arq retries the jobs of a worker that died.
    await asyncio.gather(*(dag.finish(job, AGREE) for job in [*jobs, *jobs]))
    assert [j.step for j in await dag.take()] == ["ensemble.synth"]
    summaries = [e for e in await dag.events() if isinstance(e, Summary)]
    assert len(summaries) == 1
    assert not [e for e in await dag.events() if isinstance(e, Token | Finished)]


FIVE = team("phi-4", "deepseek-r1-7b", "qwen2.5-7b", "llama-3.2-3b", "phi-3-medium-128k")


async def test_five_model_debate_runs_every_participant(dag: Harness) -> None:
    await dag.start("debate", FIVE)
    first = await dag.take()
    assert {j.model for j in first} == {"phi-4", "deepseek-r1-7b", "qwen2.5-7b", "llama-3.2-3b", "phi-3-medium-128k"}
    assert [j.step for j in first] == [f"debate.r1.m{n}" for n in range(5)]
    for job in first:
        await dag.finish(job, AGREE)
    reconcile = await dag.take_one()
    (summary,) = await dag.events()
    assert isinstance(summary, Summary) and summary.rounds == 1
    assert summary.models_used == [j.model for j in first]
    assert reconcile.model == "phi-4"


async def test_debate_cap_setting_limits_who_takes_part_and_says_so(dag: Harness, settings: Settings) -> None:
    dag.settings = settings.model_copy(update={"debate_max_participants": 2})
    await dag.start("debate", FIVE)
    first = await dag.take()
    assert [j.model for j in first] == ["phi-4", "deepseek-r1-7b"]
    for job in first:
        await dag.finish(job, AGREE)
    await dag.take_one()
    (summary,) = await dag.events()
    assert isinstance(summary, Summary) and summary.models_used == ["phi-4", "deepseek-r1-7b"]
