"""The capstone: one small, production-shaped FastAPI service that calls the OpenAI API.

Every pattern of the course, one module each, in FastAPI's "bigger applications" shape:

* `models` — what it accepts and answers (pydantic: bad input is refused before it costs
  an upstream call, and the OpenAPI schema says exactly what is accepted);
* `resources` — one shared `AsyncOpenAI` client and one semaphore, built by the lifespan
  (01, 03, 05); every upstream call goes through `Resources.ask`: one deadline per request,
  retries included, and a bounded wait for a slot (load shed with 503);
* `routers` — `POST /chat`, `/analyze` (three calls with `asyncio.gather`: 02), `/batch`,
  `/chat/stream` (the reply as server-sent events: 08), `GET /health`;
* `audit` — one row per request in SQLite, written in the background, none lost (04);
* `errors` — one JSON error shape for every non-2xx;
* `main` — `create_app(audit_path=…)` puts them together; `settings` lists the options.

Serve it like any ASGI app (`async with lab.serve(create_app(audit_path=…)) as client`), or in
its own process: `python -m capstone --audit-path audit.sqlite3` (from `notebooks/`).
"""

from .main import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
