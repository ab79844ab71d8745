"""Mutants: a right answer's builder, rewritten by an operator, judged by the exercise's checker.

An `Operator` names a mistake and the checker cause(s) it must produce. Its `transformer()`
makes a fresh `Mutation` (an `ast.NodeTransformer`) that rewrites the body of one answer builder
(`answer_*` in a corpus module, see tests/corpus) and counts how often it changed something. The
engine turns the rewritten tree back into source (`ast.unparse`, registered with `linecache` so
tracebacks and the watchdog show the mutant's own lines), and execs it in a copy of the corpus
module's globals, so the mutant sees the same helpers, clients and imports as the original.

An operator with nothing to rewrite in an answer makes a "not applicable" mutant: it is skipped
and reported as such, never counted as refused.

    @pytest.mark.parametrize("mutant", mutants(corpus, RIGHT, OPERATORS))
    def test_the_mutant_is_refused(mutant: Mutant, request: pytest.FixtureRequest) -> None:
        judge(mutant, request.node, lambda build: check(build()))
"""

from __future__ import annotations
import __future__

import ast
import inspect
import json
import linecache
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Protocol

import pytest

__all__ = [
    "STATE",
    "Judged",
    "Mutant",
    "Mutation",
    "Operator",
    "judge",
    "mutant",
    "mutants",
]

STATE = "__mutation__"
"""The name a mutated builder binds its operator's runtime state to (see `Operator.state`)."""

PROPERTY = "mutation"
"""The `user_properties` key under which a judged mutant is recorded for the report."""


class Mutation(ast.NodeTransformer):
    """An `ast.NodeTransformer` that counts what it changed (`applied`) and can say why it
    changed nothing (`not_applicable`)."""

    def __init__(self) -> None:
        self.applied = 0
        self.not_applicable = "nothing to rewrite"

    def changed(self, node: ast.AST) -> ast.AST:
        """Count one rewrite and return `node` (the replacement)."""
        self.applied += 1
        return node

    @staticmethod
    def state() -> ast.expr:
        """`__mutation__`, the operator's runtime state, as an expression to call methods on."""
        return ast.Name(id=STATE, ctx=ast.Load())


@dataclass(frozen=True)
class Operator:
    """A mistake, as a rewrite of an answer's source, and the causes a checker must give it.

    `state`, when set, is called once each time the mutated builder runs (its result bound to
    `__mutation__` at the top of the builder), for what the rewritten code shares between
    requests: a lock, a one-thread executor, a constant.
    """

    name: str
    causes: tuple[str, ...]
    transformer: Callable[[], Mutation]
    state: Callable[[], object] | None = None
    doc: str = ""

    def expecting(self, *causes: str) -> Operator:
        """This operator, with the causes one exercise's checker gives it."""
        if not causes:
            raise ValueError(f"{self.name}: expecting() needs at least one cause")
        return replace(self, causes=causes)


@dataclass(frozen=True)
class Mutant:
    """One operator applied to one right answer: a builder (None when not applicable)."""

    exercise: str
    answer: str
    operator: str
    causes: tuple[str, ...]
    build: Callable[..., Any] | None
    source: str = field(repr=False, default="")
    reason: str = ""
    """Why the operator did not apply, when `build` is None."""

    @property
    def id(self) -> str:
        return f"{self.answer}-{self.operator}"

    @property
    def applicable(self) -> bool:
        return self.build is not None


class Judged(Protocol):
    """What a checker returns, as far as the engine reads it."""

    @property
    def passed(self) -> bool: ...

    @property
    def cause(self) -> str: ...


def mutant(module: ModuleType, answer_name: str, operator: Operator) -> Mutant:
    """`operator` applied to `module.answer_<answer_name>` (the `answer_` prefix optional)."""
    function_name = answer_name if answer_name.startswith("answer_") else f"answer_{answer_name}"
    builder = getattr(module, function_name, None)
    if builder is None:
        raise ValueError(f"{module.__name__} has no {function_name}")
    short = function_name.removeprefix("answer_")
    exercise = module.__name__.rpartition(".")[2]
    tree = ast.parse(textwrap.dedent(inspect.getsource(builder)))
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef):
        raise ValueError(f"{function_name} must be a plain `def` that builds the answer")
    mutation = operator.transformer()
    mutation.visit(definition)
    if not mutation.applied:
        return Mutant(
            exercise, short, operator.name, operator.causes, None, "", mutation.not_applicable
        )
    if operator.state is not None:
        definition.body.insert(_after_docstring(definition), _bind_state())
    definition.name = f"{function_name}__{operator.name}"
    ast.fix_missing_locations(tree)
    source = ast.unparse(tree) + "\n"
    filename = f"<mutant {exercise}:{short}-{operator.name}>"
    # The watchdog and tracebacks read the blocked line from linecache, as for a notebook cell.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = dict(vars(module))
    namespace["__mutation_state__"] = operator.state
    code = compile(source, filename, "exec", flags=__future__.annotations.compiler_flag)
    exec(code, namespace)  # the source is our own corpus answer, rewritten by our operator
    build = namespace[definition.name]
    build.__doc__ = f"NOT YET, {operator.causes[0]}: {operator.name} applied to {short}."
    return Mutant(exercise, short, operator.name, operator.causes, build, source)


def mutants(
    module: ModuleType, answer_names: Iterable[str], operators: Sequence[Operator]
) -> list[Any]:
    """Every operator applied to every named answer, as pytest params with ids
    `<answer>-<operator>`; a mutant that is not applicable is kept (judge() skips it)."""
    return [
        pytest.param(made, id=made.id)
        for name in answer_names
        for operator in operators
        for made in [mutant(module, name, operator)]
    ]


def judge(
    mutant: Mutant, node: pytest.Item, check: Callable[[Callable[..., Any]], Judged]
) -> Judged:
    """Run `check(mutant.build)` and assert the mutant was refused with one of its causes.

    The outcome is recorded on the test item (`user_properties`) for the mutation report; a
    mutant that is not applicable is recorded and skipped.
    """
    record: dict[str, Any] = {
        "exercise": mutant.exercise,
        "answer": mutant.answer,
        "operator": mutant.operator,
        "expected": list(mutant.causes),
    }
    if mutant.build is None:
        node.user_properties.append((PROPERTY, json.dumps({**record, "applicable": False})))
        pytest.skip(f"not applicable: {mutant.reason}")
    result = check(mutant.build)
    record.update(applicable=True, passed=bool(result.passed), cause=str(result.cause))
    node.user_properties.append((PROPERTY, json.dumps(record)))
    assert not result.passed, f"mutant {mutant.id} was accepted:\n{result}\n{mutant.source}"
    assert result.cause in mutant.causes, (
        f"mutant {mutant.id}: cause {result.cause!r}, expected one of {mutant.causes}:\n{result}"
    )
    return result


def _after_docstring(definition: ast.FunctionDef) -> int:
    first = definition.body[0] if definition.body else None
    docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    return 1 if docstring else 0


def _bind_state() -> ast.stmt:
    """`__mutation__ = __mutation_state__()`."""
    return ast.Assign(
        targets=[ast.Name(id=STATE, ctx=ast.Store())],
        value=ast.Call(
            func=ast.Name(id="__mutation_state__", ctx=ast.Load()), args=[], keywords=[]
        ),
    )
