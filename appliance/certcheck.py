"""The relay's certificate check: what it is about to serve, judged before it serves it.

On every start and every reload (``SIGHUP``) the chain and key the relay is
about to serve go through the certificate rules (:mod:`tls.rules`), the
ones ``linerelay tls check`` and the conformance suite apply, so a
certificate LINE would refuse is caught here rather than by LINE. The
chain is judged against the system trust store (and the embedded dev PKI's
root when that is what serves), with a private CA allowed: the relay cannot
tell one from a mistake, and tests and the appliance serve such chains
(docs/conformance.md, "Certificate rules").

An error finding refuses the chain (:class:`RefusedCertificate`): the relay
does not start, or a reload keeps the chain that serves, unless the config
says ``tls_allow_refused_chain``. Warnings are logged once, here, not per
connection.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from tls import rules, sources
from tls.policy import CertificateError

log = logging.getLogger(__name__)


class RefusedCertificate(CertificateError):
    """The chain to serve is one LINE would refuse; the message lists why."""


@dataclass(frozen=True)
class Verdict:
    """The rules' findings on one chain and key, and when its leaf expires."""

    chain_file: Path
    key_file: Path
    findings: list[rules.Finding]
    not_after: datetime.datetime

    @property
    def refusals(self) -> list[rules.Finding]:
        """What LINE would refuse the chain for."""
        return rules.of_level(self.findings, rules.Level.ERROR)

    @property
    def warnings(self) -> list[rules.Finding]:
        """What works but should be fixed."""
        return rules.of_level(self.findings, rules.Level.WARNING)


def judge(
    chain_file: Path, key_file: Path, server_name: str, dev_root: Path | None = None
) -> Verdict:
    """Judge the chain and key about to be served; raises :class:`CertificateError`
    if either cannot be read (the message names the file)."""
    try:
        certs = sources.load_certificates(chain_file)
        key = sources.load_private_key(key_file)
        anchors, anchors_name = sources.load_anchors(None)
        if dev_root is not None:
            anchors += sources.load_certificates(dev_root)
            anchors_name += " and the dev PKI's root"
    except sources.SourceError as exc:
        raise CertificateError(str(exc)) from exc
    findings = rules.judge(
        certs,
        anchors,
        anchors_name=anchors_name,
        host=server_name or None,
        key=key,
        private_ca_ok=True,
    )
    leaf = rules.chain_shape(certs).path[0]
    return Verdict(chain_file, key_file, findings, leaf.not_valid_after_utc)


def enforce(verdict: Verdict, allow_refused: bool) -> None:
    """Refuse the chain if LINE would (unless ``allow_refused``); log what is wrong.

    Raises :class:`RefusedCertificate`. Otherwise each refusal that is
    allowed is logged at error level and each warning at warning level.
    """
    files = f"{verdict.chain_file} / {verdict.key_file}"
    if verdict.refusals and not allow_refused:
        why = "; ".join(str(finding) for finding in verdict.refusals)
        raise RefusedCertificate(
            f"{files}: LINE would refuse this certificate: {why} "
            "(tls_allow_refused_chain = true serves it anyway)"
        )
    for finding in verdict.refusals:
        log.error(
            "certificate refused by the rules, served anyway (tls_allow_refused_chain)",
            extra={"chain": str(verdict.chain_file), "rule": finding.code, "why": finding.message},
        )
    for finding in verdict.warnings:
        log.warning(
            "certificate warning",
            extra={
                "chain": str(verdict.chain_file),
                "rule": finding.code,
                "why": finding.message,
                "fix": finding.advice,
            },
        )
