"""Who may use the admin listener: pure decisions, no I/O (PROTOCOL.md §7).

:func:`decide` takes the facts of one request (:class:`Facts`) and says whether it
is served. The rules, in order:

1. ``/healthz`` is always served (load balancers and systemd probe it).
2. A wrong ``Authorization: Bearer`` token is refused (401) whatever else the
   request carries: a client that sends one means it.
3. When no token is needed (a loopback listener, ``admin_auth = "auto"``), the
   ``Host`` must name this machine (localhost, a loopback address): a page on
   another site that re-points its own name at 127.0.0.1 (DNS rebinding) gets
   nothing.
4. The login page and the stylesheet and script (no data in them) are served
   to anyone: they are how one logs in. A login post from another site is refused.
5. Anything else needs the admin token (a Bearer header) or a session that
   logged in with it, unless no token is needed.
6. A request that changes something (any method but GET and HEAD) must also
   prove it comes from the console itself: a Bearer token (a browser cannot
   add one to a forged request), or the session's CSRF token in the form or
   the ``X-CSRF-Token`` header, and never another site's ``Origin`` or
   ``Sec-Fetch-Site``. Where no token is needed, a local client without a
   session (the ``linerelay webhooks`` CLI) may post JSON: a browser cannot
   send ``application/json`` to another origin without a CORS preflight, which
   the admin listener never grants.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The console's session cookie (HttpOnly, SameSite=Strict).
SESSION_COOKIE = "linerelay_console"
#: The form field and the header carrying a session's CSRF token.
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PATH = "/login"
STATIC_PREFIX = "/static/"
ALWAYS_OPEN = frozenset({"/healthz"})
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Verdict(enum.Enum):
    """What becomes of a request."""

    SERVE = "serve"
    #: No (valid) credentials: 401, or the login page for a browser.
    LOGIN = "login"
    #: A wrong Bearer token: 401, and counted against the client's address.
    BAD_TOKEN = "bad_token"  # noqa: S105 (a verdict, not a password)
    #: Another site's request, or a post without its CSRF token: 403.
    FORBIDDEN = "forbidden"
    #: A Host that is not this machine's on a listener that needs no token: 403.
    WRONG_HOST = "wrong_host"


@dataclass(frozen=True, slots=True)
class Facts:
    """What :func:`decide` needs to know of one request."""

    method: str
    path: str
    #: Whether the admin token is needed (off loopback, or ``admin_auth = "token"``).
    token_needed: bool
    #: None: no Bearer header; else whether its token is the admin token.
    bearer: bool | None = None
    #: A live session, logged in with the current admin token if one is needed.
    session: bool = False
    #: The request carries its session's CSRF token.
    csrf: bool = False
    #: ``Origin`` or ``Sec-Fetch-Site`` say another site sent it.
    cross_site: bool = False
    #: The body is declared ``application/json``.
    json_body: bool = False
    #: ``Host`` names this machine (localhost or a loopback address).
    local_host: bool = True


def decide(facts: Facts) -> Verdict:
    """Whether the request described by ``facts`` is served; see the module's rules."""
    if facts.path in ALWAYS_OPEN:
        return Verdict.SERVE
    if facts.bearer is False:
        return Verdict.BAD_TOKEN
    if not facts.token_needed and not facts.local_host:
        return Verdict.WRONG_HOST
    unsafe = facts.method not in SAFE_METHODS
    if is_public(facts.path):
        return Verdict.FORBIDDEN if unsafe and facts.cross_site else Verdict.SERVE
    if facts.token_needed and not (facts.bearer or facts.session):
        return Verdict.LOGIN
    if not unsafe or facts.bearer:
        return Verdict.SERVE
    if facts.cross_site:
        return Verdict.FORBIDDEN
    if facts.session and facts.csrf:
        return Verdict.SERVE
    if not facts.token_needed and not facts.session and facts.json_body:
        return Verdict.SERVE
    return Verdict.FORBIDDEN


def is_public(path: str) -> bool:
    """The login page and the console's static files: served without credentials."""
    return path == LOGIN_PATH or path.startswith(STATIC_PREFIX)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, None for any other header."""
    if authorization is None:
        return None
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or a name, no port) is this machine: loopback or localhost."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_is_loopback(sock: socket.socket) -> bool:
    """Whether a listening socket takes connections from this machine only.

    Read from the socket itself, so a socket systemd passed counts as what it
    is bound to. ``0.0.0.0``, ``::``, any other address and Unix sockets (a
    proxy may forward anyone to one) are not.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return is_loopback_host(str(sock.getsockname()[0]))


def host_of(host_header: str) -> str:
    """The host part of a ``Host`` header (``[v6]:port``, ``name:port`` or no port)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    if host_header.count(":") == 1:
        return host_header.partition(":")[0]
    return host_header


def is_cross_site(origin: str | None, fetch_site: str | None, host_header: str) -> bool:
    """Whether ``Origin`` or ``Sec-Fetch-Site`` say the request came from another site.

    ``Sec-Fetch-Site`` (sent by current browsers) says ``same-origin`` for the
    console's own requests, or ``none`` when the operator typed the address.
    ``Origin`` names the page's scheme and host, except that a form post from
    a page served with ``Referrer-Policy: no-referrer`` (the console's) says
    ``null``, as does a sandboxed frame: ``null`` decides nothing, and the
    CSRF token and the SameSite=Strict cookie still stand.
    """
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return True
    if origin is None or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() != host_header.lower()


def safe_next(target: str | None) -> str:
    """Where a login may send the browser next: a path on this listener, else ``/``.

    Refuses ``//host``, ``/\\host`` and absolute URLs, which a browser would
    follow to another site (an open redirect).
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ch in target for ch in "\r\n\t\\") or urlsplit(target).netloc:
        return "/"
    return target
