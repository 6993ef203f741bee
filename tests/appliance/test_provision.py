"""`linerelay provision`: first-boot credentials (PROTOCOL.md §5), through the real command."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.state import StateDir
from appliance.tenants import SQLiteTenantDirectory, TenantRegistry
from tls import pki as tls_pki

TOKEN_A = "lrb_" + "a1" * 20
TOKEN_B = "lrb_" + "b2" * 20
SECRET_A = "0123456789abcdef0123456789abcdef"
SECRET_B = "fedcba9876543210fedcba9876543210"
SECRETS = (TOKEN_A, TOKEN_B, SECRET_A, SECRET_B)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_pki.DevPKI:
    return tls_pki.create(tmp_path_factory.mktemp("pki"), ["relay.example.com"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> tls_pki.DevPKI:
    return tls_pki.create(tmp_path_factory.mktemp("pki2"), ["other.example.com"])


class Box:
    """A credentials directory, a state dir and a config dir, and the command run on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.credentials = root / "credentials"
        self.state = root / "var" / "state"
        self.layout = StateDir(self.state)
        self.config = root / "var" / "config"
        self.credentials.mkdir()

    def give(self, name: str, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        (self.credentials / f"linerelay.{name}").write_bytes(raw)

    def tenants(self, *entries: dict[str, str]) -> None:
        self.give("tenants", json.dumps(list(entries)))

    def run(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        status = main(
            [
                "provision",
                "--credentials",
                str(self.credentials),
                "--state-dir",
                str(self.state),
                "--config-dir",
                str(self.config),
            ]
        )
        out, err = capsys.readouterr()
        for secret in SECRETS:
            assert secret not in out + err, "a secret reached the output"
        return status, out, err

    def snapshot(self) -> dict[str, bytes | None]:
        """Every file and folder under var/, with file contents."""
        var = self.root / "var"
        if not var.exists():
            return {}
        return {
            str(p.relative_to(var)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(var.rglob("*"))
        }


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def tenant(name: str, secret: str, token: str) -> dict[str, str]:
    return {"tenant": name, "channel_secret": secret, "bridge_token": token}


def test_everything_given_is_written_privately_and_served_from(
    box: Box, pki: tls_pki.DevPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("relay-toml", 'log_level = "warning"\nqueue_cap = 50\n')
    box.give("tls-chain", pki.chain.read_bytes())
    box.give("tls-key", pki.key.read_bytes())
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A), tenant("shop-2", SECRET_B, TOKEN_B))
    status, out, _ = box.run(capsys)
    assert status == 0
    config = tomllib.loads((box.config / "relay.toml").read_text())
    assert config["listen"] == "0.0.0.0:443"
    assert config["log_level"] == "warning"
    assert config["queue_cap"] == 50
    assert Path(config["tls_cert_file"]).read_bytes() == pki.chain.read_bytes()
    assert Path(config["tls_key_file"]).read_bytes() == pki.key.read_bytes()
    for path in (box.config / "relay.toml", Path(config["tls_key_file"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    directory = SQLiteTenantDirectory(box.layout.tenants)
    try:
        found = directory.authenticate(TOKEN_A)
        assert found is not None
        assert found.id == "shop-1"
        assert found.secret == SECRET_A.encode()
        assert directory.authenticate(TOKEN_B) is not None
    finally:
        directory.close()
    assert TOKEN_A.encode() not in (box.layout.tenants).read_bytes()
    assert "tenant shop-1 added" in out
    # A certificate was given: no dev PKI.
    assert not box.layout.pki.exists()
    assert "BEGIN CERTIFICATE" not in out


def test_without_credentials_the_dev_pki_root_is_printed(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = box.run(capsys)
    assert status == 0
    root = tls_pki.EmbeddedPKI(box.layout.pki).root.read_text()
    assert root.strip() in out
    config = tomllib.loads((box.config / "relay.toml").read_text())
    assert config == {"listen": "0.0.0.0:443", "admin_listen": "127.0.0.1:9443"}
    # Every boot prints it again, and it stays the same root.
    status, again, _ = box.run(capsys)
    assert status == 0
    assert root.strip() in again
    assert tls_pki.EmbeddedPKI(box.layout.pki).root.read_text() == root


def test_a_missing_credentials_directory_is_no_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Box(tmp_path)
    box.credentials.rmdir()
    status, out, _ = box.run(capsys)
    assert status == 0
    assert "BEGIN CERTIFICATE" in out


def test_a_later_boot_overwrites_nothing(
    box: Box, pki: tls_pki.DevPKI, other_pki: tls_pki.DevPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("relay-toml", "queue_cap = 50\n")
    box.give("tls-chain", pki.chain.read_bytes())
    box.give("tls-key", pki.key.read_bytes())
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A))
    assert box.run(capsys)[0] == 0
    first = box.snapshot()
    # The same credentials again: nothing changes, nothing is reported as differing.
    status, out, _ = box.run(capsys)
    assert status == 0
    assert box.snapshot() == first
    assert "differs" not in out
    assert "shop-1 present" in out
    # Different ones: what exists is kept and the difference reported.
    box.give("relay-toml", "queue_cap = 99\n")
    box.give("tls-chain", other_pki.chain.read_bytes())
    box.give("tls-key", other_pki.key.read_bytes())
    box.tenants(tenant("shop-1", SECRET_B, TOKEN_B))
    status, out, _ = box.run(capsys)
    assert status == 0
    assert box.snapshot() == first
    for name in ("relay-toml", "tls-chain", "tls-key"):
        assert f"the {name} credential differs and is not applied" in out


def test_new_tenants_are_added_and_removed_ones_stay_removed(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A))
    assert box.run(capsys)[0] == 0
    registry = TenantRegistry(box.layout.tenants)
    registry.remove("shop-1")  # the operator's `linerelay tenant remove`
    registry.close()
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A), tenant("shop-2", SECRET_B, TOKEN_B))
    status, out, _ = box.run(capsys)
    assert status == 0
    assert "shop-1 was removed since it was provisioned; not added" in out
    registry = TenantRegistry(box.layout.tenants)
    try:
        assert [t.id for t in registry.list()] == ["shop-2"]
    finally:
        registry.close()
    assert json.loads(box.layout.provisioned_tenants.read_text()) == ["shop-1", "shop-2"]


def test_a_token_already_in_use_adds_no_tenant_at_all(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A))
    assert box.run(capsys)[0] == 0
    before = box.snapshot()
    # shop-2 would be added first; shop-3's token is shop-1's: all or none.
    box.tenants(tenant("shop-2", SECRET_B, TOKEN_B), tenant("shop-3", SECRET_B, TOKEN_A))
    status, _, err = box.run(capsys)
    assert status == 2
    assert "token is in use" in err
    assert "no tenant was added" in err
    registry = TenantRegistry(box.layout.tenants)
    try:
        assert [t.id for t in registry.list()] == ["shop-1"]
    finally:
        registry.close()
    assert json.loads(box.layout.provisioned_tenants.read_text()) == ["shop-1"]
    assert set(box.snapshot()) == set(before)


BAD_TENANTS = [
    ("not json", "[{", "not JSON"),
    ("an object", '{"tenant": "a"}', "must be a JSON array"),
    ("not objects", '["a"]', "must be an object"),
    ("unknown key", json.dumps([{**tenant("a", SECRET_A, TOKEN_A), "x": "1"}]), "unknown key(s) x"),
    ("missing key", json.dumps([{"tenant": "a", "channel_secret": SECRET_A}]), "bridge_token"),
    ("not a string", json.dumps([{**tenant("a", SECRET_A, TOKEN_A), "tenant": 7}]), "string"),
    ("bad id", json.dumps([tenant("Shop_1", SECRET_A, TOKEN_A)]), "invalid tenant id"),
    ("short token", json.dumps([tenant("a", SECRET_A, "lrb_short")]), "shorter than 32"),
    ("spaced token", json.dumps([tenant("a", SECRET_A, "x" * 20 + " " + "y" * 20)]), "printable"),
    ("empty secret", json.dumps([tenant("a", " ", TOKEN_A)]), "channel_secret is empty"),
    (
        "same id twice",
        json.dumps([tenant("a", SECRET_A, TOKEN_A), tenant("a", SECRET_B, TOKEN_B)]),
        "appears twice",
    ),
    (
        "same token twice",
        json.dumps([tenant("a", SECRET_A, TOKEN_A), tenant("b", SECRET_B, TOKEN_A)]),
        "share a bridge_token",
    ),
    ("not utf-8", b"\xff\xfe[]", "not UTF-8"),
]


@pytest.mark.parametrize(
    ("data", "why"), [(d, w) for _, d, w in BAD_TENANTS], ids=[n for n, _, _ in BAD_TENANTS]
)
def test_bad_tenants_exit_2_and_change_nothing(
    box: Box, data: str | bytes, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("relay-toml", "queue_cap = 50\n")
    box.give("tenants", data)
    status, _, err = box.run(capsys)
    assert status == 2
    assert why in err
    assert "linerelay.tenants" in err
    assert box.snapshot() == {}


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"relay-toml": "listen = "}, "not valid TOML"),
        ({"relay-toml": "no_such_key = 1\n"}, "unknown config key 'no_such_key'"),
        ({"relay-toml": 'tls_policy = "old"\n'}, "tls_policy"),
        ({"relay-toml": "[section]\nx = 1\n"}, "unknown config key 'section'"),
        ({"tls-chain": "chain"}, "go together"),
        ({"tls-key": "key"}, "go together"),
        ({"tls-chain": "not pem", "tls-key": "not pem"}, "cannot be served"),
    ],
)
def test_bad_config_or_certificate_exits_2_and_changes_nothing(
    box: Box, files: dict[str, str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A))
    for name, data in files.items():
        box.give(name, data)
    status, _, err = box.run(capsys)
    assert status == 2
    assert why in err
    assert box.snapshot() == {}


