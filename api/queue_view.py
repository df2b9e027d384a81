"""GET /v1/queue: per model, the queue depth by priority, the running jobs and the workers."""

from __future__ import annotations

from typing import Any

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from api.admission import Admission
from api.catalog import Catalog
from worker.keys import Keys
from worker.protocol import arq_deserialize, decode_job


class QueueView:
    def __init__(self, *, redis: Redis, catalog: Catalog, admission: Admission) -> None:
        self._redis = redis
        self._catalog = catalog
        self._admission = admission
        self._keys = Keys(prefix=catalog.settings.key_prefix)

    async def snapshot(self) -> dict[str, Any]:
        view = await self._catalog.view()
        models = self._catalog.registry.model_ids()
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zrange(self._keys.queue(model), 0, -1)
                pipe.hkeys(self._keys.running(model))
            replies = await pipe.execute()
        report: dict[str, Any] = {}
        for index, model in enumerate(models):
            queued_ids: list[bytes] = replies[2 * index]
            running = {key.decode() for key in replies[2 * index + 1]}
            workers = [w for w in view.workers if w.model == model]
            if not queued_ids and not running and not workers:
                continue
            waiting = [job_id for job_id in queued_ids if job_id.decode().split(":", 1)[-1] not in running]
            report[model] = {
                "queued": await self._by_priority(waiting),
                "running": len(running),
                "workers": [
                    {"id": w.worker_id, "state": w.state, "running": w.running, "jobs_done": w.jobs_done}
                    for w in workers
                ],
            }
        return {
            "object": "queue",
            "admitted": await self._admission.count(),
            "max_concurrent_requests": self._catalog.settings.max_concurrent_requests,
            "models": report,
        }

    async def _by_priority(self, job_ids: list[bytes]) -> dict[str, int]:
        counts: dict[str, int] = {str(level): 0 for level in range(1, self._catalog.settings.priority_levels + 1)}
        if not job_ids:
            return counts
        envelopes = await self._redis.mget([job_key_prefix.encode() + job_id for job_id in job_ids])
        for envelope in envelopes:
            if envelope is None:
                continue
            args = arq_deserialize(envelope).get("a") or []
            if isinstance(args, list) and args and isinstance(args[0], bytes):
                level = str(decode_job(args[0]).priority)
                counts[level] = counts.get(level, 0) + 1
        return counts
