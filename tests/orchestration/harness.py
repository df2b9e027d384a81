"""Drives a DAG by hand on fakeredis: start it, take the queued steps, finish them with fake text."""

from __future__ import annotations

import time
from collections.abc import Mapping

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.asyncio.client import PubSub

from orchestration.start import read_dag, start_dag
from orchestration.steps import DagSteps
from orchestration.store import DagView
from orchestration.team import Team
from presets.settings import Settings
from worker.keys import Keys
from worker.protocol import ChatJob, Event, Message, SamplingParams, arq_deserialize, decode_event, decode_job
from worker.queue import JobQueue, QueuePolicy
from worker.runtime import StepResult

ROLES: Mapping[str, tuple[str, ...]] = {
    "phi-4": ("primary", "thinker", "coder"),
    "qwen2.5-7b": ("coder", "primary", "fast"),
    "llama-3.2-3b": ("fast", "primary"),
    "deepseek-r1-7b": ("thinker", "primary"),
    "phi-3-medium-128k": ("longctx", "primary", "thinker"),
    "smollm2-135m": ("fast", "primary"),
    "gemma3-270m": ("primary", "thinker", "coder"),
}


def team(*models: str, assignments: Mapping[str, str] | None = None) -> Team:
    return Team(models={m: ROLES[m] for m in models}, assignments=dict(assignments or {}))


def template(request_id: str = "req1", *, content: str = "What is 2+2?", task_type: str | None = None) -> ChatJob:
    return ChatJob(
        request_id=request_id,
        model="",
        messages=[Message("system", "Be brief."), Message("user", content)],
        params=SamplingParams(max_tokens=64, stop=["\n\n"]),
        channel=f"o:ev:{request_id}",
        priority=2,
        deadline_ms=int(time.time() * 1000) + 60_000,
        task_type=task_type,
    )


class Harness:
    def __init__(self, pool: ArqRedis, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.keys = Keys(prefix=settings.key_prefix)
        self.steps = DagSteps(pool, keys=self.keys, settings=settings)
        self.template = template()
        self._pubsub: PubSub | None = None

    async def start(self, mode: str, crew: Team, *, job: ChatJob | None = None) -> None:
        self.template = job or self.template
        await self.close()
        self._pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.template.channel)
        # Read the subscription's confirmation, so the subscription is in place before any publish.
        await self._pubsub.get_message(timeout=0.05)
        await start_dag(
            JobQueue(self.pool, keys=self.keys),
            settings=self.settings,
            policy=QueuePolicy(),
            template=self.template,
            mode=mode,
            team=crew,
        )

    async def queued(self) -> list[ChatJob]:
        """Every job waiting on any model's queue, by step name."""
        jobs = []
        async for queue in self.pool.scan_iter(match=f"{self.keys.prefix}:q:*"):
            for job_id in await self.pool.zrange(queue, 0, -1):
                raw = await self.pool.get(job_key_prefix + job_id.decode())
                envelope = arq_deserialize(raw)
                args = envelope["a"]
                assert isinstance(args, list)
                jobs.append(decode_job(args[0]))
        return sorted(jobs, key=lambda j: j.step or "")

    async def take(self) -> list[ChatJob]:
        """Take the queued jobs off their queues, as workers do before they run them."""
        jobs = await self.queued()
        for job in jobs:
            job_id = self.keys.job_id(job.job_key)
            await self.pool.zrem(self.keys.queue(job.model), job_id)
            await self.pool.delete(job_key_prefix + job_id)
        return jobs

    async def take_one(self) -> ChatJob:
        jobs = await self.take()
        assert len(jobs) == 1, [j.step for j in jobs]
        return jobs[0]

    async def finish(self, job: ChatJob, text: str, *, reason: str = "stop") -> None:
        result = StepResult(text=text, reason=reason, prompt_tokens=3, completion_tokens=5)
        await self.steps.completed(job, result)

    async def events(self) -> list[Event]:
        assert self._pubsub is not None
        found: list[Event] = []
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is None:
                return found
            found.append(decode_event(message["data"]))

    async def view(self) -> DagView:
        seen = await read_dag(self.pool, keys=self.keys, dag_id=self.template.request_id)
        assert seen is not None
        return seen

    async def close(self) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
