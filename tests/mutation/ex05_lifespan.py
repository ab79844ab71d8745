"""Exercise-specific mutation operators for notebook 05 (one client, opened and closed by the
lifespan), applied to right answers in tests/corpus/ex05_lifespan.py."""

from __future__ import annotations

import ast

from .engine import Mutation, Operator

__all__ = ["OPERATORS"]


def _is_close(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "close"
        and not node.args
    )


class _CloseNotAwaited(Mutation):
    """`await client.close()` → `client.close()`."""

    def visit_Await(self, node: ast.Await) -> ast.AST:
        if _is_close(node.value):
            return self.changed(node.value)
        return self.generic_visit(node)


class _CloseDropped(Mutation):
    """`await client.close()` removed: the client outlives the app."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        value = node.value
        if isinstance(value, ast.Await) and _is_close(value.value):
            self.changed(node)
            return ast.Pass()
        return self.generic_visit(node)


class _ClientPerRequest(Mutation):
    """The endpoint's client (`reply(<client>, request)`) becomes `AsyncOpenAI()`: a client per
    request."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "reply" and node.args:
            node.args[0] = ast.Call(
                func=ast.Name(id="AsyncOpenAI", ctx=ast.Load()), args=[], keywords=[]
            )
            return self.changed(node)
        return self.generic_visit(node)


class _LifespanNotPassed(Mutation):
    """`FastAPI(lifespan=lifespan)` → `FastAPI()`."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "FastAPI" and node.keywords:
            node.keywords = [k for k in node.keywords if k.arg != "lifespan"]
            return self.changed(node)
        return self.generic_visit(node)


class _EndpointStatements(Mutation):
    """Inserts a statement at the start of the `async def` endpoint (`summarize`)."""

    statement = ""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        if node.name == "summarize":
            node.body[0:0] = ast.parse(self.statement).body
            return self.changed(node)
        return self.generic_visit(node)


class _BlockingSleep(_EndpointStatements):
    statement = "time.sleep(0.3)"


class _Serialised(Mutation):
    """The endpoint's body runs under one `asyncio.Lock` shared by every request."""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        if node.name != "summarize":
            return self.generic_visit(node)
        lock = ast.parse("async with __mutation__:\n    pass").body[0]
        assert isinstance(lock, ast.AsyncWith)
        lock.body = node.body
        node.body = [lock]
        return self.changed(node)


def _one_lock() -> object:
    import asyncio

    return asyncio.Lock()


OPERATORS: tuple[Operator, ...] = (
    Operator(
        "close_not_awaited",
        ("missing_await",),
        _CloseNotAwaited,
        doc="`client.close()` without `await` at shutdown",
    ),
    Operator("close_dropped", ("never_closed",), _CloseDropped, doc="shutdown closes nothing"),
    Operator(
        "client_per_request",
        ("client_per_request",),
        _ClientPerRequest,
        doc="the endpoint builds its own client",
    ),
    Operator(
        "lifespan_not_passed",
        ("lifespan_not_passed",),
        _LifespanNotPassed,
        doc="the lifespan is not given to FastAPI()",
    ),
    Operator(
        "blocking_sleep",
        ("blocked_loop",),
        _BlockingSleep,
        doc="`time.sleep(0.3)` in the async endpoint",
    ),
    Operator(
        "one_lock_around_the_endpoint",
        ("concurrency_limited",),
        _Serialised,
        _one_lock,
        doc="one asyncio.Lock around every request's work",
    ),
)
"""The 05 operators, in the report's order."""
