"""A vLLM-compatible CPU mock engine: vLLM's HTTP API and metrics, timed by the engine model.

Public surface: :class:`MockEngineSettings` (every option), :class:`MockFleet` / :func:`serve`
(engines on the running event loop), :class:`MockEngineThread` (a fleet in a background thread,
for tests). The wire format it speaks is :mod:`polyserve.wire`, shared with the router and clients;
the engine's own parts are its output text (``textgen``), its metrics and its step loop.
"""

from polyserve.mockengine.server import EngineServer, MockFleet, serve
from polyserve.mockengine.settings import MockEngineSettings
from polyserve.mockengine.testing import MockEngineThread

__all__ = ["EngineServer", "MockEngineSettings", "MockEngineThread", "MockFleet", "serve"]
