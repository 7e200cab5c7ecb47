"""Keeping the Anthropic key out of every string we write: logs, records, error text, gate reasons.

The key reaches exactly one place, the SDK client's ``Authorization: Bearer`` header. Everything the
analyst turns into text (an exception's message, a response body, a cause's detail) passes through
:func:`redact` first, with the key itself and the key's known shapes, so a transport that echoes its
request in an error message still cannot carry the key into a log line or a database row.
"""
from __future__ import annotations

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
