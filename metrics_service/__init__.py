"""metrics_service: a small, fast, dependable behavior-analytics collector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metrics_service.app import create_app
    from metrics_service.settings import Config

__all__ = ["Config", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazily, so `import metrics_service.testing` (the pytest plugin, loaded by every
    # pytest run in a project that installs this package) does not load the app.
    if name == "create_app":
        from metrics_service.app import create_app

        return create_app
    if name == "Config":
        from metrics_service.settings import Config

        return Config
    raise AttributeError(f"module 'metrics_service' has no attribute {name!r}")
