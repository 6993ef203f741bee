"""The one check in front of every admin path, and the headers on every answer.

:meth:`Guard.check` runs before each request of the admin app (Quart's
``before_request``): it gathers the request's facts (its Bearer token, its
session cookie, its CSRF token, where it says it came from), asks
:func:`appliance.console.auth.decide`, and answers the refusals itself.
Wrong tokens (Bearer or login) are counted per client address in ``console.db``
(so for every ``serve --workers`` process together, and across a restart); an
address past :data:`FAILURE_BURST` is answered 429 for a while before any token
it sends is even looked at.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from quart import Response, g, redirect, request
from quart.typing import ResponseReturnValue

from appliance.console.auth import (
    ALWAYS_OPEN,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_PATH,
    SAFE_METHODS,
    SESSION_COOKIE,
    STATIC_PREFIX,
    Facts,
    Verdict,
    bearer_token,
    decide,
    host_of,
    is_cross_site,
    is_loopback_host,
)
from appliance.console.sessions import SESSION_SECONDS, ConsoleDB, Session, now_ms
from appliance.errors import AdminTokenRequired, CsrfRejected, RelayError, TooManyRequests
from appliance.errors import response_for as error_answer
from appliance.limits import address_key, retry_after
from appliance.tenants import hash_token

#: Wrong admin tokens (Bearer or login) one client address may send in a burst...
FAILURE_BURST = 10
#: ...then one more every this many seconds.
FAILURE_INTERVAL = 6.0
#: Sent by the console's script when it fetches a fragment: a 401 then stays a 401
#: (the script goes to the login page) instead of a redirect fetched in the background.
FRAGMENT_HEADER = "X-Console-Fragment"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(slots=True)
class Access:
    """How the current request got in, for the views (``g.console``)."""

    token_needed: bool
    session: Session | None
    #: The request's Bearer token was the admin token.
    bearer: bool
    #: A cookie value the answer must set (a new session).
    new_cookie: str | None = None
    #: The answer must clear the session cookie (logout, or a session that ended).
    clear_cookie: bool = False

    @property
    def csrf(self) -> str:
        """The CSRF token the page's forms carry ('' for a Bearer client: it needs none)."""
        return "" if self.session is None else self.session.csrf


