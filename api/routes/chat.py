"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.dependencies import Services, services
from api.errors import ServiceError, error_responses
from api.metrics import status_of
from api.protocol import ChatCompletion, ChatCompletionRequest
from api.service import stream_extras, until_disconnected
from api.streaming import DONE, ChunkWriter, relay

router = APIRouter(responses=error_responses(400, 401, 404, 408, 413, 429, 500, 502, 503, 504))


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletion, "content": {"text/event-stream": {}}}},
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, svc: Annotated[Services, Depends(services)]
) -> JSONResponse | StreamingResponse:
    account = svc.metrics.account(mode=body.orchestration_mode or svc.catalog.active.mode)
    try:
        if not body.stream:
            completion = await until_disconnected(svc.chat.complete(body, account=account), request.is_disconnected)
            # complete ran in a task of its own: name the request on this task's lines too.
            account.bind()
            svc.metrics.finished(account, status=200)
            return JSONResponse(completion.wire(), headers={"X-Request-Id": completion.id})
        submission = await svc.chat.submit(body, accept_wait_s=svc.settings.stream_accept_wait_s, account=account)
    except BaseException as exc:
        svc.metrics.finished(account, status=status_of(exc))
        raise
    writer = ChunkWriter(
        request_id=submission.request_id,
        created=submission.created,
        model=submission.model,
        include_usage=body.wants_usage_chunk(),
    )

    async def body_stream() -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in relay(
                svc.chat.events(submission),
                writer,
                include_usage=body.wants_usage_chunk(),
                extras=partial(stream_extras, submission),
                n=body.choice_count(),
                logprobs=body.wants_logprobs(),
                ready=submission.has_ready,
            ):
                yield chunk
        except ServiceError as exc:
            status = exc.status
            yield writer.error(exc.body())
            yield DONE
        except BaseException as exc:
            status = status_of(exc)
            raise
        finally:
            await svc.chat.close(submission)
            svc.metrics.finished(account, status=status)

    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        "X-Request-Id": submission.request_id,
        "X-Queue-Position": str(submission.queue_position),
    }
    return StreamingResponse(body_stream(), media_type="text/event-stream", headers=headers)
