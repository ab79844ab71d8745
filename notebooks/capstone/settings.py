"""The service's settings: one pydantic model, checked once, whoever builds the app.

`create_app(audit_path=…, max_upstream_calls=5)` checks them as keyword arguments; the command
line (`python -m capstone --help`) has one flag per field, with its docstring as the help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
AnyPath = Annotated[Path, Field(strict=False)]  # a str is a path too


class Settings(BaseModel):
    # strict: 2.5 is not a number of calls, True not a byte count, "1" not a timeout.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )

    audit_path: AnyPath
    """The SQLite file of the audit log (created if missing)."""
    base_url: str | None = None
    """The OpenAI-compatible API to call; None uses OPENAI_BASE_URL or OpenAI."""
    max_upstream_calls: Count = 20
    """The most upstream calls in flight at once, across all requests of this process."""
    upstream_timeout: Seconds = 30.0
    """Seconds a request may spend on the upstream in all (slot, calls, retries): then 504."""
    slot_wait: Seconds = 5.0
    """Seconds a call may wait for a free upstream slot: then 503 + Retry-After (load shed)."""
    max_retries: Annotated[int, Field(ge=0)] = 2
    """Retries of a 408/409/429/5xx/connection error, per upstream call."""
    max_body_bytes: Count = 64 * 1024
    """The largest request body accepted; larger ones get 413."""
    body_timeout: Seconds = 10.0
    """Seconds a client has to send its whole body; slower ones get 408."""
    audit_capacity: Count = 10_000
    """Audit rows that may wait in memory while the store cannot write; then requests get 503."""
    audit_busy_timeout: Seconds = 5.0
    """Seconds one audit commit waits for another writer's lock."""
    audit_drain_timeout: Seconds = 10.0
    """Seconds the shutdown keeps trying to write queued rows before it spills them."""
    audit_dead_letter_path: AnyPath | None = None
    """JSON lines of rows SQLite refuses for what they hold (default: <audit_path>.dead.jsonl)."""
    audit_spill_path: AnyPath | None = None
    """JSON lines of rows unwritten at shutdown, replayed at the next start; put it on another
    filesystem than the audit log (default: <audit_path>.spill.jsonl)."""
