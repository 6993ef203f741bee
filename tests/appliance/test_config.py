from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance import config
from appliance.config import RelayConfig
from appliance.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_default() -> None:
    c = config.load()
    assert (c.listen, c.admin_listen, c.tls_policy) == (
        "127.0.0.1:8443",
        "127.0.0.1:9443",
        "modern",
    )
    assert c.max_body_bytes == 1024 * 1024
    assert c.ack_deadline_ms == 800
    assert c.uses_dev_pki


def test_toml_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "0.0.0.0:443"\nqueue_cap = 7\nack_deadline_ms = 500\n')
    env = {"LINERELAY_QUEUE_CAP": "9", "LINERELAY_NOT_A_KEY": "x", "OTHER": "y"}
    c = config.load(path, env, {"ack_deadline_ms": 300, "listen": None})
    assert (c.listen, c.queue_cap, c.ack_deadline_ms) == ("0.0.0.0:443", 9, 300)


def test_intermediate_policy_is_accepted(tmp_path: Path) -> None:
    assert (
        config.load(write(tmp_path, 'tls_policy = "intermediate"\n')).tls_policy == "intermediate"
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("bogus = 1\n", "bogus"),
        ('tls_policy = "old"\n', "tls_policy"),
        ('queue_cap = "many"\n', "queue_cap"),
        ("queue_cap = 0\n", "queue_cap"),
        ("queue_cap = true\n", "queue_cap"),
        ('listen = "nowhere"\n', "listen"),
        ('listen = "127.0.0.1:99999"\n', "listen"),
        ('tls_cert_file = "/x.pem"\n', "tls_cert_file"),
        ("ping_interval = 30\nbridge_idle_timeout = 10\n", "bridge_idle_timeout"),
        ("ack_deadline_ms = -1\n", "ack_deadline_ms"),
        ("listen = \n", "TOML"),
        ("queue_cap = " + "[" * 2000 + "]" * 2000 + "\n", "TOML"),  # RecursionError in tomllib
        ("queue_cap = " + "9" * 4301 + "\n", "TOML"),  # over Python's int digit limit
        ("queue_cap = inf\n", "queue_cap"),  # int(inf): OverflowError
        ("queue_cap = 1.5\n", "queue_cap"),  # was silently 1
        ("body_timeout = " + "9" * 400 + "\n", "body_timeout"),  # float(10**400): OverflowError
        ("dedupe_window = inf\n", "dedupe_window"),  # the store then failed to open
        ("max_unacked_age = nan\n", "max_unacked_age"),
        ("tls_read_buffer = 512\n", "tls_read_buffer"),  # a TLS record in many reads
        ("tls_read_buffer = 1048576\n", "tls_read_buffer"),  # past asyncio's own
        ("tls_read_buffer = -1\n", "tls_read_buffer"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        config.load(write(tmp_path, text))


def test_bad_environment_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match="max_body_bytes"):
        config.load(None, {"LINERELAY_MAX_BODY_BYTES": "lots"})


@pytest.mark.parametrize("address", ["h:\u00b2", "h:\u0663", "h:" + "9" * 4301, "h:080808"])
def test_a_port_is_one_to_five_ascii_digits(address: str) -> None:
    # int() refused the superscript two that isdigit() let through (ValueError, not
    # ConfigError), took Arabic-Indic digits, and failed on 4,301 of them.
    with pytest.raises(ConfigError, match="listen"):
        config.load(None, {"LINERELAY_LISTEN": address})


@pytest.mark.parametrize("raw", ["inf", "-inf", "INF", "1e400", "nan"])
def test_seconds_must_be_a_finite_number(raw: str) -> None:
    with pytest.raises(ConfigError, match="send_timeout"):
        config.load(None, {"LINERELAY_SEND_TIMEOUT": raw})


def test_a_zero_tls_read_buffer_asks_for_asyncio_s_own() -> None:
    assert config.load(None, {"LINERELAY_TLS_READ_BUFFER": "0"}).tls_read_buffer == 0


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load(tmp_path / "absent.toml")


def test_docs_config_md_is_what_linerelay_config_docs_generates() -> None:
    # Regenerate with: linerelay config --docs > docs/config.md
    assert DOCS.read_text() == config.render_docs()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert documented == set(RelayConfig.documented_keys())


def test_every_key_has_a_docstring_in_its_field() -> None:
    assert all(doc.strip() for doc in RelayConfig.documented_keys().values())


def test_replace_validates() -> None:
    with pytest.raises(ConfigError):
        RelayConfig().replace(bridge_window=0)


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("False", False)])
def test_booleans_from_the_environment(raw: str, expected: bool) -> None:
    assert (
        config.load(None, {"LINERELAY_HYPERCORN_ACCESS_LOG": raw}).hypercorn_access_log is expected
    )


