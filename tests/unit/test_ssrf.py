"""workers/callbacks/ssrf.py: only globally routable targets, in every encoding."""

from __future__ import annotations

import ipaddress

import pytest

from workers.callbacks.ssrf import (
    AddressRefused,
    check_url,
    parse_address,
    parse_networks,
    pick_address,
    refusal,
)

REFUSED_URLS = [
    "https://127.0.0.1/hook",
    "https://10.0.0.1/hook",
    "https://172.16.5.4/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://2130706433/hook",  # 127.0.0.1 as one decimal number
    "https://0x7f000001/hook",
    "https://0177.0.0.1/hook",  # octal
    "https://0x7f.0.0.1/hook",
    "https://127.1/hook",
    "https://017700000001/hook",
    "https://100.64.0.1/hook",  # CGNAT
    "https://100.127.255.254/hook",
    "https://0.0.0.0/hook",
    "https://[::]/hook",
    "https://224.0.0.1/hook",
    "https://[ff02::1]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[fd00:ec2::254]/hook",  # AWS metadata over IPv6
    "https://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
    "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "https://240.0.0.1/hook",
    "https://192.0.2.10/hook",  # documentation range
    "https://255.255.255.255/hook",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_non_public_literal_addresses_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",  # plain http (production)
        "ftp://example.com/hook",
        "https://user:pass@example.com/hook",
        "https:///nohost",
        "https://example.com:99999/hook",
        "https://" + "a" * 3000 + ".com/",
    ],
)
def test_unacceptable_urls_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_url(url)


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "https://8.8.8.8/x", "https://[2001:4860:4860::8888]/"]
)
def test_public_targets_pass(url: str) -> None:
    target = check_url(url)
    assert target.port == 443


@pytest.mark.parametrize(
    ("resolved", "ok"),
    [
        (["93.184.216.34"], True),
        (["2606:2800:220:1:248:1893:25c8:1946"], True),
        (["10.0.0.7"], False),  # a name that resolves to a private address
        (["93.184.216.34", "127.0.0.1"], False),  # one bad answer spoils all (rebinding)
        (["169.254.169.254"], False),
        (["::ffff:192.168.0.1"], False),
        ([], False),
        (["not-an-address"], False),
    ],
)
def test_every_resolved_address_must_be_public(resolved: list[str], ok: bool) -> None:
    if ok:
        assert str(pick_address(resolved)) == resolved[0]
    else:
        with pytest.raises(AddressRefused):
            pick_address(resolved)


def test_the_development_allow_list_lets_loopback_through() -> None:
    allow = parse_networks(["127.0.0.0/8"])
    target = check_url("http://127.0.0.1:8080/hook", allow_http=True, allow=allow)
    assert target.literal == ipaddress.ip_address("127.0.0.1")
    assert pick_address(["127.0.0.1"], allow) == ipaddress.ip_address("127.0.0.1")
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None
    with pytest.raises(AddressRefused):  # only what is listed
        pick_address(["10.0.0.1"], allow)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("08.1.1.1", None),  # 08 is not octal
    ],
)
def test_loose_ipv4_forms(text: str, address: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed else None) == address
