"""Beyond one process (notebook 07): worker processes, a limit they share, durable jobs.

* `RedisServer` — the system's `redis-server` on a free loopback port, memory only;
* `SharedSemaphore`, `TokenBucket` — limits kept in Redis, shared by every worker;
* `ServiceWorkers`, `QueueWorker` — uvicorn workers of the lesson's service, a streaq worker;
* `WorkerTaggedServer` — the fake upstream, telling which worker sent each call.

All of it needs processes and TCP sockets: in a browser tab (Pyodide) importing it raises
`labsupport.browser.RealKernelRequired`, one line, before any of its modules is imported.
"""

from . import _real_kernel_only  # noqa: F401 (first: it raises in a browser tab)
from .redis_server import (
    RedisServer,
    RedisServerMissing,
    install_command,
    redis_server_path,
    require_redis_server,
)
from .service import ServiceConfig
from .shared_limit import LimiterUnavailable, LocalSlots, SharedSemaphore, TokenBucket, connect
from .upstream import WORKER_HEADER, WorkerTaggedServer
from .workers import QueueWorker, ServiceWorkers

__all__ = [
    "WORKER_HEADER",
    "LimiterUnavailable",
    "LocalSlots",
    "QueueWorker",
    "RedisServer",
    "RedisServerMissing",
    "ServiceConfig",
    "ServiceWorkers",
    "SharedSemaphore",
    "TokenBucket",
    "WorkerTaggedServer",
    "connect",
    "install_command",
    "redis_server_path",
    "require_redis_server",
]
