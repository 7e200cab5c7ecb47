"""Keeping the Anthropic key out of every string we write: logs, records, error text, gate reasons.

The key reaches exactly one place, the SDK client's ``Authorization: Bearer`` header. Everything the
analyst turns into text (an exception's message, a response body, a cause's detail) passes through
:func:`redact` first, with the key itself and the key's known shapes, so a transport that echoes its
request in an error message still cannot carry the key into a log line or a database row.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

MASK = "***"
_KEY_SHAPES = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")
_AUTH_HEADERS = re.compile(r"(?i)\b(authorization|x-api-key|api[_-]?key)(\W{1,4})(bearer\s+)?[^\s'\",}]+")


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    out = str(text)
    # the longest first, so a secret that contains another is masked whole
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _KEY_SHAPES.sub("sk-ant-" + MASK, out)
    return _AUTH_HEADERS.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", out)


# The loggers that see requests: the SDK logs its request options and, at debug level, the transport's
# exceptions with their tracebacks; httpx2/httpcore2 log each request. A logger's filter applies only to
# records made on that very logger (not to its children's), so each is named.
SDK_LOGGERS = ("anthropic", "anthropic._base_client", "anthropic._response", "anthropic._tracing",
               "httpx2", "httpx2._client", "httpcore2", "httpcore2.connection", "httpcore2.connection_pool",
               "httpcore2.http11", "httpcore2.http2", "hydra_engine.llm", "hydra_engine.llm.analyst")


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, arguments, traceback and stack with the secrets masked."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a record whose args do not fit its format: keep the raw text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(secret: str | None) -> None:
    """Mask ``secret`` (and every key-shaped string) in all records of :data:`SDK_LOGGERS`. Idempotent."""
    if secret:
        _FILTER.secrets.add(secret)
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
