"""The relay QEMU spawns per guest connection: it refuses bad arguments and any failure
without a byte to the guest (its stderr is the guest's socket too)."""

from __future__ import annotations

import socket

import pytest

from tests.egress.conftest import SANDBOX, TIMEOUT, read_until_closed, spawn_relay


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["/run/egress.sock"],
        ["relative/egress.sock", SANDBOX],
        ["/run/egress.sock", "not-a-uuid"],
        ["/run/egress.sock", SANDBOX.upper()],
        ["/run/egress.sock", SANDBOX + "\nCONNECT x:1"],
        ["/run/egress.sock", SANDBOX, "extra"],
    ],
)
def test_bad_arguments_exit_non_zero_without_writing(args):
    guest, qemu_side = socket.socketpair()
    guest.settimeout(TIMEOUT)

    relay = spawn_relay(args, qemu_side)

    assert relay.wait(TIMEOUT) != 0
    assert read_until_closed(guest) == b""
    guest.close()


def test_a_missing_proxy_ends_the_connection_without_writing(tmp_path):
    guest, qemu_side = socket.socketpair()
    guest.settimeout(TIMEOUT)

    relay = spawn_relay([str(tmp_path / "absent.sock"), SANDBOX], qemu_side)

    assert relay.wait(TIMEOUT) == 1
    assert read_until_closed(guest) == b""
    guest.close()


def test_it_sends_the_preamble_then_copies_both_ways_with_half_close(tmp_path):
    path = str(tmp_path / "fake-proxy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    guest, qemu_side = socket.socketpair()
    guest.settimeout(TIMEOUT)
    listener.settimeout(TIMEOUT)

    relay = spawn_relay([path, SANDBOX], qemu_side)
    proxy, _ = listener.accept()
    proxy.settimeout(TIMEOUT)
    guest.sendall(b"from the guest")
    guest.shutdown(socket.SHUT_WR)

    assert read_until_closed(proxy) == f"VSB-EGRESS 1 {SANDBOX}\n".encode() + b"from the guest"
    proxy.sendall(b"from the proxy")  # still possible after the guest's half-close
    proxy.shutdown(socket.SHUT_WR)
    assert read_until_closed(guest) == b"from the proxy"
    assert relay.wait(TIMEOUT) == 0
    for sock in (listener, proxy, guest):
        sock.close()
