"""Carry the core's `logging` records (logger `textmill`) into Prefect's run logs.

Prefect copies its API log handler onto the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS
when it configures logging. A process that imported Prefect before `flows` (a worker, the
engine that runs a deployment) configured logging too early to see the variable set in
`flows/__init__.py`, so the handler is attached here as well, once.
"""

from __future__ import annotations

import logging

CORE_LOGGER = "textmill"


def carry_textmill_logs() -> logging.Logger:
    """Give the `textmill` logger Prefect's API handler and INFO level; idempotent."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import APILogHandler

    ensure_logging_setup()
    core = logging.getLogger(CORE_LOGGER)
    if not any(isinstance(handler, APILogHandler) for handler in core.handlers):
        for handler in logging.getLogger("prefect.extra").handlers:
            if isinstance(handler, APILogHandler):
                core.addHandler(handler)
    if core.level == logging.NOTSET:  # the root logger's WARNING would hide the core's progress lines
        core.setLevel(logging.INFO)
    return core
