"""Mutation testing of the checkers: wrong answers made from right ones, automatically.

A hand-written corpus lists the mistakes its authors thought of; a checker tuned to it can still
pass a mistake nobody wrote down. Here each right answer of a corpus module is rewritten by an
operator (serialise the calls, block the loop, close the shared client, answer a constant, ...)
into a wrong one, and the checker must refuse every such mutant with the cause the operator
implies. `engine.py` builds and judges the mutants, `operators.py` holds the generic operators,
`plugin.py` prints the report (operators × exercises); `python -m tests.mutation` runs it.
"""
