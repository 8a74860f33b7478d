"""tmux on a KVM host: sessions whose panes run `ssh` into a sandbox guest, and a control-mode
client that streams every byte the panes print.

No Django here: the socket, sizes and the credentials' directory arrive through constructors
and arguments, failures leave as `TmuxError` (and subclasses), kinds of `core.errors`. Two
ways in:

* `TmuxDriver` runs one `tmux` command per call through libtmux, for the request/reply
  operations (create, list, kill, send-keys, capture).
* `ControlClient` is one `tmux -C attach` per session (asyncio): tmux writes every chunk a
  pane prints as `%output %<pane> <octal-escaped bytes>`, in order, and answers commands
  written to it in `%begin/%end` blocks that are ordered with that output. A screen capture
  sent through it is therefore exactly "everything before this point" of the stream.

Every name an agent chooses and every byte a guest prints is hostile here. A session, window
or pane name/id becomes a tmux argument only after it matched its strict pattern (else
`InvalidTmuxArgument`, and nothing runs): tmux expands formats in session and window names,
and `#(cmd)` in a format runs a shell command on this host. Keys are an allow-list, text is
typed as hex bytes. List output is framed by per-call random markers, not by tabs and
newlines a name can hold. Control-mode replies never carry guest text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import libtmux

from core.errors import InvalidInput, NotFound, OperationFailed

# Every name or id that reaches a tmux argument matches one of these (always `fullmatch`:
# `$` would let a trailing newline through). None of them can hold `#` (tmux expands formats,
# `#(cmd)` runs a shell command, in session and window names), `;` (an argument ending in `;`
# ends the tmux command), whitespace, a newline or a leading `-`.
PANE_ID_RE = re.compile(r"%[0-9]{1,9}")
WINDOW_ID_RE = re.compile(r"@[0-9]{1,9}")
SESSION_ID_RE = re.compile(r"\$[0-9]{1,9}")
# What an agent may call a session: tmux turns '.' and ':' in session names into '_' (they
# separate window and pane in targets), so they are refused rather than silently changed.
SESSION_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SESSION_NAME_RULE = "1-64 letters, digits, _ and -, starting with a letter or digit"
# What an agent may call a window.
WINDOW_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
WINDOW_NAME_RULE = "1-64 letters, digits, _ . and -, starting with a letter or digit"
# A session's name on the tmux server: `vsb-<sandbox hex>-<name>` for ours.
TMUX_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# `window.pane` after `session:` in a target (either may be empty: the active one).
WINDOW_PANE_RE = re.compile(r"[0-9]{0,9}(\.[0-9]{0,9})?")
SESSION_TARGET_RE = re.compile(f"{TMUX_NAME_RE.pattern}:{WINDOW_PANE_RE.pattern}")
# A paste buffer the relay captures a screen into (see `capture_command`).
CAPTURE_BUFFER_RE = re.compile(r"vsb-capture-[0-9a-f]{16}")
MAX_COLS, MAX_ROWS = 1000, 500
_SANDBOX_TMUX_NAME_RE = re.compile(r"vsb-(?P<hex>[0-9a-f]{32})-" + SESSION_NAME_RE.pattern)
# Key names `send-keys` accepts in key mode: modifiers plus one key. Anything else is typed as
# text (hex bytes), so no tmux command syntax ever reaches the command parser.
_NAMED_KEYS = {
    "Enter", "Escape", "Tab", "BTab", "BSpace", "Space", "Up", "Down", "Left", "Right",
    "Home", "End", "PageUp", "PageDown", "PPage", "NPage", "Insert", "Delete", "IC", "DC",
    *(f"F{n}" for n in range(1, 13)),
}  # fmt: skip
_KEY_RE = re.compile(r"(?:[CMS]-){0,3}(?P<key>[A-Za-z0-9]|[\[\]\\^_@/?]|[A-Z][A-Za-z0-9]*)")
_OCTAL_RE = re.compile(rb"\\([0-7]{3})")
_INPUT_CHUNK = 256
CREDENTIAL_MAX_AGE_SECONDS = 900


class TmuxError(OperationFailed):
    """A tmux command failed (permanent unless said otherwise: `core.errors`)."""

    code = "tmux_failed"


class TmuxNotFound(NotFound, TmuxError):
    """The session, window or pane does not exist (any more)."""


class InvalidTmuxArgument(InvalidInput, TmuxError, ValueError):
    """A name or id for a tmux argument does not match its pattern: nothing was run. The
    API checks the same patterns first; this is the driver refusing on its own."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        super().__init__(f"invalid {field} {value!r}: {rule}", field=field)
        self.rule = rule


