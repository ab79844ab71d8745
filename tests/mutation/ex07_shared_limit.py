"""Exercise-specific mutation operators for notebook 07 (a limit shared through Redis).

07's answers are the source of a notebook cell (the checker sends it to worker processes), so
its mutants are rewritten cell sources, not builder functions: `source_mutants()` applies each
operator to the class in a cell and makes a `Mutant` whose `build()` returns the mutated
source. What each operator does is a mistake the lesson names (its exercise text says three of
them must fail: a plain DEL, a GET then DEL, SETNX then PEXPIRE).
"""

from __future__ import annotations

import ast
from typing import Any

import pytest

from .engine import Mutant, Mutation, Operator

__all__ = ["OPERATORS", "source_mutants"]


def _statement(text: str) -> ast.stmt:
    return ast.parse(text).body[0]


class _InMethod(Mutation):
    """Rewrites inside one method of the class (`method`)."""

    method = ""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        if node.name == self.method:
            return self.rewrite_method(node)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name == self.method:
            return self.rewrite_method(node)
        return node

    def rewrite_method(self, node: Any) -> ast.AST:
        return self.generic_visit(node)


def _keys_and_args(call: ast.Call) -> tuple[ast.expr, ast.expr] | None:
    """`key`, `token` of a script call `script(keys=[key], args=[token])`."""
    found = {k.arg: k.value for k in call.keywords}
    keys, args = found.get("keys"), found.get("args")
    if isinstance(keys, ast.List) and isinstance(args, ast.List) and keys.elts and args.elts:
        return keys.elts[0], args.elts[0]
    return None


class _ReleaseBy(_InMethod):
    """Replaces release()'s compare-and-delete script call with `replacement(key, token)`."""

    method = "release"
    replacement = ""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.stmt]:
        value = node.value
        if isinstance(value, ast.Await) and isinstance(value.value, ast.Call):
            found = _keys_and_args(value.value)
            if found is not None:
                key, token = (ast.unparse(part) for part in found)
                self.changed(node)
                return ast.parse(self.replacement.format(key=key, token=token)).body
        return node


class _PlainDel(_ReleaseBy):
    replacement = "await self.redis.delete({key})"


class _GetThenDel(_ReleaseBy):
    replacement = "if await self.redis.get({key}) == {token}:\n    await self.redis.delete({key})"


class _ReleaseNothing(_InMethod):
    method = "release"

    def rewrite_method(self, node: Any) -> ast.AST:
        node.body = [_statement("pass")]
        return self.changed(node)


class _ConstantToken(_InMethod):
    """`token = <a fresh value>` in acquire() → `token = "holder"`."""

    method = "acquire"

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        if any(isinstance(t, ast.Name) and t.id in ("token", "me") for t in node.targets):
            node.value = ast.Constant("holder")
            return self.changed(node)
        return node


class _Lease(Mutation):
    """`self.lease_ms = <expr>` in __init__ → `self.lease_ms = <replacement>`."""

    replacement = ""

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        target = node.targets[0]
        if isinstance(target, ast.Attribute) and target.attr == "lease_ms":
            node.value = ast.parse(self.replacement, mode="eval").body
            return self.changed(node)
        return self.generic_visit(node)


class _PxInSeconds(_Lease):
    replacement = "int(lease)"


class _LeaseShorterThanTheCall(_Lease):
    replacement = "max(1, int(lease * 10))"


def _set_nx(call: ast.AST) -> bool:
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "set"
        and any(k.arg == "nx" for k in call.keywords)
    )


