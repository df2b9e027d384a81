"""Each mode's flow, and carrying out its decisions: publish the answer, or queue the next steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import msgspec

from orchestration.dag import Advance, Conclude, Decision, FinalAnswer, Flow, Plan, StepOrder, StepOutput, step_job
from orchestration.errors import UnknownMode
from orchestration.parallel import DebateFlow, EnsembleFlow
from orchestration.sequential import CritiqueFlow, PipelineFlow
from orchestration.store import DagStore
from worker.protocol import ChatJob, Finished, Token
from worker.queue import JobQueue

logger = logging.getLogger(__name__)


class SingleFlow:
    """One model answers, streamed; no summary, as for a request without orchestration."""

    def first(self, plan: Plan) -> Advance:
        order = StepOrder(
            name="single",
            model=plan.cast.steps["single"],
            messages=plan.conversation,
            params=plan.answer_params(),
            final=True,
        )
        return Advance(steps=(order,))

    def group(self, plan: Plan, step: str) -> tuple[str, tuple[str, ...]]:
        return step, (step,)

    def decide(self, plan: Plan, group: str, outputs: Mapping[str, StepOutput]) -> Decision:
        raise AssertionError("a single-model DAG has no step after its answer")


def flow_for(mode: str) -> Flow:
    if mode == "critique":
        return CritiqueFlow()
    if mode == "debate":
        return DebateFlow()
    if mode == "ensemble":
        return EnsembleFlow()
    if mode == "pipeline":
        return PipelineFlow()
    if mode == "single":
        return SingleFlow()
    raise UnknownMode(mode)


async def stopped(queue: JobQueue, *, store: DagStore, plan: Plan) -> bool:
    """End the DAG if its client went away or its deadline passed; True if it must not go on."""
    if await queue.is_cancelled(plan.template.request_id):
        await store.end("cancelled", error="the request was cancelled")
        return True
    if time.time() * 1000 >= plan.template.deadline_ms:
        await store.end("failed", error="the request's deadline passed before the DAG finished")
        return True
    return False


async def carry_out(queue: JobQueue, *, store: DagStore, plan: Plan, decision: Decision, repair: bool = False) -> None:
    """Publish a concluded answer, or queue the decided steps.

    ``repair``: a retried step re-takes a decision another run already took, maybe only
    half carried out; it queues only the steps that are neither queued, running nor done.
    """
    channel = plan.template.channel
    if isinstance(decision, Conclude):
        finished = Finished(reason="stop", model=decision.model, prompt_tokens=0, completion_tokens=0)
        summary = msgspec.structs.replace(decision.summary, answer_model=decision.model)
        await store.end(
            "done",
            final=FinalAnswer(text=decision.text, model=decision.model, reason="stop"),
            summary=summary,
            channel=channel,
            events=(summary, Token(decision.text), finished),
        )
        return
    if decision.summary is not None:
        answer_model = next((order.model for order in decision.steps if order.final), None)
        # Before the final step is queued: the client must have it before the answer's first token.
        await store.publish_summary(channel, msgspec.structs.replace(decision.summary, answer_model=answer_model))
    jobs = [step_job(plan, order) for order in decision.steps]
    await store.note_jobs((job.step or "", job.model) for job in jobs)
    for job in jobs:
        if repair and await _already_there(queue, store=store, job=job):
            continue
        await _enqueue(queue, plan=plan, job=job)


async def _already_there(queue: JobQueue, *, store: DagStore, job: ChatJob) -> bool:
    # From its enqueue on, a step has an arq job key (queued or running) or an output (done).
    if job.step is not None and await store.has_output(job.step):
        return True
    return await queue.has_job(job.job_key)


async def _enqueue(queue: JobQueue, *, plan: Plan, job: ChatJob) -> None:
    now_ms = int(time.time() * 1000)
    try:
        # Scored at the DAG's start, not now: a request already under way keeps its place
        # ahead of requests that arrived after it, so its later steps do not queue behind them.
        await queue.enqueue(
            job,
            policy=plan.policy(),
            now_ms=min(plan.created_ms, now_ms),
            expires_s=(job.deadline_ms - now_ms) / 1000,
        )
    except RuntimeError:
        # Another run of the same decision queued it first.
        logger.info("step %s of %s was already queued", job.step, plan.dag_id)