def _checked(value: object, pattern: re.Pattern, field: str, rule: str = "") -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidTmuxArgument(field, value, rule or f"must match {pattern.pattern}")
    return value


def check_new_pane_names(session: str, window_name: str | None = None) -> None:
    """The names a new session or window is given (`None`: tmux names the window after its
    command); raises `InvalidTmuxArgument`."""
    _checked(session, TMUX_NAME_RE, "session", SESSION_NAME_RULE)
    if window_name is not None:
        _checked(window_name, WINDOW_NAME_RE, "window_name", WINDOW_NAME_RULE)


def valid_session_name(name: object) -> bool:
    return isinstance(name, str) and SESSION_NAME_RE.fullmatch(name) is not None


def valid_window_name(name: object) -> bool:
    return isinstance(name, str) and WINDOW_NAME_RE.fullmatch(name) is not None


def valid_pane_id(pane_id: object) -> bool:
    return isinstance(pane_id, str) and PANE_ID_RE.fullmatch(pane_id) is not None


def valid_key_name(name: object) -> bool:
    match = _KEY_RE.fullmatch(name) if isinstance(name, str) else None
    if not match:
        return False
    key = match.group("key")
    return len(key) == 1 or key in _NAMED_KEYS


def sandbox_hex_of(tmux_name: str) -> str | None:
    """The sandbox a tmux session belongs to, from its name (`vsb-<hex>-<name>`)."""
    match = _SANDBOX_TMUX_NAME_RE.fullmatch(tmux_name) if isinstance(tmux_name, str) else None
    return match.group("hex") if match else None


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
            # A paused sandbox does not answer: the pane's ssh must outlast a pause (a day)
            # rather than hang up after 45 s. A destroyed guest's forwarded port closes, which
            # ends it at once all the same.
            "-o", "ServerAliveCountMax=5760",
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


_KEY_TYPE_RE = re.compile(r"[a-z][a-z0-9@.-]{2,63}")
_KEY_B64_RE = re.compile(r"[A-Za-z0-9+/]{4,16384}={0,2}")


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """The pinned key came from the guest: only a key type and base64 reach the file, never a
    marker (`@cert-authority`), a pattern or a second line."""
    parts = host_key.split()
    if (
        len(parts) < 2
        or not _KEY_TYPE_RE.fullmatch(parts[0])
        or not _KEY_B64_RE.fullmatch(parts[1])
    ):
        raise TmuxError("the sandbox's pinned host key is malformed; refusing to ssh with it")
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {parts[0]} {parts[1]}\n"


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


_NUMBER_RE = re.compile(r"[0-9]{1,10}")
_FLAG_RE = re.compile(r"[01]")
_FREE_TEXT_MAX = 4096

# What a pane record asks tmux for, and the pattern each id or number must match. The last
# three are free text (a window name tmux keeps raw, a title and a path the guest can set):
# they are data, never parsed for structure.
_PANE_FIELDS: tuple[tuple[str, re.Pattern | None], ...] = (
    ("session_name", TMUX_NAME_RE),
    ("session_id", SESSION_ID_RE),
    ("window_index", _NUMBER_RE),
    ("window_id", WINDOW_ID_RE),
    ("pane_index", _NUMBER_RE),
    ("pane_id", PANE_ID_RE),
    ("pane_pid", _NUMBER_RE),
    ("pane_width", _NUMBER_RE),
    ("pane_height", _NUMBER_RE),
    ("pane_active", _FLAG_RE),
    ("pane_dead", _FLAG_RE),
    ("pane_current_path", None),
    ("window_name", None),
    ("pane_title", None),
)
_SESSION_FIELDS: tuple[tuple[str, re.Pattern | None], ...] = (
    ("session_name", TMUX_NAME_RE),
    ("session_id", SESSION_ID_RE),
    ("session_windows", _NUMBER_RE),
    ("session_created", _NUMBER_RE),
    ("session_attached", _NUMBER_RE),
)


