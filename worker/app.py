"""The arq worker for one model: its settings class, start-up and shutdown hooks."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import uvloop
from arq import func
from arq.connections import ArqRedis, RedisSettings

from presets.context import context_for
from presets.logs import bind, configure_logging
from presets.placement import placement_for
from presets.registry import load_registry
from presets.settings import Settings
from worker.arq_claims import ARQ_IN_PROGRESS_EXTRA_S
from worker.bad_jobs import drop_undecodable
from worker.core_share import CoreShare, usable_cores
from worker.engine import Engine, LlamaEngine
from worker.keys import Keys
from worker.metrics import WorkerMetrics
from worker.null_engine import NullEngine
from worker.pool import ARQ_HEADROOM, WakeablePool
from worker.presence import Presence, new_worker_id
from worker.protocol import ChatJob, arq_deserialize, arq_serialize, decode_job
from worker.queue import CHAT_FUNCTION
from worker.redis_client import create_pool
from worker.runtime import StepResult, WorkerRuntime
from worker.self_check import self_check

logger = logging.getLogger(__name__)

_SHUTDOWN_REDIS_WAIT_S = 3.0


class WorkerSetupError(RuntimeError):
    """The worker cannot start: a one-line reason for the operator."""


class StepHooks(Protocol):
    """What a worker does around a job that is one step of an orchestration DAG.

    orchestration.steps.DagSteps is the one implementation; the entry point (worker/__init__.py,
    worker/__main__.py) plugs it in, so this package does not import orchestration.
    """

    async def recorded(self, job: ChatJob) -> StepResult | None:
        """The step's output when a run before this one (on a worker that died) recorded it."""
        ...

    async def completed(self, job: ChatJob, result: StepResult) -> None: ...

    async def abandoned(self, job: ChatJob) -> None: ...


# Built once per worker, at start-up, with the worker's Redis pool.
MakeStepHooks = Callable[[ArqRedis, Keys, Settings], StepHooks]


def resolve_model_path(settings: Settings, model_id: str) -> Path:
    """Where the worker finds its model's .gguf file."""
    from presets.embedded import EMBEDDED_MODELS, resolve_embedded

    if model_id in EMBEDDED_MODELS:
        return resolve_embedded(model_id, models_dir=settings.models_dir)
    try:
        from presets.registry import load_registry
    except ImportError as exc:  # pragma: no cover - the registry ships with the package
        raise WorkerSetupError(f"unknown model {model_id!r}") from exc
    registry = load_registry(models_dir=settings.models_dir)
    path = registry.model_path(model_id)
    if not path.is_file():
        raise WorkerSetupError(f"model file {path} is missing: run `python -m presets download {model_id}`")
    return path


def load_engines(settings: Settings, model_id: str) -> list[Engine]:
    """One engine per concurrent job this worker may run; a batching engine fills every place."""
    copies = max(settings.max_concurrent_per_model, 1)
    if settings.backend == "null":
        return [NullEngine(model_id=model_id, token_delay_s=settings.null_token_delay_ms / 1000) for _ in range(copies)]
    registry = load_registry(models_dir=settings.models_dir)
    # The model's own window, capped by INFERENCE_N_CTX and the memory budget (presets/context.py).
    n_ctx = context_for(model_id, settings, registry)
    # The registry's placement with INFERENCE_MODEL_PLACEMENT's fields on top (presets/placement.py).
    placement = placement_for(model_id, settings, registry)
    if settings.backend == "vllm":
        from worker.vllm_engine import VllmEngine, vllm_options

        options = vllm_options(
            placement=placement,
            settings=settings,
            context_tokens=n_ctx,
            gguf_path=lambda: resolve_model_path(settings, model_id),
        )
        # One engine batches all of the worker's concurrent jobs itself.
        engine = VllmEngine(model_id=model_id, options=options)
        return [engine] * copies
    path = resolve_model_path(settings, model_id)
    # INFERENCE_GPU_LAYERS is the default of a model whose placement sets none.
    gpu_layers = placement.layers(default=settings.gpu_layers)
    cores = core_share_for(settings)
    if settings.batching:
        from worker.batched_engine import BatchedLlamaEngine

        # One context decodes every concurrent job in one batch: the weights are loaded once.
        batched = BatchedLlamaEngine(
            model_id=model_id,
            path=path,
            n_ctx=n_ctx,
            slots=copies,
            n_threads=cores.max_threads,
            core_share=cores,
            extra_buffers=settings.cpu_extra_buffers,
            flash_attention=settings.flash_attention,
            kv_cache=settings.kv_cache,
            gpu_layers=gpu_layers,
            main_gpu=placement.main_gpu,
            tensor_split=placement.tensor_split,
        )
        return [batched] * copies
    return [
        LlamaEngine(
            model_id=model_id,
            path=path,
            n_ctx=n_ctx,
            n_threads=cores.max_threads,
            core_share=cores,
            extra_buffers=settings.cpu_extra_buffers,
            flash_attention=settings.flash_attention,
            gpu_layers=gpu_layers,
            main_gpu=placement.main_gpu,
            tensor_split=placement.tensor_split,
        )
        for _ in range(copies)
    ]