def test_a_key_that_is_not_the_leafs_is_refused(
    box: Box, pki: tls_pki.DevPKI, other_pki: tls_pki.DevPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("tls-chain", pki.chain.read_bytes())
    box.give("tls-key", other_pki.key.read_bytes())
    status, _, err = box.run(capsys)
    assert status == 2
    assert "the key is the leaf's" in err
    assert box.snapshot() == {}


def test_tls_paths_in_the_config_and_given_certificates_conflict(
    box: Box, pki: tls_pki.DevPKI, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("relay-toml", 'tls_cert_file = "/a"\ntls_key_file = "/b"\n')
    box.give("tls-chain", pki.chain.read_bytes())
    box.give("tls-key", pki.key.read_bytes())
    status, _, err = box.run(capsys)
    assert status == 2
    assert "use one or the other" in err
    assert box.snapshot() == {}


def test_the_operators_listen_wins_over_the_images_default(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.give("relay-toml", 'listen = "0.0.0.0:8443"\n')
    assert box.run(capsys)[0] == 0
    assert tomllib.loads((box.config / "relay.toml").read_text())["listen"] == "0.0.0.0:8443"


def test_the_units_entry_point_is_the_same_command(box: Box) -> None:
    """linerelay-provision.service runs ``python -m appliance.provision`` (fewer imports)."""
    argv = [sys.executable, "-m", "appliance.provision", "--credentials", str(box.credentials)]
    argv += ["--state-dir", str(box.state), "--config-dir", str(box.config)]
    box.tenants(tenant("shop-1", SECRET_A, "short"))
    bad = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "linerelay provision: linerelay.tenants" in bad.stderr
    assert box.snapshot() == {}
    box.tenants(tenant("shop-1", SECRET_A, TOKEN_A))
    good = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert "tenant shop-1 added" in good.stdout
    assert "BEGIN CERTIFICATE" in good.stdout


def test_credentials_after_a_boot_without_any_replace_only_the_untouched_default(
    box: Box, pki: tls_pki.DevPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert box.run(capsys)[0] == 0  # no credentials: the default config, the dev PKI
    box.give("tls-chain", pki.chain.read_bytes())
    box.give("tls-key", pki.key.read_bytes())
    status, out, _ = box.run(capsys)
    assert status == 0
    config = tomllib.loads((box.config / "relay.toml").read_text())
    assert Path(config["tls_cert_file"]).read_bytes() == pki.chain.read_bytes()
    assert "BEGIN CERTIFICATE" not in out  # the dev PKI no longer serves
    # An operator's edit is state: later credentials leave it as it is.
    (tmp_path / "other").mkdir()
    other = Box(tmp_path / "other")
    assert other.run(capsys)[0] == 0
    edited = (other.config / "relay.toml").read_text() + "queue_cap = 7\n"
    (other.config / "relay.toml").write_text(edited)
    other.give("tls-chain", pki.chain.read_bytes())
    other.give("tls-key", pki.key.read_bytes())
    status, out, _ = other.run(capsys)
    assert status == 0
    assert (other.config / "relay.toml").read_text() == edited
    assert "the relay-toml credential differs and is not applied" in out
