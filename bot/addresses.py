"""Which IP addresses a request whose URL a feed controls may contact.

`AddressGuard.refusal(ip)` is a pure decision: the reason an address is refused, or None. The
tables name every special-purpose range (IANA's IPv4/IPv6 special-purpose registries) so the
reason is readable; anything else that is not globally routable is refused as well, and IPv6
forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by that IPv4 address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges `allow_private` opens: networks an operator may run an intranet feed or CMS on.
_PRIVATE_V4 = [
    (ipaddress.IPv4Network(n), why)
    for n, why in [
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
    ]
]
# Ranges refused even with `allow_private`: link-local holds cloud metadata services
# (169.254.169.254); the rest never names a web server.
_SPECIAL_V4 = [
    (ipaddress.IPv4Network(n), why)
    for n, why in [
        ("255.255.255.255/32", "the broadcast address"),
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
]
_PRIVATE_V6 = [
    (ipaddress.IPv6Network(n), why)
    for n, why in [
        ("::1/128", "a loopback address"),
        ("fc00::/7", "a unique-local address"),
        ("fec0::/10", "a site-local address"),
    ]
]
_SPECIAL_V6 = [
    (ipaddress.IPv6Network(n), why)
    for n, why in [
        ("::/128", "the unspecified address"),
        # Deprecated IPv4-compatible form (RFC 4291): nothing legitimate uses it, so all of it is refused.
        ("::/96", "an IPv4-compatible address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        # Teredo tunnels to an IPv4 host hidden (obfuscated) in the address: refused outright.
        ("2001::/32", "a Teredo address"),
        ("2001:2::/48", "a benchmarking address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("2001::/23", "an IETF protocol address"),
        ("fe80::/10", "a link-local address"),
        ("ff00::/8", "a multicast address"),
    ]
]
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class AddressGuard:
    """Decides whether an IP address may be contacted.

    `allow_private` opens loopback, RFC 1918, CGNAT, unique-local and site-local addresses (an
    intranet feed); link-local, multicast, reserved and the like stay refused. `allowed_hosts`
    holds host names or IP literals that are always allowed (e.g. the feed's own host).
    """

    allow_private: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    def allows_host(self, host: str) -> bool:
        """True when `host` (a name or an IP literal) is listed in `allowed_hosts`."""
        return normalize_host(host) in self.allowed_hosts

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why `address` may not be contacted ("a loopback address", ...), or None if it may."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if str(ip) in self.allowed_hosts:
            return None
        if isinstance(ip, ipaddress.IPv4Address):
            return self._refusal_v4(ip)
        return self._refusal_v6(ip)

    def _refusal_v4(self, ip: ipaddress.IPv4Address) -> str | None:
        for network, why in _PRIVATE_V4:
            if ip in network:
                return None if self.allow_private else why
        for network, why in _SPECIAL_V4:
            if ip in network:
                return why
        return None if ip.is_global else "not a globally routable address"

    def _refusal_v6(self, ip: ipaddress.IPv6Address) -> str | None:
        embedded, form = _embedded_v4(ip)
        if embedded is not None:
            why = self.refusal(embedded)
            return f"{why} ({form} {embedded})" if why else None
        for network, why in _PRIVATE_V6:  # first: ::1 lies inside the IPv4-compatible ::/96
            if ip in network:
                return None if self.allow_private else why
        for network, why in _SPECIAL_V6:
            if ip in network:
                return why
        if ip not in _GLOBAL_UNICAST_V6:
            return "a reserved address"
        return None if ip.is_global else "not a globally routable address"


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), with the form's name."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4 for"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64 for"
    return None, ""


def normalize_host(host: str) -> str:
    """A host as the guard compares it: lower case, no brackets, no trailing dot, IPs canonical."""
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def guard_for_feed(feed_url: str, allow_private: bool) -> AddressGuard:
    """The guard for URLs a feed controls: its own http(s) host is always allowed (any port, even
    when private: the operator configured it); a file:// or local-path feed allows no host."""
    parts = urlsplit(feed_url)
    host = parts.hostname if parts.scheme.lower() in ("http", "https") else None
    return AddressGuard(
        allow_private=allow_private, allowed_hosts=frozenset({normalize_host(host)}) if host else frozenset()
    )
