"""`GET /health`: 200 while the audit log keeps up, 503 while it cannot write (not audited)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..errors import refusal
from ..models import ErrorBody, Health
from ..resources import Shared

router = APIRouter()


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": ErrorBody, "description": "The audit log cannot write."}},
)
async def health(shared: Shared) -> Health | JSONResponse:
    audit = shared.audit
    if audit.failure is not None:
        message = (
            f"The audit log cannot write ({audit.failure}); {audit.pending} of "
            f"{audit.capacity} rows wait in memory."
        )
        return refusal(503, "degraded", message).response()
    return Health(
        status="ok",
        audit_rows_written=audit.written,
        audit_rows_pending=audit.pending,
        audit_capacity=audit.capacity,
    )
