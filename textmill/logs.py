"""Structured logs: one JSON object per line, carrying the `extra` fields textmill attaches.

Stages log `stage started` / `stage finished` with `stage`, `partition`, `version`, `rows_in`,
`rows_out`, `seconds` and `reused` as record attributes (`extra=`); with JSON output those
become keys, so a log shipper (or `jq`) can chart per-stage timings without parsing prose.
Orchestrators pick the same records up from the `textmill` logger: Dagster through
`python_logs.managed_python_loggers`, Prefect through `PREFECT_LOGGING_EXTRA_LOGGERS`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import IO, Any

LOGGER = "textmill"
# attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time (UTC, ISO 8601), level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _TextmillHandler(logging.StreamHandler):
    """Marks the handler `configure_logging` installed, so a second call replaces it instead of adding one."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def configure_logging(*, json: bool = False, level: int = logging.INFO, stream: IO[str] | None = None) -> logging.Logger:
    """Send the `textmill` logger's records to `stream` (stderr): JSON lines, or one plain line each.

    Idempotent: the handler of an earlier call is replaced. Records still propagate, so handlers
    an orchestrator adds (Dagster's managed loggers, Prefect's extra loggers) see them too.
    """
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _TextmillHandler)]:
        logger.removeHandler(handler)
    handler = _TextmillHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return logger
