"""Runs chat jobs on a worker: one model loaded once, generation in threads, tokens to pub/sub."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker.engine import Engine, Outcome, PromptTooLong
from worker.fleet_protocol import UNLOAD
from worker.keys import Keys
from worker.listener import Listener
from worker.presence import Presence
from worker.protocol import Accepted, ChatJob, Event, Failed, Finished, Progress, Token, encode_event

logger = logging.getLogger(__name__)

_DONE = object()


@dataclass(frozen=True)
class _Started:
    """The prompt fits: generation begins."""

    prompt_tokens: int


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """What a finished generation produced; orchestration steps build on it."""

    text: str
    reason: str
    prompt_tokens: int
    completion_tokens: int


class WorkerRuntime:
    def __init__(
        self,
        redis: Redis,
        *,
        keys: Keys,
        engines: Sequence[Engine],
        presence: Presence,
        worker_id: str,
        stream_interval_s: float = 0.0,
    ) -> None:
        self._stream_interval_s = stream_interval_s
        self._redis = redis
        self._keys = keys
        self._engines: asyncio.Queue[Engine] = asyncio.Queue()
        for engine in engines:
            self._engines.put_nowait(engine)
        self._all_engines = list(engines)
        self.model_id = engines[0].model_id
        self.worker_id = worker_id
        self.presence = presence
        self._threads = ThreadPoolExecutor(max_workers=len(engines), thread_name_prefix="generate")
        # job key -> (request id, its cancel flag); a request's steps share the request id.
        self._cancels: dict[str, tuple[str, threading.Event]] = {}
        self._listener: Listener | None = None
        self._jobs_done = 0

    @property
    def running(self) -> int:
        return len(self._cancels)

    async def start(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._keys.cancel, self._keys.control(self.model_id))
        self._listener = Listener(pubsub, self._on_message, name="cancel listener", retry_s=1.0)
        self._listener.start()

    async def stop(self) -> None:
        for _, event in self._cancels.values():
            event.set()
        if self._listener is not None:
            await self._listener.stop()
        self._threads.shutdown(wait=True, cancel_futures=True)
        # A backend that batches itself (vLLM) serves every slot with one engine.
        for engine in {id(e): e for e in self._all_engines}.values():
            engine.close()

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message["channel"].decode() == self._keys.control(self.model_id):
            if message["data"] == UNLOAD:
                await self._unload()
            return
        request_id = message["data"].decode()
        for owner, event in list(self._cancels.values()):
            if owner == request_id:
                event.set()

    async def _unload(self) -> None:
        """Stop taking jobs, let the running ones finish, then exit (arq's graceful SIGTERM)."""
        logger.info("unload requested for %s", self.model_id)
        await self.presence.update(state="stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    async def _publish(self, channel: str, *events: Event) -> None:
        if len(events) == 1:
            await self._redis.publish(channel, encode_event(events[0]))
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel, encode_event(event))
            await pipe.execute()

    async def run(self, job: ChatJob) -> StepResult | None:
        """Run one job to its end; None when it was cancelled or expired before it started."""
        if time.time() * 1000 >= job.deadline_ms:
            return None
        cancel = threading.Event()
        self._cancels[job.job_key] = (job.request_id, cancel)
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(max(job.deadline_ms / 1000 - time.time(), 0), cancel.set)
        engine = await self._engines.get()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(self._keys.cancelled(job.request_id))
                pipe.hset(self._keys.running(self.model_id), job.job_key, self.worker_id)
                cancelled, _ = await pipe.execute()
            if cancelled:
                return None
            self._note_load()
            return await self._generate(job, engine, cancel)
        finally:
            deadline.cancel()
            self._engines.put_nowait(engine)
            del self._cancels[job.job_key]
            self._jobs_done += 1
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self._keys.running(self.model_id), job.job_key)
                pipe.zadd(self._keys.last_used, {self.model_id: int(time.time() * 1000)})
                await pipe.execute()
            self._note_load()

    def _note_load(self) -> None:
        # Written by the next heartbeat: a round trip per job start and end is not worth it.
        if self.presence.state != "stopping":
            self.presence.note(
                state="busy" if self._cancels else "ready", running=self.running, jobs_done=self._jobs_done
            )

    async def _generate(self, job: ChatJob, engine: Engine, cancel: threading.Event) -> StepResult | None:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(items.put_nowait, text)

        def work() -> Outcome | None:
            # One thread hop for the whole job: tokenize, then generate.
            try:
                try:
                    prompt = engine.prepare(job.messages, job.params)
                except PromptTooLong as exc:
                    loop.call_soon_threadsafe(items.put_nowait, exc)
                    return None
                loop.call_soon_threadsafe(items.put_nowait, _Started(len(prompt.tokens)))
                return engine.generate(prompt, job.params, cancel=cancel, emit=emit)
            finally:
                loop.call_soon_threadsafe(items.put_nowait, _DONE)

        future = loop.run_in_executor(self._threads, work)
        collected: list[str] = []
        prompt_tokens = 0
        done = False
        while not done:
            batch = [await items.get()]
            while not items.empty():
                batch.append(items.get_nowait())
            done = batch[-1] is _DONE
            events: list[Event] = []
            for item in batch:
                if isinstance(item, str):
                    collected.append(item)
                    if job.publish_tokens:
                        # Text that arrived together goes out as one chunk.
                        if events and isinstance(events[-1], Token):
                            events[-1] = Token(events[-1].text + item)
                        else:
                            events.append(Token(item))
                elif isinstance(item, _Started):
                    prompt_tokens = item.prompt_tokens
                    events.append(Accepted(model=self.model_id, worker_id=self.worker_id, prompt_tokens=prompt_tokens))
                    if job.step is not None:
                        events.append(Progress(step=job.step, model=self.model_id, state="started"))
                elif isinstance(item, PromptTooLong):
                    events.append(
                        Failed(code="context_length_exceeded", message=str(item), status=400, param="messages")
                    )
            if events:
                await self._publish(job.channel, *events)
                if self._stream_interval_s and not done:
                    # Tokens that arrive meanwhile go out together: fewer wake-ups per token
                    # for this loop, Redis, the front and the client.
                    await asyncio.sleep(self._stream_interval_s)
        try:
            outcome = await future
        except Exception as exc:
            logger.exception("generation failed for %s", job.request_id)
            await self._publish(job.channel, Failed(code="generation_failed", message=str(exc), status=500))
            return None
        if outcome is None:
            return None
        reason = outcome.reason
        completion_tokens = outcome.completion_tokens
        if job.publish_tokens:
            end: Event = Finished(
                reason=reason, model=self.model_id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        else:
            end = Progress(
                step=job.step or "generate",
                model=self.model_id,
                state="finished",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        await self._publish(job.channel, end)
        return StepResult(
            text="".join(collected), reason=reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
