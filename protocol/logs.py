"""One log format for the agent and the controller, third-party libraries included.

`configure_logging(level, fmt)` installs a single handler on the root logger, in the text format
(`ts=… level=… logger=… message`) or as one JSON object per line, and sends the loggers of the
libraries both sides use (uvicorn, paho, SQLAlchemy, APScheduler, httpx, alembic) through it
instead of handlers of their own. The format comes from the caller, else `EDGEFLEET_LOG_FORMAT`
(`text` or `json`), else text. Standard library only: the agent imports this at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, TextIO

LOG_FORMAT_ENV = "EDGEFLEET_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# libraries that may bring handlers (or formats) of their own: they go through the root's
THIRD_PARTY_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "paho",
    "paho.mqtt",
    "paho.mqtt.client",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "apscheduler",
    "apscheduler.scheduler",
    "apscheduler.executors.default",
    "alembic",
    "httpx",
    "httpcore",
    "amqtt",
    "py.warnings",
)
# loggers that say something at INFO on every run of a job (two lines a second for the
# controller's one-second rollout tick): WARNING and up unless the root logs DEBUG
CHATTY_LOGGERS = ("apscheduler.executors.default",)

# what every LogRecord has: anything else on a record came in through `extra=`
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
}


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _plain(value: Any) -> Any:
    """`value` if JSON can write it as is, else its str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, then `exc` and
    `stack` when present, then the record's extra fields (never overriding the first ones)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in entry and not key.startswith("_"):
                entry[key] = _plain(value)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`ts=… level=… logger=… message`, times in UTC; a traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)


def log_format(fmt: str | None = None) -> str:
    """The format to use: `fmt`, else $EDGEFLEET_LOG_FORMAT, else text; raises ValueError for
    a name that is neither."""
    chosen = (fmt or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {chosen!r}")
    return chosen


def make_formatter(fmt: str | None = None) -> logging.Formatter:
    return JsonFormatter() if log_format(fmt) == "json" else TextFormatter()


def configure_logging(
    level: str | int = "INFO", fmt: str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Root logs at `level` through one handler on `stream` (stderr) in format `fmt`; the
    previous root handlers are removed, third-party loggers lose theirs and propagate.

    Raises ValueError for an unknown format or level name. Returns the handler.
    """
    formatter = make_formatter(fmt)
    if isinstance(level, str) and not isinstance(logging.getLevelName(level.upper()), int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        for old in library.handlers[:]:
            library.removeHandler(old)
        library.propagate = True
    quiet = logging.WARNING if root.getEffectiveLevel() > logging.DEBUG else logging.NOTSET
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)
    return handler
