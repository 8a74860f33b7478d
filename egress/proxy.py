"""The egress proxy of one KVM host: an asyncio server on a unix socket that only the per-guest
relays (egress/relay.py, spawned by QEMU for each guest connection) reach.

Each connection is: a preamble line naming the sandbox (`VSB-EGRESS 1 <uuid>`), then one HTTP
proxy request, either `CONNECT host:port` (a byte tunnel, no TLS interception) or an
absolute-form `http://` request (forwarded once, `Connection: close`). The order of checks is
the point: the policy decides by name, then the name is resolved and EVERY address is vetted
by the AddressGuard, then the proxy connects to a vetted address itself (it never resolves
again, so DNS rebinding gains nothing). Everything the guest sends is hostile: every read is
capped in size and time. Every connection with a valid preamble is reported to the sink once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from egress.addresses import AddressGuard

log = logging.getLogger(__name__)

PREAMBLE = re.compile(
    rb"VSB-EGRESS 1 ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\n"
)
PREAMBLE_MAX = 64  # the real one is 50 bytes
# Large buffers: the splice is the hot path and a benchmark compares it with plain curl.
CHUNK = 1024 * 1024
STREAM_LIMIT = 512 * 1024  # asyncio pauses a socket's reads once 2x this is buffered
WRITE_HIGH_WATER = 1024 * 1024

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    411: "Length Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Rule recorded for refusals that happen before (or instead of) the policy's verdict.
REFUSAL_RULES = {
    400: "bad request",
    408: "client timeout",
    411: "bad request",
    503: "connection limit",
}
# Headers that concern only the hop to the proxy; never forwarded upstream.
HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"}

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CONTROL = re.compile(r"[\x00-\x20\x7f]")
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
AUTHORITY = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+))(?::([0-9]{1,5}))?")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str  # the policy entry that allowed it, or why it was denied


class Policy(Protocol):
    def check(self, sandbox_id: str, host: str, port: int) -> Verdict:
        """Synchronous (it may query the database): the proxy calls it in a worker thread."""
        ...


@dataclass
class ConnectionRecord:
    sandbox_id: str
    host: str = ""
    port: int = 0
    allowed: bool = False
    rule: str = ""
    bytes_up: int = 0  # guest -> upstream
    bytes_down: int = 0  # upstream -> guest
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_ms: int = 0
    error: str = ""


Sink = Callable[[ConnectionRecord], Any]


@dataclass(frozen=True)
class Limits:
    per_sandbox: int = 64  # concurrent connections of one sandbox
    total: int = 1024  # concurrent connections of all sandboxes
    head_bytes: int = 16 * 1024
    head_fields: int = 100
    head_timeout: float = 15.0  # for the preamble and the whole request head, not per read
    resolve_timeout: float = 5.0
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0  # no byte either way for this long ends a tunnel
    workers: int = 16  # threads for the policy and the sink (each may hold a DB connection)


class Refusal(Exception):
    """Ends a connection with an HTTP error answer; `message` is the one-line text sent."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    host: str  # normalised: lower-case ASCII name, or an IP address
    port: int
    path: str  # origin-form; unused for CONNECT
    version: str
    headers: list[tuple[str, str]]
    body_length: int = 0  # Content-Length of a forwarded request's body

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


async def serve(
    socket_path: str,
    policy: Policy,
    sink: Sink,
    guard: AddressGuard,
    *,
    limits: Limits | None = None,
) -> asyncio.Server:
    """Listen on `socket_path` (created mode 0660; a stale socket there is replaced, anything
    else there is refused) and serve until the returned Server is closed."""
    proxy = _Proxy(policy, sink, guard, limits or Limits())
    sock = bind_unix(socket_path)
    return await asyncio.start_unix_server(proxy.handle, sock=sock, limit=STREAM_LIMIT)


def bind_unix(path: str) -> socket.socket:
    """A unix socket bound at `path` with mode 0660. It is bound under a temporary name,
    chmod-ed, then renamed over `path`: the socket is never reachable with a wider mode, no
    process-wide umask is touched, and rename replaces a stale socket without following
    anything. The directory must belong to the service (not writable by guests' user)."""
    _refuse_unless_stale(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a crash of this pid's predecessor; unlink never follows
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o660)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return sock


def _refuse_unless_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):  # a symlink, file or directory: an operator error, not ours
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return  # nobody listens: stale
    raise FileExistsError(f"another egress proxy is listening on {path}")


