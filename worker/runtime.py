"""Runs chat jobs on a worker: one model loaded once, generation in threads, tokens to pub/sub."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from worker.constraints import REFUSALS, constrained_params, refusal_event, rendered_tools, with_reasoning
from worker.engine import Engine, GroupsHandOns, Outcome
from worker.fleet_protocol import UNLOAD
from worker.keys import Keys
from worker.listener import Listener
from worker.metrics import WorkerMetrics
from worker.outbox import Delivery, Handoff, Outbox
from worker.presence import Presence
from worker.protocol import Accepted, ChatJob, Event, Failed, Progress, TokenLogprob, encode_event
from worker.recovery import Reaper, done_ttl_s
from worker.shaping import Emitted, JobOutput
from worker.tool_formats import ChatFormat, chat_format_for

logger = logging.getLogger(__name__)

_DONE = object()


@dataclass(frozen=True)
class _Started:
    """The prompt fits: generation begins."""

    prompt_tokens: int
    # The template left a `<think>` open: the text starts as thinking.
    in_reasoning: bool


@dataclass
class _Control:
    """Stops a generation: the client cancelled, or (timed_out) its deadline passed."""

    cancel: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False
    # The job's bookkeeping (running entry, stream marker, last use) went out with its last events.
    settled: bool = False

    def expire(self) -> None:
        self.timed_out = True
        self.cancel.set()


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
        request_timeout_s: float,
        reap_interval_s: float = 1.0,
        stream_interval_s: float = 0.0,
        metrics: WorkerMetrics | None = None,
        chat_format: ChatFormat | None = None,
    ) -> None:
        self._metrics = metrics
        self._stream_interval_s = stream_interval_s
        self._done_ttl_s = done_ttl_s(request_timeout_s=request_timeout_s)
        self._reaper = Reaper(redis, keys=keys)
        self._reap_interval_s = reap_interval_s
        self._reaping: asyncio.Task[None] | None = None
        self._redis = redis
        self._outbox = Outbox(redis, keep_ttl_s=self._done_ttl_s)
        # Made on the loop that runs the jobs (the first job's): engine threads hand over through it.
        self._handoff: Handoff | None = None
        self._keys = keys
        self._engines: asyncio.Queue[Engine] = asyncio.Queue()
        for engine in engines:
            self._engines.put_nowait(engine)
        self._all_engines = list(engines)
        self.model_id = engines[0].model_id
        # How the model writes tool calls and thinks: the registry's, unless the caller knows better.
        self._chat_format = chat_format or chat_format_for(model_id=self.model_id)
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
        # Jobs left by a worker of this model that died (perhaps this one's predecessor).
        await self._reaper.reap(self.model_id)
        self._reaping = asyncio.create_task(self._reap_forever(), name="reaper")

    async def stop(self) -> None:
        if self._reaping is not None:
            self._reaping.cancel()
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

    async def _publish(
        self,
        channel: str,
        *events: Event,
        done: str | None = None,
        sent: str | None = None,
        then: Callable[[Pipeline], None] | None = None,
    ) -> None:
        """Publish with the other jobs' events of this loop iteration (one round trip for all).

        `done` also keeps the last event, `sent` marks a started stream, `then` adds commands.
        """
        keep: list[tuple[str, bytes]] = []
        if sent is not None:
            keep.append((sent, b"1"))
        if done is not None:
            keep.append((done, encode_event(events[-1])))
        messages = [encode_event(e) for e in events]
        delivery = Delivery(channel=channel, messages=messages, keep=keep, then=then)
        await self._outbox.send(delivery, alone=len(self._cancels) <= 1)

    def _settle_in(self, job: ChatJob) -> Callable[[Pipeline], None]:
        """The end of a job's bookkeeping, added to the pipeline of its last events."""

        def settle(pipe: Pipeline) -> None:
            pipe.hdel(self._keys.running(self.model_id), job.job_key)
            pipe.delete(self._keys.sent(job.job_key))
            pipe.zadd(self._keys.last_used, {self.model_id: int(time.time() * 1000)})

        return settle

    async def _end(
        self, job: ChatJob, control: _Control, events: Sequence[Event], *, keep: bool, fail: Failed | None = None
    ) -> None:
        """A job's last events, the final one kept (`keep`) for a front that missed it, and its
        bookkeeping: one round trip."""
        last = [*events, fail] if fail is not None else list(events)
        if not last:
            return
        done = self._keys.done(job.request_id) if keep else None
        await self._publish(job.channel, *last, done=done, then=self._settle_in(job))
        control.settled = True

    async def _fail(self, job: ChatJob, failure: Failed, *, keep: bool = True) -> None:
        await self._publish(job.channel, failure, done=self._keys.done(job.request_id) if keep else None)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval_s)
            try:
                await self._reaper.reap(self.model_id)
            except Exception:
                logger.warning("reaping jobs of dead workers failed", exc_info=True)

    async def run(self, job: ChatJob) -> StepResult | None:
        """Run one job to its end; None when it was cancelled, expired or failed (the client was told)."""
        if time.time() * 1000 >= job.deadline_ms:
            return None
        control = _Control()
        self._cancels[job.job_key] = (job.request_id, control.cancel)
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(max(job.deadline_ms / 1000 - time.time(), 0), control.expire)
        engine = await self._engines.get()
        # The engine goes back to the pool when its thread is done with it, not before.
        handed_to_thread = False
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(self._keys.cancelled(job.request_id))
                pipe.hset(self._keys.running(self.model_id), job.job_key, self.worker_id)
                cancelled, _ = await pipe.execute()
            if cancelled:
                return None
            self._note_load()
            handed_to_thread = True
            return await self._generate(job, engine, control)
        finally:
            deadline.cancel()
            if not handed_to_thread:
                self._engines.put_nowait(engine)
            # A job still generating (its await was cancelled) is told to stop.
            control.cancel.set()
            del self._cancels[job.job_key]
            self._jobs_done += 1
            if not control.settled:
                async with self._redis.pipeline(transaction=False) as pipe:
                    self._settle_in(job)(pipe)
                    await pipe.execute()
            self._note_load()

    def _note_load(self) -> None:
        # Written by the next heartbeat: a round trip per job start and end is not worth it.
        if self.presence.state != "stopping":
            self.presence.note(
                state="busy" if self._cancels else "ready", running=self.running, jobs_done=self._jobs_done
            )

    async def _generate(self, job: ChatJob, engine: Engine, control: _Control) -> StepResult | None:
        loop = asyncio.get_running_loop()
        if self._handoff is None or self._handoff.loop is not loop:
            self._handoff = Handoff(loop)
            for each in self._all_engines:
                if isinstance(each, GroupsHandOns):
                    each.group_hand_ons(self._handoff.holding)
        handoff = self._handoff
        cancel = control.cancel
        items: asyncio.Queue[object] = asyncio.Queue()
        started_s = time.monotonic()
        first_token_s: float | None = None
        chat_format = self._chat_format
        output = JobOutput(job=job, chat_format=chat_format)

        def emit(text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
            # The common case (one choice, no log probabilities) travels as the bare text.
            handoff.put(items, Emitted(text, index, logprobs) if index or logprobs else text)

        def work() -> Outcome | None:
            # One thread hop for the whole job: tokenize, then generate. Everything goes
            # through the one handoff, which keeps the order of this job's items.
            try:
                try:
                    params = constrained_params(job, chat_format)
                    prompt = engine.prepare(job.messages, params, tools=rendered_tools(job))
                    params = with_reasoning(params, chat_format=chat_format, in_reasoning=prompt.in_reasoning)
                except REFUSALS as exc:
                    handoff.put(items, refusal_event(exc))
                    return None
                handoff.put(items, _Started(len(prompt.tokens), prompt.in_reasoning))
                return engine.generate(prompt, params, cancel=cancel, emit=emit)
            finally:
                handoff.put(items, _DONE)

        future = loop.run_in_executor(self._threads, work)
        future.add_done_callback(lambda _: self._engines.put_nowait(engine))
        prompt_tokens = 0
        sent_key = self._keys.sent(job.job_key) if job.stream and job.publish_tokens else None
        done = False
        # Events of the last batch: they go out with the job's end, in one round trip.
        tail: list[Event] = []
        while not done:
            batch = [await items.get()]
            while not items.empty():
                batch.append(items.get_nowait())
            done = batch[-1] is _DONE
            events: list[Event] = []
            for item in batch:
                if isinstance(item, str):
                    output.add_text(events, item)
                elif isinstance(item, Emitted):
                    output.add(events, item)
                elif isinstance(item, _Started):
                    prompt_tokens = item.prompt_tokens
                    output.start(in_reasoning=item.in_reasoning)
                    events.append(Accepted(model=self.model_id, worker_id=self.worker_id, prompt_tokens=prompt_tokens))
                    if job.step is not None:
                        events.append(Progress(step=job.step, model=self.model_id, state="started"))
                elif isinstance(item, Failed):
                    events.append(item)
                elif item is _DONE:
                    # What the output held back (a marker's possible start) goes before the end.
                    output.finish(events)
            if first_token_s is None and output.produced:
                # Once per batch of items, not per token: as close as this loop sees it.
                first_token_s = time.monotonic()
            failed = next((e for e in events if isinstance(e, Failed)), None)
            if failed is not None:
                await self._fail(job, failed)
            elif done:
                tail = events
            elif events:
                first_token = sent_key is not None and output.seq > 0
                await self._publish(job.channel, *events, sent=sent_key if first_token else None)
                if first_token:
                    sent_key = None
                if self._stream_interval_s:
                    # Tokens that arrive meanwhile go out together: fewer wake-ups per token
                    # for this loop, Redis, the front and the client.
                    await asyncio.sleep(self._stream_interval_s)
        try:
            outcome = await future
        except REFUSALS as exc:
            # What the backend found it cannot do only once generating (a grammar llama.cpp refuses).
            await self._end(job, control, tail, keep=True, fail=refusal_event(exc))
            return None
        except Exception as exc:
            logger.exception("generation failed for %s", job.request_id)
            failure = Failed(code="generation_failed", message=str(exc), status=500)
            await self._end(job, control, tail, keep=True, fail=failure)
            return None
        if outcome is None:
            await self._end(job, control, tail, keep=False)
            return None
        if outcome.reason == "cancelled" and control.timed_out:
            failure = Failed(code="timeout", message="The request did not finish within its timeout.", status=504)
            # The front gives up at the same deadline: nobody will look for it later.
            await self._end(job, control, tail, keep=False, fail=failure)
            return None
        reason = output.reason(0, outcome.reason)
        completion_tokens = outcome.completion_tokens
        if self._metrics is not None:
            self._metrics.job_done(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                started_s=started_s,
                first_token_s=first_token_s,
                end_s=time.monotonic(),
            )
        if job.publish_tokens:
            end: Event = output.finished(outcome, model=self.model_id, prompt_tokens=prompt_tokens)
        else:
            end = Progress(
                step=job.step or "generate",
                model=self.model_id,
                state="finished",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        # A cancelled job's client is gone: nobody will look for its final event.
        keep = job.publish_tokens and reason != "cancelled"
        await self._end(job, control, [*tail, end], keep=keep)
        # Orchestration builds on the answer only: no thinking, no tool-call text.
        return StepResult(
            text=output.answer, reason=reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
