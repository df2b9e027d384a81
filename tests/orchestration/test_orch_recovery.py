"""Retries, crashes, cancels and deadlines: the DAG advances once and always ends."""

from __future__ import annotations

import time

from arq.constants import job_key_prefix

from orchestration.dag import StepOutput
from orchestration.dispatch import flow_for
from orchestration.errors import NotEnoughModels
from orchestration.start import withdraw_dag
from orchestration.store import DagStore
from tests.orchestration.harness import Harness, team, template
from worker.protocol import Finished, Token

CRITIQUE = team("phi-4", "deepseek-r1-7b")


def store(dag: Harness) -> DagStore:
    return DagStore(dag.pool, keys=dag.keys, dag_id=dag.template.request_id, ttl_s=600)


async def test_a_step_completed_twice_advances_once_and_keeps_its_first_output(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.finish(gen, "first run")
    await dag.finish(gen, "second run")
    review = await dag.take_one()
    assert review.step == "r1.critique" and "first run" in review.messages[-1].content
    # The critique ran; now a third late copy of r1.gen must not queue it again.
    await dag.finish(review, "SCORE: 2/10")
    await dag.take_one()
    await dag.finish(gen, "third run")
    assert await dag.queued() == []


async def test_a_concluded_answer_is_published_once(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await dag.finish(await dag.take_one(), "4")
    review = await dag.take_one()
    await dag.finish(review, "SCORE: 10/10")
    await dag.finish(review, "SCORE: 10/10")
    events = await dag.events()
    assert events.count(Token("4")) == 1
    assert len([e for e in events if isinstance(e, Finished)]) == 1


async def test_a_retry_repairs_a_decision_whose_steps_were_never_queued(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    # The first run recorded its output and claimed the transition, then its worker died.
    await store(dag).record("r1.gen", StepOutput(model="phi-4", text="answer", reason="stop"))
    assert await store(dag).claim("r1.gen")
    assert await dag.queued() == []
    await dag.finish(gen, "answer from the retry")
    review = await dag.take_one()
    assert review.step == "r1.critique" and "answer" in review.messages[-1].content
    assert "from the retry" not in review.messages[-1].content


async def test_a_repair_does_not_queue_a_step_that_is_queued_or_running(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.finish(gen, "answer")
    assert [j.step for j in await dag.queued()] == ["r1.critique"]
    await dag.finish(gen, "answer")
    assert [j.step for j in await dag.queued()] == ["r1.critique"]


async def test_the_final_streamed_step_ends_the_dag(dag: Harness) -> None:
    await dag.start("ensemble", team("phi-4", "deepseek-r1-7b"))
    for job in await dag.take():
        await dag.finish(job, "same")
    synth = await dag.take_one()
    await dag.finish(synth, "final", reason="length")
    view = await dag.view()
    assert view.status == "done" and view.final is not None
    assert (view.final.text, view.final.model, view.final.reason) == ("final", "phi-4", "length")
    assert view.summary is not None and view.summary.mode == "ensemble"


async def test_cancel_marker_stops_the_dag_before_the_next_step(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.pool.set(dag.keys.cancelled(dag.template.request_id), b"1")
    await dag.finish(gen, "answer")
    assert await dag.queued() == []
    assert (await dag.view()).status == "cancelled"


async def test_a_cancelled_generation_cancels_the_dag(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.pool.set(dag.keys.cancelled(dag.template.request_id), b"1")
    await dag.finish(gen, "partial", reason="cancelled")
    assert await dag.queued() == []
    assert (await dag.view()).status == "cancelled"


async def test_a_generation_stopped_by_its_worker_fails_the_dag(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await dag.finish(await dag.take_one(), "partial", reason="cancelled")
    assert await dag.queued() == []
    view = await dag.view()
    assert view.status == "failed" and view.error is not None and "r1.gen" in view.error


async def test_a_passed_deadline_fails_the_dag(dag: Harness) -> None:
    late = template(content="hi").__replace__(deadline_ms=int(time.time() * 1000) - 1)
    await dag.start("critique", CRITIQUE, job=late)
    await dag.finish(await dag.take_one(), "answer")
    assert await dag.queued() == []
    view = await dag.view()
    assert view.status == "failed" and view.error is not None and "deadline" in view.error


async def test_an_abandoned_step_fails_the_dag_unless_it_had_finished(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.finish(gen, "answer")
    await dag.steps.abandoned(gen)
    assert (await dag.view()).status == "running"
    review = await dag.take_one()
    await dag.steps.abandoned(review)
    view = await dag.view()
    assert view.status == "failed" and view.error is not None and "r1.critique" in view.error


async def test_recorded_result_lets_a_retry_skip_generation(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    assert await dag.steps.recorded(gen) is None
    await dag.finish(gen, "answer")
    again = await dag.steps.recorded(gen)
    assert again is not None and again.text == "answer"


async def test_withdraw_drops_queued_steps_and_marks_cancelled(dag: Harness) -> None:
    await dag.start("ensemble", team("phi-4", "deepseek-r1-7b"))
    assert len(await dag.queued()) == 2
    request_id = dag.template.request_id
    assert await withdraw_dag(dag.pool, keys=dag.keys, request_id=request_id, marker_ttl_s=60)
    assert await dag.queued() == []
    assert await dag.pool.exists(dag.keys.cancelled(request_id))
    assert (await dag.view()).status == "cancelled"
    assert not await withdraw_dag(dag.pool, keys=dag.keys, request_id=request_id, marker_ttl_s=60)


async def test_every_dag_key_expires(dag: Harness) -> None:
    await dag.start("ensemble", team("phi-4", "deepseek-r1-7b"))
    for job in await dag.take():
        await dag.finish(job, "same")
    dag_id = dag.template.request_id
    for key in (
        dag.keys.dag(dag_id),
        dag.keys.dag_outputs(dag_id),
        dag.keys.dag_claims(dag_id),
        dag.keys.dag_jobs(dag_id),
    ):
        ttl = await dag.pool.ttl(key)
        assert 0 < ttl <= dag.settings.dag_ttl_s, key


async def test_not_enough_models_writes_nothing(dag: Harness) -> None:
    try:
        await dag.start("debate", team("phi-4"))
    except NotEnoughModels as exc:
        assert "debate" in str(exc)
    else:
        raise AssertionError("a one-model debate started")
    assert await dag.pool.keys("*") == []


async def test_steps_of_a_started_request_keep_its_place_in_the_queue(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    gen = await dag.take_one()
    await dag.pool.zadd(dag.keys.queue("deepseek-r1-7b"), {"someone-newer": time.time() * 1000})
    await dag.finish(gen, "answer")
    order = await dag.pool.zrange(dag.keys.queue("deepseek-r1-7b"), 0, -1)
    assert order[0] == dag.keys.job_id(f"{dag.template.request_id}/r1.critique").encode()
    await dag.pool.zrem(dag.keys.queue("deepseek-r1-7b"), "someone-newer")
    assert await dag.pool.exists(job_key_prefix + order[0].decode())


async def test_a_dag_cannot_be_started_twice(dag: Harness) -> None:
    await dag.start("critique", CRITIQUE)
    await withdraw_dag(dag.pool, keys=dag.keys, request_id=dag.template.request_id, marker_ttl_s=60)
    try:
        await dag.start("critique", CRITIQUE)
    except RuntimeError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("the same DAG started twice")
    assert (await dag.view()).status == "cancelled"


async def test_single_mode_is_one_streamed_step(dag: Harness) -> None:
    await dag.start("single", team("llama-3.2-3b", "phi-4"))
    job = await dag.take_one()
    assert (job.step, job.model, job.publish_tokens) == ("single", "phi-4", True)
    await dag.finish(job, "4")
    view = await dag.view()
    assert view.status == "done" and view.summary is None and view.final is not None and view.final.text == "4"
    assert await dag.events() == []
    assert flow_for("single").group(None, "single") == ("single", ("single",))  # type: ignore[arg-type]
