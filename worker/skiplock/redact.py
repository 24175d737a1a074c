"""Keep secrets out of logs and error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact_url(url: str | None) -> str:
    """Describe a database URL or DSN without its password: ``user@host:port/db``."""
    if not url:
        return "<no database url>"
    if "://" in url:
        try:
            parts = urlsplit(url)
            host = parts.hostname or "localhost"
            port = f":{parts.port}" if parts.port else ""
            user = f"{parts.username}@" if parts.username else ""
            return f"{user}{host}{port}{parts.path}"
        except ValueError:
            return "<unparseable database url>"
    return _KEYWORD_PASSWORD.sub(r"\1***", url)


def scrub(text: str, url: str | None) -> str:
    """Remove a URL's password (and the URL itself) from a driver message."""
    if url:
        text = text.replace(url, redact_url(url))
        if "://" in url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                text = text.replace(password, "***")
    return _KEYWORD_PASSWORD.sub(r"\1***", text)
