"""Exercise-specific mutation operators for notebook 04 (an audit write off the request path).

Each rewrites the `audit(...)` function of a right answer in tests/corpus/ex04_background_audit.py
(where the learner schedules the write) or its lifespan (where it drains), into a mistake the
lesson names, and says which cause the 04 checker must give it.
"""

from __future__ import annotations

import ast

from .engine import Mutation, Operator

__all__ = ["OPERATORS"]

ASYNC_WRITES = frozenset({"slow_write_audit_row"})
"""Module-level async writes the corpus answers schedule (their own `async def`s are found)."""


def _add_task(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Attribute) and node.func.attr == "add_task" and bool(node.args)


class _AddTaskSites(Mutation):
    """Finds `tasks.add_task(write, *args)` calls; `async_only` keeps the async writes."""

    async_only = False

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no add_task(...) of a kind this operator rewrites"
        self._async_names: set[str] = set(ASYNC_WRITES)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self._async_names |= {
            inner.name for inner in ast.walk(node) if isinstance(inner, ast.AsyncFunctionDef)
        }
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _add_task(node):
            function = node.args[0]
            is_async = isinstance(function, ast.Name) and function.id in self._async_names
            if is_async or not self.async_only:
                return self.changed(self.rewrite(node, function, node.args[1:], is_async))
        return self.generic_visit(node)

    def rewrite(
        self, call: ast.Call, function: ast.expr, args: list[ast.expr], is_async: bool
    ) -> ast.expr:
        raise NotImplementedError


def _call(function: ast.expr, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=function, args=args, keywords=[])


def _name(dotted: str) -> ast.expr:
    first, *rest = dotted.split(".")
    node: ast.expr = ast.Name(id=first, ctx=ast.Load())
    for part in rest:
        node = ast.Attribute(value=node, attr=part, ctx=ast.Load())
    return node


class _AwaitedBeforeTheResponse(_AddTaskSites):
    """`add_task(write, *a)` → the audit returns the write for the endpoint to await (an async
    write), or a thread running it (a sync one): the response waits for the audit."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if isinstance(node.value, ast.Call) and _add_task(node.value):
            call = node.value
            function, args = call.args[0], call.args[1:]
            is_async = isinstance(function, ast.Name) and function.id in self._async_names
            awaited = (
                _call(function, args)
                if is_async
                else _call(_name("asyncio.to_thread"), [function, *args])
            )
            return self.changed(ast.Return(value=awaited))
        return self.generic_visit(node)


class _Lambda(_AddTaskSites):
    async_only = True

    def rewrite(
        self, call: ast.Call, function: ast.expr, args: list[ast.expr], is_async: bool
    ) -> ast.expr:
        empty = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        call.args = [ast.Lambda(args=empty, body=_call(function, args))]
        return call


class _CoroutineToAddTask(_AddTaskSites):
    async_only = True

    def rewrite(
        self, call: ast.Call, function: ast.expr, args: list[ast.expr], is_async: bool
    ) -> ast.expr:
        call.args = [_call(function, args)]
        return call


class _BareCreateTask(_AddTaskSites):
    async_only = True

    def rewrite(
        self, call: ast.Call, function: ast.expr, args: list[ast.expr], is_async: bool
    ) -> ast.expr:
        return _call(_name("asyncio.create_task"), [_call(function, args)])


class _Twice(_AddTaskSites):
    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.AST]:
        if isinstance(node.value, ast.Call) and _add_task(node.value):
            return [node, self.changed(ast.Expr(value=node.value))]
        return self.generic_visit(node)


class _AsyncWrites(Mutation):
    """Inserts a statement at the start of every `async def` write inside the answer."""

    statement = ""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no async def write in the answer"

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        if node.name in ("lifespan", "writer"):
            return self.generic_visit(node)
        node.body[0:0] = ast.parse(self.statement).body
        self.changed(node)
        return node


class _BlockingSleepInTask(_AsyncWrites):
    statement = "time.sleep(AUDIT_SECONDS)"


class _Sqlite3OnTheLoop(_AsyncWrites):
    statement = "sqlite3.connect(':memory:').execute('SELECT 1').fetchall()"


class _DrainSkipped(Mutation):
    """Removes what the lifespan awaits after `yield` (`await queue.join()`,
    `await asyncio.gather(*pending)`, `await task`): shutdown no longer waits for the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "the answer has no drain of its own at shutdown"

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        if node.name != "lifespan":
            return node
        for inner in ast.walk(node):
            body = getattr(inner, "body", None)
            if not isinstance(body, list):
                continue
            after_yield = False
            kept: list[ast.stmt] = []
            for statement in body:
                is_yield = isinstance(statement, ast.Expr) and isinstance(
                    statement.value, ast.Yield
                )
                drains = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Await)
                if after_yield and drains:
                    self.changed(statement)
                    continue
                after_yield = after_yield or is_yield
                kept.append(statement)
            inner.body = kept or [ast.Pass()]  # type: ignore[attr-defined]
        return node


OPERATORS: tuple[Operator, ...] = (
    Operator(
        "audit_before_the_response",
        ("inline_write",),
        _AwaitedBeforeTheResponse,
        doc="the scheduled write awaited (or awaited in a thread) before the response",
    ),
    Operator(
        "add_task_lambda",
        ("coroutine_never_awaited",),
        _Lambda,
        doc="`add_task(lambda: write(...))` for an async write",
    ),
    Operator(
        "coroutine_to_add_task",
        ("coroutine_passed_to_add_task",),
        _CoroutineToAddTask,
        doc="`add_task(write(...))`: the coroutine, not the function",
    ),
    Operator(
        "bare_create_task",
        # Judged by the reference, before the rows: under load the writes can finish before
        # the shutdown and every row be stored (CI once passed this mutant on its rows).
        ("task_not_kept",),
        _BareCreateTask,
        doc="`asyncio.create_task(write(...))`, nobody awaits it at shutdown",
    ),
    Operator(
        "scheduled_twice",
        ("too_many_rows",),
        _Twice,
        doc="the write scheduled twice",
    ),
    Operator(
        "blocking_sleep_in_task",
        ("blocked_loop",),
        _BlockingSleepInTask,
        doc="`time.sleep(AUDIT_SECONDS)` at the start of the async write",
    ),
    Operator(
        "sqlite3_on_the_loop",
        ("sqlite_on_loop",),
        _Sqlite3OnTheLoop,
        doc="a blocking sqlite3 statement at the start of the async write",
    ),
    Operator(
        "drain_skipped",
        ("queue_not_drained", "rows_lost", "audit_failed"),
        _DrainSkipped,
        doc="the lifespan no longer awaits the queued or tracked writes at shutdown",
    ),
)
"""The 04 operators, in the report's order."""