def _framed_format(fields: Sequence[tuple[str, re.Pattern | None]]) -> tuple[str, tuple]:
    """A `-F` format whose records and fields are delimited by markers made of a fresh random
    token. Nothing that chose a name or a title knows the token, so no value can contain a
    marker: a tab, a newline or a whole forged record inside a value stays inside it. (tmux
    prints window names given with `-n` raw, newlines included.)"""
    token = secrets.token_hex(16)
    markers = (f"<{token}<", f"|{token}|", f">{token}>")
    begin, sep, end = markers
    return begin + sep.join(f"#{{{name}}}" for name, _ in fields) + end, markers


def _parse_framed(
    text: str, fields: Sequence[tuple[str, re.Pattern | None]], markers: tuple
) -> list[dict[str, str]]:
    """The records of `text`; a record whose ids or numbers do not match their patterns is not
    one of ours and is left out. Anything outside the markers is an error."""
    begin, sep, end = markers
    records: list[dict[str, str]] = []
    pos = 0
    while (start := text.find(begin, pos)) != -1:
        stop = text.find(end, start)
        if stop == -1 or text[pos:start].strip("\n"):
            raise TmuxError("tmux answered with output outside its records")
        values = text[start + len(begin) : stop].split(sep)
        pos = stop + len(end)
        if len(values) != len(fields):
            raise TmuxError("tmux answered with a record of the wrong shape")
        if all(p is None or p.fullmatch(v) for (_, p), v in zip(fields, values, strict=True)):
            records.append(
                {name: v[:_FREE_TEXT_MAX] for (name, _), v in zip(fields, values, strict=True)}
            )
    if text[pos:].strip("\n"):
        raise TmuxError("tmux answered with output outside its records")
    return records


