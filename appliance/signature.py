"""LINE's webhook signature: base64(HMAC-SHA256(channel secret, raw body)).

Pure functions over bytes. The check runs on the body exactly as received,
before anything parses it, and compares in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

#: A base64 SHA-256 digest is 44 characters; anything much longer is not a signature.
_MAX_SIGNATURE_CHARS = 128


def sign(secret: bytes, body: bytes) -> str:
    """The ``x-line-signature`` value LINE would send for ``body``."""
    return base64.b64encode(hmac.digest(secret, body, hashlib.sha256)).decode("ascii")


def verify(secret: bytes, body: bytes, signature: str | bytes | None) -> bool:
    """Whether ``signature`` is LINE's signature of ``body`` under ``secret``.

    The comparison is over the decoded digests and takes the same time
    wherever they differ. A missing, oversized or non-base64 signature is
    simply not valid.
    """
    if not signature or len(signature) > _MAX_SIGNATURE_CHARS:
        return False
    try:
        claimed = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(claimed, hmac.digest(secret, body, hashlib.sha256))
