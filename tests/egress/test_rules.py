"""Egress rules as text: what an entry may say and which names a pattern matches."""

from __future__ import annotations

import pytest

from egress.rules import Rule, RuleError, normalize_host, parse_rule


@pytest.mark.parametrize(
    "entry, rule",
    [
        ("pypi.org", Rule("pypi.org", 443)),
        ("PyPI.org.:8443", Rule("pypi.org", 8443)),
        ("*.pythonhosted.org:443", Rule("*.pythonhosted.org", 443)),
        ("bücher.example", Rule("xn--bcher-kva.example", 443)),
        ("[2001:db8::1]:80", Rule("2001:db8::1", 80)),
        ("203.0.113.7:80", Rule("203.0.113.7", 80)),
        ("intranet:8080", Rule("intranet", 8080)),
    ],
)
def test_an_entry_is_a_host_pattern_and_a_port(entry, rule):
    assert parse_rule(entry) == rule


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "   ",
        "a..b",
        "-a.example",
        "a_b.example:80",
        "x.example:0",
        "x.example:65536",
        "x.example:http",
        "*.10.0.0.1:80",
        "[2001:db8::1",
        "a" * 300 + ".org",
        "x.example:80:90",
        5,
    ],
)
def test_anything_else_is_refused_with_a_reason(entry):
    with pytest.raises(RuleError):
        parse_rule(entry)


def test_a_wildcard_matches_names_below_it_not_the_name_itself_nor_look_alikes():
    rule = parse_rule("*.pythonhosted.org:443")
    assert rule.matches("files.pythonhosted.org", 443)
    assert rule.matches("a.b.pythonhosted.org", 443)
    assert not rule.matches("pythonhosted.org", 443)
    assert not rule.matches("evilpythonhosted.org", 443)
    assert not rule.matches("files.pythonhosted.org", 80)


def test_names_compare_in_one_canonical_form():
    assert normalize_host("Files.PythonHosted.org.") == "files.pythonhosted.org"
    assert normalize_host("[::ffff:127.0.0.1]") == "::ffff:7f00:1"
