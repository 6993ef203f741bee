"""Which targets the harness refuses: LINE's own infrastructure.

LINE's terms forbid load and stress tests against its platform, and a load
generator pointed at ``api.line.me`` by mistake would do exactly that with
signed-looking traffic. The check is on the target's host name, before any
connection is made. The list covers LINE's API, login and webhook domains
(``line.me``, ``line-apps.com`` and its beta twin), its content CDN
(``line-scdn.net``), its corporate and business sites (``linecorp.com``,
``line.biz``), its short links (``lin.ee``) and the legacy NAVER Japan
domain many LINE services still live under (``naver.jp``). Every subdomain
of each is refused too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: Registrable domains owned by LINE; the domain itself and every subdomain are refused.
FORBIDDEN_DOMAINS: tuple[str, ...] = (
    "line.me",
    "line-apps.com",
    "line-apps-beta.com",
    "line-scdn.net",
    "linecorp.com",
    "line.biz",
    "lin.ee",
    "naver.jp",
)


class BadTarget(ValueError):
    """The target is not an http(s) URL with a host name."""


class ForbiddenTarget(ValueError):
    """The target is one of LINE's own hosts; load-testing it is not allowed."""


def normalise_host(host: str) -> str:
    """``host`` lower-cased, without a trailing dot, in its ASCII (IDNA) form."""
    host = host.strip().rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise BadTarget(f"host name {host!r} is not a valid domain name") from exc


def forbidden_domain(host: str) -> str | None:
    """The LINE domain that ``host`` falls under, or None when it is not LINE's."""
    name = normalise_host(host)
    for domain in FORBIDDEN_DOMAINS:
        if name == domain or name.endswith("." + domain):
            return domain
    return None


def check_target(url: str) -> str:
    """Return the target's host when the harness may load it; raise otherwise.

    Raises :class:`BadTarget` for anything but an ``http``/``https`` URL with a
    host, and :class:`ForbiddenTarget` for a host under LINE's own domains.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadTarget(f"target {url!r} is not an http(s) URL with a host")
    domain = forbidden_domain(parts.hostname)
    if domain is not None:
        raise ForbiddenTarget(
            f"refusing to load {parts.hostname}: it is under {domain}, one of LINE's own "
            "domains. LINE forbids load and stress tests against its platform; run the "
            "harness against a relay on your own infrastructure."
        )
    return parts.hostname
