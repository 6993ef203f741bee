"""The policies a relay is checked against: ``modern``, ``intermediate`` and ``line``.

``modern`` and ``intermediate`` are Mozilla's server-side TLS profiles; their
versions, suites, groups and certificate lifetimes come from the copy of
Mozilla's guidelines (5.7) that sslyze ships, so they are not retyped here.
``line`` is what LINE's webhook client needs: TLS 1.2 or 1.3, AEAD suites
with forward secrecy, the full chain and a publicly trusted certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

from sslyze.mozilla_tls_profile.tls_config_checker import (
    MozillaTlsConfiguration,
    TlsConfigurationEnum,
)

from tls.rules import PUBLIC_MAX_LIFETIME_DAYS


@dataclass(frozen=True)
class Profile:
    """What one profile allows."""

    name: str
    description: str
    versions: frozenset[str]
    """Allowed protocol versions, in Mozilla's spelling (``TLSv1.2``, ``TLSv1.3``)."""
    suites: frozenset[str] | None
    """Allowed IANA suite names; ``None`` means any AEAD suite with forward secrecy."""
    groups: frozenset[str]
    """Expected key-exchange groups, in sslyze's (SECG) spelling."""
    groups_strict: bool
    """Whether offering other groups fails the check (else it is info)."""
    max_lifetime_days: int
    ecdsa_only: bool
    public_trust: bool
    """Whether the chain must build to the public (system) trust store, ignoring --ca."""


def _mozilla(name: str, enum: TlsConfigurationEnum, description: str) -> Profile:
    config = MozillaTlsConfiguration.get(enum)
    return Profile(
        name=name,
        description=description,
        versions=frozenset(config.tls_versions),
        suites=frozenset(config.ciphersuites | config.ciphers.iana),
        groups=frozenset(config.tls_curves),
        groups_strict=True,
        max_lifetime_days=config.maximum_certificate_lifespan,
        ecdsa_only=config.certificate_types == {"ecdsa"},
        public_trust=False,
    )


def _line() -> Profile:
    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    return Profile(
        name="line",
        description="what LINE's webhook client needs: TLS 1.2 or 1.3, AEAD suites with "
        "forward secrecy, the full chain, a publicly trusted certificate",
        versions=frozenset({"TLSv1.2", "TLSv1.3"}),
        suites=None,
        groups=frozenset(intermediate.tls_curves),
        groups_strict=False,
        max_lifetime_days=PUBLIC_MAX_LIFETIME_DAYS,
        ecdsa_only=False,
        public_trust=True,
    )


PROFILES: dict[str, Profile] = {
    "modern": _mozilla(
        "modern",
        TlsConfigurationEnum.MOZILLA_MODERN,
        "Mozilla's modern profile: TLS 1.3 only, ECDSA certificates of at most 90 days",
    ),
    "intermediate": _mozilla(
        "intermediate",
        TlsConfigurationEnum.MOZILLA_INTERMEDIATE,
        "Mozilla's intermediate profile: TLS 1.2 (ECDHE + AEAD) and 1.3",
    ),
    "line": _line(),
}
