"""Who may read and who may change: tokens, the dashboard's session cookie, forged-request and
Host checks.

The model (docs/api.md, "Security model"):

* Two optional tokens. ``SKIPLOCK_API_TOKEN`` may read and change; ``SKIPLOCK_API_READ_TOKEN``
  may only read. With neither set, everything is open, which ``skiplock api`` allows only on a
  loopback address unless told ``--insecure-no-token``. With either set, every read of job
  data (``/v1`` and ``/ui`` pages) needs one of them and every change needs the write token.
* A credential is ``Authorization: Bearer <token>``, or the dashboard's session cookie, which
  holds an HMAC of the token (never the token itself), is HttpOnly and SameSite=Strict, and
  is set only by ``POST /ui/session`` with the token in a JSON body: a token never travels in a
  URL, so it is in no access log, history or Referer.
* A change is refused (415) unless it is ``Content-Type: application/json`` or carries an
  ``Authorization`` or ``X-Skiplock-Request`` header, and refused (403) when its ``Origin`` is
  another site. An HTML form can send only urlencoded, multipart or text/plain bodies and no
  custom header; a script on another origin that sets either must pass a CORS preflight, which
  this server never grants. So no other page can make a browser act, with or without the
  cookie, and with or without a token configured.
* Only the Host names in ``SKIPLOCK_API_TRUSTED_HOSTS`` are answered (400 otherwise), so a
  hostile page that rebinds its own DNS name to 127.0.0.1 cannot read a loopback server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable
from enum import IntEnum
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette import types as asgi

from .config import ApiSettings

COOKIE = "skiplock_session"
FORGERY_HEADER = "X-Skiplock-Request"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Probes (kubelet sends the pod IP as Host) must answer whatever the Host; they show no job data.
HOST_EXEMPT = ("/healthz", "/readyz")
_SESSION_CONTEXT = b"skiplock dashboard session v1"

_bearer = HTTPBearer(
    auto_error=False,
    description="SKIPLOCK_API_TOKEN (read and change) or SKIPLOCK_API_READ_TOKEN (read only), "
                "when one is configured")


class Scope(IntEnum):
    none = 0
    read = 1
    write = 2


class AccessDenied(Exception):
    """Answered by app.py as a problem with this status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(api: ApiSettings) -> None:
    """Refuse to serve everything to everyone by accident: a non-loopback bind needs a token
    unless insecure_no_token says it is meant."""
    if is_loopback(api.host) or api.token is not None or api.read_token is not None:
        return
    if api.insecure_no_token:
        return
    raise ValueError(
        f"refusing to listen on {api.host} without a token: anyone who can reach that address "
        "could read every job and change any of them. Set SKIPLOCK_API_TOKEN (and optionally "
        "SKIPLOCK_API_READ_TOKEN), bind to 127.0.0.1, or pass --insecure-no-token "
        "(SKIPLOCK_API_INSECURE_NO_TOKEN=1) if something in front of this server "
        "authenticates every request")


def auth_configured(api: ApiSettings) -> bool:
    return api.token is not None or api.read_token is not None


