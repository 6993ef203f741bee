"""The operator console in a real headless Chromium (Debian's ``chromium`` and
``chromedriver``, driven by selenium) against a real relay whose admin listener
is not on loopback, with a real bridge connected.

The scenario of issue 11: log in with the admin token; see two tenants, one
with a connected bridge and one with a growing queue, updating without a
reload; open a webhook and its body; replay it and see the bridge receive it;
a request without the token, and a form posted with a forged CSRF token, refused.

Screenshots of each step go to ``build/test-artifacts/console/`` (or
``$LINERELAY_TEST_ARTIFACTS/console/``); CI keeps them with the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from appliance.signature import sign
from tests.integration.helpers import Harness, tls_context
from tests.support.bodies import webhook_body
from tests.support.console import ThreadBridge, set_admin_token
from tests.support.relay import RelayProcess
from tests.support.waiting import TIMEOUT, wait_for

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = (
    Path(os.environ.get("LINERELAY_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    / "console"
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromedriver (apt-get install chromium "
        "chromium-driver); CI installs them",
    ),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    state = tmp_path_factory.mktemp("console-browser") / "state"
    token = set_admin_token(state)
    relay = RelayProcess(state, admin_host="0.0.0.0", admin_token=token).start()
    h = Harness(relay)
    h.remember(token)
    try:
        yield h
    finally:
        relay.stop()
    assert not h.leaks(), f"relay log {relay.log_file} holds a secret or token"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # containers without user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    """A screenshot of the current page into the test artefacts."""
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """Poll ``condition`` until it holds; an element not there yet, or replaced by the
    page's own refresh meanwhile, is a condition that does not hold yet."""

    def check() -> Any:
        try:
            return condition(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            return None

    return wait_for(check, what, TIMEOUT)


def click(driver: WebDriver, by: str, value: str) -> None:
    """Click an element, retrying while the page's refresh replaces it."""

    def attempt(d: WebDriver) -> bool:
        d.find_element(by, value).click()
        return True

    until(driver, attempt, f"a click on {value}")


def row(driver: WebDriver, tenant: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-tenant="{tenant}"]')


def post_webhook(harness: Harness, tenant: Any, text: str) -> bytes:
    body = webhook_body(text)
    signature = harness.remember(sign(tenant.secret.encode(), body))
    answer = httpx.post(
        tenant.url,
        content=body,
        headers={"x-line-signature": signature},
        verify=tls_context(harness.relay.ca_file),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    return body


def test_an_operator_logs_in_watches_tenants_opens_and_replays_a_webhook(
    harness: Harness, browser: WebDriver
) -> None:
    relay = harness.relay
    bridged, waiting = harness.tenant("bridged"), harness.tenant("waiting")
    bridge = ThreadBridge(relay.bridge_url, bridged.token, relay.ca_file)
    try:
        # Log in with the admin token.
        browser.get(f"{relay.admin_url}/")
        until(browser, lambda d: d.find_element(By.ID, "token"), "the login page")
        shot(browser, "01-login")
        assert relay.admin_token is not None
        browser.find_element(By.ID, "token").send_keys(relay.admin_token)
        browser.find_element(By.ID, "login").click()
        until(browser, lambda d: d.find_element(By.ID, "tenants"), "the overview")
        cookie = browser.get_cookie("linerelay_console")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"

        # Two tenants: one with a connected bridge, one whose queue grows; the page
        # follows without a reload (the marker set in this page survives).
        browser.execute_script("window.__sameDocument = true;")
        delivered_body = post_webhook(harness, bridged, "words only the operator may see")
        first = bridge.webhook()
        for n in range(2):
            post_webhook(harness, waiting, f"queued {n}")
        until(
            browser,
            lambda d: (
                "connected" in row(d, bridged.id).text
                and row(d, waiting.id).find_element(By.CSS_SELECTOR, ".depth").text == "2"
            ),
            "the bridge connected and the queue at 2",
        )
        post_webhook(harness, waiting, "queued 2")
        until(
            browser,
            lambda d: row(d, waiting.id).find_element(By.CSS_SELECTOR, ".depth").text == "3",
            "the queue grown to 3",
        )
        assert browser.execute_script("return window.__sameDocument === true;")
        assert "no bridge" in row(browser, waiting.id).text
        assert "over the 1000 ms budget" in browser.find_element(By.ID, "glance").text
        shot(browser, "02-overview")

        # Open the bridged tenant's webhook, then its body.
        click(browser, By.LINK_TEXT, bridged.id)
        until(
            browser,
            lambda d: (
                "delivered"
                in d.find_element(By.CSS_SELECTOR, f'[data-delivery="{first["id"]}"]').text
            ),
            "the webhook listed as delivered",
        )
        shot(browser, "03-tenant")
        click(browser, By.LINK_TEXT, first["id"])
        until(browser, lambda d: d.find_element(By.ID, "replay"), "the webhook's page")
        assert "words only the operator may see" not in browser.page_source
        shot(browser, "04-webhook")
        click(browser, By.ID, "show-body")
        shown = until(browser, lambda d: d.find_element(By.ID, "body"), "the body")
        assert shown.text.strip() == delivered_body.decode().strip()
        shot(browser, "05-body")

        # Replay it: the bridge gets the same bytes again, marked as a replay.
        click(browser, By.ID, "replay")
        again = bridge.webhook()
        assert again["replay"] is True
        assert again["body"].encode() == delivered_body
        assert again["id"] != first["id"]
        until(browser, lambda d: again["id"] in d.current_url, "the replay's page")
        until(
            browser,
            lambda d: d.find_element(By.ID, "state").text == "delivered",
            "the replay shown delivered",
        )
        assert first["id"] in browser.find_element(By.ID, "record").text  # "Replay of"
        shot(browser, "06-replayed")

        # A form posted with a forged CSRF token is refused, and nothing is queued.
        browser.execute_script(
            "document.querySelector('form[action$=\"/replay\"] input[name=csrf]').value"
            " = 'forged-csrf-token';"
        )
        click(browser, By.ID, "replay")
        until(browser, lambda d: "forbidden" in d.page_source, "the refusal")
        shot(browser, "07-forged-csrf-refused")
        assert bridge.frames.empty()
    finally:
        bridge.close()


def test_without_the_token_the_browser_gets_the_login_page_and_tools_get_401(
    harness: Harness, browser: WebDriver
) -> None:
    relay = harness.relay
    browser.delete_all_cookies()
    browser.get(f"{relay.admin_url}/")
    until(browser, lambda d: d.find_element(By.ID, "token"), "the login page")
    assert "/login?next=" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(harness.remember("lra_wrong-token"))
    browser.find_element(By.ID, "login").click()
    until(browser, lambda d: d.find_element(By.ID, "login-failed"), "the refusal")
    shot(browser, "08-wrong-token")
    assert browser.get_cookie("linerelay_console") is None
    for path in ("/", "/metrics", "/fragments/overview"):
        assert httpx.get(f"{relay.admin_url}{path}", timeout=TIMEOUT).status_code == 401
