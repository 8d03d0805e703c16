"""The web push fast path: lean aes128gcm encryption (checked against http_ece and pywebpush with
a browser's real keys) and VAPID signatures cached per push service origin."""

from __future__ import annotations

import json

import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid  # type: ignore[import-untyped, unused-ignore]
from pywebpush import WebPusher  # type: ignore[import-untyped, unused-ignore]

from channels.webpush.encryption import BadSubscriptionKey, encrypt
from channels.webpush.keys import VapidKeys, VapidSigner, b64url
from tests.fake_push import FakePushService

DATA = json.dumps({"title": "Gencatan senjata di Gaza", "lead": "Warga kembali — ke rumah ✓"}).encode()


@pytest.fixture
def browser(tmp_path):  # type: ignore[no-untyped-def]
    service = FakePushService(tmp_path)
    service.port = 443
    sub = service.new_subscription("AAAA")
    return service.browsers[service.id_of(sub)], sub["keys"]


def test_fast_encryption_decrypts_with_the_browsers_keys_like_pywebpush(browser) -> None:  # type: ignore[no-untyped-def]
    b, keys = browser
    ours = encrypt(DATA, keys["p256dh"], keys["auth"])
    reference = WebPusher({"endpoint": "https://x/y", "keys": keys}).encode(DATA, "aes128gcm")["body"]
    for body in (ours, reference):
        assert (
            http_ece.decrypt(body, private_key=b.private_key, auth_secret=b.auth, version="aes128gcm") == DATA
        )
    assert len(ours) == len(reference)  # same layout: salt, rs, key id, one record
    assert ours[16:21] == reference[16:21]  # record size 4096, a 65-byte key id
    assert encrypt(DATA, keys["p256dh"], keys["auth"])[21:86] != ours[21:86]  # a new key per message


def test_fast_encryption_refuses_unusable_keys(browser) -> None:  # type: ignore[no-untyped-def]
    _, keys = browser
    with pytest.raises(BadSubscriptionKey, match="p256dh"):
        encrypt(DATA, "AAAA", keys["auth"])
    with pytest.raises(BadSubscriptionKey, match="auth"):
        encrypt(DATA, keys["p256dh"], b64url(b"short"))
    with pytest.raises(ValueError, match="4079"):
        encrypt(b"x" * 4080, keys["p256dh"], keys["auth"])


def _signer(clock: list[float], **kw: float) -> VapidSigner:
    vapid = Vapid()
    vapid.generate_keys()
    public = b64url(
        vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    return VapidSigner(VapidKeys(vapid, public), "mailto:ops@example.com", clock=lambda: clock[0], **kw)


def _claims(header: str) -> dict[str, object]:
    token = header.split("t=", 1)[1].split(",", 1)[0]
    part = token.split(".")[1]
    return dict(json.loads(__import__("base64").urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_vapid_signature_is_reused_per_origin_until_close_to_expiry() -> None:
    clock = [1_700_000_000.0]
    signer = _signer(clock, lifetime=12 * 3600, renew_before=3600)
    first = signer.header("https://fcm.googleapis.com")
    assert signer.header("https://fcm.googleapis.com") == first and signer.signed == 1
    other = signer.header("https://updates.push.services.mozilla.com")
    assert other != first and signer.signed == 2  # one per push service origin
    assert _claims(first) == {
        "aud": "https://fcm.googleapis.com",
        "exp": 1_700_000_000 + 43200,
        "sub": "mailto:ops@example.com",
    }
    clock[0] += 11 * 3600 - 1  # still more than an hour left: reused
    assert signer.header("https://fcm.googleapis.com") == first and signer.signed == 2
    clock[0] += 2  # an hour or less left: signed again, valid 12 h from now
    renewed = signer.header("https://fcm.googleapis.com")
    assert renewed != first and signer.signed == 3
    assert _claims(renewed)["exp"] == int(clock[0]) + 43200


def test_vapid_lifetime_is_at_most_a_day() -> None:
    with pytest.raises(ValueError, match="24 h"):
        _signer([0.0], lifetime=86401)
    with pytest.raises(ValueError, match="renew_before"):
        _signer([0.0], lifetime=3600, renew_before=3600)


def test_vapid_header_verifies_with_the_public_key() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from tests.fake_push import b64d

    signer = _signer([1_700_000_000.0])
    header = signer.header("https://fcm.googleapis.com")
    token, key = header.removeprefix("vapid t=").split(",k=")
    head, claims, sig = token.split(".")
    raw = b64d(sig)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if not
