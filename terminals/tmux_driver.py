"""tmux on a KVM host: sessions whose panes run `ssh` into a sandbox guest, and a control-mode
client that streams every byte the panes print.

No Django here: the socket, sizes and the credentials' directory arrive through constructors
and arguments, failures leave as `TmuxError` (and subclasses). Two ways in:

* `TmuxDriver` runs one `tmux` command per call through libtmux, for the request/reply
  operations (create, list, kill, send-keys, capture).
* `ControlClient` is one `tmux -C attach` per session (asyncio): tmux writes every chunk a
  pane prints as `%output %<pane> <octal-escaped bytes>`, in order, and answers commands
  written to it in `%begin/%end` blocks that are ordered with that output. A screen capture
  sent through it is therefore exactly "everything before this point" of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import libtmux

PANE_ID_RE = re.compile(r"^%[0-9]{1,9}$")
WINDOW_ID_RE = re.compile(r"^@[0-9]{1,9}$")
# tmux forbids '.' and ':' in session names (they separate window and pane in targets).
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Key names `send-keys` accepts in key mode: modifiers plus one key. Anything else is typed as
# text (literal mode), so no tmux command syntax ever reaches the command parser.
TMUX_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NAMED_KEYS = {
    "Enter", "Escape", "Tab", "BTab", "BSpace", "Space", "Up", "Down", "Left", "Right",
    "Home", "End", "PageUp", "PageDown", "PPage", "NPage", "Insert", "Delete", "IC", "DC",
    *(f"F{n}" for n in range(1, 13)),
}  # fmt: skip
_KEY_RE = re.compile(r"^(?:[CMS]-){0,3}(?P<key>[A-Za-z0-9]|[\[\]\\^_@/?]|[A-Z][A-Za-z0-9]*)$")
_OCTAL_RE = re.compile(rb"\\([0-7]{3})")
_INPUT_CHUNK = 256
CREDENTIAL_MAX_AGE_SECONDS = 900


class TmuxError(Exception):
    """A tmux command failed. `transient` as in sandboxes.remote.errors."""

    transient = False


class TmuxNotFound(TmuxError):
    """The session, window or pane does not exist (any more)."""


def valid_key_name(name: str) -> bool:
    match = _KEY_RE.match(name)
    if not match:
        return False
    key = match.group("key")
    return len(key) == 1 or key in _NAMED_KEYS


# -- SSH in a pane -------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHLaunch:
    """How a pane reaches its guest: `ssh` with a certificate valid for minutes and the
    guest's pinned host key as the only known host."""

    host: str
    port: int
    username: str
    key_path: str
    cert_path: str
    known_hosts_path: str

    def argv(self) -> list[str]:
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", self.key_path,
            "-o", f"CertificateFile={self.cert_path}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=15",
            "-o", "ServerAliveInterval=15",
            "-o", "LogLevel=ERROR",
            "-tt",
            "-p", str(self.port),
            f"{self.username}@{self.host}",
        ]  # fmt: skip

    def command(self) -> str:
        return shlex.join(self.argv())


