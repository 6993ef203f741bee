"""The operator console and the admin listener's access rules (PROTOCOL.md §7), against
a real relay with real HTTP clients (httpx) and real bridges.

Most tests use a relay whose admin listener is bound to ``0.0.0.0``: not a
loopback address, so every admin path but /healthz needs the admin token (set
with the real ``linerelay admin-token``) or a console login. A second relay
keeps the default loopback listener, where no token is needed but form posts
still need their CSRF token and the Host must be this machine's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from appliance.console.auth import SESSION_COOKIE
from appliance.console.guard import FAILURE_BURST
from tests.integration.helpers import Bridge, Harness, Tenant, async_client, post
from tests.support.bodies import webhook_body
from tests.support.console import PageParts, csrf_of, login, set_admin_token
from tests.support.relay import RelayProcess, linerelay
from tests.support.waiting import async_wait_for, wait_for

pytestmark = pytest.mark.integration

CONFIG = """
ping_interval = 1.0
bridge_idle_timeout = 3.0
"""
#: The loopback relay's queue cap, small enough to fill.
LOCAL_QUEUE_CAP = 3
ADMIN_PATHS = ("/", "/metrics", "/readyz", "/fragments/overview", "/tenants/x", "/api/webhooks")


@contextmanager
def console_relay(
    factory: pytest.TempPathFactory, name: str, admin_host: str, config: str = CONFIG
) -> Iterator[Harness]:
    """A relay with the admin token set before it starts; its log is scanned at the end
    for every secret, token and signature the module used."""
    state = factory.mktemp(name) / "state"
    token = set_admin_token(state)
    relay = RelayProcess(state, config=config, admin_host=admin_host, admin_token=token)
    relay.start()
    harness = Harness(relay)
    harness.remember(token)
    try:
        yield harness
    finally:
        relay.stop()
    leaked = harness.leaks()
    assert not leaked, f"relay log {relay.log_file} contains {len(leaked)} secret(s)/token(s)"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with console_relay(tmp_path_factory, "console", "0.0.0.0") as harness:
        yield harness


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    config = CONFIG + f"queue_cap = {LOCAL_QUEUE_CAP}\n"
    with console_relay(tmp_path_factory, "console-local", "127.0.0.1", config) as harness:
        yield harness


def token_of(harness: Harness) -> str:
    assert harness.relay.admin_token is not None
    return harness.relay.admin_token


def client(harness: Harness, *, source: str | None = None) -> httpx.Client:
    """An HTTP client of the admin listener (from ``source``, another loopback address)."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=harness.relay.admin_url, timeout=30, transport=transport)


@contextmanager
def logged_in(harness: Harness) -> Iterator[httpx.Client]:
    """A client logged in to the console with the admin token."""
    with client(harness) as browser:
        assert login(browser, token_of(harness)).status_code == 303
        yield browser


