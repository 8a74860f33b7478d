"""Shell scripts the SDK runs in a guest through the command API (``POST .../command``),
for what the server has no endpoint for yet:

* files: read and write byte-exactly, base64 through the command's stdout / text;
* streaming: start a command in the background with its output in files, then read the
  files' new bytes on each poll.

Everything here is plain POSIX sh plus GNU coreutils (base64, stat, tail, head, mktemp) and
util-linux ``setsid``, which every Debian-like guest has. Each helper step is one ordinary
command, so it shows up in the sandbox's command history like any other.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

# Exit codes the file scripts use to say what went wrong (not a shell's usual codes).
NO_SUCH_FILE_EXIT = 44
NOT_A_FILE_EXIT = 45

# Raw bytes per command. Base64 makes 4/3 of it, which stays under the smallest output cap
# a server is configured with in practice (64 KiB) and far under the command size limit.
READ_CHUNK = 32 * 1024
WRITE_CHUNK = 48 * 1024
STREAM_CHUNK = 16 * 1024


def q(value: str) -> str:
    return shlex.quote(value)


# -- files ---------------------------------------------------------------------------------


def read_chunk_script(path: str, offset: int, length: int) -> str:
    """Prints the file's size on the first line, then ``length`` bytes from ``offset`` as
    base64 on the second."""
    p = q(path)
    return (
        f"f={p}\n"
        f'[ -e "$f" ] || {{ echo "no such file: $f" >&2; exit {NO_SUCH_FILE_EXIT}; }}\n'
        f'[ -f "$f" ] || {{ echo "not a regular file: $f" >&2; exit {NOT_A_FILE_EXIT}; }}\n'
        'stat -c %s -- "$f" || exit 1\n'
        f'tail -c +{offset + 1} -- "$f" | head -c {length} | base64 -w0 || exit 1\n'
        "echo\n"
    )


def parse_read_chunk(stdout: str) -> tuple[int, bytes]:
    lines = stdout.split("\n")
    size = int(lines[0].strip())
    data = base64.b64decode(lines[1].strip()) if len(lines) > 1 and lines[1].strip() else b""
    return size, data


def write_scripts(
    path: str, content: bytes, *, mode: str | None = None, create_dirs: bool = True
) -> list[str]:
    """Scripts that write ``content`` to ``path``: chunks appended to a temporary file next
    to it, then one atomic rename. Without ``mode`` an existing file keeps its mode and
    owner; a new file gets the umask's."""
    p = q(path)
    tmp = '"$f.vsb-tmp"'
    chunks = [content[i : i + WRITE_CHUNK] for i in range(0, len(content), WRITE_CHUNK)] or [b""]
    scripts = []
    for index, chunk in enumerate(chunks):
        lines = ["set -e", f"f={p}"]
        if index == 0 and create_dirs:
            lines.append('mkdir -p -- "$(dirname -- "$f")"')
        redirect = ">" if index == 0 else ">>"
        if chunk:
            data = base64.b64encode(chunk).decode()
            lines.append(f"printf '%s' {data} | base64 -d {redirect} {tmp}")
        else:
            lines.append(f": {redirect} {tmp}")
        if index == len(chunks) - 1:
            if mode:
                if not mode.isdigit() or len(mode) > 4:
                    raise ValueError(f"mode must be octal digits like '0644', not {mode!r}")
                lines.append(f"chmod {mode} {tmp}")
            else:
                lines.append(
                    f'if [ -e "$f" ]; then chmod --reference="$f" {tmp}; '
                    f'chown --reference="$f" {tmp}; fi'
                )
            lines.append(f'mv -f -- {tmp} "$f"')
        scripts.append("\n".join(lines) + "\n")
    return scripts


def remove_tmp_script(path: str) -> str:
    return f'rm -f -- {q(path)}".vsb-tmp"\n'


# -- streaming -------------------------------------------------------------------------------


def stream_start_script(command: str, timeout_seconds: int | None = None) -> str:
    """Starts ``command`` detached (its own session, so the launching command returns at
    once) with stdout, stderr and the exit code in files of a fresh directory; prints the
    directory. The script runs in the user's login shell, as ordinary commands do."""
    script = base64.b64encode(command.encode()).decode()
    runner = '"$1" "$2/script"'
    if timeout_seconds:
        runner = f'timeout -k 5 {int(timeout_seconds)} "$1" "$2/script"'
    inner = (
        f'{runner} > "$2/out" 2> "$2/err" < /dev/null; '
        'echo $? > "$2/rc.tmp"; mv "$2/rc.tmp" "$2/rc"'
    )
    return (
        "d=$(mktemp -d /tmp/vsb-stream.XXXXXXXX) || exit 1\n"
        f"printf '%s' {script} | base64 -d > \"$d/script\" || exit 1\n"
        "sh_=${SHELL:-/bin/sh}\n"
        "s=; command -v setsid >/dev/null 2>&1 && s=setsid\n"
        f'$s /bin/sh -c {q(inner)} vsb-stream "$sh_" "$d" > /dev/null 2>&1 < /dev/null &\n'
        'echo $! > "$d/pid"\n'
        'echo "$d"\n'
    )


def stream_poll_script(directory: str, out_offset: int, err_offset: int) -> str:
    """One line ``rc=<code or empty> so=<stdout size> se=<stderr size>``, then the new
    stdout and stderr bytes as base64, one line each. The exit code is read before the
    sizes: once it exists the output files are complete, so nothing is missed."""
    d = q(directory)
    return (
        f"d={d}\n"
        'rc=$(cat "$d/rc" 2>/dev/null)\n'
        'so=$(stat -c %s "$d/out" 2>/dev/null || echo 0)\n'
        'se=$(stat -c %s "$d/err" 2>/dev/null || echo 0)\n'
        'echo "rc=$rc so=$so se=$se"\n'
        f'tail -c +{out_offset + 1} "$d/out" 2>/dev/null | head -c {STREAM_CHUNK} | base64 -w0\n'
        "echo\n"
        f'tail -c +{err_offset + 1} "$d/err" 2>/dev/null | head -c {STREAM_CHUNK} | base64 -w0\n'
        "echo\n"
    )


@dataclass
class PollResult:
    exit_code: int | None
    out_size: int
    err_size: int
    out: bytes
    err: bytes


def parse_poll(stdout: str) -> PollResult:
    lines = stdout.split("\n")
    fields = dict(part.split("=", 1) for part in lines[0].split() if "=" in part)
    rc = fields.get("rc", "")

    def b64(index: int) -> bytes:
        return (
            base64.b64decode(lines[index].strip())
            if len(lines) > index and lines[index].strip()
            else b""
        )

    return PollResult(
        exit_code=int(rc) if rc.strip().lstrip("-").isdigit() else None,
        out_size=int(fields.get("so") or 0),
        err_size=int(fields.get("se") or 0),
        out=b64(1),
        err=b64(2),
    )


def stream_cleanup_script(directory: str, kill: bool) -> str:
    d = q(directory)
    lines = [f"d={d}"]
    if kill:
        lines.append(
            'p=$(cat "$d/pid" 2>/dev/null); '
            'if [ -n "$p" ]; then kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; fi'
        )
    lines.append('rm -rf -- "$d"')
    return "\n".join(lines) + "\n"