class _SetnxThenPexpire(_InMethod):
    """`await self.redis.set(key, token, nx=True, px=ms)` → `await self.redis.setnx(key,
    token) and await self.redis.pexpire(key, ms)`: two commands."""

    method = "acquire"

    def visit_Await(self, node: ast.Await) -> ast.AST:
        call = node.value
        if _set_nx(call):
            assert isinstance(call, ast.Call)
            px = next((k.value for k in call.keywords if k.arg == "px"), None)
            if px is None or len(call.args) < 2:
                return node
            redis = ast.unparse(call.func.value)  # type: ignore[attr-defined]
            key, token = (ast.unparse(a) for a in call.args[:2])
            self.changed(node)
            return ast.parse(
                f"(await {redis}.setnx({key}, {token}) and await {redis}.pexpire({key}, "
                f"{ast.unparse(px)}))",
                mode="eval",
            ).body
        return self.generic_visit(node)


class _NoLease(_InMethod):
    """The `px=` of SET NX dropped: a slot is held until released."""

    method = "acquire"

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _set_nx(node):
            node.keywords = [k for k in node.keywords if k.arg not in ("px", "ex")]
            return self.changed(node)
        return self.generic_visit(node)


class _PollSleep(_InMethod):
    """Replaces acquire()'s `await asyncio.sleep(x)` between polls."""

    method = "acquire"
    replacement = ""

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        value = node.value
        if (
            isinstance(value, ast.Await)
            and isinstance(value.value, ast.Call)
            and ast.unparse(value.value.func) == "asyncio.sleep"
        ):
            delay = ast.unparse(value.value.args[0]) if value.value.args else "0"
            self.changed(node)
            return _statement(self.replacement.format(delay=delay))
        return node


class _BlockingPoll(_PollSleep):
    replacement = "__import__('time').sleep({delay})"


class _NeverWaits(_PollSleep):
    replacement = "return 'none free: go ahead anyway'"


OPERATORS: tuple[Operator, ...] = (
    Operator("plain_del_release", ("released_others",), _PlainDel, doc="release by plain DEL"),
    Operator(
        "get_then_del_release",
        ("non_atomic_release",),
        _GetThenDel,
        doc="release by GET, compare, then DEL: two commands",
    ),
    Operator("release_nothing", ("not_released",), _ReleaseNothing, doc="release() does nothing"),
    Operator(
        "constant_token",
        ("released_others", "same_token"),
        _ConstantToken,
        doc="every holder's token is the same constant",
    ),
    Operator(
        "px_in_seconds", ("lease_units",), _PxInSeconds, doc="the lease's seconds as milliseconds"
    ),
    Operator(
        "lease_shorter_than_the_call",
        ("over_limit", "lease_units"),
        _LeaseShorterThanTheCall,
        doc="a lease of a hundredth of the one given: it expires while the holder works",
    ),
    Operator(
        "setnx_then_pexpire",
        ("set_then_expire",),
        _SetnxThenPexpire,
        doc="SETNX, then PEXPIRE: two commands",
    ),
    Operator("no_lease", ("no_expiry",), _NoLease, doc="SET NX without PX"),
    Operator("blocking_poll", ("blocking_wait",), _BlockingPoll, doc="time.sleep between polls"),
    Operator("never_waits", ("over_limit",), _NeverWaits, doc="acquire() returns when all taken"),
)
"""The 07 operators, in the report's order."""


def source_mutants(
    answer: str, source: str, operators: tuple[Operator, ...], exercise: str = "ex07_shared_limit"
) -> list[Any]:
    """Each operator applied to the cell `source` (named `answer`), as pytest params with ids
    `<answer>-<operator>`; `build()` of a mutant returns its source. Not applicable: kept, with
    no build (judge() skips it)."""
    params = []
    for operator in operators:
        tree = ast.parse(source)
        mutation = operator.transformer()
        mutation.visit(tree)
        if mutation.applied:
            mutated = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
            made = Mutant(
                exercise, answer, operator.name, operator.causes, lambda s=mutated: s, mutated
            )
        else:
            made = Mutant(
                exercise, answer, operator.name, operator.causes, None, "", mutation.not_applicable
            )
        params.append(pytest.param(made, id=made.id))
    return params
