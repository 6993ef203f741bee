"""``linerelay tls``: the certificate doctor (``check``) and the test PKI (``dev-pki``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from appliance.cli import add_state_dir
from tls import pki, rules, sources

_COLOURS = {
    rules.Level.OK: "\033[32m",
    rules.Level.INFO: "\033[36m",
    rules.Level.WARNING: "\033[33m",
    rules.Level.ERROR: "\033[31;1m",
}
_RESET = "\033[0m"

DEV_PKI_DESCRIPTION = """\
Write a throwaway root -> intermediate -> leaf for tests and trials (tls/pki.py,
the builder of the relay's own dev PKI too), under certbot's file names so a
relay or any web server is pointed at them as at a real deployment:

  root.pem       the root CA; give it to clients (--ca root.pem)
  chain.pem      the intermediate CA alone
  cert.pem       the leaf alone (serving only this is the classic
                 "intermediate missing" mistake)
  fullchain.pem  leaf then intermediate: what a server should send
  privkey.pem    the leaf's private key (mode 0600)

The leaf lives at most 90 days (Mozilla's modern profile). Existing files are
kept unless --force; bad input writes nothing.
"""


class TargetError(ValueError):
    """A ``--connect`` value that is not HOST[:PORT]."""


def parse_host_port(text: str, default_port: int = 443) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``host`` (port 443)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise TargetError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f"bad port in {text!r}")
    return host, int(port_text)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``linerelay tls check`` and ``linerelay tls dev-pki``."""
    parser = subparsers.add_parser(
        "tls", help="check a certificate chain, or make a test PKI", description=__doc__
    )
    add_state_dir(parser)
    commands = parser.add_subparsers(dest="tls_command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="explain why a client would reject a certificate chain",
        description="Check a certificate chain from a file or a live server: trust, missing "
        "or misordered intermediates, root sent, key match, expiry, host name, key type and "
        "signature algorithm, by the rules the relay applies at start and the conformance "
        "suite too (tls/rules.py). Every problem comes with what to do about it.",
    )
    add_state_dir(check)
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--cert", type=Path, metavar="FILE", help="PEM file with the chain")
    source.add_argument("--connect", metavar="HOST:PORT", help="a live TLS server")
    check.add_argument("--key", type=Path, metavar="FILE", help="PEM private key (with --cert)")
    check.add_argument(
        "--ca", type=Path, metavar="FILE", help="trust these roots instead of the system store"
    )
    check.add_argument(
        "--host",
        metavar="NAME",
        help="public host name the certificate must cover (default with --connect: its host)",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(func=run_check)

    dev_pki = commands.add_parser(
        "dev-pki",
        help="write a test root -> intermediate -> leaf into DIR",
        description=DEV_PKI_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_state_dir(dev_pki)
    dev_pki.add_argument("directory", type=Path, metavar="DIR")
    dev_pki.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="a name or IP the leaf covers; repeat (default: localhost, 127.0.0.1, ::1)",
    )
    dev_pki.add_argument(
        "--days",
        type=int,
        default=pki.MAX_LEAF_DAYS,
        help=f"leaf lifetime in days, at most {pki.MAX_LEAF_DAYS}",
    )
    dev_pki.add_argument("--force", action="store_true", help="replace existing files in DIR")
    dev_pki.set_defaults(func=run_dev_pki)


def _colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def render_findings(findings: list[rules.Finding], colour: bool) -> str:
    """The findings as terminal text, worst first, each with its advice."""
    order = list(rules.Level)
    lines = []
    for finding in sorted(findings, key=lambda f: -order.index(f.level)):
        label = f"{finding.level.value.upper():<7}"
        if colour:
            label = f"{_COLOURS[finding.level]}{label}{_RESET}"
        lines.append(f"{label} {finding.code:<14} {finding.message}")
        if finding.advice:
            lines.append(f"{'':<8}{'':<14} -> {finding.advice}")
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    """Run the doctor; 0 no error, 1 an error finding, 2 could not run."""
    try:
        anchors, anchors_name = sources.load_anchors(args.ca)
        key = sources.load_private_key(args.key) if args.key else None
        if args.cert is not None:
            target = str(args.cert)
            certs = sources.load_certificates(args.cert)
            host = args.host
        else:
            host_name, port = parse_host_port(args.connect)
            target = f"{host_name}:{port}"
            certs = sources.fetch_chain(host_name, port, server_name=args.host)
            host = args.host or host_name
        findings = rules.judge(certs, anchors, anchors_name=anchors_name, host=host, key=key)
    except (sources.SourceError, TargetError) as exc:
        print(f"linerelay tls check: {exc}", file=sys.stderr)
        return 2
    worst = rules.worst(findings)
    if args.json:
        json.dump(
            {
                "target": target,
                "worst": worst.value,
                "findings": [finding.as_dict() for finding in findings],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(f"Certificate check of {target} ({len(certs)} certificate(s))")
        print(render_findings(findings, _colour(sys.stdout)))
    return 1 if worst is rules.Level.ERROR else 0


def run_dev_pki(args: argparse.Namespace) -> int:
    """Write the dev PKI; 0 written, 2 bad input (nothing written)."""
    hosts = args.hosts or list(pki.DEFAULT_NAMES)
    try:
        made = pki.create(args.directory, hosts, args.days, force=args.force)
    except pki.PKIError as exc:
        print(f"linerelay tls dev-pki: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a dev PKI for {', '.join(hosts)} into {made.directory}:")
    print(f"  serve  {made.chain} with key {made.key}")
    print(f"  trust  {made.root} (clients: --ca {made.root})")
    return 0
