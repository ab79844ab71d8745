"""The generic mutation operators: mistakes any exercise of lessons 01-07 can make.

Each operator finds the answer's upstream calls ("sites") and rewrites them:

* an awaitable site — a call that makes the coroutine of an upstream call inside an `async def`:
  `client.chat.completions.create(...)`, `summarize(text)` (awaited, gathered or made a task);
* a sync site — the same call inside a plain `def` (a `def` endpoint, run in a worker thread);
* a thread site — the sync client handed to a thread: `asyncio.to_thread(client...create, ...)`,
  `run_in_threadpool(...)`, `anyio.to_thread.run_sync(...)`.

The rewritten call goes through `__mutation__`, the operator's state made once per build (one
lock, one executor shared by every request, as a learner's module-level lock would be); what the
state does is plain Python a learner could have written in the answer itself. A site an operator
has no rewrite for is left alone; with no site rewritten, the mutant is "not applicable".

The causes given here are the generic ones; each exercise's test says which of its checker's
causes each operator must produce (`Operator.expecting`).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import anyio
import anyio.from_thread
import anyio.to_thread

from .engine import Mutation, Operator

__all__ = [
    "ASYNCIO_LOCK",
    "ASYNCIO_RUN_IN_THREAD",
    "BLOCKING_IO",
    "BLOCKING_SLEEP",
    "CAPACITY_LIMITER_ONE",
    "CLOSE_SHARED_CLIENT",
    "CONSTANT_REPLY",
    "DROP_TASK_REFERENCE",
    "GENERIC",
    "ONE_THREAD_EXECUTOR",
    "REORDER_RESULTS",
    "SEMAPHORE_ONE",
    "THREADING_LOCK",
    "CallSites",
    "upstream_call",
]

CLIENT_CALLS: tuple[tuple[str, ...], ...] = (
    ("chat", "completions", "create"),
    ("chat", "completions", "parse"),
    ("responses", "create"),
    ("embeddings", "create"),
)
"""Attribute chains that end an SDK call to the upstream (the client is what comes before)."""

UPSTREAM_FUNCTIONS = frozenset({"summarize", "summarise"})
"""The course's own helpers that make one upstream call (notebooks 02 and 03)."""

THREAD_HANDOFFS = frozenset({"to_thread", "run_in_threadpool", "run_sync"})
"""Functions that run a sync callable in a worker thread (asyncio, Starlette, anyio)."""

CONSTANT = "Thanks, your message was received."
"""The reply a constant-reply mutant gives, whatever it was asked."""

BLOCK_SECONDS = 0.05
"""How long a blocking-sleep or blocking-I/O mutant holds the loop per call (half the tests'
latency: the calls still overlap, so only the loop's own watch can tell)."""


def _chain(node: ast.expr) -> tuple[list[str], ast.expr]:
    """`a.b.c` → (["b", "c"], <a>), `x().b.c` → (["b", "c"], <x()>): the attribute names and
    the expression they hang from."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.insert(0, node.attr)
        node = node.value
    return names, node


def client_of(reference: ast.expr) -> ast.expr | None:
    """The client expression of an SDK call's function (`client` in
    `client.chat.completions.create`), or None when `reference` is not one."""
    names, base = _chain(reference)
    for suffix in CLIENT_CALLS:
        if tuple(names[-len(suffix) :]) == suffix:
            kept = names[: -len(suffix)]
            client = base
            for name in kept:
                client = ast.Attribute(value=client, attr=name, ctx=ast.Load())
            return client
    return None


def upstream_reference(reference: ast.expr) -> bool:
    """Whether `reference` names a function that makes an upstream call."""
    if isinstance(reference, ast.Name):
        return reference.id in UPSTREAM_FUNCTIONS
    return client_of(reference) is not None


def upstream_call(call: ast.Call) -> bool:
    """Whether `call` makes an upstream call (an SDK call or the course's `summarize`)."""
    return upstream_reference(call.func)


def thread_handoff(call: ast.Call) -> bool:
    """Whether `call` hands the sync client to a worker thread."""
    names, base = _chain(call.func)
    name = names[-1] if names else (base.id if isinstance(base, ast.Name) else "")
    return name in THREAD_HANDOFFS and bool(call.args) and upstream_reference(call.args[0])


def _method(name: str, *args: ast.expr, keywords: list[ast.keyword] | None = None) -> ast.Call:
    """`__mutation__.<name>(*args)`."""
    return ast.Call(
        func=ast.Attribute(value=Mutation.state(), attr=name, ctx=ast.Load()),
        args=list(args),
        keywords=keywords or [],
    )


def _thunk(call: ast.expr) -> ast.Lambda:
    """`lambda: <call>`."""
    empty = ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )
    return ast.Lambda(args=empty, body=call)


