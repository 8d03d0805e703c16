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


async def test_a_success_writes_a_subscription_row_only_when_it_changes_something(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`last_push_at` once a week, a failure count back to 0: the other successes of a
    million-subscription story write no subscription row (Target.stamped)."""
    from sqlalchemy import select

    from bot.fanout import RecipientOutcome
    from bot.store import Store
    from channels.webpush.store import LAST_PUSH_GRAIN, SubscriptionStore, subscriptions
    from channels.webpush.subscription import Subscription
    from tests.fakes import Clock

    store = Store(f"sqlite:///{tmp_path / 'siar.db'}", tmp_path)
    await store.migrate()
    clock = Clock()
    subs = SubscriptionStore(store.db, clock)
    push = FakePushService(tmp_path)
    push.port = 443
    for _ in range(3):
        made = push.new_subscription("k")
        await subs.save(Subscription(made["endpoint"], made["keys"]["p256dh"], made["keys"]["auth"]), "o", 10)
    ids = sorted(await subs.targets([1, 2, 3]))

    async def rows() -> dict[int, tuple[object, int]]:
        async with store.db.read() as conn:
            found = await conn.execute(
                select(subscriptions.c.id, subscriptions.c.last_push_at, subscriptions.c.failures)
            )
            return {r.id: (r.last_push_at, r.failures) for r in found}

    assert not any(t.stamped for t in (await subs.targets(ids)).values())  # never pushed to
    await subs.apply([RecipientOutcome(i, "sent") for i in ids], 5)
    first = await rows()
    assert {failures for _, failures in first.values()} == {0} and all(at for at, _ in first.values())
    assert all(t.stamped for t in (await subs.targets(ids)).values())
    await subs.apply([RecipientOutcome(ids[0], "failed")], 5)
    targets = await subs.targets(ids)
    assert [targets[i].stamped for i in ids] == [False, True, True]  # its failure count is to reset
    clock.advance(3600)
    stamped = frozenset(i for i, t in targets.items() if t.stamped)
    await subs.apply([RecipientOutcome(i, "sent") for i in ids], 5, stamped)
    second = await rows()
    assert second[ids[0]][1] == 0 and second[ids[0]][0] != first[ids[0]][0]  # written: failures reset
    assert [second[i] for i in ids[1:]] == [first[i] for i in ids[1:]]  # not written
    clock.advance(LAST_PUSH_GRAIN.total_seconds() + 1)
    assert not any(t.stamped for t in (await subs.targets(ids)).values())  # a week on: stamp again
    await store.close()
