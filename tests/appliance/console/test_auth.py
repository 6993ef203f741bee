"""The admin listener's access rules (appliance/console/auth.py), without sockets or HTTP
(but for :func:`listener_is_loopback`, which reads real listening sockets)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.console.auth import (
    Facts,
    Verdict,
    bearer_token,
    decide,
    host_of,
    is_cross_site,
    is_loopback_host,
    listener_is_loopback,
    safe_next,
)

OFF_LOOPBACK = {"token_needed": True, "local_host": False}
ON_LOOPBACK = {"token_needed": False, "local_host": True}


def facts(method: str = "GET", path: str = "/", **kw: object) -> Facts:
    return Facts(method=method, path=path, **{**OFF_LOOPBACK, **kw})  # type: ignore[arg-type]


# -- off loopback: the token is needed -------------------------------------------


@pytest.mark.parametrize("path", ["/", "/metrics", "/readyz", "/tenants/a", "/api/webhooks"])
def test_every_path_but_healthz_needs_the_token_off_loopback(path: str) -> None:
    assert decide(facts(path=path)) is Verdict.LOGIN


def test_healthz_is_served_to_anyone_even_with_a_wrong_token() -> None:
    assert decide(facts(path="/healthz")) is Verdict.SERVE
    assert decide(facts(path="/healthz", bearer=False)) is Verdict.SERVE


@pytest.mark.parametrize("path", ["/metrics", "/", "/api/webhooks"])
def test_the_admin_token_as_bearer_opens_every_path(path: str) -> None:
    assert decide(facts(path=path, bearer=True)) is Verdict.SERVE


def test_a_wrong_bearer_token_is_refused_even_with_a_logged_in_session() -> None:
    assert decide(facts(bearer=False, session=True)) is Verdict.BAD_TOKEN


def test_a_logged_in_session_opens_pages() -> None:
    assert decide(facts(path="/tenants/a", session=True)) is Verdict.SERVE


def test_the_login_page_and_static_files_are_served_without_credentials() -> None:
    assert decide(facts(path="/login")) is Verdict.SERVE
    assert decide(facts(method="POST", path="/login")) is Verdict.SERVE
    assert decide(facts(path="/static/console.css")) is Verdict.SERVE


def test_a_login_post_from_another_site_is_refused() -> None:
    assert decide(facts(method="POST", path="/login", cross_site=True)) is Verdict.FORBIDDEN


def test_a_session_post_needs_its_csrf_token() -> None:
    post = {"method": "POST", "path": "/webhooks/d-1/replay", "session": True}
    assert decide(facts(**post)) is Verdict.FORBIDDEN
    assert decide(facts(**post, csrf=True)) is Verdict.SERVE


def test_a_session_post_from_another_site_is_refused_even_with_the_csrf_token() -> None:
    post = {"method": "POST", "path": "/logout", "session": True, "csrf": True}
    assert decide(facts(**post, cross_site=True)) is Verdict.FORBIDDEN


def test_a_bearer_post_needs_no_csrf_token() -> None:
    assert decide(facts(method="POST", path="/api/webhooks/replay", bearer=True)) is Verdict.SERVE


def test_a_json_post_without_credentials_is_refused_off_loopback() -> None:
    post = facts(method="POST", path="/api/webhooks/replay", json_body=True)
    assert decide(post) is Verdict.LOGIN


def test_the_host_header_does_not_matter_where_the_token_is_needed() -> None:
    assert decide(facts(session=True, local_host=False)) is Verdict.SERVE


# -- on loopback: no token needed ---------------------------------------------------


def on_loopback(method: str = "GET", path: str = "/", **kw: object) -> Facts:
    return Facts(method=method, path=path, **{**ON_LOOPBACK, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/", "/metrics", "/readyz", "/tenants/a", "/webhooks/d-1"])
def test_on_loopback_pages_are_served_without_credentials(path: str) -> None:
    assert decide(on_loopback(path=path)) is Verdict.SERVE


def test_on_loopback_a_host_that_is_not_this_machine_is_refused() -> None:
    # DNS rebinding: another site's name pointed at 127.0.0.1.
    assert decide(on_loopback(local_host=False)) is Verdict.WRONG_HOST
    assert decide(on_loopback(path="/metrics", local_host=False)) is Verdict.WRONG_HOST
    assert decide(on_loopback(path="/healthz", local_host=False)) is Verdict.SERVE


def test_on_loopback_a_form_post_still_needs_a_session_and_its_csrf_token() -> None:
    post = {"method": "POST", "path": "/webhooks/d-1/replay"}
    assert decide(on_loopback(**post)) is Verdict.FORBIDDEN
    assert decide(on_loopback(**post, session=True)) is Verdict.FORBIDDEN
    assert decide(on_loopback(**post, session=True, csrf=True)) is Verdict.SERVE


def test_on_loopback_a_local_client_may_post_json_without_a_session() -> None:
    post = {"method": "POST", "path": "/api/webhooks/replay"}
    assert decide(on_loopback(**post, json_body=True)) is Verdict.SERVE
    assert decide(on_loopback(**post, json_body=True, cross_site=True)) is Verdict.FORBIDDEN


def test_on_loopback_a_json_post_with_a_session_still_needs_the_csrf_token() -> None:
    # A browser with a session is a browser: the session's CSRF token, or nothing.
    post = {"method": "POST", "path": "/api/webhooks/replay", "json_body": True}
    assert decide(on_loopback(**post, session=True)) is Verdict.FORBIDDEN


def test_on_loopback_a_wrong_bearer_token_is_still_refused() -> None:
    assert decide(on_loopback(bearer=False)) is Verdict.BAD_TOKEN


# -- the parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("abc", None),
        (None, None),
        ("Bearer ", ""),
    ],
)
def test_bearer_token_reads_only_bearer_headers(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST.", "a.localhost"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.9", "evil.example", "localhost.evil", ""]
)
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:9443", "127.0.0.1"),
        ("localhost", "localhost"),
        ("[::1]:9443", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("relay.example:80", "relay.example"),
    ],
)
def test_host_of_a_host_header(header: str, host: str) -> None:
    assert host_of(header) == host


@pytest.fixture
def listening() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1", True), ("0.0.0.0", False)])
def test_listener_is_loopback_reads_the_bound_address(
    listening: list[socket.socket], address: str, loopback: bool
) -> None:
    sock = socket.socket()
    listening.append(sock)
    sock.bind((address, 0))
    sock.listen()
    assert listener_is_loopback(sock) is loopback


def test_a_unix_socket_listener_is_not_loopback(
    listening: list[socket.socket], tmp_path: Path
) -> None:
    # A proxy on the machine may forward anyone to it.
    sock = socket.socket(socket.AF_UNIX)
    listening.append(sock)
    sock.bind(str(tmp_path / "admin.sock"))
    sock.listen()
    assert not listener_is_loopback(sock)


@pytest.mark.parametrize(
    ("origin", "fetch_site", "cross"),
    [
        (None, None, False),  # curl, the CLI
        ("http://127.0.0.1:9443", "same-origin", False),
        ("http://127.0.0.1:9443", None, False),
        (None, "none", False),  # typed into the address bar
        ("http://evil.example", None, True),
        ("http://127.0.0.1:9444", None, True),  # another port is another origin
        (None, "cross-site", True),
        (None, "same-site", True),
        # The console's own form posts: no-referrer pages post with Origin: null.
        ("null", "same-origin", False),
        ("null", None, False),
        ("null", "cross-site", True),
    ],
)
def test_is_cross_site(origin: str | None, fetch_site: str | None, cross: bool) -> None:
    assert is_cross_site(origin, fetch_site, "127.0.0.1:9443") is cross


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/tenants/a", "/tenants/a"),
        ("/webhooks/d-1?body=1", "/webhooks/d-1?body=1"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/a\r\nSet-Cookie: x=1", "/"),
        ("tenants", "/"),
    ],
)
def test_safe_next_keeps_the_browser_on_this_listener(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe
