"""Run the whole suite against one webhook URL and collect a :class:`Report`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from conformance import tlsscan, webhook
from conformance.catalogue import CATALOGUE, CheckResult, Group, Status, result
from conformance.profiles import PROFILES, Profile
from tls import sources

CONNECT_TIMEOUT = 10.0


class CouldNotRunError(Exception):
    """The suite could not run at all (bad URL, unreadable CA file, nothing listening)."""


@dataclass(frozen=True)
class Options:
    """What to check and how."""

    url: str
    secret: str
    ca_file: Path | None = None
    profile: Profile = PROFILES["modern"]
    groups: frozenset[Group] = frozenset(Group)
    requests: int = webhook.DEFAULT_REQUESTS
    budget: float = webhook.DEFAULT_BUDGET
    body_limit: int = webhook.DEFAULT_BODY_LIMIT


@dataclass
class Report:
    """Every check's result, in catalogue order, with when and against what."""

    target: str
    profile: str
    started_at: datetime.datetime
    seconds: float = 0.0
    results: list[CheckResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """How many checks ended with ``status``."""
        return sum(1 for item in self.results if item.status is status)

    @property
    def failed(self) -> list[CheckResult]:
        """The failed checks."""
        return [item for item in self.results if item.status is Status.FAIL]

    def summary(self) -> dict[str, object]:
        """The JSON report's ``summary`` object."""
        return {
            "target": self.target,
            "profile": self.profile,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "duration_seconds": round(self.seconds, 2),
            "total": len(self.results),
            **{status.value: self.count(status) for status in Status},
            "failed": [item.id for item in self.failed],
            "result": "fail" if self.failed else "pass",
        }


@dataclass(frozen=True)
class Target:
    """Where the webhook URL points."""

    url: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """Check ``url`` is an https URL with a host; raise :class:`CouldNotRunError` if not."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise CouldNotRunError(f"not a URL: {url!r} ({exc})") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise CouldNotRunError(f"the webhook URL must be https://HOST[:PORT]/PATH, not {url!r}")
    return Target(url, parts.hostname, port)


def connect(target: Target) -> str:
    """Resolve and open one TCP connection; return the IP address that answered."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CouldNotRunError(f"cannot resolve {target.host}: {exc.strerror}") from exc
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(address)
                return str(address[0])
        except OSError as exc:
            last = exc
    reason = last.strerror if last and last.strerror else str(last)
    raise CouldNotRunError(f"cannot connect to {target.host}:{target.port}: {reason}")


def _anchors(options: Options) -> tuple[list[x509.Certificate], str]:
    if options.profile.public_trust:
        anchors, name = sources.load_anchors(None)
        return anchors, f"{name} (the line profile: LINE trusts public CAs only)"
    return sources.load_anchors(options.ca_file)


def _not_selected(group: Group) -> list[CheckResult]:
    return [
        result(spec.id, Status.SKIP, f"not selected (--only excludes {group.value})")
        for spec in CATALOGUE.values()
        if spec.group is group
    ]


def run(options: Options) -> Report:
    """Run the selected groups; raise :class:`CouldNotRunError` if nothing could be checked."""
    target = parse_url(options.url)
    if options.ca_file is not None and not options.ca_file.is_file():
        raise CouldNotRunError(f"cannot read the CA file {options.ca_file}")
    try:
        anchors, anchors_name = _anchors(options)
    except sources.SourceError as exc:
        raise CouldNotRunError(str(exc)) from exc
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    ip_address = connect(target)
    results: list[CheckResult] = []
    scanned = {Group.TLS, Group.CERTIFICATE} & options.groups
    if scanned:
        try:
            commands = (
                tlsscan.TLS_COMMANDS
                if Group.TLS in options.groups
                else tlsscan.CERTIFICATE_COMMANDS
            )
            facts = tlsscan.scan(target.host, target.port, ip_address, commands)
        except tlsscan.ScanError as exc:
            raise CouldNotRunError(str(exc)) from exc
        if Group.TLS in options.groups:
            results += tlsscan.evaluate_protocols(facts, options.profile)
            results.append(tlsscan.evaluate_groups(facts, options.profile))
            results += tlsscan.evaluate_vulnerabilities(facts)
        if Group.CERTIFICATE in options.groups:
            results += tlsscan.evaluate_certificate(
                facts.chain,
                options.profile,
                anchors,
                anchors_name,
                _host_for_certificate(target.host),
                started,
            )
    if Group.WEBHOOK in options.groups:
        exchanges, series = asyncio.run(
            webhook.execute(
                target.url,
                webhook.plan(options.secret, options.body_limit),
                webhook.latency_probe(options.secret),
                options.requests,
            )
        )
        results += webhook.evaluate(exchanges, series, options.secret, options.budget)
    for group in Group:
        if group not in options.groups:
            results += _not_selected(group)
    order = list(CATALOGUE)
    results.sort(key=lambda item: order.index(item.id))
    return Report(
        target=options.url,
        profile=options.profile.name,
        started_at=started,
        seconds=time.monotonic() - clock,
        results=results,
    )


def _host_for_certificate(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
