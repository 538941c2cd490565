"""Structured JSON logs (structlog): one line per request, never prompt text.

The processor chain is kept short on purpose: a timestamp, the level, and orjson rendering straight
to bytes. That is a few microseconds per line, cheap enough for one line per request.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for JSON lines on ``stream`` (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.BytesLoggerFactory(getattr(out, "buffer", out)),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)
