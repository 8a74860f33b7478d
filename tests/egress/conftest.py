"""A real egress proxy on a unix socket in a thread of its own, real upstreams on 127.0.0.1
(an HTTP server and a CONNECT echo server), and clients that reach the proxy either directly
or through the real relay script spawned exactly as QEMU does (stdin, stdout and stderr one
socket). Nothing here talks to anything but loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import egress.proxy
from egress.addresses import AddressGuard
from egress.proxy import ConnectionRecord, Limits, Verdict, serve

SANDBOX = "0b9d6f0e-8a4e-4f44-9a53-2f9b8d1c0a11"
OTHER_SANDBOX = "7c3e2a10-5b6d-4e8f-9a1b-2c3d4e5f6a7b"
RELAY = str(Path(egress.proxy.__file__).with_name("relay.py"))
TIMEOUT = 10.0


class AllowList:
    """A policy allowing exactly the (host, port) pairs given; `everything` allows all."""

    def __init__(self, *entries: tuple[str, int], everything: bool = False) -> None:
        self.entries = set(entries)
        self.everything = everything
        self.asked: list[tuple[str, str, int]] = []

    def check(self, sandbox_id: str, host: str, port: int) -> Verdict:
        self.asked.append((sandbox_id, host, port))
        if self.everything or (host, port) in self.entries:
            return Verdict(True, f"test {host}:{port}")
        return Verdict(False, "not in policy")


class Records:
    """The sink: keeps every record and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: list[ConnectionRecord] = []
        self.changed = threading.Condition()

    def __call__(self, record: ConnectionRecord) -> None:
        with self.changed:
            self.items.append(record)
            self.changed.notify_all()

    def wait(self, count: int = 1) -> list[ConnectionRecord]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.items) >= count, TIMEOUT), self.items
            return list(self.items)


class _Echo(socketserver.BaseRequestHandler):
    """Echoes every byte; on EOF it half-closes too, so a tunnel's half-close is visible."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


class _Http(BaseHTTPRequestHandler):
    """GET answers with what the server received (target and header fields) as JSON; POST
    answers with the body it read by Content-Length."""

    def do_GET(self) -> None:
        self.reply(json.dumps({"path": self.path, "headers": list(self.headers.items())}))

    def do_POST(self) -> None:
        self.reply(self.rfile.read(int(self.headers["Content-Length"])).decode())

    def reply(self, text: str) -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@dataclass
class Upstreams:
    echo_port: int
    http_port: int


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    socketserver.ThreadingTCPServer.daemon_threads = True
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    for server in (echo, http):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Upstreams(echo.server_address[1], http.server_address[1])
    for server in (echo, http):
        server.shutdown()
        server.server_close()


@dataclass
class Proxy:
    path: str
    policy: AllowList
    records: Records
    relays: list[subprocess.Popen] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def direct(self, sandbox: str = SANDBOX) -> socket.socket:
        """A connection as the relay makes it: unix socket plus preamble."""
        sock = self.raw()
        sock.sendall(f"VSB-EGRESS 1 {sandbox}\n".encode())
        return sock

    def via_relay(self, sandbox: str = SANDBOX) -> socket.socket:
        """The guest's end of a connection carried by the real relay script."""
        guest, qemu_side = socket.socketpair()
        self.relays.append(spawn_relay([self.path, sandbox], qemu_side))
        guest.settimeout(TIMEOUT)
        self.sockets.append(guest)
        return guest

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.settimeout(TIMEOUT)
        sock.connect(self.path)
        return sock


def spawn_relay(args: list[str], qemu_side: socket.socket) -> subprocess.Popen:
    """Run relay.py as QEMU's guestfwd does: stdin, stdout and stderr are the guest socket."""
    process = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-S", RELAY, *args],
        stdin=qemu_side,
        stdout=qemu_side,
        stderr=qemu_side,
    )
    qemu_side.close()
    return process


@pytest.fixture
def make_proxy(tmp_path, upstreams) -> Iterator[Callable[..., Proxy]]:
    """make_proxy(policy=..., exempt=..., limits=...) starts a proxy; the defaults allow and
    exempt the two loopback upstreams by their address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []
    proxies: list[Proxy] = []

    def start(
        policy: AllowList | None = None,
        exempt: list[tuple[str, int]] | None = None,
        limits: Limits | None = None,
        **guard_options,
    ) -> Proxy:
        loopback = [("127.0.0.1", upstreams.echo_port), ("127.0.0.1", upstreams.http_port)]
        policy = policy or AllowList(*loopback)
        guard = AddressGuard(exempt=loopback if exempt is None else exempt, **guard_options)
        records = Records()
        path = str(tmp_path / f"egress-{len(servers)}.sock")
        limits = limits or Limits(head_timeout=2.0, idle_timeout=10.0)
        server = asyncio.run_coroutine_threadsafe(
            serve(path, policy, records, guard, limits=limits), loop
        ).result(TIMEOUT)
        servers.append(server)
        proxies.append(Proxy(path, policy, records))
        return proxies[-1]

    yield start

    async def stop() -> None:
        """Let the handlers see their clients go and finish (they report then); cancel only
        what is still running after that."""
        for server in servers:
            server.close()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT / 2)
        for task in tasks:
            task.cancel()

    for proxy in proxies:
        for sock in proxy.sockets:
            sock.close()
    asyncio.run_coroutine_threadsafe(stop(), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()
    for proxy in proxies:
        for relay in proxy.relays:
            if relay.poll() is None:
                relay.kill()
            relay.wait(TIMEOUT)


@pytest.fixture(params=["direct", "relay"])
def client(request, make_proxy) -> Callable[..., tuple[Proxy, socket.socket]]:
    """client(**make_proxy kwargs) -> (proxy, a guest-side socket), directly or via relay."""

    def open_client(**kwargs) -> tuple[Proxy, socket.socket]:
        proxy = make_proxy(**kwargs)
        sock = proxy.direct() if request.param == "direct" else proxy.via_relay()
        return proxy, sock

    return open_client


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every upstream connection the proxy attempts, none made: proves the guard stopped a
    request before any packet left (and keeps tests off non-loopback addresses)."""
    attempts: list = []

    async def refuse(addresses, port, timeout):
        attempts.append((addresses, port))
        raise OSError("connection blocked by the test")

    monkeypatch.setattr(egress.proxy, "open_upstream", refuse)
    return attempts


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to the end of a response head, read one at a time so nothing after it is
    consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {head!r}"
        head += byte
    return head


def kernel_addresses() -> list[str]:
    """Every address of this machine's interfaces (loopback included, so never empty), read
    independently of the guard (the text output of `ip`, not its JSON)."""
    out = subprocess.run(
        ["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3].split("/")[0].split("%")[0] for line in out.splitlines()]