def core_share_for(settings: Settings) -> CoreShare:
    """INFERENCE_N_THREADS caps the threads; unset, every core (llama.cpp's own default is half)."""
    cores = usable_cores()
    threads = settings.n_threads or cores
    if not settings.share_cores:
        return CoreShare.fixed(threads)
    return CoreShare(directory=settings.core_share_dir, cores=cores, max_threads=threads)


def load_checked_engines(settings: Settings, model_id: str) -> list[Engine]:
    """load_engines, then one decoded token; any failure is a WorkerSetupError (one line, exit 2)."""
    try:
        engines = load_engines(settings, model_id)
    except WorkerSetupError:
        raise
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkerSetupError(f"model {model_id} failed to load: {detail}") from exc
    try:
        self_check(engines[0])
    except Exception as exc:
        for engine in {id(e): e for e in engines}.values():
            engine.close()
        raise WorkerSetupError(str(exc)) from exc
    return engines


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    pool: WakeablePool = ctx["redis"]
    keys = Keys(prefix=settings.key_prefix)
    model_id: str = ctx["model_id"]
    worker_id = settings.worker_id or new_worker_id()
    # arq's CLI configured logging before this hook: take it over for the configured format.
    configure_logging(settings)
    # Every task started from here on (arq's job tasks included) logs with these.
    bind(model=model_id, worker_id=worker_id)
    metrics = WorkerMetrics(keys.metrics, model=model_id)
    presence = Presence(
        pool, keys=keys, model=model_id, worker_id=worker_id, ttl_s=settings.heartbeat_ttl_s, also_write=metrics.write
    )
    await presence.start(backend=settings.backend, context_length=0)
    try:
        # Off the event loop: the heartbeat goes on while a large model loads.
        engines = await asyncio.to_thread(load_checked_engines, settings, model_id)
    except BaseException:
        await presence.stop()
        await pool.delete(keys.loading(model_id))
        raise
    runtime = WorkerRuntime(
        pool,
        keys=keys,
        engines=engines,
        presence=presence,
        worker_id=worker_id,
        request_timeout_s=settings.request_timeout_s,
        # A dead worker's key expires a heartbeat TTL after its last beat; reaping often
        # enough finds its jobs within a second of that.
        reap_interval_s=min(1.0, settings.heartbeat_ttl_s / 5),
        stream_interval_s=settings.stream_interval_ms / 1000,
        metrics=metrics,
    )
    await runtime.start()
    pool.stopping = lambda: presence.state == "stopping"
    await pool.start_wake_listener()
    ctx["runtime"] = runtime
    make_steps: MakeStepHooks | None = ctx.get("make_steps")
    ctx["steps"] = make_steps(pool, keys, settings) if make_steps is not None else None
    await presence.update(state="ready", backend=engines[0].backend, context_length=engines[0].context_length)
    await pool.delete(keys.loading(model_id))
    logger.info("worker %s serving %s (%s)", worker_id, model_id, engines[0].backend)


