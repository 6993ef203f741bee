"""``linerelay serve``: run the relay (PROTOCOL.md §3)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance import config as config_module
from appliance import logs
from appliance.cli import add_state_dir, explicit_state_dir
from appliance.errors import ConfigError, StoreError, TenantError
from tls import policy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay. With no config: dev PKI, SQLite store, "
        "HTTPS on 127.0.0.1:8443, admin on 127.0.0.1:9443.",
    )
    add_state_dir(parser)
    parser.add_argument("--config", type=Path, help="TOML config file (docs/config.md)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="public HTTPS listener")
    parser.add_argument("--admin-listen", metavar="HOST:PORT", help="admin HTTP listener")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="relay processes sharing the listeners, one per core to use (default 1; "
        'more needs store = "redis"; docs/scale-out.md)',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, then serve; exit status 2 on a bad config."""
    overrides = {
        "listen": args.listen,
        "admin_listen": args.admin_listen,
        "workers": args.workers,
    }
    # --state-dir beats the file; $LINERELAY_STATE_DIR comes in with the other
    # LINERELAY_* variables, and the config's default is ./var.
    overrides["state_dir"] = explicit_state_dir(args)
    try:
        config = config_module.load(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"linerelay serve: {exc}", file=sys.stderr)
        return 2
    policy.exec_with_openssl_conf(sys.argv[1:])
    logs.configure(config.log_level)
    try:
        if config.workers > 1:
            # Not imported before: it sets up the workers' metrics before prometheus-client loads.
            from appliance import workers  # noqa: PLC0415

            return workers.run(config, args.config)
        from appliance import server  # noqa: PLC0415 (keeps `linerelay tenant` light)

        server.run(config, args.config)
    except (ConfigError, policy.CertificateError, TenantError) as exc:
        print(f"linerelay serve: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # Redis unreachable at start: systemd tries again
        print(f"linerelay serve: {exc}", file=sys.stderr)
        return 1
    return 0
