from __future__ import annotations

import pytest

from appliance.errors import ConfigError
from appliance.proxies import TrustedProxies


def test_nobody_is_trusted_by_default() -> None:
    proxies = TrustedProxies()
    assert not proxies
    assert not proxies.trusts("127.0.0.1")
    assert proxies.client("127.0.0.1", "203.0.113.9") == "127.0.0.1"


def test_an_untrusted_peers_forwarded_for_is_ignored() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client("192.0.2.1", "203.0.113.9") == "192.0.2.1"


def test_a_trusted_proxy_vouches_for_the_client() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.client("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert proxies.client("127.0.0.1", None) == "127.0.0.1"


def test_the_rightmost_untrusted_hop_is_the_client_and_what_precedes_it_is_ignored() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "unix"])
    # A client forged the first entry; the second is what the edge proxy saw.
    assert proxies.client("unix", "1.2.3.4, 203.0.113.9, 10.0.0.5") == "203.0.113.9"


def test_garbage_in_the_header_ends_the_walk() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    assert proxies.client("127.0.0.1", "203.0.113.9, not-an-ip") == "127.0.0.1"


def test_unix_socket_peers_are_trusted_only_when_configured() -> None:
    assert TrustedProxies(["unix"]).trusts("unix")
    assert not TrustedProxies(["127.0.0.1"]).trusts("unix")


def test_ipv4_mapped_peers_match_ipv4_networks() -> None:
    assert TrustedProxies(["127.0.0.0/8"]).trusts("::ffff:127.0.0.1")


def test_a_bad_entry_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        TrustedProxies(["not-a-network"])