async def open_upstream(
    addresses: list[str], port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first vetted address that answers (all of them passed the guard)."""
    error: OSError = OSError("no address")
    async with asyncio.timeout(timeout):
        for address in addresses:
            try:
                return await asyncio.open_connection(address, port, limit=STREAM_LIMIT)
            except OSError as exc:
                error = exc
    raise error


class _Capped:
    """Reads delimited pieces off a stream with a byte cap each, keeping what it over-read
    (the guest's first tunnel or body bytes may arrive in the same packet as the head)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def until(self, separator: bytes, cap: int) -> bytes:
        while True:
            end = self.buffer.find(separator)
            if end >= 0:
                end += len(separator)
                if end > cap:
                    break
                piece = bytes(self.buffer[:end])
                del self.buffer[:end]
                return piece
            if len(self.buffer) >= cap:
                break
            chunk = await self.reader.read(cap - len(self.buffer))
            if not chunk:
                raise EOFError
            self.buffer += chunk
        raise Refusal(400, f"request head longer than {cap} bytes")

    def leftover(self) -> bytes:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest


class _Proxy:
    def __init__(self, policy: Policy, sink: Sink, guard: AddressGuard, limits: Limits) -> None:
        self.policy = policy
        self.sink = sink
        self.guard = guard
        self.limits = limits
        # Own threads: a slow database must not starve the loop's getaddrinfo threads.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.workers, thread_name_prefix="egress"
        )
        self.open_total = 0
        self.open_by_sandbox: dict[str, int] = {}

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        started, clock = datetime.now(UTC), loop.time()
        deadline = clock + self.limits.head_timeout
        capped = _Capped(reader)
        try:
            async with asyncio.timeout_at(deadline):
                match = PREAMBLE.fullmatch(await capped.until(b"\n", PREAMBLE_MAX))
        except (Refusal, EOFError, TimeoutError, OSError, asyncio.CancelledError):
            match = None
        if match is None:
            # Not a relay of ours (the relay always sends it): no sandbox to report it for, and
            # no answer that would help a prober.
            log.warning("egress: connection without a valid preamble closed")
            writer.transport.abort()
            return
        record = ConnectionRecord(sandbox_id=match.group(1).decode(), started_at=started)
        try:
            request = await self.read_request(record, capped, deadline)
            with self.slot(record.sandbox_id):
                await self.forward(record, request, capped, writer)
        except Refusal as refusal:
            record.rule = record.rule or REFUSAL_RULES.get(refusal.status, "")
            record.error = record.error or refusal.message
            self.answer(writer, refusal.status, refusal.message)
        except (OSError, EOFError, TimeoutError) as exc:
            record.error = record.error or f"{type(exc).__name__}: {exc}".rstrip(": ")
        except asyncio.CancelledError:
            # The server is shutting down. Not re-raised: this task ends here anyway, and
            # Python 3.11's stream callback logs a cancelled handler as an error.
            record.error = "proxy shut down"
        finally:
            writer.close()  # flushes an answer still buffered, then closes
            record.duration_ms = int((loop.time() - clock) * 1000)
            self.report(record)

    async def read_request(
        self, record: ConnectionRecord, capped: _Capped, deadline: float
    ) -> Request:
        try:
            async with asyncio.timeout_at(deadline):
                head = await capped.until(b"\r\n\r\n", self.limits.head_bytes)
        except TimeoutError:
            raise Refusal(408, "request head not received in time") from None
        except EOFError:
            raise Refusal(400, "connection closed inside the request head") from None
        request = parse_head(head, self.limits.head_fields)
        record.host, record.port = request.host, request.port
        return request

    async def forward(
        self,
        record: ConnectionRecord,
        request: Request,
        capped: _Capped,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Policy, resolution, guard, connection, then the exchange. Raises Refusal for an HTTP
        error answer (only before any byte of the exchange was sent)."""
        try:
            verdict = await self.in_thread(
                self.policy.check, record.sandbox_id, record.host, record.port
            )
        except Exception as exc:  # the policy is the lead's DB code: fail closed, say why
            log.exception("egress: policy check failed")
            record.rule = "policy error"
            raise Refusal(503, f"egress policy unavailable ({type(exc).__name__})") from None
        record.rule = verdict.rule
        if not verdict.allowed:
            raise Refusal(403, f"egress to {_where(record)} denied: {verdict.rule}")

        addresses = await self.resolve(record)
        denied = await self.in_thread(self.vet, addresses, record.port)
        if denied is not None:
            address, reason = denied
            record.rule = f"always denied: {reason}"
            record.error = f"{record.host} resolved to {address}"
            raise Refusal(403, f"egress to {_where(record)} denied: {record.rule} ({address})")
        record.allowed = True

        try:
            up_reader, up_writer = await open_upstream(
                addresses, record.port, self.limits.connect_timeout
            )
        except TimeoutError:
            raise Refusal(504, f"connecting to {_where(record)} timed out") from None
        except OSError as exc:
            raise Refusal(
                502, f"cannot connect to {_where(record)}: {exc.strerror or exc}"
            ) from None
        try:
            for stream in (writer, up_writer):
                stream.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            if request.is_connect:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self.splice(record, capped, writer, up_reader, up_writer, body=None)
            else:
                up_writer.write(origin_head(request))
                await self.splice(
                    record, capped, writer, up_reader, up_writer, body=request.body_length
                )
        except TimeoutError:
            record.error = "idle timeout"  # bytes may have flowed: no HTTP answer any more
        except OSError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        finally:
            up_writer.close()

    async def resolve(self, record: ConnectionRecord) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.resolve_timeout):
                infos = await loop.getaddrinfo(
                    record.host, record.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:
            raise Refusal(504, f"resolving {record.host} timed out") from None
        except OSError as exc:
            raise Refusal(502, f"cannot resolve {record.host}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise Refusal(502, f"{record.host} has no address")
        return addresses

    def vet(self, addresses: list[str], port: int) -> tuple[str, str] | None:
        """(address, reason) for the first denied address; any one denies the name (in a thread:
        the guard may read the host's addresses from the kernel)."""
        for address in addresses:
            reason = self.guard.denial(address, port)
            if reason is not None:
                return address, reason
        return None

    async def splice(
        self,
        record: ConnectionRecord,
        capped: _Capped,
        client: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        body: int | None,
    ) -> None:
        """Copy both ways until done. A tunnel (body None) ends when both directions reached
        EOF (each EOF is passed on as a half-close); a forwarded request ends with the response
        (the upstream closes: we sent Connection: close), after at most `body` bytes up."""
        loop = asyncio.get_running_loop()
        last_activity = loop.time()

        def moved(direction: str, count: int) -> None:
            nonlocal last_activity
            last_activity = loop.time()
            setattr(record, direction, getattr(record, direction) + count)

        up = asyncio.create_task(
            _pump(capped.reader, up_writer, capped.leftover(), body, lambda n: moved("bytes_up", n))
        )
        down = asyncio.create_task(
            _pump(up_reader, client, b"", None, lambda n: moved("bytes_down", n))
        )
        awaited = {up, down} if body is None else {down}
        try:
            while not all(task.done() for task in awaited):
                done, _ = await asyncio.wait({up, down}, timeout=min(5.0, self.limits.idle_timeout))
                for task in done:
                    task.result()  # raises the pump's error, if any
                if loop.time() - last_activity > self.limits.idle_timeout:
                    raise TimeoutError
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    @contextlib.contextmanager
    def slot(self, sandbox_id: str) -> Iterator[None]:
        """One of the bounded connection slots (per sandbox and in all), or Refusal(503). Only
        the loop's thread touches the counters, so no lock."""
        held = self.open_by_sandbox.get(sandbox_id, 0)
        if held >= self.limits.per_sandbox:
            raise Refusal(503, f"too many connections from this sandbox (limit {held})")
        if self.open_total >= self.limits.total:
            raise Refusal(503, "too many connections on this host")
        self.open_by_sandbox[sandbox_id] = held + 1
        self.open_total += 1
        try:
            yield
        finally:
            self.open_total -= 1
            self.open_by_sandbox[sandbox_id] -= 1
            if not self.open_by_sandbox[sandbox_id]:
                del self.open_by_sandbox[sandbox_id]

    def answer(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        body = (message + "\n").encode("utf-8", "replace")
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(head.encode("ascii") + body)

    def report(self, record: ConnectionRecord) -> None:
        """Hand the record to the sink in a thread without awaiting it: a slow sink (a DB
        insert) never holds the loop, and a cancelled handler still reports."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, self.sink, record)
        future.add_done_callback(_log_sink_failure)


def _log_sink_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("egress: sink failed", exc_info=future.exception())


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    limit: int | None,
    moved: Callable[[int], None],
) -> None:
    """Copy `first`, then the reader, into the writer: up to `limit` bytes (then stop, no
    half-close: the upstream still has to answer) or, with no limit, to EOF and pass the EOF
    on as a half-close."""
    remaining = limit
    data = first if remaining is None else first[:remaining]
    while True:
        if data:
            writer.write(data)
            moved(len(data))
            if remaining is not None:
                remaining -= len(data)
            await writer.drain()
        if remaining == 0:
            return
        data = await reader.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not data:
            break
    if remaining is not None:
        raise ConnectionError("the client closed before the end of the request body")
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


def _where(record: ConnectionRecord) -> str:
    host = f"[{record.host}]" if ":" in record.host else record.host
    return f"{host}:{record.port}"


def parse_head(head: bytes, max_fields: int) -> Request:
    """The proxy request in `head` (ending in CRLF CRLF). Raises Refusal(400) for anything
    but a well-formed CONNECT host:port or absolute-form http:// request."""
    lines = head[:-4].split(b"\r\n")
    try:
        request_line = lines[0].decode("utf-8")  # UTF-8 so an IDN host can be IDNA-encoded
        method, target, version = request_line.split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, "malformed request line") from None
    if not TOKEN.fullmatch(method) or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refusal(400, "malformed request line")
    if CONTROL.search(target):
        raise Refusal(400, "malformed request target")
    if len(lines) - 1 > max_fields:
        raise Refusal(400, f"more than {max_fields} header fields")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise Refusal(400, "malformed header field")
        headers.append((name, value.strip(" \t")))

    if method == "CONNECT":
        host, port = parse_authority(target, default_port=None)
        return Request(method, host, port, "", version, headers)
    scheme, separator, rest = target.partition("://")
    if not separator or scheme.lower() != "http":
        raise Refusal(400, "only CONNECT host:port or an absolute http:// URL is proxied")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise Refusal(400, "credentials in the URL are not supported")
    host, port = parse_authority(authority, default_port=80)
    if not path.startswith("/"):
        path = "/" + path
    return Request(method, host, port, path, version, headers, request_body_length(headers))


def parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    match = AUTHORITY.fullmatch(text)
    if match is None:
        raise Refusal(400, "malformed host:port")
    v6, name, port_text = match.groups()
    if port_text is None and default_port is None:
        raise Refusal(400, "CONNECT needs host:port")
    port = int(port_text) if port_text is not None else default_port
    if not 1 <= port <= 65535:
        raise Refusal(400, "port out of range")
    return normalise_host(v6, name), port


def normalise_host(v6: str | None, name: str | None) -> str:
    """An IP literal in its canonical form, or a lower-case ASCII (IDNA) host name of
    letters, digits and hyphens. IP literals are allowed here; the guard vets them later."""
    try:
        if v6 is not None:
            return str(ipaddress.IPv6Address(v6))
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        if v6 is not None:
            raise Refusal(400, "malformed IPv6 address") from None
    assert name is not None
    try:
        ascii_name = name.removesuffix(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise Refusal(400, "malformed host name") from None
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > 253
        or not all(LABEL.fullmatch(label) for label in labels)
        # "127.1" or "2130706433" would be an address in disguise to the resolver
        or labels[-1].isdigit()
    ):
        raise Refusal(400, "malformed host name")
    return ascii_name


def request_body_length(headers: list[tuple[str, str]]) -> int:
    """The request body's length from Content-Length. A body framed any other way (chunked)
    is refused with 411: this proxy forwards bodies by length only."""
    lengths = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == "transfer-encoding":
            raise Refusal(411, "request bodies must have a Content-Length")
        if lowered == "content-length":
            if not value.isdigit() or len(value) > 18:
                raise Refusal(400, "malformed Content-Length")
            lengths.add(int(value))
    if len(lengths) > 1:
        raise Refusal(400, "conflicting Content-Length")
    return lengths.pop() if lengths else 0


def origin_head(request: Request) -> bytes:
    """The request as the origin server should see it: origin-form target, our own Host,
    no hop-by-hop or Proxy-* fields, Connection: close (one request per connection)."""
    named_by_connection = {
        token.strip().lower()
        for name, value in request.headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    fields = [f"Host: {request.authority}"]
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named_by_connection or lowered.startswith("proxy-"):
            continue
        fields.append(f"{name}: {value}")
    fields.append("Connection: close")
    request_line = f"{request.method} {request.path} {request.version}\r\n".encode()
    # Header values were read as latin-1 (any byte), so they go back byte for byte.
    return request_line + ("\r\n".join(fields) + "\r\n\r\n").encode("latin-1")
