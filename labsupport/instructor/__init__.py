"""The instructor's side of labsupport: preparing a room and checking the course.

* `doctor` — is this machine ready? (`python -m labsupport doctor`)
* `check` — run every notebook headless and report (`python -m labsupport check`)
* `kernels` — a Jupyter kernel of *this* environment, and the one notebook executor that
  `check`, `tools/build_notebooks.py` and the tests use.

Nothing here is imported by a lesson; learners' code uses `labsupport` itself.
"""
