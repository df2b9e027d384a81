"""Memory a model's worker takes, and what a host's workers take together.

The budget (INFERENCE_MEMORY_BUDGET_MB) is per host: workers on another machine use that
machine's memory. Fronts and supervisors count the same way, from the workers' own entries.
"""

from __future__ import annotations

from collections.abc import Iterable

from presets.context import context_for
from presets.context import worker_memory_mb as context_worker_memory_mb
from presets.registry import Registry
from presets.settings import Settings
from worker.presence import WorkerInfo


def worker_memory_mb(registry: Registry, settings: Settings, model: str) -> int:
    """What one worker of the model takes: weights, KV cache for the context it runs at, buffers."""
    n_ctx = context_for(model, settings, registry)
    return context_worker_memory_mb(registry.model(model), n_ctx=n_ctx, settings=settings)


def in_use_by_host_mb(registry: Registry, settings: Settings, workers: Iterable[WorkerInfo]) -> dict[str, int]:
    """Host -> memory its live workers (loading ones included) take."""
    used: dict[str, int] = {}
    for worker in workers:
        used[worker.host] = used.get(worker.host, 0) + worker_memory_mb(registry, settings, worker.model)
    return used
