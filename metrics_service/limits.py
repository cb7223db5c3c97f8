"""The answer to a request body that stops arriving (the deadline itself is in edge.py)."""

from __future__ import annotations

from .errors import ApiError


class BodyTimeout(ApiError):
    def __init__(self, timeout: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout:g} s",
            {"Connection": "close"},
        )
