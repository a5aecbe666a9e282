"""structlog for everything outside workflows: JSON when not on a terminal, console locally."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from structlog.typing import Processor

_configured = False


class _CurrentStderr:
    """`sys.stderr` as it is when a line is written, not when logging was configured: a process
    that swaps its stderr (pytest's capture, which closes the old one) keeps logging."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog and stdlib logging once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    if json is None:
        json = os.environ.get("IOTFAILOVER_LOG_FORMAT", "") == "json" or not sys.stderr.isatty()
    lvl = getattr(logging, (level or os.environ.get("IOTFAILOVER_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # structlog types `file` as TextIO; PrintLogger only writes and flushes it
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    for noisy in ("botocore", "urllib3", "werkzeug", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get(name: str, **bound: object) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name).bind(**bound)