def _write_private(path: str, text: str, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    key_type, b64 = host_key.split()[:2]
    return f"{name} {key_type} {b64}\n"


def write_credentials(
    directory: str,
    *,
    private_key: str,
    certificate: str,
    host: str,
    port: int,
    username: str,
    host_key: str,
) -> SSHLaunch:
    """Write a fresh key + certificate (unique names, so panes spawning at the same moment
    never read each other's half) and the pinned host key into a 0700 directory. Files older
    than the longest certificate are pruned: `ssh` only reads them while it connects."""
    if not host_key:
        raise TmuxError("the sandbox has no pinned host key; refusing to ssh without one")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    now = time.time()
    for name in os.listdir(directory):
        if name.startswith("key-"):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime > CREDENTIAL_MAX_AGE_SECONDS:
                    os.unlink(path)
    token = secrets.token_hex(6)
    key_path = os.path.join(directory, f"key-{token}")
    cert_path = f"{key_path}-cert.pub"
    _write_private(key_path, private_key)
    _write_private(cert_path, certificate.strip() + "\n", 0o644)
    known_hosts = os.path.join(directory, "known_hosts")
    _write_private(known_hosts, known_hosts_line(host, port, host_key), 0o644)
    return SSHLaunch(host, port, username, key_path, cert_path, known_hosts)


# -- request/reply operations ------------------------------------------------------------


@dataclass(frozen=True)
class PaneInfo:
    session_name: str
    session_id: str
    window_index: int
    window_id: str
    window_name: str
    pane_index: int
    pane_id: str
    pane_pid: int
    pane_width: int
    pane_height: int
    active: bool
    dead: bool
    current_path: str
    pane_title: str

    def as_dict(self) -> dict:
        return asdict(self)


_PANE_FORMAT = "\t".join(
    [
        "#{session_name}",
        "#{session_id}",
        "#{window_index}",
        "#{window_id}",
        "#{pane_index}",
        "#{pane_id}",
        "#{pane_pid}",
        "#{pane_width}",
        "#{pane_height}",
        "#{pane_active}",
        "#{pane_dead}",
        "#{pane_current_path}",
        "#{window_name}",
        "#{pane_title}",
    ]
)


def _parse_pane(line: str) -> PaneInfo:
    f = line.split("\t", 13)
    f += [""] * (14 - len(f))
    return PaneInfo(
        session_name=f[0],
        session_id=f[1],
        window_index=int(f[2] or 0),
        window_id=f[3],
        pane_index=int(f[4] or 0),
        pane_id=f[5],
        pane_pid=int(f[6] or 0),
        pane_width=int(f[7] or 0),
        pane_height=int(f[8] or 0),
        active=f[9] == "1",
        dead=f[10] == "1",
        current_path=f[11],
        window_name=f[12],
        pane_title=f[13],
    )


class TmuxDriver:
    """One dedicated tmux server (`-L name`, or `-S path` when `socket` contains a slash),
    started with no configuration file so nobody's ~/.tmux.conf changes its behaviour."""

    def __init__(
        self,
        socket: str,
        *,
        history_limit: int = 10000,
        tmux_bin: str = "tmux",
    ) -> None:
        if "/" in socket:
            self.server = libtmux.Server(socket_path=socket, config_file="/dev/null")
            self.socket_args = ["-S", socket]
        else:
            self.server = libtmux.Server(socket_name=socket, config_file="/dev/null")
            self.socket_args = ["-L", socket]
        self.tmux_bin = tmux_bin
        self.history_limit = history_limit

    def _cmd(self, *args: str) -> list[str]:
        result = self.server.cmd(*args)
        if result.stderr:
            message = " ".join(result.stderr).strip()
            lowered = message.lower()
            if (
                "can't find" in lowered
                or "no server running" in lowered
                or "error connecting" in lowered
                or "no such file" in lowered
            ):
                raise TmuxNotFound(message)
            raise TmuxError(f"tmux {args[0]}: {message}")
        return result.stdout

    def _options(self) -> list[str]:
        """`;`-chained set-option commands, put before new-session in the same tmux invocation:
        the first pane of a fresh server must already find remain-on-exit and history-limit.

        A pane whose ssh ended stays visible as dead until someone respawns or kills it.
        Sizes: control clients attach with `ignore-size`, so windows keep the size they were
        created with until resize-window (which makes that one window "manual"). The global
        `window-size manual` would be simpler, but tmux 3.3a crashes in new-window with it."""
        args: list[str] = []
        for option, value in (
            ("remain-on-exit", "on"),
            ("history-limit", str(self.history_limit)),
            ("status", "off"),
            ("escape-time", "0"),
        ):
            args += ["set-option", "-g", option, value, ";"]
        return args

    def running(self) -> bool:
        return self.server.is_alive()

    def new_session(
        self, name: str, command: str, *, cols: int, rows: int, window_name: str = ""
    ) -> PaneInfo:
        if not TMUX_NAME_RE.match(name):
            raise TmuxError(f"invalid session name {name!r}")
        args = ["new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows)]
        args += ["-P", "-F", _PANE_FORMAT]
        if window_name:
            args += ["-n", window_name]
        out = self._cmd(*self._options(), *args, command)
        info = _parse_pane(out[0])
        return self.pane(info.pane_id)

    def new_window(self, session: str, command: str, *, window_name: str = "") -> PaneInfo:
        args = ["new-window", "-d", "-t", f"={session}:", "-P", "-F", _PANE_FORMAT]
        if window_name:
            args += ["-n", window_name]
        return _parse_pane(self._cmd(*args, command)[0])

    def split(self, pane_id: str, command: str, *, horizontal: bool = False) -> PaneInfo:
        args = ["split-window", "-d", "-h" if horizontal else "-v", "-t", pane_id]
        args += ["-P", "-F", _PANE_FORMAT]
        return _parse_pane(self._cmd(*args, command)[0])

    def respawn(self, pane_id: str, command: str) -> PaneInfo:
        self._cmd("respawn-pane", "-k", "-t", pane_id, command)
        return self.pane(pane_id)

    def list_panes(self, session: str | None = None) -> list[PaneInfo]:
        try:
            if session:
                out = self._cmd("list-panes", "-s", "-t", f"={session}", "-F", _PANE_FORMAT)
            else:
                out = self._cmd("list-panes", "-a", "-F", _PANE_FORMAT)
        except TmuxNotFound:
            if session:
                raise
            return []
        return [_parse_pane(line) for line in out if line]

    def list_sessions(self) -> list[dict]:
        fmt = "#{session_name}\t#{session_id}\t#{session_windows}\t#{session_created}\t#{session_attached}"
        try:
            out = self._cmd("list-sessions", "-F", fmt)
        except TmuxNotFound:
            return []
        sessions = []
        for line in out:
            name, sid, windows, created, attached = (line.split("\t") + [""] * 5)[:5]
            sessions.append(
                {
                    "name": name,
                    "id": sid,
                    "windows": int(windows or 0),
                    "created": int(created or 0),
                    "attached": int(attached or 0),
                }
            )
        return sessions

    def pane(self, pane_id: str) -> PaneInfo:
        if not PANE_ID_RE.match(pane_id):
            raise TmuxNotFound(f"invalid pane id {pane_id!r}")
        for info in self.list_panes():
            if info.pane_id == pane_id:
                return info
        raise TmuxNotFound(f"no pane {pane_id}")

    def kill_session(self, session: str) -> None:
        self._cmd("kill-session", "-t", f"={session}")

    def kill_window(self, window_id: str) -> None:
        self._cmd("kill-window", "-t", window_id)

    def kill_pane(self, pane_id: str) -> None:
        self._cmd("kill-pane", "-t", pane_id)

    def select_pane(self, pane_id: str) -> None:
        self._cmd("select-window", "-t", pane_id)
        self._cmd("select-pane", "-t", pane_id)

    def send_text(self, pane_id: str, data: bytes) -> None:
        """Type raw bytes into the pane (as hex keys: no quoting, no key-name lookup)."""
        for start in range(0, len(data), _INPUT_CHUNK):
            chunk = data[start : start + _INPUT_CHUNK]
            self._cmd("send-keys", "-t", pane_id, "-H", *(f"{b:02x}" for b in chunk))

    def send_keys(self, pane_id: str, keys: Sequence[str]) -> None:
        bad = [k for k in keys if not valid_key_name(k)]
        if bad:
            raise ValueError(f"unknown key name(s): {', '.join(bad)}")
        if keys:
            self._cmd("send-keys", "-t", pane_id, *keys)

    def capture(
        self, pane_id: str, *, last_n_lines: int | None = None, escapes: bool = False
    ) -> str:
        """The visible screen, or the last `last_n_lines` lines of history + screen."""
        args = ["capture-pane", "-p", "-t", pane_id]
        if escapes:
            args.append("-e")
        if last_n_lines:
            args += ["-S", f"-{last_n_lines}", "-J"]
        lines = self._cmd(*args)
        if last_n_lines:
            while lines and not lines[-1].strip():
                lines.pop()
            lines = lines[-last_n_lines:]
        return "\n".join(lines)

    def resize_window(self, pane_id: str, cols: int, rows: int) -> None:
        self._cmd("resize-window", "-t", pane_id, "-x", str(cols), "-y", str(rows))

    def kill_server(self) -> None:
        """Stop this tmux server and everything in it, and remove its socket file."""
        with contextlib.suppress(Exception):
            self.server.kill()
        with contextlib.suppress(Exception):
            path = self.server.socket_path or os.path.join(
                os.environ.get("TMUX_TMPDIR", "/tmp"),
                f"tmux-{os.getuid()}",
                self.server.socket_name,
            )
            os.unlink(path)


# -- control mode --------------------------------------------------------------------------


def decode_output(escaped: bytes) -> bytes:
    """tmux escapes bytes below 32 and the backslash as \\ooo in %output lines."""
    return _OCTAL_RE.sub(lambda m: bytes([int(m.group(1), 8)]), escaped)


def input_commands(pane_id: str, data: bytes) -> list[str]:
    """Control-mode command lines that type `data` into the pane byte for byte."""
    return [
        f"send-keys -t {pane_id} -H " + " ".join(f"{b:02x}" for b in data[i : i + _INPUT_CHUNK])
        for i in range(0, len(data), _INPUT_CHUNK)
    ]


@dataclass
class _Pending:
    future: asyncio.Future
    on_begin: Callable[[], None] | None
    lines: list[bytes]


class ControlClient:
    """`tmux -C attach-session -t =<session>` with the `ignore-size` flag: it never changes
    a window's size. `on_output(pane_id, bytes)` is called for every %output, in order;
    `command()` sends one command and returns its output lines."""

    def __init__(
        self,
        socket_args: Sequence[str],
        session: str,
        on_output: Callable[[str, bytes], None],
        *,
        tmux_bin: str = "tmux",
    ) -> None:
        self.socket_args = list(socket_args)
        self.session = session
        self.on_output = on_output
        self.tmux_bin = tmux_bin
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: deque[_Pending] = deque()
        self._reader: asyncio.Task | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.tmux_bin,
            *self.socket_args,
            "-C",
            "attach-session",
            "-f",
            "ignore-size",
            "-t",
            f"={self.session}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=8 * 1024 * 1024,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        block: _Pending | None = None
        ours = False
        begin = b""
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                line = line.rstrip(b"\n")
                if block is not None or ours:
                    if line.startswith((b"%end ", b"%error ")) and _same_block(line, begin):
                        if block is not None and not block.future.done():
                            if line.startswith(b"%error "):
                                text = b"\n".join(block.lines).decode(errors="replace")
                                block.future.set_exception(TmuxError(text))
                            else:
                                block.future.set_result(block.lines)
                        block, ours = None, False
                    elif block is not None:
                        block.lines.append(line)
                    continue
                if line.startswith(b"%output "):
                    _, pane, data = (line.split(b" ", 2) + [b""])[:3]
                    self.on_output(pane.decode(), decode_output(data))
                elif line.startswith(b"%begin "):
                    begin = line
                    flags = line.split(b" ")[3:4]
                    if flags == [b"1"] and self._pending:
                        block = self._pending.popleft()
                        if block.on_begin is not None:
                            block.on_begin()
                    else:
                        ours = True  # the attach's own reply, or a block nobody waits for
                elif line.startswith(b"%exit"):
                    break
        finally:
            for pending in self._pending:
                if not pending.future.done():
                    pending.future.set_exception(TmuxNotFound(f"session {self.session} ended"))
            self._pending.clear()
            self.closed.set()

    async def command(
        self, line: str, *, on_begin: Callable[[], None] | None = None, timeout: float = 10
    ) -> list[bytes]:
        """Send one command line; `on_begin` runs when tmux starts answering it, i.e. after
        every %output that happened before the command executed."""
        if self.closed.is_set() or self.proc is None or self.proc.stdin is None:
            raise TmuxNotFound(f"control client of {self.session} is closed")
        if "\n" in line:
            raise ValueError("one command per line")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(future, on_begin, []))
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    def send_line(self, line: str) -> None:
        """Send a command without waiting for its answer (keystrokes, resizes); the order of
        lines is the order tmux runs them in."""
        if self.closed.is_set() or self.proc is None or self.proc.stdin is None:
            raise TmuxNotFound(f"control client of {self.session} is closed")
        if "\n" in line:
            raise ValueError("one command per line")
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append(_Pending(future, None, []))
        self.proc.stdin.write(line.encode() + b"\n")

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


def _same_block(end_line: bytes, begin_line: bytes) -> bool:
    return end_line.split(b" ")[1:3] == begin_line.split(b" ")[1:3]
