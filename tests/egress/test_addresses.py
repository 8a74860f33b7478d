"""AddressGuard: which resolved addresses the proxy may never connect to."""

from __future__ import annotations

import ipaddress

import pytest

from egress.addresses import HOST_OWN, HOST_UNKNOWN, AddressGuard, read_host_addresses
from tests.egress.conftest import kernel_addresses


def no_host_addresses() -> frozenset:
    return frozenset()


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("0.0.0.0", "this network"),
        ("0.1.2.3", "this network"),
        ("10.0.2.2", "private range"),  # QEMU user networking's host side
        ("172.16.0.1", "private range"),
        ("172.31.255.255", "private range"),
        ("192.168.1.1", "private range"),
        ("100.64.0.1", "shared address space"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fd00::2", "private range"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::10.0.0.1", "private range"),  # IPv4-compatible
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around 169.254.169.254
        ("not-an-ip", "not an IP address"),
        # allowed
        ("203.0.113.7", None),  # TEST-NET-3: the mirror here; is_private would deny it
        ("198.51.100.1", None),
        ("93.184.216.34", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2001:db8::1", None),
        ("2a00:1450:4001::1", None),
    ],
)
def test_the_always_denied_table(ip, reason):
    guard = AddressGuard(host_addresses=no_host_addresses)

    assert guard.denial(ip, 443) == reason


def test_an_exemption_is_one_exact_address_and_port():
    guard = AddressGuard(exempt=[("127.0.0.1", 8080)], host_addresses=no_host_addresses)

    assert guard.denial("127.0.0.1", 8080) is None
    assert guard.denial("::ffff:127.0.0.1", 8080) is None  # the same address, mapped
    assert guard.denial("127.0.0.1", 8081) == "loopback"
    assert guard.denial("127.0.0.2", 8080) == "loopback"


def test_extra_denied_networks_come_from_settings():
    guard = AddressGuard(extra_denied=["198.51.100.0/24"], host_addresses=no_host_addresses)

    assert guard.denial("198.51.100.9", 80) == "denied by settings"
    assert guard.denial("198.51.101.9", 80) is None


def test_the_hosts_own_addresses_are_read_from_the_kernel():
    own = {ipaddress.ip_address(address) for address in kernel_addresses()}
    guard = AddressGuard()

    assert own <= read_host_addresses()
    for address in own:
        in_a_range = AddressGuard(host_addresses=no_host_addresses).denial(str(address), 443)
        assert guard.denial(str(address), 443) == (in_a_range or HOST_OWN)


def test_an_address_of_the_host_outside_every_denied_range_is_denied_as_the_hosts_own():
    # A public address on one of the host's interfaces (any machine, whatever it has).
    guard = AddressGuard(host_addresses=lambda: frozenset({ipaddress.ip_address("203.0.113.9")}))
    assert guard.denial("203.0.113.9", 443) == HOST_OWN
    assert guard.denial("203.0.113.10", 443) is None


def test_host_addresses_are_reread_at_most_every_30_seconds_and_a_failure_fails_closed():
    now = [0.0]
    reads = []

    def reader() -> frozenset:
        reads.append(now[0])
        if len(reads) == 1:
            raise OSError("ip not installed")
        return frozenset({ipaddress.ip_address("198.51.100.5")})

    guard = AddressGuard(host_addresses=reader, clock=lambda: now[0])

    assert guard.denial("198.51.100.5", 80) == HOST_UNKNOWN  # nothing known yet: deny all
    assert guard.denial("203.0.113.1", 80) == HOST_UNKNOWN
    now[0] = 29.0
    assert guard.denial("203.0.113.1", 80) == HOST_UNKNOWN
    now[0] = 30.0
    assert guard.denial("198.51.100.5", 80) == HOST_OWN
    assert guard.denial("203.0.113.1", 80) is None
    assert reads == [0.0, 30.0]
