"""Chat completions: admit, route, queue the job (or DAG), and follow its events to an answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from arq.connections import ArqRedis

from api.admission import Admission
from api.answers import AnswerBuilder, orchestration_info
from api.catalog import Catalog
from api.errors import ClientClosedRequest, EventsLost, GenerationFailed, InvalidRequest, RequestTimeout, error_for
from api.events import EventHub
from api.jobs import job_for
from api.metrics import RequestAccount
from api.protocol import ChatCompletion, ChatCompletionRequest, usage_of
from api.watchdog import Followed, Watchdog
from orchestration.errors import NotEnoughModels, UnknownMode
from orchestration.start import start_dag, withdraw_dag
from orchestration.team import Team, team_for
from presets.settings import Settings
from worker.keys import Keys
from worker.protocol import (
    Accepted,
    ChatJob,
    Event,
    Failed,
    Finished,
    Progress,
    Summary,
    Token,
)
from worker.queue import JobQueue, QueuePolicy, Ticket
from worker.recovery import Reaper

T = TypeVar("T")
_QUEUE_UPDATE_S = 1.0
_WATCH_S = 1.0
_CLOSE_WAIT_S = 0.5
_DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class Queued:
    """The request is still waiting for a worker; `position` jobs are ahead of it."""

    position: int


@dataclass(frozen=True)
class Restarted:
    """The job runs again on another worker (its first died): forget the text so far.

    Only a job whose client saw none of its text is run again, so a stream ignores this.
    """


StreamEvent = Token | Finished | Progress | Summary | Queued | Restarted


@dataclass(kw_only=True)
class Submission:
    """A queued request whose events this front is following."""

    request_id: str
    model: str
    created: int
    deadline: float
    inbox: asyncio.Queue[Event]
    queue_position: int = 0
    dag: bool = False
    # May hold an admission slot and have work queued: set before the attempt, since a reply
    # lost to an outage leaves it unknown; cleared when the attempt found no free slot.
    admitted: bool = False
    accepted: Accepted | None = None
    finished: bool = False
    summary: Summary | None = None
    # Token counts of orchestration steps before the one that writes the answer.
    steps_prompt_tokens: int = 0
    steps_completion_tokens: int = 0
    # Events that arrived while waiting for acceptance, handed out first by events().
    pending: list[Event] = field(default_factory=list)
    # Events the watchdog recovered from Redis, handed out before new ones.
    recovered: list[Event] = field(default_factory=list)
    followed: Followed | None = None
    # Steps (or, for a single job, workers' acceptances) seen so far: a repeat is a re-run.
    starts: set[str] = field(default_factory=set)
    resources: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def has_ready(self) -> bool:
        """Whether an event can be handed out without waiting."""
        return bool(self.pending or self.recovered or not self.inbox.empty())

    async def next_event(self, *, wait_s: float | None = None) -> Event | None:
        """The next event; None when `wait_s` passed first; TimeoutError at the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if not self.inbox.empty():
            # The common case while tokens stream: no timer to arm.
            return self.inbox.get_nowait()
        try:
            async with asyncio.timeout(min(remaining, wait_s or remaining)):
                return await self.inbox.get()
        except TimeoutError:
            if wait_s is not None and time.monotonic() < self.deadline:
                return None
            raise


class ChatService:
    def __init__(
        self, *, settings: Settings, redis: ArqRedis, hub: EventHub, catalog: Catalog, admission: Admission
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._hub = hub
        self._catalog = catalog
        self._admission = admission
        self._keys = Keys(prefix=settings.key_prefix)
        self._queue = JobQueue(redis, keys=self._keys)
        self._watchdog = Watchdog(redis, keys=self._keys, reaper=Reaper(redis, keys=self._keys))
        # Closing tasks run to the end even when the request's task is cancelled again.
        self._closing: set[asyncio.Task[None]] = set()
        self._policy = QueuePolicy(
            strategy=settings.queue_strategy if settings.priority_enabled else "fifo",
            ageing_s=settings.priority_ageing_s,
            levels=settings.priority_levels,
        )

    def _job_for(self, request: ChatCompletionRequest, *, request_id: str, model: str, deadline_ms: int) -> ChatJob:
        return job_for(
            request,
            request_id=request_id,
            model=model,
            channel=self._keys.events(request_id),
            priority=request.priority or self._settings.default_priority,
            deadline_ms=deadline_ms,
        )

    async def _team(self, mode: str) -> Team:
        served = (await self._catalog.view()).served()
        active = self._catalog.active
        return team_for(
            mode=mode,
            served=served,
            roles=self._catalog.roles(),
            preset_models=active.models,
            preset_mode=active.mode,
            preset_steps=active.steps,
        )

    async def submit(
        self,
        request: ChatCompletionRequest,
        *,
        accept_wait_s: float | None = None,
        account: RequestAccount | None = None,
    ) -> Submission:
        """Admit and queue the request, then wait until a worker accepted it.

        Errors a worker reports before accepting (a prompt too long for the model) raise here,
        so they become proper HTTP statuses. With `accept_wait_s` the wait ends early for a
        request still queued behind others; its stream then shows its queue position.
        """
        timeout_s = self._settings.request_timeout_s
        started = time.monotonic()
        now = time.time()
        deadline_ms = int((now + timeout_s) * 1000)
        mode = request.orchestration_mode or self._catalog.active.mode
        orchestrated = mode != "single"
        if orchestrated:
            # The preset's mode applies to requests that name none.
            conflict = request.orchestration_conflict(mode)
            if conflict is not None:
                raise InvalidRequest(conflict[1], param=conflict[0])
            # Which models run which steps is the DAG's choice; the requested model must exist.
            await self._catalog.check_known(request.model)
            model: str = mode
        else:
            model = await self._catalog.route(
                request.model,
                task_type=request.task_type,
                deadline=started + timeout_s,
                max_tokens=request.completion_limit(),
            )
        request_id = self._hub.new_request_id()
        if account is not None:
            account.routed(request_id=request_id, model=model)
        job = self._job_for(request, request_id=request_id, model=model, deadline_ms=deadline_ms)
        resources = contextlib.AsyncExitStack()
        try:
            inbox = await resources.enter_async_context(self._hub.subscription(job.channel))
        except BaseException:
            await resources.aclose()
            raise
        submission = Submission(
            request_id=request_id,
            model=model,
            created=int(now),
            deadline=started + timeout_s,
            inbox=inbox,
            dag=orchestrated,
            resources=resources,
            followed=Followed(request_id=request_id, model=model, dag=orchestrated),
        )

        async def queue_admitted(ticket: Ticket) -> bool:
            # The slot and the job in one round trip: nothing is queued without a slot.
            submission.admitted = True
            position = await self._queue.enqueue(
                job, policy=self._policy, now_ms=int(now * 1000), expires_s=timeout_s, ticket=ticket
            )
            if position is None:
                submission.admitted = False
                return False
            submission.queue_position = position
            return True

        try:
            slot_deadline = started + timeout_s
            if orchestrated:
                submission.admitted = True
                await self._admission.acquire(request_id, deadline=slot_deadline, deadline_ms=deadline_ms)
                await self._start_dag(job, mode=mode)
            else:
                await self._admission.acquire(
                    request_id, deadline=slot_deadline, deadline_ms=deadline_ms, attempt=queue_admitted
                )
            await self._await_acceptance(submission, wait_s=accept_wait_s)
        except BaseException:
            await self.close(submission)
            raise
        return submission

    async def _position(self, submission: Submission) -> int:
        if submission.dag:
            return 0
        found = await self._queue.position(model=submission.model, request_id=submission.request_id)
        return found or 0

    async def _await_acceptance(self, submission: Submission, *, wait_s: float | None) -> None:
        give_up = None if wait_s is None else time.monotonic() + wait_s
        while submission.accepted is None:
            left = None if give_up is None else give_up - time.monotonic()
            if left is not None and left <= 0:
                return
            event = await self._next(submission, wait_s=left)
            if event is None:
                return
            self._take_early(submission, event)

    def _take_early(self, submission: Submission, event: Event) -> None:
        if isinstance(event, Failed):
            raise error_for(code=event.code, message=event.message, status=event.status, param=event.param)
        if isinstance(event, Accepted):
            submission.accepted = event
            if not submission.dag:
                submission.starts.add("job")
        else:
            # Anything else also means a worker took the job; keep it for events().
            submission.pending.append(event)
            submission.accepted = Accepted(model=submission.model, worker_id="", prompt_tokens=0)

    async def _start_dag(self, template: ChatJob, *, mode: str) -> None:
        try:
            await start_dag(
                self._queue,
                settings=self._settings,
                policy=self._policy,
                template=template,
                mode=mode,
                team=await self._team(mode),
            )
        except (NotEnoughModels, UnknownMode) as exc:
            raise InvalidRequest(str(exc), param="orchestration_mode") from None

    async def _next(self, submission: Submission, *, wait_s: float | None = None) -> Event | None:
        """The next event; None when `wait_s` passed first. Each second of silence the
        watchdog looks at the job in Redis, so a lost event or a dead worker never
        leaves the request waiting for its deadline."""
        give_up = None if wait_s is None else time.monotonic() + wait_s
        while True:
            if submission.recovered:
                return submission.recovered.pop(0)
            left = None if give_up is None else give_up - time.monotonic()
            if left is not None and left <= 0:
                return None
            slice_s = _WATCH_S if left is None else min(left, _WATCH_S)
            try:
                event = await submission.next_event(wait_s=slice_s)
            except TimeoutError:
                raise RequestTimeout(
                    f"The request did not finish within {self._settings.request_timeout_s:g} seconds."
                ) from None
            if event is not None:
                return event
            if slice_s >= _WATCH_S and submission.followed is not None:
                submission.recovered.extend(await self._watchdog.check(submission.followed))

    async def close(self, submission: Submission) -> None:
        """Stop following a submission; cancel its job unless it finished; free its slot.

        A client that disconnects cancels the request's task, perhaps more than once: the
        cleanup runs as its own task, so a second cancellation cannot cut it short.
        """
        task = asyncio.ensure_future(self._close(submission))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        # It takes a millisecond; while Redis is down it keeps trying in the background
        # rather than holding the client's error response back.
        await asyncio.wait({task}, timeout=_CLOSE_WAIT_S)

    async def _close(self, submission: Submission) -> None:
        if not submission.finished and submission.admitted:
            ttl_s = int(self._settings.request_timeout_s) + 60
            cancel = (
                withdraw_dag(self._redis, keys=self._keys, request_id=submission.request_id, marker_ttl_s=ttl_s)
                if submission.dag
                else self._queue.withdraw(model=submission.model, request_id=submission.request_id, marker_ttl_s=ttl_s)
            )
            with contextlib.suppress(Exception):
                await cancel
        # One round trip: the final event, kept for a front that missed it, is past needing
        # it, and the slot is free.
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._keys.done(submission.request_id))
                if submission.admitted:
                    self._admission.release_in(pipe, submission.request_id)
                await pipe.execute()
        await submission.resources.aclose()

    async def events(self, submission: Submission) -> AsyncIterator[StreamEvent]:
        """Content events up to and including Finished; errors raise typed service errors.

        While no worker has accepted the request yet, a Queued update comes every second.
        """
        while True:
            waiting = submission.accepted is None
            if submission.pending:
                event: Event | None = submission.pending.pop(0)
            else:
                event = await self._next(submission, wait_s=_QUEUE_UPDATE_S if waiting else None)
            if event is None:
                yield Queued(await self._position(submission))
                continue
            if isinstance(event, Failed):
                raise error_for(code=event.code, message=event.message, status=event.status, param=event.param)
            if isinstance(event, Accepted):
                submission.accepted = event
                # Every step of a DAG is accepted by some worker; a DAG's re-runs show as steps.
                if not submission.dag and self._restarted(submission, "job"):
                    yield Restarted()
                continue
            if (
                isinstance(event, Progress)
                and event.state == "started"
                and submission.dag
                and self._restarted(submission, f"step:{event.step}")
            ):
                yield Restarted()
            if isinstance(event, Token | Finished):
                self._check_sequence(submission, event)
            if isinstance(event, Summary):
                submission.summary = event
            if isinstance(event, Progress) and event.state == "finished":
                submission.steps_prompt_tokens += event.prompt_tokens
                submission.steps_completion_tokens += event.completion_tokens
            yield event
            if isinstance(event, Finished):
                submission.finished = True
                return

    def _restarted(self, submission: Submission, start: str) -> bool:
        """Whether this start (of the job, or of a DAG's step) repeats one seen before."""
        seen = start in submission.starts
        submission.starts.add(start)
        if seen and submission.followed is not None:
            submission.followed.tokens_seen = 0
        return seen

    def _check_sequence(self, submission: Submission, event: Token | Finished) -> None:
        followed = submission.followed
        if followed is None:
            return
        if isinstance(event, Token):
            if event.seq:
                if event.seq != followed.tokens_seen + 1:
                    raise EventsLost("Part of the answer was lost on its way to this server.")
                followed.tokens_seen = event.seq
        elif event.tokens_sent and event.tokens_sent != followed.tokens_seen:
            raise EventsLost("The end of the answer was lost on its way to this server.")

    async def complete(
        self, request: ChatCompletionRequest, *, account: RequestAccount | None = None
    ) -> ChatCompletion:
        submission = await self.submit(request, account=account)
        answer = AnswerBuilder(n=request.choice_count(), logprobs=request.wants_logprobs())
        finish: Finished | None = None
        try:
            async for event in self.events(submission):
                if isinstance(event, Token):
                    answer.add(event)
                elif isinstance(event, Restarted):
                    answer.restart()
                elif isinstance(event, Finished):
                    finish = event
        finally:
            await self.close(submission)
        if finish is None or finish.reason == "cancelled":
            raise GenerationFailed("The generation was cancelled before it finished.")
        return ChatCompletion(
            id=submission.request_id,
            created=submission.created,
            model=finish.model,
            choices=answer.choices(finish),
            usage=usage_of(
                finish.prompt_tokens + submission.steps_prompt_tokens,
                finish.completion_tokens + submission.steps_completion_tokens,
            ),
            orchestration=orchestration_info(submission.summary),
        )


async def until_disconnected(work: Awaitable[T], is_disconnected: Callable[[], Awaitable[bool]]) -> T:
    """Run `work`, cancelling it when the client goes away (its cleanup then withdraws the job)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ClientClosedRequest("The client closed the connection; the request was cancelled.")
    finally:
        if not task.done():
            task.cancel()


def stream_extras(submission: Submission, finish: Finished) -> tuple[int, int, dict[str, Any] | None]:
    """Totals over every step, and the orchestration summary for the final chunk."""
    info = orchestration_info(submission.summary)
    return (
        finish.prompt_tokens + submission.steps_prompt_tokens,
        finish.completion_tokens + submission.steps_completion_tokens,
        {"orchestration": info.model_dump(exclude_none=True)} if info else None,
    )
