# Coaching's public names, each with the module that defines it; read by type checkers and by
# `lazy_loader.attach_stub` in `__init__.py` (ipywidgets is imported on first use only).

from .explorer import Explorer as Explorer
from .explorer import Scenario as Scenario
from .explorer import ScenarioRun as ScenarioRun
from .explorer import explore as explore
from .explorer import run_scenario as run_scenario
from .predict import Comparison as Comparison
from .predict import Prediction as Prediction
from .predict import compare as compare
from .predict import predict as predict
from .streams import StreamExplorer as StreamExplorer
from .streams import StreamRun as StreamRun
from .streams import StreamScenario as StreamScenario
from .streams import explore_streams as explore_streams
from .streams import run_streams as run_streams

__all__: list[str]
