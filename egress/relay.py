"""Relay one guest connection to the KVM host's egress proxy.

QEMU runs this for each TCP connection a guest opens to its guestfwd address:
    /usr/bin/python3 -I -S relay.py <proxy-socket-path> <sandbox-uuid>
with stdin, stdout AND stderr all the guest's socket, as the libvirt-qemu user. So: standard
library only (no project code, no site-packages), nothing ever written to stderr (it would reach
the guest), and any failure just ends the connection. The sandbox id comes from argv, which the
host wrote, never from the guest: the preamble is how the proxy knows who is asking.
"""

import os
import re
import socket
import sys
import threading

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CHUNK = 256 * 1024
# Once the proxy has ended its side, the guest gets this long to finish its own; a guest that
# never closes must not keep a process on the host forever.
GRACE_SECONDS = 30.0


def pump(source: socket.socket, target: socket.socket) -> None:
    """Copy until EOF, then pass the EOF on (half-close) so the other direction can finish.
    On an error, shut both sockets down: that unblocks the other direction's thread."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            target.sendall(view[:count])
        target.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[1].startswith("/") or not UUID.fullmatch(argv[2]):
        return 2
    try:
        guest = socket.socket(fileno=os.dup(0))  # fails unless stdin is a socket
        proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        proxy.connect(argv[1])
        proxy.sendall(f"VSB-EGRESS 1 {argv[2]}\n".encode("ascii"))
    except OSError:
        return 1
    upward = threading.Thread(target=pump, args=(guest, proxy), daemon=True)
    upward.start()
    pump(proxy, guest)
    upward.join(GRACE_SECONDS)
    return 0


if __name__ == "__main__":
    # Before anything can fail: a traceback on stderr would be written into the guest's socket.
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        code = main(sys.argv)
    except BaseException:
        code = 1
    os._exit(code)  # no interpreter teardown output, no lingering threads
