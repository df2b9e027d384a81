"""Starting an orchestrated request as a DAG of chat jobs, and cancelling one.

The DAG's id is the request id. After ``start_dag`` the front only listens on the
client's channel: workers take every later decision (``orchestration.steps``), so the
DAG runs to its end, and records its answer, even if the front goes away.
"""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from orchestration.dag import Limits, Plan
from orchestration.dispatch import carry_out, flow_for
from orchestration.store import DagStore, DagView
from orchestration.team import Team, cast_for
from presets.settings import Settings
from worker.keys import Keys
from worker.protocol import ChatJob
from worker.queue import JobQueue, QueuePolicy


def make_plan(
    *, settings: Settings, policy: QueuePolicy, template: ChatJob, mode: str, team: Team, created_ms: int
) -> Plan:
    """The request's plan: who runs which step under which limits. Pure: touches no Redis.

    Raises NotEnoughModels (a ValueError) when ``team`` has fewer models than ``mode``
    needs, and UnknownMode for a mode that does not exist.
    """
    cast = cast_for(
        team,
        mode=mode,
        task_type=template.task_type,
        reconcile_target=settings.debate_reconcile_model,
        synthesis_target=settings.ensemble_synthesis_model,
        pipeline_stages=settings.pipeline_stages,
        max_debaters=settings.debate_max_participants,
    )
    return Plan(
        dag_id=template.request_id,
        mode=mode,
        template=template,
        cast=cast,
        limits=Limits.of(settings),
        queue_strategy=policy.strategy,
        queue_ageing_s=policy.ageing_s,
        queue_levels=policy.levels,
        ttl_s=settings.dag_ttl_s,
        created_ms=created_ms,
    )


async def start_dag(
    queue: JobQueue,
    *,
    settings: Settings,
    policy: QueuePolicy,
    template: ChatJob,
    mode: str,
    team: Team,
) -> None:
    """Plan the request's steps (``make_plan``), store the plan and queue the first step(s).

    Raises as ``make_plan`` does; nothing is written then.
    """
    plan = make_plan(
        settings=settings,
        policy=policy,
        template=template,
        mode=mode,
        team=team,
        created_ms=int(time.time() * 1000),
    )
    store = DagStore(queue.redis, keys=queue.keys, dag_id=plan.dag_id, ttl_s=plan.ttl_s)
    await store.create(plan)
    await carry_out(queue, store=store, plan=plan, decision=flow_for(mode).first(plan))


async def withdraw_dag(redis: ArqRedis, *, keys: Keys, request_id: str, marker_ttl_s: int) -> bool:
    """Cancel a DAG: mark the request cancelled, stop its running step, drop its queued ones.

    Returns False when there is no such DAG or it had already ended.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.cancelled(request_id), b"1", ex=max(marker_ttl_s, 1))
        pipe.publish(keys.cancel, request_id.encode())
        await pipe.execute()
    store = DagStore(redis, keys=keys, dag_id=request_id, ttl_s=marker_ttl_s)
    plan = await store.plan()
    if plan is None:
        return False
    store = DagStore(redis, keys=keys, dag_id=request_id, ttl_s=plan.ttl_s)
    queued = await store.jobs()
    if queued:
        async with redis.pipeline(transaction=True) as pipe:
            for step, model in queued.items():
                job_id = keys.job_id(f"{request_id}/{step}")
                pipe.zrem(keys.queue(model), job_id)
                pipe.delete(job_key_prefix + job_id)
            await pipe.execute()
    return await store.end("cancelled", error="the request was cancelled")


async def read_dag(redis: ArqRedis, *, keys: Keys, dag_id: str) -> DagView | None:
    """A DAG's status, summary and final answer; None once it expired (or never existed)."""
    return await DagStore(redis, keys=keys, dag_id=dag_id, ttl_s=1).view()
