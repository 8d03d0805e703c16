"""Message encryption for Web Push (RFC 8291 with the aes128gcm coding of RFC 8188), lean.

The same construction pywebpush makes through http_ece (a fresh ephemeral P-256 key pair per
message, ECDH with the browser's key, HKDF with its auth secret, one AES-128-GCM record of
4096 bytes), without building a `WebPusher` and its dictionaries for every push: the key
derivations are two-block HMAC-SHA256 computations done with the standard library.
tests/test_webpush_fast.py checks the output decrypts with http_ece and the browser's keys,
like pywebpush's.
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from channels.webpush.keys import b64url_decode

RECORD_SIZE = 4096
_CURVE = ec.SECP256R1()
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"


class BadSubscriptionKey(ValueError):
    """The subscription's p256dh or auth is not a usable key."""


def browser_key(p256dh: str) -> ec.EllipticCurvePublicKey:
    """The browser's public key from its base64url `p256dh`; BadSubscriptionKey if unusable."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, b64url_decode(p256dh))
    except ValueError as exc:
        raise BadSubscriptionKey("p256dh is not a P-256 public key") from exc


def encrypt(data: bytes, p256dh: str, auth: str) -> bytes:
    """`data` encrypted for the browser whose subscription keys are `p256dh` and `auth`: the
    body of a push request with `Content-Encoding: aes128gcm`."""
    ua_key = browser_key(p256dh)
    try:
        auth_secret = b64url_decode(auth)
    except ValueError as exc:
        raise BadSubscriptionKey("auth is not base64url") from exc
    if len(auth_secret) != 16:
        raise BadSubscriptionKey("auth must be 16 bytes")
    if len(data) + 17 > RECORD_SIZE:
        raise ValueError("a push message carries at most 4079 bytes in one record")
    as_key = ec.generate_private_key(_CURVE)  # a new one per message (RFC 8291 section 3.1)
    as_public = as_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ua_public = ua_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    secret = as_key.exchange(ec.ECDH(), ua_key)
    # HKDF(auth, secret, "WebPush: info" || 0 || ua_public || as_public, 32)
    prk_key = hmac.digest(auth_secret, secret, sha256)
    ikm = hmac.digest(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01", sha256)
    salt = os.urandom(16)
    prk = hmac.digest(salt, ikm, sha256)
    cek = hmac.digest(prk, _CEK_INFO, sha256)[:16]
    nonce = hmac.digest(prk, _NONCE_INFO, sha256)[:12]
    record = AESGCM(cek).encrypt(nonce, data + b"\x02", None)  # 0x02: the last record, no padding
    return salt + struct.pack("!IB", RECORD_SIZE, len(as_public)) + as_public + record
