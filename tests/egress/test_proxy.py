"""The egress proxy end to end on loopback: tunnels, forwarded requests, the policy, the
always-denied addresses, the caps on what a guest may send, and the log record of each."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import time
from datetime import UTC

import pytest

from egress.proxy import Limits, bind_unix, parse_head
from tests.egress.conftest import (
    OTHER_SANDBOX,
    SANDBOX,
    AllowList,
    read_head,
    read_until_closed,
)
from tests.support.stack import free_port


def test_it_tunnels_connect_both_ways_and_reports_the_bytes(client, upstreams):
    proxy, sock = client()
    payload = os.urandom(3 * 1024 * 1024 + 7)

    sock.sendall(f"CONNECT 127.0.0.1:{upstreams.echo_port} HTTP/1.1\r\n\r\n".encode())
    assert read_head(sock) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF only through the half-close

    assert read_until_closed(sock) == payload
    [record] = proxy.records.wait()
    assert (record.sandbox_id, record.host, record.port) == (
        SANDBOX,
        "127.0.0.1",
        upstreams.echo_port,
    )
    assert record.allowed and record.rule == f"test 127.0.0.1:{upstreams.echo_port}"
    assert (record.bytes_up, record.bytes_down) == (len(payload), len(payload))
    assert record.error == ""
    assert record.started_at.tzinfo == UTC and record.duration_ms >= 0
    for relay in proxy.relays:
        assert relay.wait(10) == 0  # the relay ends once both directions are done


def test_it_forwards_an_absolute_form_get_in_origin_form(client, upstreams):
    proxy, sock = client()
    port = upstreams.http_port

    sock.sendall(
        f"GET http://127.0.0.1:{port}/hello?x=1 HTTP/1.1\r\nHost: elsewhere.example\r\n"
        "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
        "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nUser-Agent: apt\r\n\r\n".encode()
    )
    response = read_until_closed(sock)  # the proxy closes after one response

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    seen = json.loads(body)
    assert seen["path"] == "/hello?x=1"
    assert seen["headers"] == [
        ["Host", f"127.0.0.1:{port}"],
        ["User-Agent", "apt"],
        ["Connection", "close"],
    ]
    [record] = proxy.records.wait()
    assert record.allowed and (record.host, record.port) == ("127.0.0.1", port)
    assert record.bytes_down == len(response) and record.bytes_up == 0


def test_it_streams_a_request_body_by_content_length(make_proxy, upstreams):
    proxy = make_proxy()
    sock = proxy.direct()
    body = b"x" * 200_000

    sock.sendall(
        f"POST http://127.0.0.1:{upstreams.http_port}/echo HTTP/1.1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    assert read_until_closed(sock).endswith(b"\r\n\r\n" + body)
    [record] = proxy.records.wait()
    assert record.bytes_up == len(body)


def test_it_refuses_a_chunked_request_body_with_411(make_proxy, upstreams):
    proxy = make_proxy()
    sock = proxy.direct()

    sock.sendall(
        f"POST http://127.0.0.1:{upstreams.http_port}/echo HTTP/1.1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".encode()
    )

    assert read_until_closed(sock).startswith(b"HTTP/1.1 411 Length Required\r\n")
    [record] = proxy.records.wait()
    assert not record.allowed and proxy.policy.asked == []


def test_it_denies_a_host_not_in_policy_with_403_and_records_it(client, connects):
    proxy, sock = client()

    sock.sendall(b"CONNECT denied.example:443 HTTP/1.1\r\nHost: denied.example:443\r\n\r\n")

    response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert response.endswith(b"\r\n\r\negress to denied.example:443 denied: not in policy\n")
    [record] = proxy.records.wait()
    assert (record.host, record.port, record.allowed) == ("denied.example", 443, False)
    assert record.rule == "not in policy"
    assert connects == []


def test_a_name_resolving_to_loopback_is_denied_even_when_the_policy_allows_it(
    make_proxy, upstreams, connects
):
    port = upstreams.echo_port
    proxy = make_proxy(policy=AllowList(("localhost", port)), exempt=[])
    sock = proxy.direct()

    sock.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())

    response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 403 ")
    assert b"always denied: loopback (127.0.0.1)" in response
    [record] = proxy.records.wait()
    assert not record.allowed and record.rule == "always denied: loopback"
    assert record.error == "localhost resolved to 127.0.0.1"
    assert connects == []


def test_an_exempt_address_and_port_is_reached_but_only_that_port(make_proxy, upstreams):
    echo, http = upstreams.echo_port, upstreams.http_port
    proxy = make_proxy(
        policy=AllowList(("localhost", echo), ("localhost", http)),
        exempt=[("127.0.0.1", echo)],
    )

    exempt = proxy.direct()
    exempt.sendall(f"CONNECT localhost:{echo} HTTP/1.1\r\n\r\n".encode())
    assert read_head(exempt).startswith(b"HTTP/1.1 200 ")
    exempt.sendall(b"ping")
    assert exempt.recv(4) == b"ping"
    exempt.close()

    other_port = proxy.direct()
    other_port.sendall(f"CONNECT localhost:{http} HTTP/1.1\r\n\r\n".encode())
    assert read_until_closed(other_port).startswith(b"HTTP/1.1 403 ")

    records = {r.port: r for r in proxy.records.wait(2)}
    assert records[echo].allowed and records[echo].bytes_down == 4
    assert records[http].rule == "always denied: loopback"


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("169.254.169.254:80", "always denied: link-local"),
        ("10.0.2.2:22", "always denied: private range"),
        ("0.0.0.0:5432", "always denied: this network"),
        ("[::ffff:127.0.0.1]:6379", "always denied: loopback"),
        ("[::1]:8000", "always denied: loopback"),
        ("own-address", "always denied: the KVM host's own address"),
    ],
)
def test_the_guard_denies_address_literals_without_connecting(make_proxy, connects, target, rule):
    own = {ipaddress.ip_address("203.0.113.9")}  # the host's public address, whatever it is
    if target == "own-address":
        target = "203.0.113.9:443"
    proxy = make_proxy(policy=AllowList(everything=True), host_addresses=lambda: frozenset(own))
    sock = proxy.direct()

    sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())

    assert read_until_closed(sock).startswith(b"HTTP/1.1 403 ")
    [record] = proxy.records.wait()
    assert record.rule == rule and not record.allowed
    assert connects == []


def test_an_unreachable_upstream_answers_502(make_proxy):
    port = free_port()  # nothing listens there
    proxy = make_proxy(policy=AllowList(("127.0.0.1", port)), exempt=[("127.0.0.1", port)])
    sock = proxy.direct()

    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())

    assert read_until_closed(sock).startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    [record] = proxy.records.wait()
    assert record.allowed and "cannot connect" in record.error


def test_an_oversized_head_answers_400_and_closes(make_proxy):
    proxy = make_proxy()
    sock = proxy.direct()

    sock.sendall(b"CONNECT a.example:443 HTTP/1.1\r\nX-Fill: " + b"a" * 20_000 + b"\r\n\r\n")

    response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"request head longer than 16384 bytes\n")
    [record] = proxy.records.wait()
    assert record.rule == "bad request" and proxy.policy.asked == []


def test_too_many_header_fields_answer_400(make_proxy):
    proxy = make_proxy(limits=Limits(head_fields=5))
    sock = proxy.direct()

    sock.sendall(b"CONNECT a.example:443 HTTP/1.1\r\n" + b"X: y\r\n" * 6 + b"\r\n")

    assert read_until_closed(sock).endswith(b"more than 5 header fields\n")


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT a.example HTTP/1.1",  # no port
        "CONNECT a.example:0 HTTP/1.1",
        "CONNECT a.example:65536 HTTP/1.1",
        "CONNECT a_b.example:443 HTTP/1.1",
        "CONNECT a..example:443 HTTP/1.1",
        "CONNECT -a.example:443 HTTP/1.1",
        "CONNECT 127.1:443 HTTP/1.1",  # an address in disguise
        "CONNECT 2130706433:443 HTTP/1.1",
        f"CONNECT {'a' * 64}.example:443 HTTP/1.1",
        "CONNECT [::1:443 HTTP/1.1",
        "GET https://a.example/ HTTP/1.1",  # TLS goes through CONNECT
        "GET /relative HTTP/1.1",
        "GET http://user:pw@a.example/ HTTP/1.1",
        "GET http://a.example/ HTTP/2.0",
        "GET  http://a.example/ HTTP/1.1",
    ],
)
def test_a_malformed_request_answers_400_before_asking_the_policy(make_proxy, request_line):
    proxy = make_proxy(policy=AllowList(everything=True))
    sock = proxy.direct()

    sock.sendall(request_line.encode() + b"\r\n\r\n")

    assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")
    assert proxy.records.wait()[0].rule == "bad request"
    assert proxy.policy.asked == []


def test_host_names_are_idna_encoded_and_lower_cased():
    request = parse_head("CONNECT Bücher.Example.:443 HTTP/1.1\r\n\r\n".encode(), 10)

    assert (request.host, request.port) == ("xn--bcher-kva.example", 443)


@pytest.mark.parametrize(
    "preamble",
    [
        b"VSB-EGRESS 2 " + SANDBOX.encode() + b"\n",
        b"VSB-EGRESS 1 " + SANDBOX.upper().encode() + b"\n",
        b"VSB-EGRESS 1 not-a-uuid\n",
        b"CONNECT a.example:443 HTTP/1.1\r\n\r\n",
        b"x" * 200,
    ],
)
def test_a_bad_preamble_is_closed_without_a_reply_or_record(make_proxy, preamble):
    proxy = make_proxy()
    sock = proxy.raw()

    sock.sendall(preamble)

    assert read_until_closed(sock) == b""
    time.sleep(0.2)
    assert proxy.records.items == []


def test_a_slow_client_head_times_out_with_408(make_proxy):
    proxy = make_proxy(limits=Limits(head_timeout=0.5))
    sock = proxy.direct()
    started = time.monotonic()

    sock.sendall(b"CONNECT a.exa")  # and nothing more

    assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert time.monotonic() - started < 3
    [record] = proxy.records.wait()
    assert record.rule == "client timeout"


def open_tunnel(proxy, port: int, sandbox: str = SANDBOX) -> tuple[socket.socket, bytes]:
    sock = proxy.direct(sandbox)
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    return sock, read_head(sock)


def test_past_the_per_sandbox_cap_it_answers_503_and_frees_slots_on_close(make_proxy, upstreams):
    proxy = make_proxy(limits=Limits(per_sandbox=2, total=3))
    port = upstreams.echo_port
    first, _ = open_tunnel(proxy, port)
    second, _ = open_tunnel(proxy, port)

    third = proxy.direct()
    third.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    assert read_until_closed(third).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    [refused] = proxy.records.wait()
    assert refused.rule == "connection limit" and refused.port == port

    _, other_head = open_tunnel(proxy, port, OTHER_SANDBOX)  # another sandbox: own budget
    assert other_head.startswith(b"HTTP/1.1 200 ")
    _, over_total = open_tunnel(proxy, port, OTHER_SANDBOX)  # but the host's total is 3
    assert over_total.startswith(b"HTTP/1.1 503 ")

    first.close()
    proxy.records.wait(3)  # the closed tunnel has ended and given its slot back
    _, again = open_tunnel(proxy, port)
    assert again.startswith(b"HTTP/1.1 200 ")
    second.close()


def test_the_socket_is_created_0660_replacing_a_stale_one(tmp_path):
    path = str(tmp_path / "egress.sock")
    bind_unix(path).close()  # a stale socket file: nobody listens

    sock = bind_unix(path)

    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    sock.close()


def test_it_refuses_to_replace_a_symlink_or_a_live_socket(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep me")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    with pytest.raises(FileExistsError, match="not a socket"):
        bind_unix(str(link))
    assert target.read_text() == "keep me" and link.is_symlink()

    live = bind_unix(str(tmp_path / "live.sock"))
    live.listen()
    with pytest.raises(FileExistsError, match="listening"):
        bind_unix(str(tmp_path / "live.sock"))
    live.close()
