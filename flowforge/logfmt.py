"""Structured log lines (logfmt: ``key=value`` pairs) for the long-running commands.

One event name per line plus its fields, so a line can be grepped by eye and
parsed by machines (Loki, Vector, ``jq -R``) without a logging dependency::

    ts=2026-11-25T13:50:01.123Z level=info logger=flowforge.relay event=relay.batch claimed=500
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    else:
        text = str(value)
    if text == "" or any(char in text for char in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


def logfmt(event: str, **fields: Any) -> str:
    """``event=<event> key=value ...`` with values quoted where needed."""
    return " ".join([f"event={event}", *(f"{key}={_value(val)}" for key, val in fields.items())])


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... <message>``, plus the traceback (quoted) if any."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        parts = [
            f"ts={ts.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
        ]
        message = record.getMessage()
        parts.append(message if message.startswith("event=") else f"msg={_value(message)}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        return None


def configure_logging(level: int = logging.INFO) -> None:
    """Send FlowForge's logs (the ``flowforge`` logger tree) to stderr as logfmt lines.

    Idempotent. Other libraries' loggers are left alone (their warnings still
    reach stderr through Python's last-resort handler).
    """
    logger = logging.getLogger("flowforge")
    logger.setLevel(level)
    if any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)