@pytest.fixture
async def console(secured: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in async client (for tests that also drive bridges on the loop)."""
    async with httpx.AsyncClient(base_url=secured.relay.admin_url, timeout=30) as browser:
        answer = await browser.post("/login", data={"token": token_of(secured), "next": "/"})
        assert answer.status_code == 303
        yield browser


# -- off loopback: the token is needed ----------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_without_the_token_every_admin_path_is_refused(secured: Harness, path: str) -> None:
    with client(secured) as anonymous:
        answer = anonymous.get(path)
    assert answer.status_code == 401
    assert answer.json() == {"error": "unauthorized"}
    assert answer.headers["www-authenticate"] == "Bearer"


def test_healthz_needs_no_token(secured: Harness) -> None:
    with client(secured) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}


def test_a_browser_without_a_login_is_sent_to_the_login_page(secured: Harness) -> None:
    with client(secured) as browser:
        answer = browser.get("/tenants/x?state=queued", headers={"Accept": "text/html"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=%2Ftenants%2Fx%3Fstate%3Dqueued"
        page = browser.get("/login")
    assert page.status_code == 200
    assert 'name="token"' in page.text


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/", "/fragments/overview"])
def test_the_admin_token_as_a_bearer_header_opens_every_path(secured: Harness, path: str) -> None:
    with client(secured) as tool:
        answer = tool.get(path, headers={"Authorization": f"Bearer {token_of(secured)}"})
    assert answer.status_code == 200


def test_a_wrong_bearer_token_is_refused(secured: Harness) -> None:
    with client(secured, source="127.0.0.3") as tool:
        answer = tool.get("/metrics", headers={"Authorization": "Bearer lra_wrong"})
    assert answer.status_code == 401


def test_an_address_sending_wrong_tokens_is_locked_out_before_its_tokens_are_checked(
    secured: Harness,
) -> None:
    wrong = {"Authorization": "Bearer " + secured.remember("lra_guess")}
    with client(secured, source="127.0.0.4") as guesser:
        statuses = [
            guesser.get("/metrics", headers=wrong).status_code for _ in range(FAILURE_BURST)
        ]
        assert statuses == [401] * FAILURE_BURST
        locked = guesser.get("/metrics", headers=wrong)
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) >= 1
        # Even the right token waits: a locked-out address's tokens are not looked at.
        right = {"Authorization": f"Bearer {token_of(secured)}"}
        assert guesser.get("/metrics", headers=right).status_code == 429
        assert guesser.post("/login", data={"token": token_of(secured)}).status_code == 429
    with client(secured, source="127.0.0.5") as other:
        assert other.get("/metrics", headers=right).status_code == 200


def test_a_locked_out_address_stays_locked_out_across_a_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The counts are in console.db, which every process (and the next one) reads.
    with console_relay(tmp_path_factory, "console-restart", "0.0.0.0") as harness:
        wrong = {"Authorization": "Bearer " + harness.remember("lra_guess")}
        with client(harness, source="127.0.0.7") as guesser:
            for _ in range(FAILURE_BURST):
                guesser.get("/metrics", headers=wrong)
            assert guesser.get("/metrics", headers=wrong).status_code == 429
        harness.relay.stop()
        harness.relay.start()
        right = {"Authorization": f"Bearer {token_of(harness)}"}
        with client(harness, source="127.0.0.7") as guesser:
            assert guesser.get("/metrics", headers=right).status_code == 429


def test_login_sets_an_httponly_samesite_strict_session_cookie(secured: Harness) -> None:
    with client(secured) as browser:
        answer = login(browser, token_of(secured), "/tenants/x")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/tenants/x"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower()
        # Plain HTTP listener: a Secure cookie would never be sent back.
        assert "secure" not in attributes
        assert token_of(secured) not in cookie
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 200
        assert browser.get("/metrics").status_code == 200


def test_a_wrong_login_is_refused_without_a_cookie(secured: Harness) -> None:
    with client(secured, source="127.0.0.6") as browser:
        answer = login(browser, secured.remember("lra_not-the-token"))
        assert answer.status_code == 401
        assert "set-cookie" not in answer.headers
        assert "That is not the admin token" in answer.text
        assert browser.get("/").status_code == 401


def test_login_goes_only_to_a_path_on_this_listener(secured: Harness) -> None:
    with client(secured) as browser:
        answer = login(browser, token_of(secured), "//evil.example/")
    assert answer.headers["location"] == "/"


def test_a_forged_or_missing_cookie_is_refused(secured: Harness) -> None:
    with client(secured) as forger:
        forger.cookies.set(SESSION_COOKIE, "forged-session-id")
        assert forger.get("/").status_code == 401


def test_a_post_with_a_forged_csrf_token_is_refused(secured: Harness) -> None:
    with logged_in(secured) as browser:
        page = browser.get("/", headers={"Accept": "text/html"})
        csrf = csrf_of(page.text)
        assert csrf
        for forged in ({"csrf": "forged"}, {}, {"csrf": ""}):
            answer = browser.post("/logout", data=forged)
            assert answer.status_code == 403, forged
            assert answer.json() == {"error": "forbidden"}
        # The session survived the forgeries.
        assert browser.get("/").status_code == 200


def test_a_post_from_another_site_is_refused_even_with_the_csrf_token(secured: Harness) -> None:
    with logged_in(secured) as browser:
        csrf = csrf_of(browser.get("/").text)
        answer = browser.post(
            "/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}
        )
        assert answer.status_code == 403
        answer = browser.post(
            "/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert answer.status_code == 403
        assert browser.get("/").status_code == 200


def test_a_post_without_a_session_is_refused(secured: Harness) -> None:
    with logged_in(secured) as browser:
        csrf = csrf_of(browser.get("/").text)
    with client(secured) as stranger:
        assert stranger.post("/logout", data={"csrf": csrf}).status_code == 401


def test_logout_ends_the_session(secured: Harness) -> None:
    with logged_in(secured) as browser:
        session = browser.cookies[SESSION_COOKIE]
        csrf = csrf_of(browser.get("/").text)
        answer = browser.post("/logout", data={"csrf": csrf})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login"
    with client(secured) as replayed:
        replayed.cookies.set(SESSION_COOKIE, session)
        answer = replayed.get("/")
        assert answer.status_code == 401
        # The ended session's cookie is cleared.
        cleared = answer.headers["set-cookie"]
        assert cleared.startswith(f"{SESSION_COOKIE}=;")
        assert "Max-Age=0" in cleared


def test_pages_carry_the_security_headers(secured: Harness) -> None:
    with logged_in(secured) as browser:
        for path in ("/", "/login", "/fragments/overview"):
            headers = browser.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["cache-control"] == "no-store"
            assert headers["x-content-type-options"] == "nosniff"


def test_pages_have_no_inline_script(secured: Harness) -> None:
    with logged_in(secured) as browser:
        html = browser.get("/").text
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert re.findall(r"<[^>]*\son[a-z]+\s*=", html) == [], "an inline event handler"
    assert re.findall(r"<[^>]*\sstyle\s*=", html) == [], "an inline style"


def test_the_console_assets_are_served(secured: Harness) -> None:
    with client(secured) as anonymous:
        css = anonymous.get("/static/console.css")
        js = anonymous.get("/static/console.js")
    assert css.status_code == js.status_code == 200
    assert "text/css" in css.headers["content-type"]
    assert "data-poll" in js.text


# -- the pages -------------------------------------------------------------------------------


async def post_signed(harness: Harness, tenant: Tenant, body: bytes) -> None:
    async with async_client(harness) as public:
        answer = await post(public, harness, tenant, body)
        assert answer.status_code == 200, answer.text


async def stored(console: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, object]]:
    """The tenant's stored webhooks, from the admin API (the console's lists are up to a
    second old)."""
    answer = await console.get("/api/webhooks", params={"tenant": tenant.id})
    webhooks: list[dict[str, object]] = answer.json()["webhooks"]
    return webhooks


def row_of(html: str, tenant: str) -> str:
    """The overview's row of ``tenant``: its classes, then its cells ('' if not shown)."""
    match = re.search(rf'<tr class="([^"]*)" data-tenant="{tenant}">(.*?)</tr>', html, re.S)
    return f"{match.group(1)}|{match.group(2)}" if match else ""


