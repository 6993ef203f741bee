"""The operator console for tests: the admin token through the real CLI, logins, what a
page links to (its links, its polled fragments, its forms' CSRF token), and a real
bridge on a thread for tests that are not async."""

from __future__ import annotations

import json
import queue
import ssl
import threading
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.relay import linerelay
from tests.support.waiting import TIMEOUT


def set_admin_token(state_dir: Path) -> str:
    """A new admin token for ``state_dir``, made by ``linerelay admin-token --json``."""
    done = linerelay("admin-token", "--json", state_dir=state_dir)
    token: str = json.loads(done.stdout)["admin_token"]
    return token


class PageParts(HTMLParser):
    """The links, polled fragment URLs, form actions and CSRF tokens of one page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.polled: list[str] = []
        self.forms: list[str] = []
        self.csrf: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if found.get("data-poll"):
            self.polled.append(str(found["data-poll"]))
        if tag == "form" and found.get("action"):
            self.forms.append(str(found["action"]))
        if tag == "input" and found.get("name") == "csrf":
            self.csrf.append(str(found.get("value") or ""))


def csrf_of(html: str) -> str:
    """The CSRF token the page's forms carry (the same in every form)."""
    tokens = set(PageParts(html).csrf)
    assert len(tokens) == 1, f"expected one CSRF token on the page, found {len(tokens)}"
    return tokens.pop()


def login(client: httpx.Client, token: str, next_path: str = "/") -> httpx.Response:
    """Log ``client`` in to the console with the admin ``token``; the answer (a 303)."""
    return client.post("/login", data={"token": token, "next": next_path})


class ThreadBridge:
    """A protocol 1 bridge on its own thread (python-websockets' sync client, real TLS),
    acking every webhook; for tests that are not async, such as the browser tests."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        self._url, self._token = url, token
        self._context = ssl.create_default_context(cafile=str(ca_file))
        #: Every webhook frame received, in order.
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self._opened: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self._ws: ClientConnection | None = None
        self._greeted = False
        self._thread = threading.Thread(target=self._run, name="test-bridge", daemon=True)
        self._thread.start()
        opened = self._opened.get(timeout=TIMEOUT)
        if isinstance(opened, BaseException):
            raise opened
        #: The relay's hello.
        self.hello = opened

    def _run(self) -> None:
        try:
            with connect(
                self._url,
                ssl=self._context,
                additional_headers={"Authorization": f"Bearer {self._token}"},
                max_size=None,
                open_timeout=TIMEOUT,
            ) as ws:
                self._ws = ws
                self._opened.put(json.loads(ws.recv(timeout=TIMEOUT)))
                self._greeted = True
                for text in ws:
                    frame = json.loads(text)
                    if frame.get("type") == "webhook":
                        self.frames.put(frame)
                        ws.send(json.dumps({"type": "ack", "id": frame["id"]}))
        except Exception as exc:
            # Before the hello, the test sees why (not a 30 s wait for nothing);
            # after it, the end of the connection is the test's own doing.
            if not self._greeted:
                self._opened.put(exc)

    def webhook(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next webhook frame (already acked)."""
        return self.frames.get(timeout=timeout)

    def close(self) -> None:
        """Close the connection and wait for the reading thread."""
        if self._ws is not None:
            self._ws.close()
        self._thread.join(TIMEOUT)
