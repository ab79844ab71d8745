"""`python -m tests.mutation [test files...]`: judge the mutants and print the report.

Runs only the mutant tests (`-k mutant`) of the checker test modules, in this process (no
xdist: the machine is shared), with the report plugin loaded.
"""

from __future__ import annotations

import sys

import pytest

DEFAULT = (
    "tests/test_checks_async_client.py",
    "tests/test_checks_gather.py",
    "tests/test_checks_semaphore.py",
)

if __name__ == "__main__":
    files = sys.argv[1:] or list(DEFAULT)
    options = ["-k", "mutant", "-p", "tests.mutation.plugin", "-p", "no:cacheprovider", "-n0", "-q"]
    sys.exit(pytest.main([*files, *options]))
