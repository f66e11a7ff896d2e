"""A vLLM-compatible CPU mock engine: vLLM's HTTP API and metrics, timed by the engine model.

Public surface: :class:`MockEngineSettings` (every option), :class:`MockFleet` / :func:`serve`
(engines on the running event loop), :class:`MockEngineThread` (a fleet in a background thread,
for tests). The wire format lives in :mod:`polyserve.mockengine.protocol` and the metric names in
:mod:`polyserve.mockengine.metrics`, both reusable by clients and the router.
"""

from polyserve.mockengine.server import EngineServer, MockFleet, serve
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.mockengine.testing import MockEngineThread

__all__ = ["EngineServer", "MockEngineSettings", "MockEngineThread", "MockFleet", "serve"]
