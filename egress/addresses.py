"""Which addresses a guest may never reach through the egress proxy, whatever its policy says.

The proxy asks this after name resolution, for every address a name resolved to, so a name
that points at loopback, a private range, the metadata address or the KVM host itself is
refused (and so is DNS rebinding: the proxy connects to the address vetted here, never to a
fresh lookup). The list is explicit on purpose: `ipaddress.is_private` also covers the
documentation ranges, and the Debian mirror here resolves into 203.0.113.0/24 (TEST-NET-3).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# (network, reason). The first match names the reason, so a narrower entry comes before a
# wider one that contains it (broadcast before reserved).
ALWAYS_DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private range"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private range"),
    ("192.168.0.0/16", "private range"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private range"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

HOST_OWN = "the KVM host's own address"
HOST_UNKNOWN = "the KVM host's addresses could not be read"

# IPv6 forms that carry an IPv4 address the kernel (or a NAT64/6to4 gateway) reaches instead.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated "IPv4-compatible" ::a.b.c.d


def parse_ip(text: str) -> IPAddress:
    """The address in `text`, without an IPv6 zone ("fe80::1%eth0"): the zone does not change
    which range the address is in."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64, Teredo
    client), else the address itself: ::ffff:127.0.0.1 is loopback."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def read_host_addresses() -> frozenset[IPAddress]:
    """Every address configured on this machine's interfaces, from the kernel (`ip -j addr`,
    no shell). Raises OSError or ValueError when it cannot be read."""
    # A fixed search path: the service's PATH is not where `ip` should be looked up.
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise OSError("the ip command is not installed")
    out = subprocess.run(
        [ip, "-j", "addr"], capture_output=True, check=True, timeout=5, text=True
    ).stdout
    found = set()
    for link in json.loads(out):
        for info in link.get("addr_info", ()):
            found.add(unwrap(parse_ip(info["local"])))
    return frozenset(found)


class AddressGuard:
    """Decides whether the proxy may connect to (ip, port). Thread-safe: the proxy calls it
    from its executor threads."""

    REFRESH_SECONDS = 30.0

    def __init__(
        self,
        exempt: Iterable[tuple[str, int]] = (),
        extra_denied: Iterable[str] = (),
        *,
        host_addresses: Callable[[], frozenset[IPAddress]] = read_host_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # An exemption is one exact (address, port): the test server, never a whole range.
        self._exempt = frozenset((unwrap(parse_ip(ip)), int(port)) for ip, port in exempt)
        self._denied = [(ipaddress.ip_network(net), reason) for net, reason in ALWAYS_DENIED]
        self._denied += [(ipaddress.ip_network(net), "denied by settings") for net in extra_denied]
        self._read_host = host_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._host: frozenset[IPAddress] | None = None
        self._read_at = float("-inf")

    def denial(self, ip: str, port: int) -> str | None:
        """None when the proxy may connect to (ip, port); else a short reason."""
        try:
            address = unwrap(parse_ip(ip))
        except ValueError:
            return "not an IP address"
        if (address, port) in self._exempt:
            return None
        for network, reason in self._denied:
            if address.version == network.version and address in network:
                return reason
        host = self.host_addresses()
        if host is None:
            return HOST_UNKNOWN  # fail closed: we cannot tell whether this is the host
        if address in host:
            return HOST_OWN
        return None

    def host_addresses(self) -> frozenset[IPAddress] | None:
        """The host's addresses, read again at most every REFRESH_SECONDS (interfaces and DHCP
        leases change while the proxy runs). A failed read keeps the last good set."""
        with self._lock:
            now = self._clock()
            if now - self._read_at >= self.REFRESH_SECONDS:
                self._read_at = now
                try:
                    self._host = self._read_host()
                except (OSError, ValueError, KeyError, subprocess.SubprocessError):
                    pass
            return self._host
