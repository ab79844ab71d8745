"""Notebook 08's own mutation operators: the mistakes of a streaming relay.

Each rewrites a right answer of tests/corpus/ex08_streaming.py:

* `buffer_answer` — the relay loop reads the whole upstream stream before its first piece;
* `read_in_a_task` — a task reads the upstream into a queue and the response relays the queue
  (the stream no longer closed by `async with` / `stream.close()`): it reads on after the client
  left;
* `audit_at_start` — the audit row written when the stream starts, before any usage;
* `client_per_request` — the upstream call made on a new `AsyncOpenAI()` each time;
* `constant_pieces` — each piece's `delta.content` replaced by a constant.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .engine import Mutation, Operator
from .operators import client_of, upstream_call

__all__ = ["OPERATORS"]

CONSTANT = "Thanks for waiting."


def _relay_loop(node: ast.AsyncFor) -> bool:
    """`async for chunk in stream:` over a plain name: the relay's read of the upstream."""
    return isinstance(node.iter, ast.Name)


def _wrap(method: str, value: ast.expr) -> ast.Call:
    return ast.Call(
        func=ast.Attribute(value=Mutation.state(), attr=method, ctx=ast.Load()),
        args=[value],
        keywords=[],
    )


class _WrapRelayLoop(Mutation):
    """`async for chunk in stream` → `async for chunk in __mutation__.<method>(stream)`."""

    method = ""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no `async for` over the upstream stream"

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        self.generic_visit(node)
        if _relay_loop(node):
            node.iter = _wrap(self.method, node.iter)
            self.changed(node)
        return node


class _Buffer(_WrapRelayLoop):
    method = "buffered"


class _Buffered:
    async def buffered(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        chunks = [chunk async for chunk in stream]
        for chunk in chunks:
            yield chunk


class _ReadInATask(_WrapRelayLoop):
    """Also unwraps `async with <create> as stream:` and drops `await stream.close()`: the
    task owns the reading, so nothing closes the stream under it."""

    method = "detached"

    def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
        self.generic_visit(node)
        item = node.items[0] if len(node.items) == 1 else None
        if item is None:
            return node
        if isinstance(item.context_expr, ast.Name) and item.optional_vars is None:
            return node.body  # `async with stream:`, entered on a line of its own
        if not isinstance(item.optional_vars, ast.Name) or not any(
            isinstance(n, ast.Call) and upstream_call(n) for n in ast.walk(item.context_expr)
        ):
            return node
        target = ast.Name(id=item.optional_vars.id, ctx=ast.Store())
        return [ast.Assign(targets=[target], value=item.context_expr), *node.body]

    def visit_Expr(self, node: ast.Expr) -> Any:
        value = node.value.value if isinstance(node.value, ast.Await) else None
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "close"
            and isinstance(value.func.value, ast.Name)
        ):
            return ast.Pass()
        return self.generic_visit(node)


class _Detached:
    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    async def detached(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def read() -> None:
            async for chunk in stream:
                await queue.put(chunk)
            await queue.put(done)

        task = asyncio.create_task(read())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        while (chunk := await queue.get()) is not done:
            yield chunk


class _AuditAtStart(Mutation):
    """Every `audit.append(...)` removed, and `audit.append({"completion_tokens": None})` made
    the first statement of the relay (the `async def` that holds the `async for`)."""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no audit.append(...) in an async relay"

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        if not any(isinstance(n, ast.AsyncFor) for n in ast.walk(node)):
            return node
        before = self.applied
        node.body = [_RemoveAudit(self).visit(statement) for statement in node.body]
        if self.applied > before:
            early = ast.parse('audit.append({"completion_tokens": None})').body[0]
            node.body.insert(0, early)
        return node


class _RemoveAudit(ast.NodeTransformer):
    def __init__(self, owner: Mutation) -> None:
        self.owner = owner

    def visit_Expr(self, node: ast.Expr) -> Any:
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "append"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "audit"
        ):
            self.owner.changed(node)
            return ast.Pass()
        return node


class _ClientPerRequest(Mutation):
    """`<client>.chat.completions.create(...)` → `AsyncOpenAI().chat.completions.create(...)`."""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no SDK call on a client"

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if upstream_call(node) and client_of(node.func) is not None:
            fresh: ast.expr = ast.Call(
                func=ast.Name(id="AsyncOpenAI", ctx=ast.Load()), args=[], keywords=[]
            )
            for name in ("chat", "completions", "create"):
                fresh = ast.Attribute(value=fresh, attr=name, ctx=ast.Load())
            node.func = fresh
            self.changed(node)
        return node


class _ConstantPieces(Mutation):
    """`<...>.delta.content` → `__mutation__.constant(<...>.delta.content)`."""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no `delta.content` read"

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if (
            node.attr == "content"
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "delta"
        ):
            return self.changed(_wrap("constant", node))
        return node


class _Constant:
    @staticmethod
    def constant(content: str | None) -> str | None:
        return CONSTANT if content else content


OPERATORS: tuple[Operator, ...] = (
    Operator(
        "buffer_answer",
        ("buffered",),
        _Buffer,
        _Buffered,
        "the whole upstream stream read before the first piece is relayed",
    ),
    Operator(
        "read_in_a_task",
        ("ignored_disconnect",),
        _ReadInATask,
        _Detached,
        "a task reads the upstream into a queue; the stream is no longer closed by the relay",
    ),
    Operator(
        "audit_at_start",
        ("audit_before_end",),
        _AuditAtStart,
        None,
        "the audit row written when the stream starts, before its usage is known",
    ),
    Operator(
        "client_per_request",
        ("client_per_request",),
        _ClientPerRequest,
        None,
        "a new AsyncOpenAI() for each upstream call",
    ),
    Operator(
        "constant_pieces",
        ("wrong_text",),
        _ConstantPieces,
        _Constant,
        f"each piece's text replaced by {CONSTANT!r}",
    ),
)
"""Notebook 08's operators, in the report's order."""