def _pane_info(r: dict[str, str]) -> PaneInfo:
    return PaneInfo(
        session_name=r["session_name"],
        session_id=r["session_id"],
        window_index=int(r["window_index"]),
        window_id=r["window_id"],
        pane_index=int(r["pane_index"]),
        pane_id=r["pane_id"],
        pane_pid=int(r["pane_pid"]),
        pane_width=int(r["pane_width"]),
        pane_height=int(r["pane_height"]),
        active=r["pane_active"] == "1",
        dead=r["pane_dead"] == "1",
        current_path=r["pane_current_path"],
        window_name=r["window_name"],
        pane_title=r["pane_title"],
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
            ("history-limit", str(int(self.history_limit))),
            ("status", "off"),
            ("escape-time", "0"),
            # Window names change only through us (explicit, even where it is the default):
            # a guest's escape sequences neither rename windows nor write paste buffers.
            ("allow-rename", "off"),
            ("set-clipboard", "off"),
        ):
            args += ["set-option", "-g", option, value, ";"]
        return args

    def running(self) -> bool:
        return self.server.is_alive()

    def _list(self, args: Sequence[str], fields) -> list[dict[str, str]]:
        fmt, markers = _framed_format(fields)
        return _parse_framed("\n".join(self._cmd(*args, "-F", fmt)), fields, markers)

    def _new_pane_id(self, out: list[str]) -> str:
        """`-P -F '#{pane_id}'` prints the new pane's id and nothing else."""
        if len(out) != 1 or not PANE_ID_RE.fullmatch(out[0]):
            raise TmuxError(f"tmux did not answer with a pane id: {out[:2]!r}")
        return out[0]

    def new_session(
        self, name: str, command: str, *, cols: int, rows: int, window_name: str | None = None
    ) -> PaneInfo:
        check_new_pane_names(name, window_name)
        args = ["new-session", "-d", "-s", name, "-x", str(int(cols)), "-y", str(int(rows))]
        args += ["-P", "-F", "#{pane_id}"]
        if window_name is not None:
            args += ["-n", window_name]
        return self.pane(self._new_pane_id(self._cmd(*self._options(), *args, command)))

    def new_window(self, session: str, command: str, *, window_name: str | None = None) -> PaneInfo:
        check_new_pane_names(session, window_name)
        args = ["new-window", "-d", "-t", f"={session}:", "-P", "-F", "#{pane_id}"]
        if window_name is not None:
            args += ["-n", window_name]
        return self.pane(self._new_pane_id(self._cmd(*args, command)))

    def split(self, pane_id: str, command: str, *, horizontal: bool = False) -> PaneInfo:
        _checked(pane_id, PANE_ID_RE, "pane_id")
        args = ["split-window", "-d", "-h" if horizontal else "-v", "-t", pane_id]
        args += ["-P", "-F", "#{pane_id}"]
        return self.pane(self._new_pane_id(self._cmd(*args, command)))

    def respawn(self, pane_id: str, command: str) -> PaneInfo:
        self._cmd("respawn-pane", "-k", "-t", _checked(pane_id, PANE_ID_RE, "pane_id"), command)
        return self.pane(pane_id)

    def list_panes(self, session: str | None = None) -> list[PaneInfo]:
        if session is not None:
            _checked(session, TMUX_NAME_RE, "session", SESSION_NAME_RULE)
        try:
            if session:
                records = self._list(["list-panes", "-s", "-t", f"={session}"], _PANE_FIELDS)
            else:
                records = self._list(["list-panes", "-a"], _PANE_FIELDS)
        except TmuxNotFound:
            if session:
                raise
            return []
        return [_pane_info(r) for r in records]

    def list_sessions(self) -> list[dict]:
        try:
            records = self._list(["list-sessions"], _SESSION_FIELDS)
        except TmuxNotFound:
            return []
        return [
            {
                "name": r["session_name"],
                "id": r["session_id"],
                "windows": int(r["session_windows"]),
                "created": int(r["session_created"]),
                "attached": int(r["session_attached"]),
            }
            for r in records
        ]

    def pane(self, pane_id: str) -> PaneInfo:
        _checked(pane_id, PANE_ID_RE, "pane_id")
        for info in self.list_panes():
            if info.pane_id == pane_id:
                return info
        raise TmuxNotFound(f"no pane {pane_id}")

    def kill_session(self, session: str) -> None:
        self._cmd("kill-session", "-t", f"={_checked(session, TMUX_NAME_RE, 'session')}")

    def kill_window(self, window_id: str) -> None:
        self._cmd("kill-window", "-t", _checked(window_id, WINDOW_ID_RE, "window_id"))

    def kill_pane(self, pane_id: str) -> None:
        self._cmd("kill-pane", "-t", _checked(pane_id, PANE_ID_RE, "pane_id"))

    def select_pane(self, pane_id: str) -> None:
        self._cmd("select-window", "-t", _checked(pane_id, PANE_ID_RE, "pane_id"))
        self._cmd("select-pane", "-t", pane_id)

    def send_text(self, pane_id: str, data: bytes) -> None:
        """Type raw bytes into the pane (as hex keys: no quoting, no key-name lookup)."""
        _checked(pane_id, PANE_ID_RE, "pane_id")
        for start in range(0, len(data), _INPUT_CHUNK):
            chunk = data[start : start + _INPUT_CHUNK]
            self._cmd("send-keys", "-t", pane_id, "-H", *(f"{b:02x}" for b in chunk))

    def send_keys(self, pane_id: str, keys: Sequence[str]) -> None:
        """Press named keys from the allow-list (`valid_key_name`); nothing else is passed."""
        _checked(pane_id, PANE_ID_RE, "pane_id")
        bad = [k for k in keys if not valid_key_name(k)]
        if bad:
            raise InvalidTmuxArgument("keys", bad, "unknown key name(s)")
        if keys:
            self._cmd("send-keys", "-t", pane_id, *keys)

    def capture(
        self, pane_id: str, *, last_n_lines: int | None = None, escapes: bool = False
    ) -> str:
        """The visible screen, or the last `last_n_lines` lines of history + screen."""
        args = ["capture-pane", "-p", "-t", _checked(pane_id, PANE_ID_RE, "pane_id")]
        if escapes:
            args.append("-e")
        if last_n_lines:
            args += ["-S", f"-{int(last_n_lines)}", "-J"]
        lines = self._cmd(*args)
        if last_n_lines:
            while lines and not lines[-1].strip():
                lines.pop()
            lines = lines[-last_n_lines:]
        return "\n".join(lines)

    def take_buffer(self, name: str) -> bytes:
        """The bytes of paste buffer `name` (which is then deleted), read as the whole stdout
        of one tmux client: no line framing for a guest's screen to imitate."""
        _checked(name, CAPTURE_BUFFER_RE, "buffer")
        try:
            proc = subprocess.run(
                [self.tmux_bin, *self.socket_args, "save-buffer", "-b", name, "-", ";",
                 "delete-buffer", "-b", name],
                capture_output=True,
                timeout=30,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise TmuxError("tmux save-buffer did not answer") from None
        if proc.returncode != 0:
            raise TmuxError(f"tmux save-buffer: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def resize_window(self, pane_id: str, cols: int, rows: int) -> None:
        self._cmd(*resize_args(pane_id, cols, rows))

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


def resize_args(pane_id: str, cols: int, rows: int) -> list[str]:
    _checked(pane_id, PANE_ID_RE, "pane_id")
    if not all(isinstance(v, int) for v in (cols, rows)) or not (
        2 <= cols <= MAX_COLS and 2 <= rows <= MAX_ROWS
    ):
        raise InvalidTmuxArgument("size", (cols, rows), f"2-{MAX_COLS} x 2-{MAX_ROWS}")
    return ["resize-window", "-t", pane_id, "-x", str(cols), "-y", str(rows)]


# Control-mode command lines are parsed by tmux's command parser, so each is built here from
# checked ids and numbers only. Their replies come back in %begin/%end blocks whose lines tmux
# does not escape: a command sent through a control client must never answer with text a
# guest chose (a screen line `%end <time> <number> 1` would end the block early and the
# lines after it would be read as notifications). Hence screens go through a paste buffer.


def resize_command(pane_id: str, cols: int, rows: int) -> str:
    return " ".join(resize_args(pane_id, cols, rows))


def cursor_command(pane_id: str) -> str:
    """Cursor, size and state of a pane: numbers only in the reply."""
    _checked(pane_id, PANE_ID_RE, "pane_id")
    return (
        f"display-message -p -t {pane_id} "
        "'#{cursor_x} #{cursor_y} #{pane_width} #{pane_height} #{pane_dead} #{cursor_flag}'"
    )


def capture_command(pane_id: str, buffer: str) -> str:
    """The screen with colours into paste buffer `buffer` (read it with `take_buffer`): the
    reply is empty, the capture is still ordered with the output stream."""
    _checked(pane_id, PANE_ID_RE, "pane_id")
    return f"capture-pane -e -b {_checked(buffer, CAPTURE_BUFFER_RE, 'buffer')} -t {pane_id}"


def new_capture_buffer() -> str:
    return f"vsb-capture-{secrets.token_hex(8)}"


def input_commands(pane_id: str, data: bytes) -> list[str]:
    """Control-mode command lines that type `data` into the pane byte for byte."""
    _checked(pane_id, PANE_ID_RE, "pane_id")
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
        self.session = _checked(session, TMUX_NAME_RE, "session")
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
                    if _closes(line, begin):
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
                    if PANE_ID_RE.fullmatch(pane.decode(errors="replace")):
                        self.on_output(pane.decode(), decode_output(data))
                elif _BLOCK_RE.fullmatch(line) and line.startswith(b"%begin "):
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


_BLOCK_RE = re.compile(rb"%(begin|end|error) [0-9]{1,20} [0-9]{1,20} [0-9]{1,10}")


def _closes(line: bytes, begin_line: bytes) -> bool:
    """`%end`/`%error` with exactly the time, number and flags of the open `%begin`."""
    return (
        line.startswith((b"%end ", b"%error "))
        and _BLOCK_RE.fullmatch(line) is not None
        and line.split(b" ", 1)[1] == begin_line.split(b" ", 1)[1]
    )
