"""What a worker does after running one step of a DAG: record it and take the next decision.

``DagSteps.completed`` is safe to run twice for one step (arq retries a job whose worker
died): the first output recorded is the one used, and each transition is taken by
exactly one caller (see orchestration.store). A retry that finds the transition already
taken re-takes the same decision and queues only what is missing, so a worker that died
between claiming a transition and queueing its steps does not leave the DAG stuck.
"""

from __future__ import annotations

import logging
import time

from arq.connections import ArqRedis

from orchestration.dag import FinalAnswer, StepOutput
from orchestration.dispatch import carry_out, flow_for, stopped
from orchestration.store import DagStore
from presets.settings import Settings
from worker.keys import Keys
from worker.protocol import ChatJob
from worker.queue import JobQueue
from worker.runtime import StepResult

logger = logging.getLogger(__name__)


class DagSteps:
    """A worker's side of the DAGs: what it does around each step job it runs.

    The worker's entry point plugs one in (worker.app.StepHooks); the worker itself knows
    nothing of orchestration.
    """

    def __init__(self, redis: ArqRedis, *, keys: Keys, settings: Settings) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = JobQueue(redis, keys=keys)
        self._ttl_s = settings.dag_ttl_s

    def _store(self, job: ChatJob) -> DagStore:
        return DagStore(self._redis, keys=self._keys, dag_id=job.dag_id or job.request_id, ttl_s=self._ttl_s)

    async def completed(self, job: ChatJob, result: StepResult) -> None:
        """Record ``job``'s output, then queue what follows, publish the answer, or end the DAG."""
        if job.dag_id is None or job.step is None:
            return
        redis, keys = self._redis, self._keys
        plan = await self._store(job).plan()
        if plan is None:
            logger.warning("step %s finished for DAG %s, which has expired", job.step, job.dag_id)
            return
        store = DagStore(redis, keys=keys, dag_id=plan.dag_id, ttl_s=plan.ttl_s)
        if result.reason == "cancelled":
            await _end_unfinished(redis, keys=keys, store=store, job=job)
            return
        fresh, outputs = await store.record(
            job.step, StepOutput(model=job.model, text=result.text, reason=result.reason)
        )
        if await store.status() != "running":
            return
        if job.publish_tokens:
            # The worker streamed this answer to the client already; the DAG just keeps it.
            answer = outputs[job.step]
            await store.end("done", final=FinalAnswer(text=answer.text, model=answer.model, reason=answer.reason))
            return
        flow = flow_for(plan.mode)
        group, members = flow.group(plan, job.step)
        if any(member not in outputs for member in members):
            return
        claimed = await store.claim(group)
        if not claimed and fresh:
            return
        if await stopped(self._queue, store=store, plan=plan):
            return
        await carry_out(
            self._queue, store=store, plan=plan, decision=flow.decide(plan, group, outputs), repair=not claimed
        )

    async def abandoned(self, job: ChatJob) -> None:
        """A step ended without a result (cancelled, expired, failed): end its DAG accordingly.

        The worker has told the client why already (a Failed event) where there is a reason
        to tell; this only keeps the DAG's state from saying ``running`` until it expires.
        """
        if job.dag_id is None or job.step is None:
            return
        store = self._store(job)
        if await store.has_output(job.step):
            # A retry of a step that did finish once: the DAG went on with that output.
            return
        await _end_unfinished(self._redis, keys=self._keys, store=store, job=job)

    async def recorded(self, job: ChatJob) -> StepResult | None:
        """The output a DAG step already recorded, so a retried step need not generate again."""
        if job.dag_id is None or job.step is None:
            return None
        output = await self._store(job).output(job.step)
        if output is None:
            return None
        return StepResult(text=output.text, reason=output.reason, prompt_tokens=0, completion_tokens=0)


async def _end_unfinished(redis: ArqRedis, *, keys: Keys, store: DagStore, job: ChatJob) -> None:
    if await redis.exists(keys.cancelled(job.request_id)):
        await store.end("cancelled", error="the request was cancelled")
    elif time.time() * 1000 >= job.deadline_ms:
        await store.end("failed", error=f"the request's deadline passed during step {job.step}")
    else:
        await store.end("failed", error=f"step {job.step} on {job.model} did not finish")
