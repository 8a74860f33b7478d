"""Egress rules as text: `host[:port]` entries, host patterns and how a name matches one.
Django-free: the proxy, the services and the settings check all read rules through here.

A pattern is a host name (`pypi.org`), a suffix wildcard (`*.pythonhosted.org`: any name
below it, not the name itself) or an IP literal. Names are compared in their IDNA (ASCII)
lower-case form, without a trailing dot."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORT = 443
MAX_NAME = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class RuleError(ValueError):
    """An entry or host name that is not one: the message says what is wrong."""


@dataclass(frozen=True)
class Rule:
    pattern: str
    port: int

    def __str__(self) -> str:
        return f"{self.pattern}:{self.port}"

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:])
        return host == self.pattern


def normalize_host(text: str) -> str:
    """The canonical form of a host name or IP literal, or RuleError."""
    if not isinstance(text, str) or not text or len(text) > MAX_NAME + 1:
        raise RuleError("a host name of 1 to 253 characters is needed")
    name = text.strip().rstrip(".")
    literal = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        pass
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise RuleError(f"{text[:80]!r} is not a valid host name") from None
    labels = name.split(".")
    if len(name) > MAX_NAME or not all(_LABEL.match(lb) for lb in labels):
        raise RuleError(f"{text[:80]!r} is not a host name (letters, digits, hyphens and dots)")
    return name


def parse_port(value) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise RuleError(f"port {str(value)[:20]!r} is not a number") from None
    if not 0 < port < 65536:
        raise RuleError(f"port {port} is not in 1..65535")
    return port


def parse_rule(entry: str, default_port: int = DEFAULT_PORT) -> Rule:
    """`host`, `host:port`, `*.suffix:port`, `[v6]:port`."""
    if not isinstance(entry, str) or not entry.strip():
        raise RuleError("an entry must be a non-empty string such as 'pypi.org:443'")
    entry = entry.strip()
    host, port = entry, default_port
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise RuleError(f"{entry[:80]!r}: unclosed '['")
        host, rest = entry[: close + 1], entry[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise RuleError(f"{entry[:80]!r}: expected ':port' after ']'")
            port = parse_port(rest[1:])
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
        port = parse_port(port_text)
    wildcard = host.startswith("*.")
    pattern = normalize_host(host[2:] if wildcard else host)
    if wildcard:
        try:
            ipaddress.ip_address(pattern)
        except ValueError:
            return Rule("*." + pattern, port)
        raise RuleError(f"{entry[:80]!r}: a wildcard needs a name, not an address")
    return Rule(pattern, port)


def parse_rules(entries, default_port: int = DEFAULT_PORT) -> list[Rule]:
    return [parse_rule(e, default_port) for e in entries]
