"""Typed service errors and the one place that turns them into OpenAI error objects."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = str(first.get("msg", "Invalid request body"))
    if param:
        message = f"Invalid value for '{param}': {message}"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(
            ServiceError("The server had an error while processing your request.").body(), status_code=500
        )
