"""SSRF guard for webhook targets: only globally routable addresses. Pure.

A callback URL is checked twice: its syntax and any literal address when it is
accepted (`check_url`), and on every attempt the addresses its host resolves to
(`pick_address`): every one must be global, and the request then connects to the
checked address itself (the Host header and TLS SNI keep the name), so a DNS
answer that changes between check and connect cannot redirect it (rebinding).
Redirects are never followed.

Refused: loopback, private (RFC 1918, ULA), link-local (cloud metadata
169.254.169.254 included), CGNAT 100.64/10, unspecified, multicast, reserved,
documentation and benchmark ranges, IPv4-mapped/compatible/NAT64/6to4 IPv6
forms of any of those, and IPv4 literals in the encodings `inet_aton` accepts
(2130706433, 0x7f000001, 0177.0.0.1, 127.1). `allow` (development only) lists
networks that are let through anyway, e.g. 127.0.0.0/8 for a local receiver.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS: Final = 2048
CLOUD_METADATA: Final = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.ip_network("64:ff9b:1::/48")


class AddressRefused(ValueError):
    """The target is not a public address (or the URL is not acceptable)."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    literal: IPAddress | None  # the host when it is an address, in any encoding


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _int_part(text: str) -> int:
    lowered = text.lower()
    if lowered.startswith("0x"):
        return int(lowered[2:] or "0", 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text, 8)
    return int(text, 10)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form `inet_aton` accepts (what many resolvers do), else None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    try:
        numbers = [_int_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(parts)):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_address(host: str) -> IPAddress | None:
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return parse_ipv4_loose(host)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allow: Sequence[Network] = ()) -> str | None:
    """Why `ip` may not be called, or None when it is a public address (or allowed)."""
    if any(ip.version == net.version and ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = refusal(embedded, allow)
            return None if inner is None else f"{ip} embeds {embedded}: {inner}"
        if ip.teredo is not None:
            return f"{ip} is a Teredo address"
    checks = (
        (ip in CLOUD_METADATA, "a cloud metadata address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a CGNAT (100.64/10) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a globally routable address"),
    )
    for refused, why in checks:
        if refused:
            return f"{ip} is {why}"
    return None


def check_url(url: str, *, allow_http: bool = False, allow: Sequence[Network] = ()) -> Target:
    """Parse and check a callback URL; raises `AddressRefused`. Names are resolved later."""
    if len(url) > MAX_URL_CHARS:
        raise AddressRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"not a valid URL ({exc})") from exc
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes:
        raise AddressRefused(f"the URL scheme must be one of {sorted(schemes)}")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("credentials in the URL are not allowed")
    host = parts.hostname
    if not host:
        raise AddressRefused("the URL has no host")
    literal = parse_address(host)
    if literal is not None:
        why = refusal(literal, allow)
        if why is not None:
            raise AddressRefused(why)
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), literal)


def pick_address(resolved: Sequence[str], allow: Sequence[Network] = ()) -> IPAddress:
    """The address to connect to: every resolved address must pass, or none is used."""
    if not resolved:
        raise AddressRefused("the host did not resolve")
    addresses: list[IPAddress] = []
    for raw in resolved:
        ip = parse_address(raw)
        if ip is None:
            raise AddressRefused(f"the resolver returned {raw!r}, not an address")
        why = refusal(ip, allow)
        if why is not None:
            raise AddressRefused(f"the host resolves to {why}")
        addresses.append(ip)
    return addresses[0]
