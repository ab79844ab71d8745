# labsupport's public names, each with the module that defines it. This file is read twice:
# by type checkers (a stub), and by `lazy_loader.attach_stub` in `__init__.py`, which imports a
# module only when one of its names is first used. Relative imports only (lazy_loader's rule).

from . import checks as checks
from .browser import RealKernelRequired as RealKernelRequired
from .charts import plot_in_flight as plot_in_flight
from .charts import plot_latencies as plot_latencies
from .charts import plot_timeline as plot_timeline
from .guard import NetworkGuard as NetworkGuard
from .guard import guard_active as guard_active
from .lab import MODE_VARIABLE as MODE_VARIABLE
from .lab import PLACEHOLDER_KEY as PLACEHOLDER_KEY
from .lab import LabUpstream as LabUpstream
from .lab import current_upstream as current_upstream
from .lab import lab_mode as lab_mode
from .lab import setup as setup
from .lab import teardown as teardown
from .load import LoadReport as LoadReport
from .load import RequestRecord as RequestRecord
from .load import fire as fire
from .looplag import LoopLagMonitor as LoopLagMonitor
from .looplag import loop_lag as loop_lag
from .network import NetworkBlockedError as NetworkBlockedError
from .serving import BodyLimits as BodyLimits
from .serving import ServerLimits as ServerLimits
from .serving import asgi_client as asgi_client
from .serving import serve as serve
from .upstream import OPENAI_API_BASE as OPENAI_API_BASE
from .upstream import UNCHANGED as UNCHANGED
from .upstream import FakeServer as FakeServer
from .upstream import Fault as Fault
from .upstream import MockUpstream as MockUpstream
from .upstream import ObservedUpstream as ObservedUpstream
from .upstream import RateLimit as RateLimit
from .upstream import Upstream as Upstream
from .upstream import UpstreamCall as UpstreamCall
from .upstream import UpstreamSettings as UpstreamSettings
from .upstream import UpstreamStats as UpstreamStats
from .upstream import mock_openai as mock_openai

__all__: list[str]
