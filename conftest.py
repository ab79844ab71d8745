"""Settings for every pytest run from this repository: tests/ and the notebooks nbval re-runs."""

import os

# Every notebook nbval runs gets a baseline cell before its first and a probe cell after its
# last: no leak, no network, nothing left running (tests/nbval_hygiene.py).
pytest_plugins = ["tests.nbval_hygiene", "tests.mutation.plugin"]

# Checks record each result in the learner's progress file (labsupport.progress). The suite runs
# every checker and the solved notebooks, so it must not: a learner running `make test` would see
# every exercise "passed". Kernels and servers the tests start inherit this environment.
os.environ["LAB_PROGRESS"] = "off"
# Shown, not ignored (Python's default), in every kernel and process the tests start: a lesson's
# cell that leaks a socket or a client then prints a warning strict nbval did not expect.
os.environ["PYTHONWARNINGS"] = "default::ResourceWarning"
