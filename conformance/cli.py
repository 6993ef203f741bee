"""``linerelay conformance URL --tenant-secret SECRET``: check a deployed relay from outside."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from appliance.cli import add_state_dir
from conformance import webhook
from conformance.catalogue import Group

# The profiles' names, without importing sslyze (an optional dependency) for --help.
PROFILE_NAMES = ("modern", "intermediate", "line")
REPORT_FORMATS = ("json", "junit", "html")


class ReportWriteError(Exception):
    """A report file could not be written."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``linerelay conformance``."""
    parser = subparsers.add_parser(
        "conformance",
        help="check a deployed relay's TLS, certificate and webhook behaviour from outside",
        description="Scan the relay's TLS with sslyze, check its certificate chain, and probe "
        "its webhook with signed and unsigned requests (Verify bodies only: nothing reaches a "
        "bridge). Exit 0 when no check fails, 1 when one does, 2 when it could not run. "
        "See docs/conformance.md.",
    )
    add_state_dir(parser)
    parser.add_argument("url", metavar="URL", help="a tenant's webhook URL (https://...)")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--tenant-secret", metavar="SECRET", help="the tenant's channel secret")
    secret.add_argument(
        "--tenant-secret-file",
        type=Path,
        metavar="FILE",
        help="read the channel secret from FILE (keeps it out of the process list)",
    )
    parser.add_argument(
        "--ca", type=Path, metavar="FILE", help="trust these roots instead of the system store"
    )
    parser.add_argument(
        "--report",
        nargs=2,
        action="append",
        default=[],
        metavar=("FORMAT", "FILE"),
        help="write a report: FORMAT is json, junit or html; repeat for several",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        default="modern",
        help="modern (default): TLS 1.3 only; intermediate: TLS 1.2+ ECDHE+AEAD; "
        "line: what LINE's webhook client needs",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[group.value for group in Group],
        help="run only this group of checks (repeatable); the others are reported as skip",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=webhook.DEFAULT_REQUESTS,
        metavar="N",
        help=f"signed requests in the latency series (default {webhook.DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=webhook.DEFAULT_BUDGET,
        metavar="SECONDS",
        help="answer budget per request (default 1.0)",
    )
    parser.add_argument(
        "--body-limit",
        type=int,
        default=webhook.DEFAULT_BODY_LIMIT,
        metavar="BYTES",
        help="the relay's body limit; the oversized probe sends one byte more (default 1 MiB)",
    )
    parser.set_defaults(func=run_command)


def _fail(message: str) -> int:
    print(f"linerelay conformance: {message}", file=sys.stderr)
    return 2


class SecretFileError(Exception):
    """The channel secret file could not be read."""


def _secret(args: argparse.Namespace) -> str:
    if args.tenant_secret is not None:
        return str(args.tenant_secret)
    try:
        return str(Path(args.tenant_secret_file).read_text().strip())
    except OSError as exc:
        raise SecretFileError(f"cannot read {args.tenant_secret_file}: {exc.strerror}") from exc


def _write(path: Path, text: str) -> None:
    """Write atomically so a reader never sees half a report."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        Path(tmp).replace(path)
    except OSError as exc:
        raise ReportWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_command(args: argparse.Namespace) -> int:
    """Run the suite; 0 no failure, 1 a failure, 2 could not run."""
    for fmt, _ in args.report:
        if fmt not in REPORT_FORMATS:
            return _fail(f"unknown report format {fmt!r} (json, junit or html)")
    if args.requests < 0 or args.budget <= 0 or args.body_limit < 64:
        return _fail("--requests must be >= 0, --budget > 0 and --body-limit >= 64")
    try:
        # sslyze is the optional "conformance" extra; import it only when running.
        from conformance import report  # noqa: PLC0415
        from conformance.profiles import PROFILES  # noqa: PLC0415
        from conformance.runner import CouldNotRunError, Options, run  # noqa: PLC0415
    except ImportError as exc:
        return _fail(f"needs sslyze ({exc}); install it with: pip install 'linerelay[conformance]'")
    try:
        options = Options(
            url=args.url,
            secret=_secret(args),
            ca_file=args.ca,
            profile=PROFILES[args.profile],
            groups=frozenset(Group(name) for name in args.only) if args.only else frozenset(Group),
            requests=args.requests,
            budget=args.budget,
            body_limit=args.body_limit,
        )
        outcome = run(options)
    except (CouldNotRunError, SecretFileError) as exc:
        return _fail(str(exc))
    try:
        for fmt, name in args.report:
            _write(Path(name), report.RENDERERS[fmt](outcome))
    except ReportWriteError as exc:
        sys.stdout.write(report.to_terminal(outcome))
        return _fail(str(exc))
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    sys.stdout.write(report.to_terminal(outcome, colour=colour))
    return 1 if outcome.failed else 0
