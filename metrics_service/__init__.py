"""metrics_service: a small, fast, dependable behavior-analytics collector."""

from __future__ import annotations

from .app import create_app
from .config import Config

__all__ = ["Config", "create_app"]
