"""Message encryption for Web Push (RFC 8291 with the aes128gcm coding of RFC 8188), lean.

The same construction pywebpush makes through http_ece (a fresh ephemeral P-256 key pair per
message, ECDH with the browser's key, HKDF with its auth secret, one AES-128-GCM record of
4096 bytes), without building a `WebPusher` and its dictionaries for every push: the key
derivations are two-block HMAC-SHA256 computations done with the standard library.
tests/test_webpush_fast.py checks the output decrypts with http_ece and the browser's keys,
like pywebpush's.
"""

from __future__ import annotations

import binascii
import os
import struct
from hmac import digest as hmac_digest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RECORD_SIZE = 4096
_CURVE = ec.SECP256R1()
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint
_ECDH = ec.ECDH()


class BadSubscriptionKey(ValueError):
    """The subscription's p256dh or auth is not a usable key."""


def _b64url(value: str) -> bytes:
    """Base64url (padded or not) to bytes, strictly; ValueError (binascii.Error) otherwise.
    A quarter of keys.b64url_decode's cost, which matters a million times per story."""
    value = value.rstrip("=")
    return binascii.a2b_base64((value + "=" * (-len(value) % 4)).translate(_STANDARD), strict_mode=True)


_STANDARD = str.maketrans("-_+/", "+/!!")  # "+" and "/" are not base64url: made invalid


def encrypt(data: bytes, p256dh: str, auth: str) -> bytes:
    """`data` encrypted for the browser whose subscription keys are `p256dh` and `auth`: the
    body of a push request with `Content-Encoding: aes128gcm`."""
    try:
        ua_public = _b64url(p256dh)
        ua_key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, ua_public)
        if len(ua_public) != 65:  # a compressed point: the key derivation takes the uncompressed one
            ua_public = ua_key.public_bytes(_X962, _UNCOMPRESSED)
    except ValueError as exc:
        raise BadSubscriptionKey("p256dh is not a P-256 public key") from exc
    try:
        auth_secret = _b64url(auth)
    except ValueError as exc:
        raise BadSubscriptionKey("auth is not base64url") from exc
    if len(auth_secret) != 16:
        raise BadSubscriptionKey("auth must be 16 bytes")
    if len(data) + 17 > RECORD_SIZE:
        raise ValueError("a push message carries at most 4079 bytes in one record")
    # A new key pair per message, as RFC 8291 (sections 2 and 3.1) has it; reusing one for a
    # story's million messages would save ~10 % of a push's CPU (benchmarks/README.md).
    as_key = ec.generate_private_key(_CURVE)
    as_public = as_key.public_key().public_bytes(_X962, _UNCOMPRESSED)
    secret = as_key.exchange(_ECDH, ua_key)
    # HKDF(auth, secret, "WebPush: info" || 0 || ua_public || as_public, 32)
    prk_key = hmac_digest(auth_secret, secret, "sha256")
    ikm = hmac_digest(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01", "sha256")
    salt = os.urandom(16)
    prk = hmac_digest(salt, ikm, "sha256")
    cek = hmac_digest(prk, _CEK_INFO, "sha256")[:16]
    nonce = hmac_digest(prk, _NONCE_INFO, "sha256")[:12]
    record = AESGCM(cek).encrypt(nonce, data + b"\x02", None)  # 0x02: the last record, no padding
    return salt + struct.pack("!IB", RECORD_SIZE, len(as_public)) + as_public + record
