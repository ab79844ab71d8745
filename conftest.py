"""Settings for every pytest run from this repository: tests/ and the notebooks nbval re-runs."""

import os

# Checks record each result in the learner's progress file (labsupport.progress). The suite runs
# every checker and the solved notebooks, so it must not: a learner running `make test` would see
# every exercise "passed". Kernels and servers the tests start inherit this environment.
os.environ["LAB_PROGRESS"] = "off"
