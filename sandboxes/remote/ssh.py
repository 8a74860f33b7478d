"""SSH into sandbox guests with short-lived certificates, run commands, reuse connections.

Built on paramiko. Nothing here knows about Django: targets, credentials and limits arrive as
arguments, and failures leave as the typed errors of `sandboxes.remote.errors`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import paramiko

from .errors import AuthError, ConnectError, HostKeyMismatch, RemoteError, SessionLost

log = logging.getLogger(__name__)

# While a guest boots, every poll that reaches QEMU's port forward before sshd listens makes
# paramiko log "Error reading SSH protocol banner" with a full traceback at ERROR. These are
# expected and mapped to ConnectError; leave the level alone if someone configured it.
_paramiko_log = logging.getLogger("paramiko")
if _paramiko_log.level == logging.NOTSET:
    _paramiko_log.setLevel(logging.CRITICAL)

DEFAULT_MAX_OUTPUT_BYTES = 1_048_576
# One argv element on Linux is limited to 128 KiB (MAX_ARG_STRLEN); stay clearly below it.
MAX_COMMAND_BYTES = 120_000
# After the exit status arrives, wait this long for EOF: a background job that inherited
# stdout (`server &`) keeps the stream open forever, and the caller should not pay for it.
EXIT_GRACE_SECONDS = 0.5
_KILL_TIMEOUT_SECONDS = 5.0
_RECV_CHUNK = 65536
_CONNECT_TIMEOUTS = ("timeout", "banner_timeout", "auth_timeout", "channel_timeout")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The variable that tags every process of one run, so a timeout can find and kill all of
# them, including background jobs and grandchildren that left the process group.
RUN_ID_VARIABLE = "VSB_RUN_ID"


# -- host keys ---------------------------------------------------------------------------


def host_key_line(key: paramiko.PKey) -> str:
    """`ssh-ed25519 AAAA...`: the form we pin and the guest prints on its serial console."""
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(line: str) -> str:
    """SHA256 fingerprint of a public key line, as `ssh-keygen -l` prints it."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64>'")
    blob = base64.b64decode(parts[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_host_key(line: str) -> paramiko.PKey:
    """Turn a pinned `type base64` line into a paramiko key; ValueError if malformed."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise ValueError("host key must look like '<type> <base64>'")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as exc:
        raise ValueError(f"malformed host key {parts[0]!r}: {exc}") from None


def presented_host_key(client: paramiko.SSHClient) -> str:
    """The host key line the server presented on this connection, to pin it (trust on first
    use) or to compare it with the one the guest printed on its console."""
    transport = client.get_transport()
    if transport is None:
        raise SessionLost("client is not connected", started=False)
    return host_key_line(transport.get_remote_server_key())


# -- connecting --------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHTarget:
    """Where a guest's sshd answers. Without `pinned_host_key` the first key presented is
    accepted (trust on first use); with it, any other key is refused before we authenticate."""

    host: str
    port: int
    username: str = "root"
    pinned_host_key: str | None = None


class _Credential(Protocol):
    key: paramiko.PKey


class _AcceptAndRemember(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        # The presented key stays readable through presented_host_key(); pinning it is the
        # caller's decision (it may first compare it with the console line).
        return None


def _known_hosts_name(target: SSHTarget) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def connect(
    target: SSHTarget, credential: _Credential, timeout: float = 10.0
) -> paramiko.SSHClient:
    """Open an authenticated connection, or raise ConnectError / AuthError / HostKeyMismatch.

    `credential` is an `IssuedCredential` (anything with a certificate-loaded `.key`).
    """
    client = paramiko.SSHClient()
    expected_line: str | None = None
    if target.pinned_host_key:
        pinned = parse_host_key(target.pinned_host_key)
        expected_line = host_key_line(pinned)
        # Registering the key makes paramiko check it after key exchange and before we send
        # any authentication, and prefer that key type in the negotiation.
        client.get_host_keys().add(_known_hosts_name(target), pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(_AcceptAndRemember())
    where = f"{target.host}:{target.port}"
    try:
        client.connect(
            hostname=target.host,
            port=target.port,
            username=target.username,
            pkey=credential.key,
            look_for_keys=False,
            allow_agent=False,
            # The same limit on each phase: TCP connect, banner, authentication, channel open.
            **dict.fromkeys(_CONNECT_TIMEOUTS, timeout),
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            target.host,
            target.port,
            expected=fingerprint(host_key_line(exc.expected_key)),
            presented=fingerprint(host_key_line(exc.key)),
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthError(
            f"{where} refused our certificate for user {target.username!r}: {exc}"
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        message = str(exc)
        if expected_line and "host key" in message:
            # The server offers no key of the pinned type at all: a different machine.
            raise HostKeyMismatch(
                target.host,
                target.port,
                expected=fingerprint(expected_line),
                presented=f"no {expected_line.split()[0]} key ({message})",
            ) from None
        permanent = message.startswith(("Incompatible ssh", "Negotiation failed"))
        raise ConnectError(f"ssh to {where} failed: {message}", transient=not permanent) from None
    except socket.gaierror as exc:
        client.close()
        raise ConnectError(f"cannot resolve {target.host}: {exc}", transient=False) from None
    except (OSError, EOFError) as exc:
        # Refused, reset, timed out: the guest is still booting or the forward is not up.
        client.close()
        raise ConnectError(f"cannot reach sshd at {where}: {exc or type(exc).__name__}") from None
    transport = client.get_transport()
    if transport is not None:
        # Detects a vanished guest on an idle pooled connection within a minute or so.
        transport.set_keepalive(15)
        # Commands are small request/reply exchanges; Nagle plus delayed ACKs added up to
        # tens of milliseconds per command in measurements (docs/ssh-access.md).
        with contextlib.suppress(OSError, AttributeError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def probe_ssh_banner(host: str, port: int, timeout: float = 0.5) -> bool:
    """True only if something at host:port sends an SSH version line within `timeout`.

    QEMU's user-mode port forward accepts TCP before the guest's sshd listens, so a successful
    connect() proves nothing; the banner does.
    """
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    with sock:
        buf = b""
        while len(buf) < 8192:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1024)
            except OSError:
                return False
            if not chunk:
                return False
            buf += chunk
            # RFC 4253 §4.2: a server may send other lines before its version line.
            if any(line.startswith(b"SSH-") for line in buf.split(b"\n")[:-1]):
                return True
            if buf.startswith(b"SSH-") and len(buf) >= 8:
                return True
    return False


# -- running commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """What a command produced. `exit_code` is None when it timed out (`timed_out`) or the
    server sent no exit status (killed by a signal the shell did not report)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_ms: int


class _Capture:
    """Keeps the first `limit` bytes of a stream and counts (but drops) the rest, so the
    remote side never blocks on a full window while memory stays bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


def validate_env(env: Mapping[str, str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if name == RUN_ID_VARIABLE:
            raise ValueError(f"environment variable name {name!r} is reserved")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"environment variable {name!r} must be a string without NUL")
        result[name] = value
    return result


def build_remote_command(
    script: str, *, run_id: str, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> str:
    """The exec string sent to sshd, which hands it to the user's login shell (`-c`).

    The script is appended verbatim after a few POSIX sh lines (exports, `cd`), so the login
    shell parses it exactly as `ssh host 'script'` would: newlines, heredocs, both kinds of
    quotes and `$` arrive byte for byte. No nested shell: under TCG every extra exec of a
    shell costs 30-50 ms, which would double the cost of a trivial command. The price is that
    a script that kills its own shell (`kill -9 $$`) reports no exit code (sshd then sends an
    exit-signal, which paramiko does not surface).
    """
    if "\x00" in script:
        raise ValueError("command must not contain NUL bytes")
    lines = [f"export {name}={shlex.quote(value)}" for name, value in validate_env(env).items()]
    lines.append(f"export {RUN_ID_VARIABLE}={run_id}")
    if cwd is not None:
        if not cwd or "\x00" in cwd:
            raise ValueError("cwd must be a non-empty path without NUL bytes")
        lines.append(f"cd -- {shlex.quote(cwd)} || exit 1")
    lines.append(script)
    command = "\n".join(lines)
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise ValueError(
            f"command is too long ({len(command.encode())} bytes after quoting, at most "
            f"{MAX_COMMAND_BYTES}); upload the script as a file and run that instead"
        )
    return command


def kill_command(run_id: str) -> str:
    """Shell snippet that SIGKILLs every process carrying VSB_RUN_ID=<run_id> in its
    environment (and their process groups). Two passes catch children forked mid-scan.
    The snippet's own shell does not carry the variable, so it never matches itself."""
    if not re.fullmatch(r"[0-9a-f]+", run_id):
        raise ValueError("run_id must be hex")
    return (
        "for vsb_pass in 1 2; do "
        f"for p in $(grep -lzx '{RUN_ID_VARIABLE}={run_id}' /proc/[0-9]*/environ 2>/dev/null"
        " | cut -d/ -f3); do "
        'kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; '
        "done; done; true"
    )


def run(
    client: paramiko.SSHClient,
    command: str,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    stdin: bytes | None = None,
) -> CommandResult:
    """Run `command` (a shell script, may span lines) on the connected guest.

    stdout and stderr are read concurrently and each kept up to `max_output_bytes` (the rest
    is drained and dropped, the `*_truncated` flag says so). On timeout the output so far is
    returned with `timed_out=True, exit_code=None`, and every process of the run is killed.
    Raises SessionLost if the connection is gone (see `SessionLost.started`).
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if max_output_bytes < 0:
        raise ValueError("max_output_bytes must not be negative")
    run_id = secrets.token_hex(8)
    remote_command = build_remote_command(command, run_id=run_id, env=env, cwd=cwd)

    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise SessionLost("ssh connection is closed", started=False)
    started = time.monotonic()
    deadline = started + timeout
    try:
        channel = transport.open_session(timeout=min(timeout, 10.0))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise SessionLost(f"cannot open an ssh channel: {exc}", started=False) from None
    try:
        return _run_on_channel(
            transport, channel, remote_command, run_id, started, deadline, max_output_bytes, stdin
        )
    finally:
        channel.close()


def _run_on_channel(
    transport: paramiko.Transport,
    channel: paramiko.Channel,
    remote_command: str,
    run_id: str,
    started: float,
    deadline: float,
    max_output_bytes: int,
    stdin: bytes | None,
) -> CommandResult:
    try:
        channel.exec_command(remote_command)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # The request may have reached sshd before the connection died: assume it ran.
        raise SessionLost(f"ssh exec request failed: {exc}", started=True) from None

    out, err = _Capture(max_output_bytes), _Capture(max_output_bytes)
    pending = memoryview(stdin) if stdin else None
    if pending is None:
        # EOF right away, so a script that reads stdin does not wait for the timeout.
        channel.shutdown_write()
    # poll, not select: a busy worker can hold file descriptors above select's 1024 limit.
    waker = select.poll()
    waker.register(channel.fileno(), select.POLLIN)
    exit_seen_at: float | None = None
    timed_out = False

    while True:
        progressed = False
        if channel.recv_ready():
            out.add(channel.recv(_RECV_CHUNK))
            progressed = True
        if channel.recv_stderr_ready():
            err.add(channel.recv_stderr(_RECV_CHUNK))
            progressed = True
        if pending is not None and channel.send_ready():
            # Interleaved with reading: writing all of stdin first could deadlock against a
            # process that fills its stdout window before it reads stdin.
            try:
                sent = channel.send(pending[:_RECV_CHUNK])
                pending = pending[sent:] if sent else pending
            except OSError:
                pending = memoryview(b"")  # the remote closed its stdin; drop the rest
            if not pending:
                pending = None
                with contextlib.suppress(OSError, EOFError):
                    channel.shutdown_write()
            progressed = True

        now = time.monotonic()
        if channel.closed or (channel.exit_status_ready() and channel.eof_received):
            break
        if channel.exit_status_ready():
            exit_seen_at = exit_seen_at or now
            if now - exit_seen_at >= EXIT_GRACE_SECONDS:
                break
        if now >= deadline:
            timed_out = True
            break
        if not transport.is_active():
            # Output so far is lost with the result shape; the caller decides about retrying.
            raise SessionLost("ssh connection dropped while the command ran", started=True)
        if progressed:
            continue
        wait = deadline - now
        if exit_seen_at is not None:
            wait = min(wait, exit_seen_at + EXIT_GRACE_SECONDS - now)
        if pending is not None:
            wait = min(wait, 0.01)  # no event fires when the send window opens; poll
        # A wake-up timeout keeps us checking the transport and the deadline.
        wait = max(0.0, min(wait, 1.0))
        if channel.eof_received:
            # The wake pipe stays readable forever after EOF; wait for the status instead.
            channel.status_event.wait(wait)
        else:
            waker.poll(wait * 1000)

    # Whatever is already buffered belongs to the result.
    while channel.recv_ready():
        out.add(channel.recv(_RECV_CHUNK))
    while channel.recv_stderr_ready():
        err.add(channel.recv_stderr(_RECV_CHUNK))
    duration_ms = int((time.monotonic() - started) * 1000)

    exit_code: int | None = None
    if timed_out:
        _kill_run(transport, run_id)
    elif channel.exit_status >= 0:
        exit_code = channel.exit_status
    elif not transport.is_active():
        # paramiko closes every channel when the connection dies; that is no command result.
        raise SessionLost("ssh connection dropped while the command ran", started=True)
    return CommandResult(
        exit_code=exit_code,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        timed_out=timed_out,
        duration_ms=duration_ms,
    )


def _kill_run(transport: paramiko.Transport, run_id: str) -> None:
    """Kill the processes of a timed-out run. Without a pty sshd sends no SIGHUP when the
    channel closes, so a `sleep 1000` would otherwise outlive us."""
    try:
        channel = transport.open_session(timeout=_KILL_TIMEOUT_SECONDS)
        try:
            channel.exec_command(kill_command(run_id))
            channel.status_event.wait(_KILL_TIMEOUT_SECONDS)
        finally:
            channel.close()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        log.warning("could not kill timed-out run %s: %s", run_id, exc)


# -- connection reuse -------------------------------------------------------------------------


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: paramiko.SSHClient | None = None
        self.target: SSHTarget | None = None
        self.generation: object = None
        self.last_used = 0.0
        self.leases = 0


def _alive(client: paramiko.SSHClient | None) -> bool:
    if client is None:
        return False
    transport = client.get_transport()
    return transport is not None and transport.is_active()


class ConnectionPool:
    """One live SSH connection per key (e.g. sandbox id), shared by threads.

    A new connection always authenticates with a fresh credential from `credential_factory`;
    a cached one keeps working after its certificate expires, because sshd checks the
    certificate only at authentication. Idle connections are closed on the next `get` after
    `max_idle_seconds` (or by `close_idle()` from a periodic task); connections inside a
    `lease()` are never closed for idleness.
    """

    def __init__(
        self,
        max_idle_seconds: float = 120.0,
        *,
        connect_timeout: float = 10.0,
        connector: Callable[[SSHTarget, _Credential, float], paramiko.SSHClient] = connect,
    ) -> None:
        self.max_idle_seconds = max_idle_seconds
        self.connect_timeout = connect_timeout
        self._connector = connector
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def get(
        self,
        key: str,
        target: SSHTarget,
        credential_factory: Callable[[], _Credential],
        generation: object = None,
    ) -> paramiko.SSHClient:
        """A live client for `key`, reconnecting when the cached one is dead, idle too long,
        points at another target (address or pinned host key changed) or belongs to another
        `generation` of the guest (it was restored or restarted since, maybe by another
        process, which could not `discard` this process's connection: a connection the
        guest's reverted TCP state no longer knows may look alive and hang)."""
        self.close_idle()
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
        # Per-key lock: a slow connect to one guest does not hold up the others.
        with slot.lock:
            now = time.monotonic()
            if (
                slot.client is not None
                and _alive(slot.client)
                and slot.target == target
                and slot.generation == generation
            ):
                slot.last_used = now
                return slot.client
            stale, slot.client = slot.client, None
            if stale is not None:
                stale.close()
            client = self._connector(target, credential_factory(), self.connect_timeout)
            slot.client, slot.target, slot.last_used = client, target, time.monotonic()
            slot.generation = generation
            with self._lock:
                if self._slots.get(key) is not slot:
                    # discard() ran while we connected; keep the connection tracked anyway.
                    self._slots[key] = slot
            return client

    @contextlib.contextmanager
    def lease(
        self, key: str, target: SSHTarget, credential_factory: Callable[[], _Credential]
    ) -> Iterator[paramiko.SSHClient]:
        """Like `get`, but the connection is not closed for idleness while the block runs."""
        client = self.get(key, target, credential_factory)
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                slot.leases += 1
        try:
            yield client
        finally:
            with self._lock:
                if slot is not None:
                    slot.leases -= 1
                    slot.last_used = time.monotonic()

    def run(
        self,
        key: str,
        target: SSHTarget,
        credential_factory: Callable[[], _Credential],
        command: str,
        **kwargs,
    ) -> CommandResult:
        """`run()` on the pooled connection. If the cached connection turns out to be dead
        before the command was sent, reconnect once and retry; never retry a command that
        may already have run."""
        for attempt in (1, 2):
            with self.lease(key, target, credential_factory) as client:
                try:
                    return run(client, command, **kwargs)
                except SessionLost as exc:
                    self.discard(key)
                    if exc.started or attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def discard(self, key: str) -> None:
        """Close and forget the connection for `key` (sandbox destroyed, host key changed)."""
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is not None and slot.client is not None:
            slot.client.close()

    def close_idle(self) -> int:
        """Close connections unused for `max_idle_seconds` or already dead; returns count."""
        now = time.monotonic()
        victims: list[paramiko.SSHClient] = []
        with self._lock:
            for key, slot in list(self._slots.items()):
                if slot.leases or not slot.lock.acquire(blocking=False):
                    continue  # in use or connecting right now
                try:
                    idle = now - slot.last_used > self.max_idle_seconds
                    if slot.client is None:
                        del self._slots[key]  # a connect that failed left an empty slot
                    elif idle or not _alive(slot.client):
                        victims.append(slot.client)
                        del self._slots[key]
                finally:
                    slot.lock.release()
        for client in victims:
            client.close()
        return len(victims)

    def close_all(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.client is not None:
                slot.client.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)


__all__ = [
    "AuthError",
    "CommandResult",
    "ConnectError",
    "ConnectionPool",
    "HostKeyMismatch",
    "RemoteError",
    "SSHTarget",
    "SessionLost",
    "build_remote_command",
    "connect",
    "fingerprint",
    "host_key_line",
    "parse_host_key",
    "presented_host_key",
    "probe_ssh_banner",
    "run",
]
