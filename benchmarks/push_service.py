"""A fast, still strict, local Web Push service for benchmarks, run in its own process.

One endpoint per subscription (`/push/<n>`, n = 1 … N); the browser keys come from a pool of
`POOL` deterministic key pairs (`browser(n)`), so a million subscriptions need no million key
generations and the benchmark and this service agree on them without sharing a file.

Every request is checked: `vapid t=JWT,k=KEY` with KEY the application server key, the ES256
signature (verified once per distinct header, which is then compared; `aud` and `exp` are
checked on every request), TTL, Content-Encoding aes128gcm, ≤ 4096 bytes, and the aes128gcm
header of the body (record size 4096, a 65-byte uncompressed P-256 key id). Bodies are
decrypted (AES-GCM tag checked) with the browser's keys for one request in `verify_every`
(1 = every one; the benchmark's default samples, as decrypting costs the service more CPU than
the rest of a request). Any failure answers 4xx and counts as `bad`. Each endpoint's
deliveries are counted, so duplicates are known exactly. GET /stats returns the counts.

HTTP/1.1 (a minimal keep-alive asyncio protocol: a request is a head and a Content-Length
body) on one port and HTTP/2 (h2, ALPN "h2") on another, both TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import re
import ssl
import struct
import sys
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

POOL = 256
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


_browsers: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes, bytes]] = {}


def browser(n: int) -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """Subscription n's browser: (private key, uncompressed public key, auth secret)."""
    slot = n % POOL
    if slot not in _browsers:
        seed = int.from_bytes(sha256(b"siar-bench-browser-%d" % slot).digest(), "big")
        key = ec.derive_private_key(seed % (_ORDER - 1) + 1, ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        _browsers[slot] = (key, public, sha256(b"siar-bench-auth-%d" % slot).digest()[:16])
    return _browsers[slot]


def subscription_keys(n: int) -> tuple[str, str]:
    """(p256dh, auth) as a browser would send them for subscription n."""
    _, public, auth = browser(n)
    return b64e(public), b64e(auth)


def decrypt(body: bytes, n: int) -> bytes:
    """RFC 8291 aes128gcm, one record; raises ValueError/InvalidTag when it does not decrypt."""
    key, ua_public, auth = browser(n)
    salt, _rs, idlen = body[:16], *struct.unpack("!IB", body[16:21])
    as_public = body[21 : 21 + idlen]
    sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    secret = key.exchange(ec.ECDH(), sender)
    prk_key = hmac.digest(auth, secret, sha256)
    ikm = hmac.digest(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01", sha256)
    prk = hmac.digest(salt, ikm, sha256)
    cek = hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", sha256)[:16]
    nonce = hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", sha256)[:12]
    plain = AESGCM(cek).decrypt(nonce, body[21 + idlen :], None)
    if not plain.endswith(b"\x02"):
        raise ValueError("not a single last record")
    return plain[:-1]


class Service:
    """The counting, checking core shared by both protocols."""

    def __init__(
        self,
        size: int,
        origin_h1: str,
        origin_h2: str,
        application_server_key: str,
        verify_every: int = 1,
    ) -> None:
        self.counts = bytearray(size + 1)
        self.delivered = self.bad = self.requests = self.decrypted = 0
        self.reasons: dict[str, int] = {}
        self.origins = {origin_h1, origin_h2}
        self.key = application_server_key
        self.verify_every = max(1, verify_every)
        self.tokens: dict[str, dict[str, Any]] = {}  # Authorization header -> verified claims
        self.first = self.last = 0.0

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        self.requests += 1
        status = self._check(path, headers, body)
        if status != 201:
            self.bad += 1
        return status

    def _refuse(self, status: int, why: str) -> int:
        self.reasons[why] = self.reasons.get(why, 0) + 1
        return status

    def _check(self, path: str, headers: dict[str, str], body: bytes) -> int:
        tail = path[6:] if path.startswith("/push/") else ""
        if not tail.isdigit() or not 0 < int(tail) < len(self.counts):
            return self._refuse(404, "no such subscription")
        n = int(tail)
        claims = self._vapid(headers.get("authorization", ""))
        if isinstance(claims, str):
            return self._refuse(403, claims)
        if not headers.get("ttl", "").isdigit():
            return self._refuse(400, "TTL")
        if headers.get("content-encoding") != "aes128gcm" or not 21 + 65 + 17 <= len(body) <= 4096:
            return self._refuse(400, "encoding or size")
        if body[16:22] != b"\x00\x00\x10\x00\x41\x04":  # rs = 4096, idlen = 65, an uncompressed point
            return self._refuse(400, "aes128gcm header")
        if self.requests % self.verify_every == 0:
            try:
                json.loads(decrypt(body, n))
            except (ValueError, InvalidTag):
                return self._refuse(400, "does not decrypt")
            self.decrypted += 1
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.delivered += 1
        if self.counts[n] < 255:
            self.counts[n] += 1
        return 201

    def _vapid(self, header: str) -> dict[str, Any] | str:
        claims = self.tokens.get(header)
        if claims is None:
            match = re.fullmatch(r"vapid t=([A-Za-z0-9_.-]+), ?k=([A-Za-z0-9_-]+)", header.strip())
            if not match:
                return "Authorization is not vapid t=,k="
            token, key = match.groups()
            if key != self.key:
                return "k is not the application server key"
            head_b64, claims_b64, sig_b64 = token.split(".")
            signature = b64d(sig_b64)
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
            try:
                public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                return "JWT signature"
            claims = json.loads(b64d(claims_b64))
            self.tokens[header] = claims
        if claims.get("aud") not in self.origins:
            return "aud"
        if not time.time() < claims.get("exp", 0) <= time.time() + 86400:
            return "exp"
        return claims

    def stats(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "requests": self.requests,
            "delivered": self.delivered,
            "decrypted": self.decrypted,
            "distinct": len(counts) - counts.count(0),
            "duplicates": sum(c - 1 for c in counts if c > 1),
            "bad": self.bad,
            "reasons": self.reasons,
            "tokens_verified": len(self.tokens),
            "seconds": self.last - self.first,
            "cpu": time.process_time(),
        }

    def reset(self) -> None:
        self.counts = bytearray(len(self.counts))
        self.delivered = self.bad = self.requests = self.decrypted = 0
        self.first = self.last = 0.0

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """(status, body) for one request of either protocol."""
        if method == "GET" and path == "/stats":
            return 200, json.dumps(self.stats()).encode()
        if method == "POST" and path == "/reset":
            self.reset()
            return 200, b"{}"
        if method != "POST":
            return 405, b""
        return self.handle(path, headers, body), b""


_REASONS = {200: b"OK", 201: b"Created", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found"}


class H1Protocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, requests framed by Content-Length (all a push client sends)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        out = []
        close = False
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                close = len(self.buffer) > 65536
                break
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                close = True
                break
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                out.append(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                close = True
                break
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                break
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            status, answer = self.service.answer(method, path, headers, body)
            out.append(
                b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s"
                % (status, _REASONS.get(status, b"Other"), len(answer), answer)
            )
            if headers.get("connection", "").lower() == "close":
                close = True
                break
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()


class H2Protocol(asyncio.Protocol):
    """HTTP/2 over TLS with the h2 state machine: one connection, many streams."""

    def __init__(self, service: Service) -> None:
        import h2.config
        import h2.connection

        self.service = service
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.conn.initiate_connection()
        self.conn.update_settings({0x3: 1000})  # SETTINGS_MAX_CONCURRENT_STREAMS
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        assert self.transport is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                self.streams[event.stream_id] = (headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = self.streams.pop(event.stream_id)
                status, out = self.service.answer(
                    headers.get(":method", ""), headers.get(":path", ""), headers, bytes(body)
                )
                self.conn.send_headers(
                    event.stream_id,
                    [(":status", str(status)), ("content-length", str(len(out)))],
                    end_stream=not out,
                )
                if out:
                    self.conn.send_data(event.stream_id, out, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.conn.data_to_send())


def tls(folder: Path, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    context.set_alpn_protocols(alpn)
    return context


def write_certificate(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 in `folder`; returns the CA file to trust."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench push service")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return folder / "cert.pem"


async def serve(folder: Path, size: int, application_server_key: str, verify_every: int = 1) -> None:
    loop = asyncio.get_running_loop()
    h2_server = await loop.create_server(lambda: H2Protocol(service), "127.0.0.1", 0, ssl=tls(folder, ["h2"]))
    h2_port = h2_server.sockets[0].getsockname()[1]
    h1_server = await loop.create_server(
        lambda: H1Protocol(service), "127.0.0.1", 0, ssl=tls(folder, ["http/1.1"]), backlog=1024
    )
    h1_port = h1_server.sockets[0].getsockname()[1]
    service = Service(
        size,
        f"https://127.0.0.1:{h1_port}",
        f"https://127.0.0.1:{h2_port}",
        application_server_key,
        verify_every,
    )
    tmp = folder / "ports.tmp"
    tmp.write_text(json.dumps({"h1": h1_port, "h2": h2_port}))
    os.replace(tmp, folder / "ports.json")
    await asyncio.Event().wait()


def main(folder: str, size: int, application_server_key: str, verify_every: int = 1) -> None:
    """Entry point of the service's process (multiprocessing, spawn); every `verify_every`-th
    push is decrypted."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(Path(folder), size, application_server_key, verify_every))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
