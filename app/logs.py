"""Logging: structured events from ``get_logger``, one formatter for every logger.

Our events are structlog events handed to the standard library (``render_to_log_kwargs``): the
event is the record's message and its fields ride along as ``extra``. So whoever configures the
root logger decides the output, and tests' ``caplog`` sees plain messages. ``marquee serve``
calls ``configure_logging(json_lines=True)``: every record, ours or a library's (uvicorn,
SQLAlchemy, ``warnings``), becomes one JSON object per line on stdout, with the request's
``request_id`` and ``api_key`` (bound in contextvars by the HTTP middleware and the auth guard)
and the current trace's ids. Other commands keep short human-readable lines on stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

# Attributes every LogRecord has: an event field with one of these names would make
# ``Logger.makeRecord`` raise (KeyError) inside whatever code logged it.
_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Extras libraries attach for their own formatters (uvicorn: the same text with ANSI colours;
# Ray, once started in the process, stamps every record for its log forwarding).
_DROPPED_EXTRAS = ("color_message", "_ray_timestamp_ns")


def _safe_fields(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Rename fields that clash with LogRecord attributes (``name`` -> ``name_``)."""
    for key in [k for k in event if k in _RECORD_KEYS]:
        event[f"{key}_"] = event.pop(key)
    return event


structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,  # a disabled level costs one check, no event built
        structlog.stdlib.PositionalArgumentsFormatter(),
        _safe_fields,
        structlog.stdlib.render_to_log_kwargs,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger whose keyword arguments become fields of the event: ``log.info("ready",
    engine="vllm")``. Importing this module is what routes structlog through ``logging``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def _drop_extras(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _DROPPED_EXTRAS:
        event.pop(key, None)
    return event


def _trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The current span's ids, so a log line leads to its trace. With tracing off these are
    the caller's (from its ``traceparent``), if it sent one; otherwise there are none."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(
    *, json_lines: bool, level: int = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one: JSON lines (default stream: stdout, where a
    container's log collector reads) or human-readable lines (default: stderr, leaving stdout to
    a command's output). Returns the handler."""
    pre_chain: list[Processor] = [
        structlog.stdlib.ExtraAdder(),  # our events' fields, and any library's ``extra``
        _drop_extras,
        structlog.contextvars.merge_contextvars,  # request_id, api_key
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    renderer: Processor
    if json_lines:
        pre_chain += [
            _trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # the traceback as a string field
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or (sys.stdout if json_lines else sys.stderr))
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python warnings (SQLAlchemy's, Pydantic's) as records, not bare text on stderr.
    logging.captureWarnings(json_lines)
    # httpx logs every call to the model server at INFO: one line per generation, repeating
    # what the request's line and its generation span already say.
    logging.getLogger("httpx").setLevel(logging.WARNING if json_lines else logging.NOTSET)
    return handler
