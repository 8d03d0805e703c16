"""The VAPID identity: loading the key pair, and `siar webpush init`, which creates it."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bot.paths import resolve_path
from channels.webpush.config import WebPushSection

log = logging.getLogger("siar.webpush")


def b64url_decode(value: str) -> bytes:
    """Bytes of base64url text with or without padding; ValueError when it is not base64url."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class VapidKeyError(Exception):
    """The VAPID key is missing or unusable; the message says how to fix it (never the key)."""


@dataclass(frozen=True)
class VapidKeys:
    private: Any  # py_vapid.Vapid
    public: str  # base64url uncompressed point: the applicationServerKey


def key_file_path(section: WebPushSection, base_dir: Path) -> Path:
    return resolve_path(section.vapid_key_file, base_dir)


def load_vapid(section: WebPushSection, base_dir: Path) -> VapidKeys:
    """The VAPID key pair from `vapid_private_key` or else `vapid_key_file`; VapidKeyError if none."""
    from cryptography.hazmat.primitives import serialization
    from py_vapid import Vapid  # type: ignore[import-untyped, unused-ignore]

    secret = section.vapid_private_key.get_secret_value().strip()
    try:
        if secret:
            where = "webpush.vapid_private_key"
            vapid = Vapid.from_pem(secret.encode()) if "-----BEGIN" in secret else Vapid.from_string(secret)
        else:
            path = key_file_path(section, base_dir)
            where = str(path)
            if not path.exists():
                raise VapidKeyError(
                    f"no VAPID key: {path} does not exist; create it with "
                    "`siar webpush init` or set webpush.vapid_private_key"
                )
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("VAPID key file %s is readable by others (mode %o); chmod 600 it", path, mode)
            vapid = Vapid.from_file(private_key_file=str(path))
    except VapidKeyError:
        raise
    except Exception as exc:  # the message of a key parser may quote the key: do not pass it on
        raise VapidKeyError(
            f"the VAPID private key in {where} is not a valid P-256 key ({type(exc).__name__})"
        ) from None
    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    public = b64url(raw)
    if section.vapid_public_key and section.vapid_public_key.rstrip("=") != public:
        raise VapidKeyError(
            "webpush.vapid_public_key does not belong to the private key; remove it "
            "or correct it (browsers subscribed with the wrong key would all fail)"
        )
    return VapidKeys(vapid, public)


def init_command(config: Any, *, force: bool = False, out: TextIO | None = None) -> int:
    """`siar webpush init`: write a new VAPID key pair to the key file (0600); 0 on success.

    Refuses (exit 1) when the file exists, unless `force`. Prints the public key, which the
    subscribe page also serves at /push/vapid-public-key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = out or sys.stdout
    section = (config.sections or {}).get("webpush")
    if section is None:
        print("no [webpush] section in the configuration; add one (see README) first", file=sys.stderr)
        return 2
    path = key_file_path(section, config.path.parent)
    if section.vapid_private_key.get_secret_value().strip():
        print(
            "note: webpush.vapid_private_key is set and takes precedence over the key file", file=sys.stderr
        )
    if path.exists() and not force:
        print(
            f"{path} exists already; not overwriting it (subscriptions made with its public key "
            "would stop working). Use --force to replace it.",
            file=sys.stderr,
        )
        return 1
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    public = b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    print(f"VAPID key pair written to {path} (mode 600).", file=out)
    print(f"public key (applicationServerKey): {public}", file=out)
    return 0


class VapidSigner:
    """VAPID `Authorization` headers (RFC 8292), signed once per push service origin and reused.

    A push service accepts a JWT whose `exp` lies at most 24 h ahead, so one signature serves
    every push to that origin until shortly before it expires: signing (an ECDSA P-256
    signature, ~0.1 ms) happens once per origin per `lifetime - renew_before`, not per push.
    """

    def __init__(
        self,
        keys: VapidKeys,
        contact: str,
        *,
        lifetime: float = 12 * 3600,
        renew_before: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime <= 86400:
            raise ValueError("a VAPID token's lifetime must be more than 0 and at most 24 h")
        if not 0 <= renew_before < lifetime:
            raise ValueError("renew_before must be shorter than the lifetime")
        self.keys, self.contact = keys, contact
        self.lifetime, self.renew_before, self.clock = lifetime, renew_before, clock
        self._cache: dict[str, tuple[str, float]] = {}
        self.signed = 0  # signatures made (the cache's misses)

    def header(self, audience: str) -> str:
        """The Authorization header for the push service origin `audience`."""
        now = self.clock()
        cached = self._cache.get(audience)
        if cached is not None and cached[1] - now > self.renew_before:
            return cached[0]
        exp = int(now + self.lifetime)
        signed = self.keys.private.sign({"aud": audience, "exp": exp, "sub": self.contact})
        self.signed += 1
        self._cache[audience] = (str(signed["Authorization"]), float(exp))
        return self._cache[audience][0]