class Guard:
    """Admits or refuses each admin request (:mod:`appliance.console.auth`'s rules)."""

    def __init__(
        self,
        db: ConsoleDB,
        token_needed: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.token_needed = token_needed
        # Wall-clock seconds: the counts are shared with other processes through the file.
        self._clock = clock

    # -- before every request -------------------------------------------------

    async def check(self) -> ResponseReturnValue | None:
        """Quart ``before_request``: None to serve the request, else the refusal."""
        if request.path in ALWAYS_OPEN:
            return None  # not even a lockout: probes must always get an answer
        needed = self.token_needed()
        client = address_key(request.remote_addr or "")
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None or (request.path == LOGIN_PATH and request.method == "POST"):
            # A locked-out address's tokens are not even checked: guessing gains nothing.
            locked = self.db.failure_wait(client, self._clock(), FAILURE_BURST, FAILURE_INTERVAL)
            if locked > 0:
                return _refusal(TooManyRequests(retry_after(locked)))
        admin = self.db.admin_digest()
        bearer = None if token is None else self.token_matches(token, admin)
        session = self._session(needed, admin)
        g.console = Access(needed, session, bool(bearer))
        # A cookie whose session ended (expired, logged out, another token) goes.
        g.console.clear_cookie = session is None and SESSION_COOKIE in request.cookies
        unsafe = request.method not in SAFE_METHODS
        host = request.headers.get("Host", "")
        facts = Facts(
            method=request.method,
            path=request.path,
            token_needed=needed,
            bearer=bearer,
            session=session is not None,
            csrf=unsafe and session is not None and await _carries_csrf(session),
            cross_site=is_cross_site(
                request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), host
            ),
            json_body=request.mimetype == "application/json",
            local_host=is_loopback_host(host_of(host)),
        )
        verdict = decide(facts)
        if verdict is Verdict.SERVE:
            return None
        if verdict is Verdict.BAD_TOKEN:
            self.failed(client)
            return _refusal(AdminTokenRequired())
        if verdict is Verdict.LOGIN:
            return self._to_login()
        return _refusal(CsrfRejected())

    def token_matches(self, token: str, admin: bytes | None) -> bool:
        """Whether ``token`` is the admin token (whose digest is ``admin``), in constant time."""
        return admin is not None and _same(hash_token(token), admin)

    def failed(self, client: str) -> None:
        """Count a wrong admin token from ``client`` (an address key), for every process."""
        self.db.count_failure(client, self._clock(), FAILURE_BURST, FAILURE_INTERVAL)

    def _session(self, needed: bool, admin: bytes | None) -> Session | None:
        """The request's live session; where a token is needed, only one that logged in
        with the current admin token."""
        value = request.cookies.get(SESSION_COOKIE)
        if not value:
            return None
        session = self.db.session(value, now_ms())
        if session is None or (needed and not session.logged_in_with(admin)):
            return None
        return session

    def _to_login(self) -> ResponseReturnValue:
        """A browser asking for a page goes to the login page; anyone else gets 401."""
        fragment = request.headers.get(FRAGMENT_HEADER)
        if (
            request.method == "GET"
            and not fragment
            and "text/html" in request.headers.get("Accept", "")
        ):
            target = request.full_path if request.query_string else request.path
            return redirect(f"{LOGIN_PATH}?next={quote(target, safe='')}", 303)
        return _refusal(AdminTokenRequired())

    # -- sessions, for the views -------------------------------------------------

    def log_in(self, token: str, client: str) -> bool:
        """Start a logged-in session for the current request if ``token`` is the admin
        token (counted against ``client`` if not); the answer then sets its cookie."""
        admin = self.db.admin_digest()
        if not self.token_matches(token, admin):
            self.failed(client)
            return False
        access: Access = g.console
        old = access.session
        if old is not None:
            self.db.close_session(old)  # a new id at login: no session fixation
        access.new_cookie, access.session = self.db.open_session(admin, now_ms())
        return True

    def log_out(self) -> None:
        """End the current request's session; the answer clears its cookie."""
        access: Access = g.console
        if access.session is not None:
            self.db.close_session(access.session)
            access.session = None
        access.clear_cookie = True

    def ensure_session(self) -> None:
        """Where no token is needed, give a browser without one an anonymous session:
        the console's forms need its CSRF token."""
        access: Access = g.console
        if access.session is None and not access.bearer and not access.token_needed:
            access.new_cookie, access.session = self.db.open_session(None, now_ms())

    # -- after every request -----------------------------------------------------

    async def finish(self, response: Response) -> Response:
        """Quart ``after_request``: the security headers, and the session cookie if it changed."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith(STATIC_PREFIX):
            response.headers["Cache-Control"] = "no-store"
        access: Access | None = g.get("console")
        if access is None:
            return response
        secure = request.scheme == "https"
        if access.new_cookie is not None:
            response.set_cookie(
                SESSION_COOKIE,
                access.new_cookie,
                max_age=SESSION_SECONDS,
                httponly=True,
                samesite="Strict",
                secure=secure,
            )
        elif access.clear_cookie:
            response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Strict", secure=secure)
        return response


async def _carries_csrf(session: Session) -> bool:
    """Whether the request carries ``session``'s CSRF token (header, or form field)."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.mimetype in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        sent = (await request.form).get(CSRF_FIELD)
    return sent is not None and _same(sent.encode(), session.csrf.encode())


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _refusal(error: RelayError) -> Response:
    """The JSON answer for ``error``, from the one table in appliance.errors."""
    status, headers, body = error_answer(error)
    return Response(
        body,
        status=status,
        headers={name.decode(): value.decode() for name, value in headers},
    )
