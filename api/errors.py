"""Typed service errors and the one place that turns them into OpenAI error objects."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.arguments import REFUSED
from api.protocol import ErrorResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(ServiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class ModelUnavailable(ServiceError):
    """A known model with no worker serving it right now."""

    status = 503
    type = "service_unavailable"
    code = "model_not_loaded"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, param="model", headers={"Retry-After": str(retry_after_s)})


class Conflict(ServiceError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Overloaded(ServiceError):
    status = 429
    type = "rate_limit_exceeded"
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RequestTimeout(ServiceError):
    status = 504
    type = "timeout"
    code = "timeout"


class ClientClosedRequest(ServiceError):
    """Answered to nobody: the client left, and its job was cancelled."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class BrokerUnavailable(ServiceError):
    """Redis does not answer: nothing can be queued or followed until it is back."""

    status = 503
    type = "service_unavailable"
    code = "broker_unavailable"

    def __init__(self) -> None:
        super().__init__("The service's queue (Redis) is not reachable; retry shortly.", headers={"Retry-After": "2"})


class EventsLost(ServiceError):
    """The front missed part of the answer's events and cannot recover them."""

    status = 502
    type = "server_error"
    code = "events_lost"


class InvalidApiKey(ServiceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, *, limit_bytes: int) -> None:
        # The rest of the body stays unread on the socket: the connection cannot be reused.
        super().__init__(
            f"The request body is larger than the limit of {limit_bytes} bytes.", headers={"Connection": "close"}
        )


class BodyReadTimeout(ServiceError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, *, timeout_s: float) -> None:
        super().__init__(
            f"The request body did not arrive within {timeout_s:g} seconds.", headers={"Connection": "close"}
        )


class GenerationFailed(ServiceError):
    status = 500
    type = "server_error"
    code = "generation_failed"


def error_for(*, code: str, message: str, status: int, param: str | None = None) -> ServiceError:
    """Rebuild a typed error from a worker's error event."""
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, param=param)
    error = ServiceError(message, param=param)
    error.status = status
    error.code = code
    error.type = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return error


_STATUS_MEANINGS = {
    400: "Invalid request: a malformed body or a value out of range (`param` names it)",
    401: "Missing or wrong API key (`invalid_api_key`)",
    404: "Unknown model (`model_not_found`)",
    408: "The request body did not arrive in time",
    409: "Conflict: the load does not fit the memory budget",
    413: "The request body is over the size limit",
    429: "The service is full (`Retry-After`)",
    499: "The client closed the connection; the request was cancelled",
    500: "Unexpected server error",
    502: "A worker could not process the job",
    503: "No worker serves the model, or Redis is unreachable (`Retry-After`)",
    504: "The request did not finish within its timeout",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, each an OpenAI error object."""
    return {status: {"model": ErrorResponse, "description": _STATUS_MEANINGS[status]} for status in statuses}


def error_response(error: ServiceError) -> JSONResponse:
    """The HTTP answer for a typed error (also an ASGI app, for middleware that answers early)."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# Names pydantic gives the members of a union in an error's location; not fields of the request.
_UNION_MEMBER_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_field(part: object) -> bool:
    # Fields are lower case; a union's model members show up under their class names.
    return isinstance(part, int) or (
        isinstance(part, str)
        and part.isidentifier()
        and part not in _UNION_MEMBER_TAGS
        and part != "body"
        and not part[:1].isupper()
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    # An argument refused by name says the most; then a value that fits no member of a union
    # fails once per member: a broken limit says more than "not a string" from the member it
    # was never meant for.
    first = next(
        (e for e in errors if e.get("type") == REFUSED),
        next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0] if errors else {}),
    )
    location = [str(part) for part in first.get("loc", ()) if _is_field(part)]
    message = str(first.get("msg", "Invalid request body"))
    if first.get("type") == REFUSED:
        # The validator named the field relative to where it ran.
        location.append(str((first.get("ctx") or {}).get("param", "")))
        return message, ".".join(part for part in location if part) or None
    param = ".".join(location) or None
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "extra_forbidden" and loc and _is_field(loc[-1]):
        return f"Unrecognized request argument supplied: {param}", param
    if param:
        message = f"Invalid value for '{param}': {message}"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(InvalidRequest(message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ServiceError(str(exc.detail))
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("Redis unreachable: %s", exc)
        error = BrokerUnavailable()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(
            ServiceError("The server had an error while processing your request.").body(), status_code=500
        )
