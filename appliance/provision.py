"""``linerelay provision``: the appliance's first-boot provisioning (PROTOCOL.md §5).

The image runs it before the relay on every boot (``linerelay-provision.service``)
with the systemd credentials the unit loads (``LoadCredential=NAME``), which
qemu passes as ``-smbios type=11,value=io.systemd.credential.binary:NAME=BASE64``:

=========================  =========================================================
``linerelay.relay-toml``   the relay's config file; ``listen`` defaults to
                           ``0.0.0.0:443`` and the TLS paths to the files below
``linerelay.tls-chain``    PEM full chain, written to ``CONFIG/tls/fullchain.pem``
``linerelay.tls-key``      its PEM key, written to ``CONFIG/tls/privkey.pem``
``linerelay.tenants``      JSON array of ``{"tenant", "channel_secret", "bridge_token"}``
=========================  =========================================================

It only ever adds what is missing, so it is idempotent and a later boot never
overwrites state: an existing config or certificate is kept (and a credential
that differs from it is reported, not applied; the one exception is the
default config a boot without credentials wrote, untouched since, which a
later boot's credentials replace); a tenant already present is
left as it is, and one that was provisioned once and removed since by the
operator is not brought back. All input is checked before anything is
written: bad input exits 2 with a message saying what is wrong, and changes
nothing. With no certificate configured the relay serves its embedded dev
PKI; provisioning creates it and prints its root, for the serial console.
Nothing secret is ever printed.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import config as config_module
from appliance.cli import add_state_dir, state_dir
from appliance.errors import ConfigError, TenantError
from appliance.state import StateDir
from appliance.tenants import MIN_TOKEN_CHARS, TenantRegistry, validate_id
from tls import policy

RELAY_TOML = "linerelay.relay-toml"
TLS_CHAIN = "linerelay.tls-chain"
TLS_KEY = "linerelay.tls-key"
TENANTS = "linerelay.tenants"
CREDENTIALS = (RELAY_TOML, TLS_CHAIN, TLS_KEY, TENANTS)

#: What the image's relay listens on unless the config says otherwise.
IMAGE_DEFAULTS = {"listen": "0.0.0.0:443", "admin_listen": "127.0.0.1:9443"}
TENANT_KEYS = frozenset({"tenant", "channel_secret", "bridge_token"})

DESCRIPTION = (
    "Write the relay's config, certificate and tenants from systemd credentials, adding "
    "only what is missing; with no certificate, create the dev PKI and print its root. "
    "Bad input exits 2 and changes nothing."
)


class ProvisionError(Exception):
    """A credential that cannot be applied; the message says which and why, never its content."""


@dataclass(frozen=True)
class TenantSpec:
    """One entry of the tenants credential, checked."""

    tenant: str
    channel_secret: str
    bridge_token: str

    def __repr__(self) -> str:
        return f"TenantSpec({self.tenant!r})"


@dataclass(frozen=True)
class Plan:
    """Everything the credentials ask for, checked and ready to apply."""

    relay_toml: str | None
    chain: bytes | None
    key: bytes | None
    tenants: tuple[TenantSpec, ...]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``provision``."""
    _arguments(
        subparsers.add_parser(
            "provision",
            help="apply first-boot credentials (appliance image; PROTOCOL.md §5)",
            description=DESCRIPTION,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m appliance.provision ARGS``: ``linerelay provision ARGS`` without the
    other subcommands' imports, which cost seconds at every boot under emulation."""
    parser = argparse.ArgumentParser(prog="linerelay provision", description=DESCRIPTION)
    _arguments(parser)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_state_dir(parser)
    parser.add_argument(
        "--credentials",
        type=Path,
        required=True,
        help="the credentials directory ($CREDENTIALS_DIRECTORY); absent or empty: nothing given",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        help="where relay.toml and tls/ go (default: STATE/config)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The command: exit 0 when provisioned (or nothing to do), 2 on bad input."""
    state = state_dir(args)
    config_dir = args.config_dir or StateDir(state).config
    try:
        provision(args.credentials, state, config_dir, say=print)
    except ProvisionError as exc:
        print(f"linerelay provision: {exc}", file=sys.stderr)
        return 2
    return 0


def provision(
    credentials: Path, state: Path, config_dir: Path, say: Callable[[str], object] = print
) -> None:
    """Apply ``credentials`` to ``state`` and ``config_dir``; raises :class:`ProvisionError`.

    ``say`` gets one line per thing done or kept.
    """
    plan = read(credentials, config_dir)
    _apply_tenants(plan.tenants, state, say)
    toml_path = config_dir / "relay.toml"
    chain_path, key_path = config_dir / "tls" / "fullchain.pem", config_dir / "tls" / "privkey.pem"
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if plan.chain is not None and plan.key is not None:
        if chain_path.exists() or key_path.exists():
            _kept(chain_path, plan.chain, "tls-chain", say)
            _kept(key_path, plan.key, "tls-key", say)
        else:
            chain_path.parent.mkdir(exist_ok=True, mode=0o700)
            # The key first: a chain without its key is refused loudly by the relay.
            _write(key_path, plan.key)
            _write(chain_path, plan.chain)
            say(f"provision: certificate written to {chain_path}")
    wanted = _render(plan, config_dir).encode()
    # The config a boot without credentials writes is provisioning's own
    # default, not state: credentials given on a later boot replace it as long
    # as nobody has edited it.
    default = _render(Plan(None, None, None, ()), config_dir).encode()
    if toml_path.exists() and not (_read(toml_path) == default and wanted != default):
        if plan.relay_toml is not None or plan.chain is not None:
            _kept(toml_path, wanted, "relay-toml", say)
    else:
        _write(toml_path, wanted)
        say(f"provision: config written to {toml_path}")
    try:
        config = _load(toml_path.read_text(encoding="utf-8"), state, str(toml_path))
    except ProvisionError as exc:
        # An operator's later edit is the relay's to judge and report, not first boot's.
        say(f"provision: {exc}")
        return
    if config.uses_dev_pki:
        _announce_dev_pki(StateDir(state).pki, say)


def read(credentials: Path, config_dir: Path) -> Plan:
    """Read and check every credential in ``credentials``; nothing is written."""
    given = {name: _credential(credentials, name) for name in CREDENTIALS}
    chain, key = given[TLS_CHAIN], given[TLS_KEY]
    if (chain is None) != (key is None):
        raise ProvisionError(f"{TLS_CHAIN} and {TLS_KEY} go together: one was given alone")
    if chain is not None and key is not None:
        _check_pair(chain, key)
    toml_bytes, tenants_bytes = given[RELAY_TOML], given[TENANTS]
    relay_toml = None if toml_bytes is None else _text(toml_bytes, RELAY_TOML)
    tenants = () if tenants_bytes is None else _tenants(tenants_bytes)
    plan = Plan(relay_toml, chain, key, tenants)
    # The config as it would be written must load, whatever else is there.
    _load(_render(plan, config_dir), Path("var"), RELAY_TOML)
    return plan


# -- reading -------------------------------------------------------------------


def _credential(directory: Path, name: str) -> bytes | None:
    try:
        return (directory / name).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisionError(f"{name}: cannot be read ({exc.strerror})") from exc


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProvisionError(f"{name}: not UTF-8 text") from exc


def _check_pair(chain: bytes, key: bytes) -> None:
    """The chain and key must load together, as the relay will load them."""
    with tempfile.TemporaryDirectory(prefix="linerelay-provision-") as scratch:
        chain_file, key_file = Path(scratch) / "chain.pem", Path(scratch) / "key.pem"
        _write(chain_file, chain)
        _write(key_file, key)
        try:
            policy.load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), chain_file, key_file)
        except policy.CertificateError as exc:
            raise ProvisionError(
                f"{TLS_CHAIN} / {TLS_KEY}: cannot be served; check the chain is PEM, "
                "leaf first, and the key is the leaf's"
            ) from exc


def _tenants(data: bytes) -> tuple[TenantSpec, ...]:
    try:
        entries = json.loads(_text(data, TENANTS))
    except json.JSONDecodeError as exc:
        # The decoder's message names a position, never the text.
        raise ProvisionError(f"{TENANTS}: not JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(entries, list):
        raise ProvisionError(f"{TENANTS}: must be a JSON array of objects")
    specs: list[TenantSpec] = []
    for index, entry in enumerate(entries):
        where = f"{TENANTS}[{index}]"
        if not isinstance(entry, dict):
            raise ProvisionError(f"{where}: must be an object")
        unknown = sorted(set(entry) - TENANT_KEYS)
        missing = sorted(TENANT_KEYS - set(entry))
        if unknown or missing:
            raise ProvisionError(
                f"{where}: "
                + "; ".join(
                    ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                    + ([f"missing key(s) {', '.join(missing)}"] if missing else [])
                )
            )
        for key in sorted(TENANT_KEYS):
            if not isinstance(entry[key], str):
                raise ProvisionError(f"{where}: {key} must be a string")
        try:
            tenant = validate_id(entry["tenant"])
        except TenantError as exc:
            raise ProvisionError(f"{where}: {exc}") from exc
        where = f"{TENANTS}: tenant {tenant!r}"
        secret, token = entry["channel_secret"].strip(), entry["bridge_token"]
        if not secret or not secret.isprintable() or any(c.isspace() for c in secret):
            raise ProvisionError(f"{where}: channel_secret is empty or has spaces or controls")
        if len(token) < MIN_TOKEN_CHARS:
            raise ProvisionError(
                f"{where}: bridge_token is shorter than {MIN_TOKEN_CHARS} characters"
            )
        if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise ProvisionError(
                f"{where}: bridge_token must be printable ASCII without spaces (it goes in a header)"
            )
        specs.append(TenantSpec(tenant, secret, token))
    ids = [s.tenant for s in specs]
    if len(set(ids)) != len(ids):
        raise ProvisionError(f"{TENANTS}: a tenant appears twice")
    if len({s.bridge_token for s in specs}) != len(specs):
        raise ProvisionError(f"{TENANTS}: two tenants share a bridge_token")
    return tuple(specs)


def _render(plan: Plan, config_dir: Path) -> str:
    """The relay.toml to write: the credential's, with the image's defaults in front."""
    text = plan.relay_toml or ""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{RELAY_TOML}: not valid TOML ({exc})") from exc
    defaults: dict[str, str] = {k: v for k, v in IMAGE_DEFAULTS.items() if k not in document}
    if plan.chain is not None:
        if "tls_cert_file" in document or "tls_key_file" in document:
            raise ProvisionError(
                f"{RELAY_TOML} sets tls_cert_file/tls_key_file and {TLS_CHAIN}/{TLS_KEY} "
                "were given too: use one or the other"
            )
        defaults["tls_cert_file"] = str(config_dir / "tls" / "fullchain.pem")
        defaults["tls_key_file"] = str(config_dir / "tls" / "privkey.pem")
    # Prepended: every relay key is top-level, and a key before any table stays top-level.
    head = "".join(f"{key} = {json.dumps(value)}\n" for key, value in defaults.items())
    header = (
        "# Written by `linerelay provision` at first boot; yours to edit (docs/appliance.md).\n"
    )
    return header + head + ("\n" + text if text else "")


def _load(text: str, state: Path, name: str) -> config_module.RelayConfig:
    try:
        with tempfile.TemporaryDirectory(prefix="linerelay-provision-") as scratch:
            path = Path(scratch) / "relay.toml"
            path.write_text(text, encoding="utf-8")
            return config_module.load(path, {}, {"state_dir": state})
    except ConfigError as exc:
        raise ProvisionError(f"{name}: {exc}") from exc


# -- applying ------------------------------------------------------------------


def _apply_tenants(
    specs: tuple[TenantSpec, ...], state: Path, say: Callable[[str], object]
) -> None:
    """Add the tenants not present and never provisioned before; all or none."""
    if not specs:
        return
    layout = StateDir(state)
    record_path = layout.provisioned_tenants
    try:
        recorded = set(json.loads(record_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        recorded = set()
    except (OSError, ValueError, TypeError) as exc:
        raise ProvisionError(f"{record_path}: unreadable ({exc}); remove it to start over") from exc
    registry = TenantRegistry(layout.tenants)
    added: list[str] = []
    try:
        for spec in specs:
            if registry.exists(spec.tenant):
                say(f"provision: tenant {spec.tenant} present, left as it is")
            elif spec.tenant in recorded:
                say(
                    f"provision: tenant {spec.tenant} was removed since it was provisioned; not added"
                )
            else:
                registry.add(spec.tenant, spec.channel_secret, token=spec.bridge_token)
                added.append(spec.tenant)
        if added:
            _write(record_path, json.dumps(sorted(recorded | set(added))).encode())
    except (TenantError, OSError) as exc:
        # All or none: take back this run's additions.
        for tenant in added:
            registry.remove(tenant)
        raise ProvisionError(f"{TENANTS}: {exc}; no tenant was added") from exc
    finally:
        registry.close()
    for tenant in added:
        say(f"provision: tenant {tenant} added (bridge token stored hashed)")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _kept(path: Path, wanted: bytes, name: str, say: Callable[[str], object]) -> None:
    if _read(path) != wanted:
        say(
            f"provision: {path} exists and is kept; the {name} credential differs and is not applied"
        )


def _announce_dev_pki(directory: Path, say: Callable[[str], object]) -> None:
    """Create the dev PKI if needed and print its root: the one thing clients must trust."""
    # Imported here: cryptography costs a second at boot under emulation, and
    # only a relay without a certificate needs it.
    from tls.pki import EmbeddedPKI  # noqa: PLC0415

    pki = EmbeddedPKI(directory)
    pki.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if pki.ensure():
        # EmbeddedPKI does not fsync; a power cut right after first boot must
        # not leave empty PEM files the relay can never start on.
        os.sync()
        say(f"provision: development PKI created in {pki.directory}")
    say(
        "provision: no certificate was provisioned; the relay serves its development PKI. "
        f"Clients trust this root ({pki.root}):"
    )
    say(pki.root.read_text(encoding="ascii").rstrip("\n"))


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) durably, replacing it in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


if __name__ == "__main__":
    raise SystemExit(main())
