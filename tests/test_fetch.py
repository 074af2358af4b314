"""The fetcher's address check on its own: which addresses are refused, and the allow-list.
Nothing here connects anywhere (the fetches themselves: tests/indexer/test_fetch.py)."""

from __future__ import annotations

import ipaddress

import pytest

from search.errors import FetchRefused
from search.fetch import AddressGuard, address_kind, check_url, is_url

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "100.64.0.1": "non-public",  # carrier-grade NAT
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:169.254.169.254": "link-local",
    "::ffff:10.0.0.1": "private",
    "::127.0.0.1": "loopback",  # IPv4-compatible
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
}


@pytest.mark.parametrize(("address", "kind"), REFUSED.items())
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind
    with pytest.raises(FetchRefused, match=f"refused: {kind} address"):
        AddressGuard.from_allow_list([]).resolve(address, 80)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) is None
    assert AddressGuard.from_allow_list([]).resolve(address, 443) == [address]


def test_allow_list_names_and_networks() -> None:
    guard = AddressGuard.from_allow_list(["Images.Intranet.", "10.1.0.0/16", "[::1]", " "])
    assert guard.refusal("images.intranet", ipaddress.ip_address("192.168.0.9")) is None
    assert guard.refusal("other", ipaddress.ip_address("10.1.255.1")) is None
    assert guard.refusal("other", ipaddress.ip_address("::1")) is None
    assert guard.refusal("other", ipaddress.ip_address("10.2.0.1")) is not None
    assert guard.refusal("other", ipaddress.ip_address("127.0.0.1")) is not None


def test_a_name_that_resolves_to_one_private_address_is_refused_whole() -> None:
    with pytest.raises(FetchRefused, match=r"loopback address 127\.0\.0\.1 \(of localhost\)"):
        AddressGuard.from_allow_list([]).resolve("localhost", 80)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x", "http://", "//x/y"]
)
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(FetchRefused):
        check_url(url)


def test_is_url() -> None:
    assert is_url("HTTPS://example.com/a.jpg") and is_url("http://x")
    assert not is_url("/data/a.jpg") and not is_url("ftp://x") and not is_url("c.jpg")
