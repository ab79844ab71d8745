"""Every failure becomes one JSON shape, `{"error": {"type": …, "message": …}}`, with a status
the client can act on; the upstream's own message is never passed on (it can name our account,
model or key)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import openai
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .audit import note
from .models import ErrorBody, ErrorInfo


@dataclass(frozen=True)
class ClientError:
    """What a client is told about a failure: status, JSON error, and a Retry-After if useful."""

    status: int
    info: ErrorInfo
    retry_after: int | None = None

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        body = ErrorBody(error=self.info).model_dump()
        return JSONResponse(body, status_code=self.status, headers=headers)


def refusal(status: int, kind: str, message: str, retry_after: int | None = None) -> ClientError:
    return ClientError(status, ErrorInfo(type=kind, message=message), retry_after)


class UpstreamDeadline(Exception):
    """The upstream part of a request ran out of its `upstream_timeout`; says where it was."""


class UpstreamBusy(Exception):
    """No upstream slot came free within `slot_wait`: the request is shed, not queued."""


UpstreamFailure = openai.APIError | UpstreamDeadline | UpstreamBusy
UPSTREAM_FAILURES: Final = (openai.APIError, UpstreamDeadline, UpstreamBusy)


def client_error(error: UpstreamFailure) -> ClientError:
    """Translate an upstream failure into what our client should see."""
    if isinstance(error, UpstreamDeadline):
        return refusal(504, "upstream_timeout", str(error))
    if isinstance(error, UpstreamBusy):
        return refusal(503, "upstream_busy", str(error), 1)
    if isinstance(error, openai.RateLimitError):
        wait = retry_after_seconds(error.response.headers)
        message = f"The model provider is rate limiting this service; retry in {wait} s."
        return refusal(429, "rate_limited", message, wait)
    if isinstance(error, openai.APITimeoutError):  # before APIConnectionError: a subclass
        return refusal(504, "upstream_timeout", "The model provider did not answer in time.")
    if isinstance(error, openai.APIConnectionError):
        message = "The model provider cannot be reached right now; retry shortly."
        return refusal(503, "upstream_unavailable", message, 1)
    if not isinstance(error, openai.APIStatusError):  # an error event inside a stream (08)
        return refusal(502, "upstream_error", "The model provider failed mid-answer.")
    if error.status_code >= 500:
        message = f"The model provider failed (HTTP {error.status_code}); retry shortly."
        return refusal(502, "upstream_error", message)
    message = f"The model provider refused the request (HTTP {error.status_code})."
    return refusal(502, "upstream_rejected", message)


def retry_after_seconds(headers: Any) -> int:
    """Whole seconds to wait, from `retry-after-ms` or `retry-after`; 1 if neither parses."""
    seconds = retry_after(headers)
    return 1 if seconds is None else max(1, math.ceil(seconds))


def retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


# Every status an endpoint can answer besides its 200, all in the one error shape (OpenAPI).
_ERRORS: Final = {
    408: "The request body was not complete in time.",
    413: "The request body is too large.",
    422: "The request is not valid JSON or breaks the schema.",
    429: "The model provider is rate limiting this service (see Retry-After).",
    500: "A bug on our side; it has been logged.",
    502: "The model provider failed or refused the request.",
    503: "The model provider cannot be reached or is busy, or the audit log is not keeping up "
    "(see Retry-After).",
    504: "The upstream part of the request did not finish within `upstream_timeout`.",
}
ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}
# The same for a route whose own answers are not JSON (`/chat/stream`'s events): FastAPI would
# document a `model` in the route's media type, so these name JSON and ErrorBody's schema (in
# the components: the other routes' ERROR_RESPONSES put it there) themselves.
_JSON_ERROR: Final = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
JSON_ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"content": _JSON_ERROR, "description": text} for status, text in _ERRORS.items()
}
_KINDS: Final = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}

# ---- exception handlers, registered by main.py: they turn exceptions into the one shape


async def upstream_failed(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UPSTREAM_FAILURES)
    note(request, error=f"{type(error).__name__}: {error}")
    return client_error(error).response()


async def invalid_request(request: Request, error: Exception) -> JSONResponse:
    """One readable sentence per problem: `temperature: Input should be less than or equal to 2`."""
    assert isinstance(error, RequestValidationError)
    details = []
    for problem in error.errors():
        field = _field_name(problem.get("loc", ()))
        text = problem.get("msg", "invalid")
        if problem.get("type") == "json_invalid":
            # Our own reasons (see _undecodable) are said; json's own wording and even the
            # position it reports change between Python versions ("Expecting property name" at
            # the brace on 3.11, "Illegal trailing comma" at the comma on 3.13): not repeated.
            ours = problem.get("loc") == ("body",)
            reason = problem.get("ctx", {}).get("error") if ours else None
            text = f"not valid JSON ({reason})" if reason else "not valid JSON"
        elif problem.get("type") == "string_pattern_mismatch" and field != "user_id":
            text = "needs at least one character that is neither whitespace nor control"
        details.append(f"{field}: {text}")
    problem = refusal(422, "invalid_request", "; ".join(details) or "The request is invalid.")
    note(request, error=problem.info.message)
    return problem.response()


async def http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    # FastAPI answers 400 for a body json.loads cannot even decode; say why, as a 422.
    reason = _undecodable(error.__cause__)
    if reason is not None:
        return await invalid_request(request, _json_invalid(reason))
    note(request, error=str(error.detail))
    kind = _KINDS.get(error.status_code, "http_error")
    return refusal(error.status_code, kind, error.detail).response(error.headers)  # e.g. Allow


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    # Logged by the server with its traceback; the client only learns that it failed.
    message = "Something went wrong on our side; it has been logged."
    return refusal(500, "internal_error", message).response()


def _undecodable(cause: BaseException | None) -> str | None:
    """Why a body is not JSON that json.loads could not even parse (RFC 8259: JSON is UTF-8)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 at byte {cause.start}"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, ValueError):  # e.g. an integer of more than 4,300 digits
        return str(cause).split(";")[0]
    return None


def _json_invalid(reason: str) -> RequestValidationError:
    problem = {"type": "json_invalid", "loc": ("body",), "msg": "", "ctx": {"error": reason}}
    return RequestValidationError([problem])


def _field_name(location: Any) -> str:
    """("body", "messages", 2) → "messages[2]"; the bare body → "body"."""
    parts = [part for part in location if part != "body" and not isinstance(part, int)]
    name = ".".join(str(part) for part in parts) or "body"
    indexes = "".join(f"[{part}]" for part in location[1:] if isinstance(part, int))
    return name + indexes if parts else name
