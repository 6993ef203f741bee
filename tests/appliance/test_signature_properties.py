"""Properties of LINE's signature check, :mod:`appliance.signature` (PROTOCOL.md §1)."""

from __future__ import annotations

import base64

from hypothesis import assume, given
from hypothesis import strategies as st

from appliance.signature import sign, verify
from tests.support.properties import examples

SECRETS = st.binary(min_size=1, max_size=64)
BODIES = st.binary(max_size=512)
#: What arrives in an x-line-signature header, or anything else a caller might pass.
SIGNATURES = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.binary(min_size=32, max_size=32).map(lambda d: base64.b64encode(d).decode()),
)


@examples(200)
@given(SECRETS, BODIES)
def test_what_is_signed_verifies(secret: bytes, body: bytes) -> None:
    """sign and verify agree, for the signature as text and as the header's bytes."""
    signature = sign(secret, body)
    assert verify(secret, body, signature)
    assert verify(secret, body, signature.encode("ascii"))


@examples(200)
@given(SECRETS, BODIES.filter(bool), st.data())
def test_any_single_byte_change_of_the_body_fails(
    secret: bytes, body: bytes, data: st.DataObject
) -> None:
    """Changing one byte of the body (any position, any other value) breaks the signature."""
    at = data.draw(st.integers(0, len(body) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != body[at]))
    changed = body[:at] + bytes([value]) + body[at + 1 :]
    assert not verify(secret, changed, sign(secret, body))


@examples(100)
@given(SECRETS, BODIES, st.binary(max_size=2).filter(bool), st.booleans())
def test_inserting_or_removing_bytes_fails(
    secret: bytes, body: bytes, extra: bytes, at_end: bool
) -> None:
    """A body with bytes added or taken away, at either end, does not verify."""
    signature = sign(secret, body)
    assert not verify(secret, body + extra if at_end else extra + body, signature)
    if body:
        assert not verify(secret, body[:-1] if at_end else body[1:], signature)


@examples(200)
@given(SECRETS, BODIES, st.data())
def test_any_change_of_the_decoded_digest_fails(
    secret: bytes, body: bytes, data: st.DataObject
) -> None:
    """A signature whose decoded digest differs in any bit, or is shorter or longer, fails."""
    digest = base64.b64decode(sign(secret, body))
    kind = data.draw(st.sampled_from(["flip", "shorter", "longer"]))
    if kind == "flip":
        bit = data.draw(st.integers(0, 8 * len(digest) - 1))
        other = bytearray(digest)
        other[bit // 8] ^= 1 << (bit % 8)
        forged = bytes(other)
    elif kind == "shorter":
        forged = digest[: data.draw(st.integers(0, len(digest) - 1))]
    else:
        forged = digest + data.draw(st.binary(min_size=1, max_size=8))
    assert not verify(secret, body, base64.b64encode(forged).decode())


@examples(100)
@given(SECRETS, BODIES, st.integers(0, 3))
def test_spellings_of_one_digest_verify_alike(secret: bytes, body: bytes, low: int) -> None:
    """The unused low bits of the last base64 character do not change the digest, so they
    do not change the verdict (retry dedupe counts them as one signature too)."""
    signature = sign(secret, body)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = signature[:-2] + alphabet[(alphabet.index(signature[-2]) & ~0b11) | low] + "="
    assert verify(secret, body, respelled)


@examples(400)
@given(st.binary(max_size=64), BODIES, SIGNATURES)
def test_verify_never_raises(secret: bytes, body: bytes, signature: str | bytes | None) -> None:
    """Whatever the secret, body and header (missing, empty, non-ASCII, not base64, padded
    wrongly, oversized), verify answers True or False and raises nothing."""
    assert verify(secret, body, signature) in (True, False)


@examples(100)
@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), BODIES, st.data())
def test_another_channel_secret_fails(secret: str, body: bytes, data: st.DataObject) -> None:
    """A signature made with another LINE channel secret (32 hex digits) does not verify."""
    other = data.draw(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
    assume(other != secret)
    assert not verify(secret.encode(), body, sign(other.encode(), body))