class CallSites(Mutation):
    """Finds the upstream call sites and asks the subclass for each one's rewrite.

    `sites` says which kinds of site the operator rewrites; a thread site is treated as an
    awaitable one when the operator has no rewrite of its own for it (the handoff's result is
    awaited like any coroutine).
    """

    sites: ClassVar[frozenset[str]] = frozenset({"awaitable"})

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no upstream call of a kind this operator rewrites"
        self._functions: list[str] = []
        self.site_rewrites = 0
        """How many upstream call sites were rewritten (`applied` also counts other rewrites)."""

    def changed_site(self, node: ast.expr) -> ast.AST:
        self.site_rewrites += 1
        return self.changed(node)

    def _inside(self, kind: str, node: ast.AST) -> ast.AST:
        self._functions.append(kind)
        try:
            return self.generic_visit(node)
        finally:
            self._functions.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._inside("sync", node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._inside("async", node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._inside("lambda", node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        context = self._functions[-1] if self._functions else "module"
        if context == "async" and thread_handoff(node):
            if "thread" in self.sites:
                return self.changed_site(self.thread(node))
            if "awaitable" in self.sites:
                return self.changed_site(self.awaitable(node))
        elif upstream_call(node):
            if context == "async" and "awaitable" in self.sites:
                return self.changed_site(self.awaitable(node))
            if context == "sync" and "sync" in self.sites:
                return self.changed_site(self.sync(node))
        return self.generic_visit(node)

    def awaitable(self, call: ast.Call) -> ast.expr:
        """`__mutation__.awaitable(<call>)`: the state wraps the coroutine."""
        return _method("awaitable", call)

    def sync(self, call: ast.Call) -> ast.expr:
        """`__mutation__.sync(lambda: <call>)`: the state runs the sync call."""
        return _method("sync", _thunk(call))

    def thread(self, call: ast.Call) -> ast.expr:
        """`__mutation__.thread(<fn>, *args, **kwargs)`: the state runs the handed-off call."""
        return _method("thread", *call.args, keywords=call.keywords)


# -- serialised --------------------------------------------------------------------------------


class _Gate:
    """Every awaitable site passes through one async gate (a lock, a semaphore, a limiter)."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate

    async def awaitable(self, pending: Awaitable[Any]) -> Any:
        async with self.gate:
            return await pending


class _Limiter(_Gate):
    """An anyio `CapacityLimiter(1)`: around awaited calls, and as the limiter of the thread
    handoff (`anyio.to_thread.run_sync(..., limiter=...)`)."""

    def __init__(self) -> None:
        super().__init__(anyio.CapacityLimiter(1))

    async def thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.gate
        )

    def sync(self, call: Callable[[], Any]) -> Any:
        # A def endpoint runs in anyio's worker thread: hand the call back through the limiter.
        return anyio.from_thread.run(self.thread, call)


class _ThreadingLock:
    """One `threading.Lock` around every call: serialises threads, deadlocks the loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    async def awaitable(self, pending: Awaitable[Any]) -> Any:
        with self.lock:
            return await pending

    def sync(self, call: Callable[[], Any]) -> Any:
        with self.lock:
            return call()

    async def thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sync, functools.partial(fn, *args, **kwargs))


class _OneThreadExecutor:
    """Every sync call runs in one shared one-thread executor."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mutant-executor")

    def sync(self, call: Callable[[], Any]) -> Any:
        return self.pool.submit(call).result()

    async def thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))


class _Sync(CallSites):
    sites = frozenset({"sync", "thread"})


class _Everywhere(CallSites):
    sites = frozenset({"awaitable", "sync", "thread"})


# -- blocked loop ------------------------------------------------------------------------------


class _BlockingSleep:
    """`time.sleep` before each call, on the event loop ("a polite pause")."""

    async def awaitable(self, pending: Awaitable[Any]) -> Any:
        time.sleep(BLOCK_SECONDS)
        return await pending


class _BlockingIO:
    """A blocking socket read with a timeout before each call, on the event loop."""

    async def awaitable(self, pending: Awaitable[Any]) -> Any:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.settimeout(BLOCK_SECONDS)
            with contextlib.suppress(TimeoutError):
                ours.recv(1)  # nobody writes: waits the whole timeout, holding the loop
        return await pending


# -- the shared client closed ------------------------------------------------------------------


class _Closing:
    """The shared client used as a context manager inside the handler (`async with client:`):
    closed when the first request's call returns."""

    async def awaitable(self, client: Any, pending: Awaitable[Any]) -> Any:
        async with client:
            return await pending

    def sync(self, client: Any, call: Callable[[], Any]) -> Any:
        with client:
            return call()

    async def thread(self, client: Any, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        finally:
            client.close()


class _CloseSharedClient(_Everywhere):
    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "no SDK call on a client the answer holds (only a helper's)"

    def visit_Call(self, node: ast.Call) -> ast.AST:
        reference = node.args[0] if thread_handoff(node) and node.args else node.func
        if client_of(reference) is None:
            return self.generic_visit(node)
        return super().visit_Call(node)

    def awaitable(self, call: ast.Call) -> ast.expr:
        return _method("awaitable", self._client(call.func), call)

    def sync(self, call: ast.Call) -> ast.expr:
        return _method("sync", self._client(call.func), _thunk(call))

    def thread(self, call: ast.Call) -> ast.expr:
        return _method("thread", self._client(call.args[0]), *call.args, keywords=call.keywords)

    @staticmethod
    def _client(reference: ast.expr) -> ast.expr:
        client = client_of(reference)
        assert client is not None  # visit_Call only lets SDK calls through
        return client


# -- wrong replies -----------------------------------------------------------------------------


def _is_content(node: ast.AST) -> bool:
    """`<...>.message.content`: the model's reply text read from a response."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "content"
        and isinstance(node.ctx, ast.Load)
        and "message" in _chain(node.value)[0]
    )


class _ConstantReply(_Everywhere):
    """The reply text replaced by a constant: `response.choices[0].message.content` where the
    answer reads it, else the result of each upstream call (the calls are still made)."""

    def __init__(self) -> None:
        super().__init__()
        self._reads_content = False

    def visit(self, node: ast.AST) -> Any:
        if not self._functions and not self.applied:
            self._reads_content = self._reads_content or any(map(_is_content, ast.walk(node)))
        return super().visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if _is_content(node):
            return self.changed(ast.Constant(CONSTANT))
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if self._reads_content:
            return self.generic_visit(node)
        return super().visit_Call(node)

    def thread(self, call: ast.Call) -> ast.expr:
        return _method("awaitable", call)


class _Constant:
    async def awaitable(self, pending: Awaitable[Any]) -> str:
        await pending
        return CONSTANT

    def sync(self, call: Callable[[], Any]) -> str:
        call()
        return CONSTANT


class _FireAndForget(_ConstantReply):
    """The call started as a task nobody keeps or awaits; the reply made up."""

    sites = frozenset({"awaitable"})

    def visit(self, node: ast.AST) -> Any:
        top = not self._functions
        visited = super().visit(node)
        if top and not self.site_rewrites:
            self.applied = 0  # a made-up reply alone is constant_reply's mutant, not this one
        return visited

    def visit_Call(self, node: ast.Call) -> ast.AST:
        return CallSites.visit_Call(self, node)  # every awaitable site, `.content` or not


class _Forgotten:
    async def awaitable(self, pending: Awaitable[Any]) -> str:
        asyncio.ensure_future(pending)  # noqa: RUF006 -- the mistake itself: no reference kept
        return CONSTANT


# -- asyncio.run in a thread -------------------------------------------------------------------


class _RunInThread(CallSites):
    """`await asyncio.to_thread(asyncio.run, <coroutine>)` instead of `await <coroutine>`: a new
    event loop per call, in a worker thread, for a client whose connections belong to one loop."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if thread_handoff(node):
            return self.generic_visit(node)  # already a thread, and no coroutine to run
        return super().visit_Call(node)


class _AsyncioRun:
    async def awaitable(self, pending: Any) -> Any:
        return await asyncio.to_thread(asyncio.run, pending)


# -- results out of order ----------------------------------------------------------------------


class _Reorder(Mutation):
    """The function the builder returns gives its list of results reversed."""

    def __init__(self) -> None:
        super().__init__()
        self.not_applicable = "the answer is not a function returning its results (an app?)"
        self._target: str | None = None
        self._depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if self._depth == 0:  # the builder: find the function it returns
            last = node.body[-1] if node.body else None
            if isinstance(last, ast.Return) and isinstance(last.value, ast.Name):
                self._target = last.value.id
        return self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._depth += 1
        try:
            if self._depth == 2 and node.name == self._target:
                for inner in ast.walk(node):
                    returns = isinstance(inner, ast.Return) and inner.value is not None
                    if returns and _own_return(node, inner):
                        inner.value = self.changed(_method("reordered", inner.value))
                return node
            return self.generic_visit(node)
        finally:
            self._depth -= 1


def _own_return(function: ast.AST, target: ast.Return) -> bool:
    """Whether `target` returns from `function` itself, not from a function defined inside it."""
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if node is target:
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))
    return False


class _Reordered:
    @staticmethod
    def reordered(results: Any) -> Any:
        return list(reversed(results)) if isinstance(results, list) else results


# -- the operators -----------------------------------------------------------------------------


ASYNCIO_LOCK = Operator(
    "asyncio_lock",
    ("concurrency_limited",),
    CallSites,
    lambda: _Gate(asyncio.Lock()),
    "one asyncio.Lock around every awaited upstream call",
)
SEMAPHORE_ONE = Operator(
    "semaphore_one",
    ("concurrency_limited",),
    CallSites,
    lambda: _Gate(asyncio.Semaphore(1)),
    "one asyncio.Semaphore(1) around every awaited upstream call",
)
THREADING_LOCK = Operator(
    "threading_lock",
    ("threading_primitive", "concurrency_limited"),
    _Everywhere,
    _ThreadingLock,
    "one threading.Lock around every upstream call (in threads: one at a time; on the loop: a "
    "deadlock)",
)
ONE_THREAD_EXECUTOR = Operator(
    "one_thread_executor",
    ("concurrency_limited",),
    _Sync,
    _OneThreadExecutor,
    "every sync upstream call run in one shared one-thread executor",
)
CAPACITY_LIMITER_ONE = Operator(
    "capacity_limiter_one",
    ("concurrency_limited",),
    _Everywhere,
    _Limiter,
    "anyio.CapacityLimiter(1) around every call, or as the thread handoff's limiter",
)
BLOCKING_SLEEP = Operator(
    "blocking_sleep",
    ("blocked_loop",),
    CallSites,
    _BlockingSleep,
    f"time.sleep({BLOCK_SECONDS}) on the event loop before every upstream call",
)
BLOCKING_IO = Operator(
    "blocking_io",
    ("blocked_loop",),
    CallSites,
    _BlockingIO,
    f"a blocking socket read ({BLOCK_SECONDS} s timeout) on the event loop before every call",
)
CLOSE_SHARED_CLIENT = Operator(
    "close_shared_client",
    ("client_closed",),
    _CloseSharedClient,
    _Closing,
    "`async with client:` (or `with client:`) around the call in the handler: the shared "
    "client is closed after its first use",
)
CONSTANT_REPLY = Operator(
    "constant_reply",
    ("wrong_reply",),
    _ConstantReply,
    _Constant,
    f"the reply replaced by a constant ({CONSTANT!r}); the upstream is still called",
)
DROP_TASK_REFERENCE = Operator(
    "drop_task_reference",
    ("wrong_reply",),
    _FireAndForget,
    _Forgotten,
    "the upstream call started as a task whose reference is dropped, a constant answered",
)
ASYNCIO_RUN_IN_THREAD = Operator(
    "asyncio_run_in_thread",
    ("nested_event_loop",),
    _RunInThread,
    _AsyncioRun,
    "`await asyncio.to_thread(asyncio.run, coro)` instead of `await coro`",
)
REORDER_RESULTS = Operator(
    "reorder_results",
    ("wrong_order",),
    _Reorder,
    _Reordered,
    "the answer's list of results returned in reverse order",
)

GENERIC: tuple[Operator, ...] = (
    ASYNCIO_LOCK,
    SEMAPHORE_ONE,
    THREADING_LOCK,
    ONE_THREAD_EXECUTOR,
    CAPACITY_LIMITER_ONE,
    BLOCKING_SLEEP,
    BLOCKING_IO,
    CLOSE_SHARED_CLIENT,
    CONSTANT_REPLY,
    DROP_TASK_REFERENCE,
    ASYNCIO_RUN_IN_THREAD,
    REORDER_RESULTS,
)
"""Every generic operator, in the report's order."""