def session_value(token: str) -> str:
    """What the cookie holds: keyed by the token, so changing the token ends every session,
    and the cookie never reveals the token."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def _match(given: str, api: ApiSettings, derive: Callable[[str], str]) -> Scope:
    # Both comparisons always run and compare_digest is constant-time, so timing tells
    # nothing about which token, or how much of one, matched.
    scope = Scope.none
    for secret, grants in ((api.read_token, Scope.read), (api.token, Scope.write)):
        if secret is not None and hmac.compare_digest(
                given.encode(), derive(secret.get_secret_value()).encode()):
            scope = max(scope, grants)
    return scope


def scope_of_token(token: str, api: ApiSettings) -> Scope:
    return _match(token, api, lambda t: t)


def scope_of(request: Request, api: ApiSettings) -> Scope | None:
    """The scope the request's credential grants; ``None`` when no token is configured (open).

    An Authorization header, when present, is the only credential looked at: a wrong header
    is a wrong credential even with a good cookie beside it."""
    if not auth_configured(api):
        return None
    header = request.headers.get("authorization")
    if header is not None:
        kind, _, value = header.partition(" ")
        return scope_of_token(value.strip(), api) if kind.lower() == "bearer" \
            else Scope.none
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return _match(cookie, api, session_value)
    return Scope.none


def _api(request: Request) -> ApiSettings:
    api: ApiSettings = request.app.state.skiplock.api
    return api


def unauthorized() -> AccessDenied:
    return AccessDenied(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                        {"WWW-Authenticate": "Bearer"})


def check_not_forged(request: Request, api: ApiSettings) -> None:
    """Refuse a change another web page could have made a browser send."""
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request, api):
        raise AccessDenied(403, f"cross-origin request refused: Origin {_shown(origin)} is not "
                                "this server (changes are accepted only from its own pages "
                                "and from non-browser clients)")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        return
    if "authorization" in request.headers or FORGERY_HEADER.lower() in request.headers:
        return
    got = f"Content-Type {_shown(ctype)}" if ctype else "no Content-Type"
    raise AccessDenied(415, f"{got} refused for a change: send a JSON body with Content-Type: "
                            f"application/json, or (for a request without a body) the header "
                            f"'{FORGERY_HEADER}: 1' or an Authorization header. Forms and "
                            "text bodies are refused so that no other web page can send them")


def _same_origin(origin: str, request: Request, api: ApiSettings) -> bool:
    parts = urlsplit(origin)
    if not parts.netloc or parts.scheme not in ("http", "https"):
        return False  # "null" (a sandboxed frame, a file: page) and anything odd
    if parts.netloc.lower() == request.headers.get("host", "").lower():
        return True
    # A proxy may rewrite Host; an origin named explicitly as trusted is still ours.
    explicit = [h for h in api.trusted_hosts or () if h != "*"]
    return _host_allowed(parts.hostname or "", explicit)


def _shown(text: str) -> str:
    return json.dumps(text[:100])


def require_read(request: Request,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Reads of job data need a token (either one) when any is configured."""
    del creds  # declared so that OpenAPI documents the scheme; scope_of reads the header
    scope = scope_of(request, _api(request))
    if scope is not None and scope < Scope.read:
        raise unauthorized()


def require_write(request: Request,
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Changes need the write token when any token is configured, and never a forged request."""
    del creds
    api = _api(request)
    scope = scope_of(request, api)
    if scope is not None and scope < Scope.read:
        raise unauthorized()
    check_not_forged(request, api)
    if scope is not None and scope < Scope.write:
        if api.token is None:
            raise AccessDenied(403, "this server is read-only: it has a read token but no "
                                    "write token (set SKIPLOCK_API_TOKEN to allow changes)")
        raise AccessDenied(403, "the read token cannot change anything: send the write token "
                                "(SKIPLOCK_API_TOKEN)")


def require_same_origin(request: Request) -> None:
    check_not_forged(request, _api(request))


def allowed_hosts(api: ApiSettings) -> list[str]:
    """Host names answered: the setting, else the bind host and the loopback names on a
    loopback bind, else any (a non-loopback bind is reached under names this process cannot
    know: a Service, an Ingress, a pod IP; it needs a token there, which is what protects it)."""
    if api.trusted_hosts:
        return [h.lower() for h in api.trusted_hosts]
    if is_loopback(api.host):
        return sorted({api.host.strip("[]").lower(), *LOOPBACK_NAMES})
    return ["*"]


def _host_allowed(name: str, allowed: list[str]) -> bool:
    name = name.strip("[]").lower().rstrip(".")
    for pattern in allowed:
        if pattern == "*" or pattern.strip("[]") == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def _host_name(host: str) -> str:
    """The name in a Host header ("name", "name:port", "[v6]:port"); anything else is returned
    whole, which then matches no trusted name."""
    name, port = host, ""
    if host.startswith("[") and "]" in host:
        name, _, rest = host[1:].partition("]")
        if rest and not rest.startswith(":"):
            return host
        port = rest[1:]
    elif host.count(":") == 1:
        name, port = host.split(":")
    if port and not port.isdigit():
        return host
    return name


class TrustedHosts:
    """ASGI middleware: answer 400 before anything else when the Host header is not trusted."""

    def __init__(self, app: asgi.ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive,
                       send: asgi.Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed \
                or scope.get("path", "") in HOST_EXEMPT:
            await self.app(scope, receive, send)
            return
        host = ""
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if _host_allowed(_host_name(host), self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": f"Host {_shown(host)} is not one this server answers to: "
                                    "add it to SKIPLOCK_API_TRUSTED_HOSTS (comma-separated) if "
                                    "it is meant", "fields": []}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
