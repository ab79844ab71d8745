"""labsupport — the support package of the async-llm-lab course.

Every notebook starts with `labsupport.setup(latency=…)`. After that, lesson code is the real,
production-shaped code (`AsyncOpenAI`, FastAPI, asyncio), and labsupport provides the rest:

* an offline OpenAI upstream the real SDK talks to (`mock_openai`, `FakeServer`, `Fault`,
  `RateLimit`), with counters that are the evidence of each lesson;
* serving a FastAPI app in process (`asgi_client`) or on a real socket (`serve`);
* load, timing and plots (`fire`, `loop_lag`, `plot_timeline`);
* exercise checkers (`labsupport.checks`).
"""

import lazy_loader

# Nothing is imported until a name is first used (PEP 562; the names and their modules are
# listed once, in __init__.pyi), so `python -m labsupport doctor` starts in a blink and can
# report a missing package instead of dying on it; `import labsupport as lab` costs nothing
# until `lab.setup()`.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
