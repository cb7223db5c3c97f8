from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _JSONResponse


class JSONResponse(_JSONResponse):
    """orjson-encoded; stored lines go in as orjson.Fragment, never re-encoded."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