async def test_the_overview_shows_a_connected_bridge_and_a_growing_queue(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    bridged, waiting = secured.tenant("bridged"), secured.tenant("waiting")
    async with await Bridge.open(secured, bridged.token, protocol=2) as bridge:
        await post_signed(secured, bridged, webhook_body("hello"))
        items = await bridge.batch()
        await bridge.ack_ids(items[0]["id"])
        for n in range(3):
            await post_signed(secured, waiting, webhook_body(f"waiting {n}"))

        async def shown() -> str | None:
            html = (await console.get("/fragments/overview")).text
            ready = "connected" in row_of(html, bridged.id) and "never" not in row_of(
                html, bridged.id
            )
            return html if ready and 'depth">3<' in row_of(html, waiting.id) else None

        html = await async_wait_for(shown, "the bridge's ack on the overview")
        row = row_of(html, bridged.id)
        assert "tenant connected" in row
        assert '<td class="num">2</td>' in row  # protocol 2
        assert " / 256<" in row  # window in flight
        row = row_of(html, waiting.id)
        assert "unbridged queued" in row
        assert '<td class="num depth">3</td>' in row
        assert "no bridge" in row
        page = (await console.get(f"/tenants/{bridged.id}")).text
        assert "connected from 127.0.0.1" in page
        assert "1 on this connection" in page  # acks


async def test_the_glance_shows_the_histogram_and_the_over_budget_count(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    tenant = secured.tenant()
    await post_signed(secured, tenant, webhook_body("count me"))
    html = (await console.get("/fragments/overview")).text
    answers = int(re.search(r'<span id="answers">(\d+)</span>', html).group(1))  # type: ignore[union-attr]
    assert answers >= 1
    assert "over the 1000 ms budget" in html
    assert html.count("<meter") == 13  # 12 buckets and +Inf


async def test_unknown_tenants_and_webhooks_are_404_pages(console: httpx.AsyncClient) -> None:
    assert (await console.get("/tenants/no-such-tenant")).status_code == 404
    assert (await console.get("/tenants/NOT..valid")).status_code == 404
    missing = await console.get("/webhooks/d-000000000000")
    assert missing.status_code == 404
    assert "No such webhook" in missing.text


async def test_a_webhooks_page_shows_its_record_and_its_body_only_when_asked(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    tenant = secured.tenant()
    body = webhook_body("a private message")
    await post_signed(secured, tenant, body)
    listing = (await console.get(f"/tenants/{tenant.id}")).text
    delivery = re.search(r'data-delivery="(d-[^"]+)"', listing).group(1)  # type: ignore[union-attr]
    assert "message" in listing  # the event type
    assert "queued" in listing
    page = (await console.get(f"/webhooks/{delivery}")).text
    assert "a private message" not in page
    assert f"{len(body)}" in page  # Content-Length
    assert "x-line-signature" in page
    shown = await console.get(f"/webhooks/{delivery}?body=1")
    assert "a private message" in shown.text
    assert shown.headers["cache-control"] == "no-store"
    event = json.loads(body)["events"][0]
    assert event["replyToken"] in shown.text  # the exact body, all of it
    assert [r for r in secured.log_events("console: webhook body shown")][-1][
        "delivery"
    ] == delivery


async def test_what_a_body_says_is_shown_as_text_never_as_markup(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    """Unknown event types are relayed untouched (PROTOCOL.md §1) and listed by the
    console: escaped, so a body cannot put script or markup in an operator's page."""
    tenant = secured.tenant()
    markup = '<img src=x onerror="alert(1)">'
    body = json.dumps({"destination": "U0", "events": [{"type": markup}]}).encode()
    await post_signed(secured, tenant, body)
    listing = (await console.get(f"/tenants/{tenant.id}")).text
    assert "&lt;img src=x onerror=" in listing
    assert markup not in listing
    delivery = re.search(r'data-delivery="(d-[^"]+)"', listing).group(1)  # type: ignore[union-attr]
    shown = (await console.get(f"/webhooks/{delivery}?body=1")).text
    assert "&lt;img src=x" in shown
    assert "<img src=x" not in shown


async def test_replay_from_the_console_reaches_the_bridge(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    tenant = secured.tenant()
    body = webhook_body("again please")
    await post_signed(secured, tenant, body)
    async with await Bridge.open(secured, tenant.token) as bridge:
        first = await bridge.webhook()
        await bridge.ack(first)
        page = (await console.get(f"/webhooks/{first['id']}")).text
        csrf = csrf_of(page)

        async def delivered() -> bool:
            return "delivered" in (await console.get(f"/fragments/webhooks/{first['id']}")).text

        await async_wait_for(delivered, "the webhook shown delivered")
        answer = await console.post(f"/webhooks/{first['id']}/replay", data={"csrf": csrf})
        assert answer.status_code == 303
        copy_id = answer.headers["location"].rsplit("/", 1)[1]
        again = await bridge.webhook()
        assert again["id"] == copy_id != first["id"]
        assert again["replay"] is True
        assert again["body"].encode() == body
        copy = (await console.get(f"/webhooks/{copy_id}")).text
        assert f'href="/webhooks/{first["id"]}"' in copy  # "Replay of"


async def test_replay_with_a_forged_csrf_token_queues_nothing(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    tenant = secured.tenant()
    await post_signed(secured, tenant, webhook_body("not again"))
    listing = (await console.get(f"/tenants/{tenant.id}")).text
    delivery = re.search(r'data-delivery="(d-[^"]+)"', listing).group(1)  # type: ignore[union-attr]
    answer = await console.post(f"/webhooks/{delivery}/replay", data={"csrf": "forged"})
    assert answer.status_code == 403
    assert len(await stored(console, tenant)) == 1


async def test_no_page_shows_a_secret_token_signature_or_unasked_body(
    secured: Harness, console: httpx.AsyncClient
) -> None:
    """Crawl every page and fragment the console links to or polls, with webhooks
    delivered, queued and replayed; none may show the tenant's secret, a bridge or
    admin token, a signature, or any part of a body but on the page asked for it."""
    tenant = secured.tenant("leak")
    bodies = [webhook_body(f"personal data {n}") for n in range(3)]
    for body in bodies:
        await post_signed(secured, tenant, body)
    async with await Bridge.open(secured, tenant.token) as bridge:
        frame = await bridge.webhook()
        await bridge.ack(frame)
        csrf = csrf_of((await console.get(f"/webhooks/{frame['id']}")).text)
        await console.post(f"/webhooks/{frame['id']}/replay", data={"csrf": csrf})
    personal = set()
    for body in bodies:
        event = json.loads(body)["events"][0]
        personal |= {event["message"]["text"], event["replyToken"], event["source"]["userId"]}
        personal.add(body.decode())
    secrets = secured.sensitive | {frame["signature"]}
    seen: dict[str, str] = {}
    todo = ["/", f"/tenants/{tenant.id}", "/login"]
    while todo:
        path = todo.pop()
        if path in seen or not path.startswith("/") or path.startswith("/static/"):
            continue
        answer = await console.get(path, follow_redirects=True)  # /login goes on to /
        assert answer.status_code == 200, path
        seen[path] = answer.text
        parts = PageParts(answer.text)
        todo += [p for p in parts.links + parts.polled if urlsplit(p).path != "/metrics"]
    assert any("?body=1" in p for p in seen)
    assert any(p.startswith("/fragments/webhooks/") for p in seen)
    for path, html in seen.items():
        leaked = [s for s in secrets if s in html]
        assert not leaked, f"{path} shows a secret, token or signature"
        if "?body=1" not in path:
            shown = [p for p in personal if p in html]
            assert not shown, f"{path} shows part of a body nobody asked for"


# -- the webhooks CLI through the guard ------------------------------------------------------


async def test_the_webhooks_cli_needs_the_admin_token_off_loopback(secured: Harness) -> None:
    tenant = secured.tenant()
    await post_signed(secured, tenant, webhook_body("listed"))
    relay = secured.relay
    admin = ("--admin-listen", f"0.0.0.0:{relay.admin_port}")
    listing = ("webhooks", "list", "--tenant", tenant.id, "--json", *admin)
    refused = linerelay(*listing, state_dir=relay.state_dir, check=False)
    assert refused.returncode == 2
    assert "admin token" in refused.stderr
    env = {**os.environ, "LINERELAY_ADMIN_TOKEN": token_of(secured)}
    done = linerelay(*listing, state_dir=relay.state_dir, env=env, check=False)
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["webhooks"]
    replayed = linerelay(
        "webhooks", "replay", record["id"], *admin, state_dir=relay.state_dir, env=env, check=False
    )
    assert replayed.returncode == 0, replayed.stderr
    assert token_of(secured) not in done.stdout + done.stderr + replayed.stdout + replayed.stderr


# -- the admin token changes while the relay runs ------------------------------------------


def test_a_new_admin_token_applies_at_once_and_ends_every_session(secured: Harness) -> None:
    old = token_of(secured)
    with logged_in(secured) as browser:
        new = set_admin_token(secured.relay.state_dir)
        secured.remember(new)
        secured.relay.admin_token = new
        assert browser.get("/").status_code == 401  # the old login ended
    with client(secured) as tool:
        assert tool.get("/metrics", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert tool.get("/metrics", headers={"Authorization": f"Bearer {new}"}).status_code == 200


# -- on loopback: no token needed ------------------------------------------------------------


def test_on_loopback_the_console_needs_no_token(local: Harness) -> None:
    with client(local) as anonymous:
        page = anonymous.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "loopback listener: no token needed" in page.text
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/login").status_code == 303  # nothing to log in to


def test_on_loopback_a_host_that_is_not_this_machine_is_refused(local: Harness) -> None:
    with client(local) as rebound:
        for path in ("/", "/metrics", "/fragments/overview"):
            assert rebound.get(path, headers={"Host": "evil.example"}).status_code == 403
        assert rebound.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
        assert rebound.get("/", headers={"Host": "localhost:1"}).status_code == 200


async def test_on_loopback_a_replay_still_needs_the_pages_csrf_token(local: Harness) -> None:
    tenant = local.tenant()
    await post_signed(local, tenant, webhook_body("loopback"))
    with client(local) as browser:
        listing = browser.get(f"/tenants/{tenant.id}")
        assert SESSION_COOKIE in listing.cookies  # an anonymous session, for its CSRF token
        delivery = re.search(r'data-delivery="(d-[^"]+)"', listing.text).group(1)  # type: ignore[union-attr]
        with client(local) as stranger:
            assert stranger.post(f"/webhooks/{delivery}/replay").status_code == 403
        assert browser.post(f"/webhooks/{delivery}/replay", data={"csrf": "x"}).status_code == 403
        answer = browser.post(f"/webhooks/{delivery}/replay", data={"csrf": csrf_of(listing.text)})
        assert answer.status_code == 303


async def test_a_replay_into_a_full_queue_is_refused_with_a_page(local: Harness) -> None:
    tenant = local.tenant()
    for n in range(LOCAL_QUEUE_CAP):
        await post_signed(local, tenant, webhook_body(f"filling {n}"))
    with client(local) as browser:
        listing = browser.get(f"/tenants/{tenant.id}")
        delivery = re.search(r'data-delivery="(d-[^"]+)"', listing.text).group(1)  # type: ignore[union-attr]
        answer = browser.post(f"/webhooks/{delivery}/replay", data={"csrf": csrf_of(listing.text)})
        assert answer.status_code == 503
        assert "queue is full" in answer.text
        after = browser.get("/api/webhooks", params={"tenant": tenant.id}).json()["webhooks"]
    assert len(after) == LOCAL_QUEUE_CAP


def test_admin_auth_token_needs_the_token_on_loopback_too(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    config = CONFIG + 'admin_auth = "token"\n'
    with console_relay(tmp_path_factory, "console-strict", "127.0.0.1", config) as strict:
        with client(strict) as anonymous:
            assert anonymous.get("/metrics").status_code == 401
            assert anonymous.get("/healthz").status_code == 200
        with logged_in(strict) as browser:
            assert browser.get("/").status_code == 200


def test_a_revoked_admin_token_opens_nothing_off_loopback(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with console_relay(tmp_path_factory, "console-revoked", "0.0.0.0") as harness:
        token = token_of(harness)
        done = linerelay("admin-token", "--revoke", "--json", state_dir=harness.relay.state_dir)
        assert json.loads(done.stdout) == {"revoked": True}
        with client(harness) as tool:
            bearer = {"Authorization": f"Bearer {token}"}
            wait_for(lambda: tool.get("/metrics", headers=bearer).status_code == 401, "revoked")
            page = tool.get("/login")
            assert "No admin token is set" in page.text
            assert login(tool, token).status_code == 401
        harness.relay.admin_token = None
