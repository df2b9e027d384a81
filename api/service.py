"""Chat completions: pick the model, queue the job, and follow its events to an answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from api.catalog import Catalog
from api.errors import GenerationFailed, InvalidRequest, RequestTimeout, error_for
from api.events import EventHub
from api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    Choice,
    OrchestrationInfo,
    usage_of,
)
from orchestration.errors import NotEnoughModels, UnknownMode
from orchestration.start import start_dag, withdraw_dag
from orchestration.team import Team
from presets.settings import Settings
from worker.keys import Keys
from worker.protocol import (
    Accepted,
    ChatJob,
    Event,
    Failed,
    Finished,
    Message,
    Progress,
    SamplingParams,
    Summary,
    Token,
)
from worker.queue import QueuePolicy, enqueue_chat, queue_position, withdraw


@dataclass(kw_only=True)
class Submission:
    """A queued request whose events this front is following."""

    request_id: str
    model: str
    created: int
    deadline: float
    inbox: asyncio.Queue[Event]
    queue_position: int
    dag: bool = False
    accepted: Accepted | None = None
    finished: bool = False
    summary: Summary | None = None
    # Token counts of orchestration steps before the one that writes the answer.
    steps_prompt_tokens: int = 0
    steps_completion_tokens: int = 0
    _exit: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def next_event(self) -> Event:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(self.inbox.get(), remaining)


class ChatService:
    def __init__(self, *, settings: Settings, redis: ArqRedis, hub: EventHub, catalog: Catalog) -> None:
        self._settings = settings
        self._redis = redis
        self._hub = hub
        self._catalog = catalog
        self._keys = Keys(prefix=settings.key_prefix)
        self._policy = QueuePolicy(
            strategy=settings.queue_strategy if settings.priority_enabled else "fifo",
            ageing_s=settings.priority_ageing_s,
            levels=settings.priority_levels,
        )

    def _job_for(self, request: ChatCompletionRequest, *, request_id: str, model: str, deadline_ms: int) -> ChatJob:
        params = SamplingParams(
            max_tokens=request.completion_limit(),
            temperature=0.7 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_list(),
            seed=request.seed,
        )
        return ChatJob(
            request_id=request_id,
            model=model,
            messages=[
                Message(role=m.role if m.role != "developer" else "system", content=m.text()) for m in request.messages
            ],
            params=params,
            channel=self._keys.events(request_id),
            priority=request.priority or self._settings.default_priority,
            deadline_ms=deadline_ms,
            task_type=request.task_type,
            orchestration_mode=request.orchestration_mode,
        )

    async def _team(self, mode: str) -> Team:
        served = (await self._catalog.view()).served()
        roles = self._catalog.roles()
        active = self._catalog.active
        # The preset's order first: ties between equally fit models go the preset's way.
        ordered = [m for m in active.models if m in served] + [m for m in served if m not in active.models]
        return Team(
            models={m: tuple(roles.get(m, ())) for m in ordered},
            assignments=dict(active.steps) if active.mode == mode else {},
        )

    async def submit(self, request: ChatCompletionRequest) -> Submission:
        """Queue the request and wait until a worker accepted it (or refused it with an error)."""
        timeout_s = self._settings.request_timeout_s
        started = time.monotonic()
        mode = request.orchestration_mode or self._catalog.active.mode
        orchestrated = mode != "single"
        if orchestrated:
            # Which models run which steps is the DAG's choice; the requested model must exist.
            await self._catalog.check_known(request.model)
            model: str = mode
        else:
            model = await self._catalog.route(request.model, task_type=request.task_type, deadline=started + timeout_s)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = time.time()
        job = self._job_for(request, request_id=request_id, model=model, deadline_ms=int((now + timeout_s) * 1000))
        exit_stack = contextlib.AsyncExitStack()
        inbox = await exit_stack.enter_async_context(self._hub.subscription(job.channel))
        submission = Submission(
            request_id=request_id,
            model=model,
            created=int(now),
            deadline=started + timeout_s,
            inbox=inbox,
            queue_position=0,
            dag=orchestrated,
            _exit=exit_stack,
        )
        try:
            if orchestrated:
                await self._start_dag(job, mode=mode)
            else:
                await enqueue_chat(
                    self._redis,
                    keys=self._keys,
                    job=job,
                    policy=self._policy,
                    now_ms=int(now * 1000),
                    expires_s=timeout_s,
                )
                submission.queue_position = (
                    await queue_position(self._redis, keys=self._keys, model=model, request_id=request_id) or 0
                )
            while submission.accepted is None:
                event = await self._next(submission)
                if isinstance(event, Accepted):
                    submission.accepted = event
                elif isinstance(event, Failed):
                    raise error_for(code=event.code, message=event.message, status=event.status, param=event.param)
        except BaseException:
            await self.close(submission)
            raise
        return submission

    async def _start_dag(self, template: ChatJob, *, mode: str) -> None:
        try:
            await start_dag(
                self._redis,
                keys=self._keys,
                settings=self._settings,
                policy=self._policy,
                template=template,
                mode=mode,
                team=await self._team(mode),
            )
        except (NotEnoughModels, UnknownMode) as exc:
            raise InvalidRequest(str(exc), param="orchestration_mode") from None

    async def _next(self, submission: Submission) -> Event:
        try:
            return await submission.next_event()
        except TimeoutError:
            raise RequestTimeout(
                f"The request did not finish within {self._settings.request_timeout_s:g} seconds."
            ) from None

    async def close(self, submission: Submission) -> None:
        """Stop following a submission; cancel its job unless it finished."""
        if not submission.finished:
            ttl_s = int(self._settings.request_timeout_s) + 60
            cancel = (
                withdraw_dag(self._redis, keys=self._keys, request_id=submission.request_id, marker_ttl_s=ttl_s)
                if submission.dag
                else withdraw(
                    self._redis,
                    keys=self._keys,
                    model=submission.model,
                    request_id=submission.request_id,
                    marker_ttl_s=ttl_s,
                )
            )
            with contextlib.suppress(Exception):
                await asyncio.shield(cancel)
        await submission._exit.aclose()

    async def events(self, submission: Submission) -> AsyncIterator[Token | Finished | Progress | Summary]:
        """Content events up to and including Finished; errors raise typed service errors."""
        while True:
            event = await self._next(submission)
            if isinstance(event, Failed):
                raise error_for(code=event.code, message=event.message, status=event.status, param=event.param)
            if isinstance(event, Accepted):
                continue
            if isinstance(event, Summary):
                submission.summary = event
            if isinstance(event, Progress) and event.state == "finished":
                submission.steps_prompt_tokens += event.prompt_tokens
                submission.steps_completion_tokens += event.completion_tokens
            yield event
            if isinstance(event, Finished):
                submission.finished = True
                return

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        submission = await self.submit(request)
        try:
            parts: list[str] = []
            finish: Finished | None = None
            async for event in self.events(submission):
                if isinstance(event, Token):
                    parts.append(event.text)
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
            choices=[Choice(message=ChatMessageOut(content="".join(parts)), finish_reason=finish.reason)],
            usage=usage_of(
                finish.prompt_tokens + submission.steps_prompt_tokens,
                finish.completion_tokens + submission.steps_completion_tokens,
            ),
            orchestration=orchestration_info(submission.summary),
        )


def stream_extras(submission: Submission, finish: Finished) -> tuple[int, int, dict[str, Any] | None]:
    """Totals over every step, and the orchestration summary for the final chunk."""
    info = orchestration_info(submission.summary)
    return (
        finish.prompt_tokens + submission.steps_prompt_tokens,
        finish.completion_tokens + submission.steps_completion_tokens,
        {"orchestration": info.model_dump(exclude_none=True)} if info else None,
    )


def orchestration_info(summary: Summary | None) -> OrchestrationInfo | None:
    if summary is None:
        return None
    return OrchestrationInfo(
        mode=summary.mode,
        models_used=summary.models_used,
        rounds=summary.rounds,
        confidence=summary.confidence,
        low_confidence=summary.low_confidence,
    )
