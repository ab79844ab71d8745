"""What the service accepts and answers, as pydantic models: the OpenAPI schema comes from here.

Limits are part of the types, so a bad request is refused (422) before it costs an upstream
call, and the schema tells clients exactly what is accepted.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_MESSAGE_CHARS: Final = 4_000
MAX_BATCH: Final = 50

# A message needs one character that is neither whitespace nor a control character: "   ",
# "\u00a0" or "\x01\x02" would cost an upstream call for nothing. The pattern is the rule
# itself, so the OpenAPI schema states exactly what is accepted. (The characters are spelled
# out instead of `\s`, whose meaning differs between Python and the JSON Schema dialect.)
VISIBLE_CHARACTER: Final = (
    r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
)
UserText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=VISIBLE_CHARACTER),
    Field(description="1–4,000 characters, at least one neither whitespace nor control."),
]
# strict: `false` and `"1.5"` are not temperatures (an int such as 1 still is a number).
Temperature = Annotated[float, Field(ge=0.0, le=2.0, strict=True)]
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


class StrictModel(BaseModel):
    # An unknown field is a typo ("temprature") that would otherwise be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatRequest(StrictModel):
    message: UserText
    temperature: Temperature = 0.0
    user_id: UserId = "anonymous"


class AnalyzeRequest(StrictModel):
    text: UserText
    user_id: UserId = "anonymous"


class BatchRequest(StrictModel):
    messages: Annotated[list[UserText], Field(min_length=1, max_length=MAX_BATCH)]
    temperature: Temperature = 0.0
    user_id: UserId = "anonymous"


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """The one shape of every non-2xx answer: `{"error": {"type": …, "message": …}}`."""

    error: ErrorInfo


class ChatReply(BaseModel):
    response: str


class AnalyzeReply(BaseModel):
    sentiment: str | None
    topics: list[str] | None
    summary: str | None
    errors: dict[str, ErrorInfo]


class BatchItem(BaseModel):
    response: str | None
    error: ErrorInfo | None


class BatchReply(BaseModel):
    results: list[BatchItem]


class Health(BaseModel):
    status: str
    audit_rows_written: int
    audit_rows_pending: int
    audit_capacity: int
