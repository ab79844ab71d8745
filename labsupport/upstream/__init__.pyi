# The upstream's public names, each with the module that defines it; read by type checkers
# and by `lazy_loader.attach_stub` in `__init__.py` (a module is imported on first use).

from .core import Upstream as Upstream
from .fake_server import FakeServer as FakeServer
from .faults import Fault as Fault
from .faults import RateLimit as RateLimit
from .mock import OPENAI_API_BASE as OPENAI_API_BASE
from .mock import MockUpstream as MockUpstream
from .mock import NetworkBlockedError as NetworkBlockedError
from .mock import mock_openai as mock_openai
from .observed import ObservedUpstream as ObservedUpstream
from .settings import UNCHANGED as UNCHANGED
from .settings import LabUpstream as LabUpstream
from .settings import UpstreamSettings as UpstreamSettings
from .stats import UpstreamCall as UpstreamCall
from .stats import UpstreamStats as UpstreamStats

__all__: list[str]