def test_a_non_boolean_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hypercorn_access_log"):
        config.load(write(tmp_path, 'hypercorn_access_log = "yes please"\n'))


def test_plain_http_is_refused_on_a_public_address() -> None:
    with pytest.raises(ConfigError, match="public_tls"):
        RelayConfig(listen="0.0.0.0:8080", public_tls=False)
    assert not RelayConfig(listen="127.0.0.1:8080", public_tls=False).public_tls
    assert not RelayConfig(listen="unix:/run/linerelay/public.sock", public_tls=False).public_tls


def test_trusted_proxies_come_as_a_toml_list_or_a_comma_separated_variable(
    tmp_path: Path,
) -> None:
    from_file = config.load(write(tmp_path, 'trusted_proxies = ["127.0.0.1", "unix"]\n'))
    assert from_file.trusted_proxies == ("127.0.0.1", "unix")
    from_env = config.load(None, {"LINERELAY_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert from_env.trusted_proxies == ("10.0.0.0/8", "::1")
    with pytest.raises(ConfigError, match="trusted_proxies"):
        config.load(write(tmp_path, "trusted_proxies = [1, 2]\n"))
    with pytest.raises(ConfigError, match="trusted_proxies"):
        config.load(None, {"LINERELAY_TRUSTED_PROXIES": "nope"})


@pytest.mark.parametrize("key", ["retain_delivered", "retain_expired"])
def test_retention_shorter_than_the_dedupe_window_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: must be at least dedupe_window"):
        config.load(None, {f"LINERELAY_{key.upper()}": "299", "LINERELAY_DEDUPE_WINDOW": "300"})
    assert getattr(config.load(None, {f"LINERELAY_{key.upper()}": "300"}), key) == 300


def test_error_reports_are_off_by_default_and_take_a_sentry_dsn(tmp_path: Path) -> None:
    assert config.load().sentry_dsn == ""
    dsn = "https://0123abcd@o1.ingest.sentry.io/4507"
    assert config.load(write(tmp_path, f'sentry_dsn = "{dsn}"\n')).sentry_dsn == dsn
    assert config.load(None, {"LINERELAY_SENTRY_DSN": dsn}).sentry_dsn == dsn
    assert "sentry_dsn" in config.RESTART_KEYS


@pytest.mark.parametrize(
    "dsn",
    [
        "https://sentry.example/1",  # no public key
        "https://key@sentry.example/",  # no project
        "ftp://key@sentry.example/1",
        "key@sentry.example/1",
        "https://key@/1",
    ],
)
def test_a_malformed_sentry_dsn_is_refused_without_being_repeated(tmp_path: Path, dsn: str) -> None:
    with pytest.raises(ConfigError, match="sentry_dsn") as refused:
        config.load(write(tmp_path, f'sentry_dsn = "{dsn}"\n'))
    assert dsn not in str(refused.value)


def test_a_sentry_dsn_of_the_wrong_type_is_refused_without_being_repeated(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="sentry_dsn") as refused:
        config.load(write(tmp_path, "sentry_dsn = 4507123\n"))
    assert "4507123" not in str(refused.value)