async def _shutdown(ctx: dict[str, Any]) -> None:
    pool: WakeablePool = ctx["redis"]
    await pool.stop_wake_listener()
    runtime: WorkerRuntime | None = ctx.get("runtime")
    if runtime is not None:
        # Redis may be down: the worker's commands would wait for it forever, and its
        # entry (and any job it claimed and never ran) expires anyway.
        try:
            await asyncio.wait_for(pool.give_back_claims(), _SHUTDOWN_REDIS_WAIT_S)
            await asyncio.wait_for(runtime.presence.stop(), _SHUTDOWN_REDIS_WAIT_S)
        except TimeoutError:
            logger.warning("Redis did not answer; leaving the worker's entry to expire")
        await runtime.stop()


async def chat(ctx: dict[str, Any], payload: bytes) -> None:
    runtime: WorkerRuntime = ctx["runtime"]
    try:
        job = decode_job(payload)
        bind(request_id=job.request_id, step=job.step, started_s=time.monotonic())
    except (msgspec.DecodeError, TypeError) as exc:
        # Not retried: the same bytes would fail the same way on every try.
        settings: Settings = ctx["settings"]
        await drop_undecodable(ctx["redis"], keys=Keys(prefix=settings.key_prefix), payload=payload, error=exc)
        return
    steps: StepHooks | None = ctx.get("steps")
    if job.dag_id is None or steps is None:
        # A step job on a worker built without step hooks still answers; its DAG then expires.
        await runtime.run(job)
        return
    # arq re-runs the job of a worker that died: a step that finished once is not generated again.
    result = await steps.recorded(job) or await runtime.run(job)
    if result is None:
        await steps.abandoned(job)
    else:
        await steps.completed(job, result)


def create_worker_settings(settings: Settings, *, make_steps: MakeStepHooks | None = None) -> type:
    """Build the class `arq worker.Settings` reads (arq takes its options as class attributes).

    `make_steps` gives the worker its part in orchestration DAGs (see StepHooks).
    """
    model_id = settings.worker_model or os.environ.get("INFERENCE_WORKER_MODEL")
    if not model_id:
        raise WorkerSetupError("set INFERENCE_WORKER_MODEL to the model this worker serves (e.g. smollm2-135m)")
    # arq takes the current event loop when the worker is built: make it uvloop's, whose
    # lower per-callback cost shows on the per-token path.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    keys = Keys(prefix=settings.key_prefix)
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    job_timeout_s = settings.request_timeout_s + 30
    pool = WakeablePool(
        create_pool(settings.redis_url, role="worker"),
        queue_name=keys.queue(model_id),
        wake_channel=keys.wake(model_id),
        idle_wait_s=settings.idle_poll_s,
        # The read claims jobs as arq would: its in-progress key lives the job timeout and 10 s.
        in_progress_ms=int((job_timeout_s + ARQ_IN_PROGRESS_EXTRA_S) * 1000),
        capacity=max(settings.max_concurrent_per_model, 1),
        job_serializer=arq_serialize,
        job_deserializer=arq_deserialize,
    )
    attributes: dict[str, Any] = {
        "functions": [func(chat, name=CHAT_FUNCTION, timeout=job_timeout_s, max_tries=3)],
        "queue_name": keys.queue(model_id),
        "redis_settings": redis_settings,
        "redis_pool": pool,
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        # The pool's queue read holds the worker to its capacity; arq's limit is one above, so
        # that a full worker waits in that read for a slot instead of polling (see worker.pool).
        "max_jobs": max(settings.max_concurrent_per_model, 1) + ARQ_HEADROOM,
        # An idle worker waits on the wake channel, a full one for a slot: this poll is rare.
        "poll_delay": 0.005,
        "keep_result": 0,
        # On SIGTERM (and on an unload command) running jobs finish before the worker exits.
        "job_completion_wait": int(settings.request_timeout_s) + 5,
        "job_serializer": arq_serialize,
        "job_deserializer": arq_deserialize,
        "ctx": {"settings": settings, "model_id": model_id, "make_steps": make_steps},
        "health_check_key": f"{settings.key_prefix}:health:{model_id}",
        "health_check_interval": 60,
        "log_results": False,
    }
    return type("Settings", (), attributes)
