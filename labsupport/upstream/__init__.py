"""The OpenAI upstream of the lab. Offline: one brain (`core`), two bodies (`mock` in process,
`fake_server` over TCP), scripted `faults`, deterministic `replies`, and the `stats` they count.
Live: `observed` records the real API's calls into the same `stats`.

Names resolve on first use (PEP 562), as in `labsupport` itself: the notebooks' first cell
needs only the mock, not `observed` (which imports the `openai` SDK) or `fake_server` (uvicorn).
"""

import lazy_loader

# The names and their modules are listed once, in __init__.pyi.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
