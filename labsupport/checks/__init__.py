"""Exercise checkers: each runs the learner's code against the offline upstream, measures, and
returns a `CheckResult` that explains what it saw. A wrong answer never raises."""

from .async_client import check_async_endpoint
from .background import check_background_audit
from .gather import check_parallel_fanout
from .lifespan import check_lifespan_client
from .result import CheckResult
from .semaphore import check_bounded_batch
from .shared_limit import check_shared_limit
from .streaming import check_streaming_endpoint

__all__ = [
    "CheckResult",
    "check_async_endpoint",
    "check_background_audit",
    "check_bounded_batch",
    "check_lifespan_client",
    "check_parallel_fanout",
    "check_shared_limit",
    "check_streaming_endpoint",
]
