# labsupport.checks' public names, each with the module that defines it: read by type checkers
# (a stub) and by `lazy_loader.attach_stub` in `__init__.py`, which imports a module only when one
# of its names is first used. Relative imports only (lazy_loader's rule).

from .async_client import check_async_endpoint as check_async_endpoint
from .background import check_background_audit as check_background_audit
from .gather import check_parallel_fanout as check_parallel_fanout
from .lifespan import check_lifespan_client as check_lifespan_client
from .result import CheckResult as CheckResult
from .semaphore import check_bounded_batch as check_bounded_batch
from .shared_limit import check_shared_limit as check_shared_limit
from .streaming import check_streaming_endpoint as check_streaming_endpoint

__all__: list[str]
