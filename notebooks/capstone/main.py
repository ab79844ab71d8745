"""The app, put together from its parts: routers, middleware, error handlers, lifespan.

app = create_app(audit_path="audit.sqlite3", max_upstream_calls=20)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Scope

from labsupport.serving import BodyLimits

from . import errors
from .audit import AuditMiddleware, note
from .resources import lifespan
from .routers import chat, health, stream
from .settings import Settings


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The service, with `settings` or the `Settings` fields given as keywords."""
    app = FastAPI(title="Capstone: an async LLM service", lifespan=lifespan)
    app.state.settings = settings or Settings(**options)
    app.include_router(chat.router)
    app.include_router(stream.router)
    app.include_router(health.router)
    app.add_middleware(
        BodyLimits,
        max_bytes=app.state.settings.max_body_bytes,
        timeout=app.state.settings.body_timeout,
        refuse=refused_body,
    )
    app.add_middleware(AuditMiddleware)  # added last = outermost: it sees every request
    for failure in errors.UPSTREAM_FAILURES:
        app.add_exception_handler(failure, errors.upstream_failed)
    app.add_exception_handler(RequestValidationError, errors.invalid_request)
    app.add_exception_handler(HTTPException, errors.http_error)
    app.add_exception_handler(Exception, errors.unexpected)
    return app


def refused_body(scope: Scope, status: int, message: str) -> ASGIApp:
    """BodyLimits' 408 and 413, in this service's error shape and in its audit row."""
    note(scope, error=message)
    kind = "request_timeout" if status == 408 else "too_large"
    return errors.refusal(status, kind, message).response()
