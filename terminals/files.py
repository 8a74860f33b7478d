"""Files inside a sandbox guest over SFTP (paramiko), behind a path policy.

No Django here: the SFTP client, the policy and the limits arrive through the constructor.
Every path is made absolute and normalised, checked, then resolved *by the guest*
(`realpath` of OpenSSH's sftp-server follows `..` and every symlink, and accepts a missing
last component), and the resolved path is checked again. Operations then act on the resolved
path, so a symlink cannot lead them anywhere the check did not see.

Nothing here touches the host's filesystem: paths are strings sent to the guest's SFTP server,
and what comes back is data. The server is the guest's (root there can replace it), so every
answer is capped: reads by size, listings by entry count (stopping the READDIR loop, not
trimming a full listing), names that are not UTF-8 are an error, not a crash.
"""

from __future__ import annotations

import difflib
import errno
import functools
import io
import posixpath
import secrets
import stat as statmod
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime

import paramiko

from core.errors import Conflict, Forbidden, NotFound, ServiceError, TooLarge, Unprocessable

_CHUNK = 32768
# READDIR requests in flight while listing: bounds what is read past the entry cap.
_READ_AHEADS = 4


class FileError(ServiceError):
    """A refused or failed file operation (400); the kinds below add their status through
    `core.errors`, and `field` names the input at fault."""


class PathDenied(FileError, Forbidden):
    code = "path_denied"


class FileMissing(FileError, NotFound):
    pass


class FileConflict(FileError, Conflict):
    pass


class FileTooLarge(FileError, TooLarge):
    pass


class NameNotUtf8(FileError, Unprocessable):
    code = "not_utf8"


def _utf8_names(method: Callable) -> Callable:
    """paramiko decodes every name the server sends as strict UTF-8; a guest can hold (or its
    server send) any bytes. That is an answer for the caller, not a crash of the worker."""

    @functools.wraps(method)
    def wrapper(self, path, *args, **kwargs):
        try:
            return method(self, path, *args, **kwargs)
        except UnicodeDecodeError:
            raise NameNotUtf8(
                f"{path} is or holds a name that is not UTF-8; use a command in the sandbox",
                field="path",
            ) from None

    return wrapper


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class PathPolicy:
    """A path is allowed when it is under one `allow` prefix and under no `deny` prefix
    (component-wise: `/srv/app` covers `/srv/app/x`, not `/srv/apple`)."""

    allow: tuple[str, ...] = ("/",)
    deny: tuple[str, ...] = ()

    @classmethod
    def from_lists(cls, allow: Sequence[str], deny: Sequence[str]) -> PathPolicy:
        def clean(items: Sequence[str]) -> tuple[str, ...]:
            return tuple(posixpath.normpath(p) if p != "/" else "/" for p in items if p)

        return cls(clean(allow) or ("/",), clean(deny))

    def normalise(self, path: str) -> str:
        if not isinstance(path, str) or not path:
            raise FileError("path is required", field="path")
        if "\x00" in path:
            raise FileError("path must not contain NUL bytes", field="path")
        if not path.startswith("/"):
            raise FileError("path must be absolute", field="path")
        normal = posixpath.normpath(path)
        if normal.startswith("//"):
            normal = "/" + normal.lstrip("/")
        return normal

    def check(self, path: str, *, original: str | None = None) -> None:
        shown = path if original in (None, path) else f"{original} (resolves to {path})"
        if not any(_under(path, p) for p in self.allow):
            raise PathDenied(f"{shown} is outside the allowed paths ({', '.join(self.allow)})")
        for prefix in self.deny:
            if _under(path, prefix):
                raise PathDenied(f"{shown} is under the denied path {prefix}")


def _kind(mode: int) -> str:
    if statmod.S_ISDIR(mode):
        return "directory"
    if statmod.S_ISREG(mode):
        return "file"
    if statmod.S_ISLNK(mode):
        return "symlink"
    return "other"


def _attrs(attr: paramiko.SFTPAttributes) -> dict:
    mode = attr.st_mode or 0
    return {
        "type": _kind(mode),
        "size": attr.st_size or 0,
        "mode": f"{statmod.S_IMODE(mode):04o}",
        "mtime": datetime.fromtimestamp(attr.st_mtime or 0, UTC).isoformat(),
        "uid": attr.st_uid,
        "gid": attr.st_gid,
    }


def _missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT


def parse_mode(mode: str | int | None) -> int | None:
    if mode is None or mode == "":
        return None
    try:
        value = int(mode, 8) if isinstance(mode, str) else int(mode)
    except ValueError:
        raise FileError("mode must be octal, like 0644", field="mode") from None
    if not 0 <= value <= 0o7777:
        raise FileError("mode must be between 0000 and 7777", field="mode")
    return value


@dataclass
class GuestFiles:
    """File operations on one SFTP session. Limits are bytes (entries for a listing)."""

    sftp: paramiko.SFTPClient
    policy: PathPolicy
    _: KW_ONLY
    max_read: int = 1024 * 1024
    max_write: int = 4 * 1024 * 1024
    max_transfer: int = 64 * 1024 * 1024
    max_entries: int = 5000

    # -- paths ---------------------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = True) -> str:
        normal = self.policy.normalise(path)
        self.policy.check(normal)
        try:
            real = self.sftp.normalize(normal)
        except OSError as exc:
            if not _missing(exc):
                raise FileError(f"cannot resolve {normal}: {exc}") from None
            if must_exist:
                raise FileMissing(f"{normal} does not exist") from None
            real = self._resolve_new(normal, normal, 0)
        self.policy.check(real, original=normal)
        if must_exist:
            self._stat(real, normal)
        return real

    def _resolve_new(self, normal: str, shown: str, depth: int) -> str:
        """Where a write to a path that does not exist yet would land. sftp-server's realpath
        refuses a missing last component, so resolve the parent, then follow the last
        component by hand if it is a (dangling) symlink."""
        if depth > 40:
            raise FileError(f"too many levels of symbolic links in {shown}")
        parent, name = posixpath.split(normal)
        try:
            real_parent = self.sftp.normalize(parent)
        except OSError:
            raise FileMissing(f"the parent directory of {shown} does not exist") from None
        candidate = posixpath.join(real_parent, name)
        self.policy.check(candidate, original=shown)
        try:
            attr = self.sftp.lstat(candidate)
        except OSError:
            return candidate  # really new
        if not statmod.S_ISLNK(attr.st_mode or 0):
            return candidate
        target = self.sftp.readlink(candidate) or ""
        target = posixpath.normpath(posixpath.join(real_parent, target))
        self.policy.check(target, original=shown)
        return self._resolve_new(target, shown, depth + 1)

    def _stat(self, real: str, shown: str) -> paramiko.SFTPAttributes:
        try:
            return self.sftp.stat(real)
        except OSError as exc:
            if _missing(exc):
                raise FileMissing(f"{shown} does not exist") from None
            raise FileError(f"cannot stat {shown}: {exc}") from None

    def _existing(self, real: str) -> paramiko.SFTPAttributes | None:
        try:
            return self.sftp.stat(real)
        except OSError as exc:
            if _missing(exc):
                return None
            raise FileError(f"cannot stat {real}: {exc}") from None

    # -- reading -------------------------------------------------------------------------

    @_utf8_names
    def stat(self, path: str) -> dict:
        real = self.resolve(path)
        return {"path": path, "resolved": real, **_attrs(self._stat(real, path))}

    @_utf8_names
    def list(self, path: str) -> dict:
        """Up to `max_entries` entries, sorted by name; past the cap the listing stops (the
        guest's server decides which entries came first) and `truncated` is true."""
        real = self.resolve(path)
        if not statmod.S_ISDIR(self._stat(real, path).st_mode or 0):
            raise FileError(f"{path} is not a directory", field="path")
        entries = []
        truncated = False
        for attr in self.sftp.listdir_iter(real, read_aheads=_READ_AHEADS):
            if len(entries) >= self.max_entries:
                truncated = True
                break
            entries.append({"name": attr.filename, **_attrs(attr)})
        entries.sort(key=lambda e: e["name"])
        return {"path": path, "resolved": real, "entries": entries, "truncated": truncated}

    def _read_bytes(self, real: str, shown: str, limit: int, hint: str) -> tuple[bytes, dict]:
        attr = self._stat(real, shown)
        if not statmod.S_ISREG(attr.st_mode or 0):
            raise FileError(f"{shown} is not a regular file", field="path")
        if (attr.st_size or 0) > limit:
            raise FileTooLarge(f"{shown} is {attr.st_size} bytes; the limit is {limit}. {hint}")
        buf = io.BytesIO()
        with self.sftp.open(real, "rb") as fh:
            fh.prefetch(attr.st_size)
            while True:
                chunk = fh.read(_CHUNK * 8)
                if not chunk:
                    break
                buf.write(chunk)
                if buf.tell() > limit:
                    raise FileTooLarge(f"{shown} grew past the limit of {limit} bytes")
        return buf.getvalue(), _attrs(attr)

    def _read_text(self, path: str, limit: int, advice: str = "") -> tuple[str, str, dict]:
        """The text of the file at `path`, where it resolved to, and its attributes; `advice`
        ends the refusals of a file too large or not UTF-8."""
        real = self.resolve(path)
        data, attrs = self._read_bytes(real, path, limit, advice and f"Use {advice} for big files.")
        try:
            return data.decode("utf-8"), real, attrs
        except UnicodeDecodeError:
            not_text = f"{path} is not UTF-8 text" + (advice and f"; use {advice}")
            raise FileError(not_text, field="path") from None

    @_utf8_names
    def read_text(self, path: str, *, from_line: int = 1, max_lines: int | None = None) -> dict:
        text, real, attrs = self._read_text(path, self.max_read, "download")
        lines = text.splitlines(keepends=True)
        start = max(from_line, 1) - 1
        end = len(lines) if max_lines is None else min(len(lines), start + max_lines)
        content = "".join(lines[start:end]) if (start or max_lines is not None) else text
        return {
            "path": path,
            "resolved": real,
            "content": content,
            "total_lines": len(lines),
            "from_line": start + 1,
            "to_line": end,
            "truncated": end < len(lines),
            **attrs,
        }

    @_utf8_names
    def download(self, path: str) -> tuple[bytes, dict]:
        real = self.resolve(path)
        data, attrs = self._read_bytes(real, path, self.max_transfer, "")
        return data, {"path": path, "resolved": real, **attrs}

    # -- writing -------------------------------------------------------------------------

    def _ensure_parent(self, normal: str, create_dirs: bool) -> None:
        # stat, not normalize: sftp-server's realpath accepts a missing last component.
        parent = posixpath.dirname(normal)
        if self._existing(parent) is not None:
            return
        if not create_dirs:
            raise FileMissing(f"the parent directory {parent} does not exist")
        missing = []
        while self._existing(parent) is None:
            missing.append(posixpath.basename(parent))
            parent = posixpath.dirname(parent)
        real_parent = self.sftp.normalize(parent)
        for name in reversed(missing):
            real_parent = posixpath.join(real_parent, name)
            self.policy.check(real_parent, original=normal)
            self.sftp.mkdir(real_parent, 0o755)

    def _write(
        self, path: str, data: bytes, *, mode: int | None, create_dirs: bool, overwrite: bool
    ) -> dict:
        normal = self.policy.normalise(path)
        self.policy.check(normal)
        self._ensure_parent(normal, create_dirs)
        real = self.resolve(path, must_exist=False)
        existing = self._existing(real)
        if existing is not None:
            if statmod.S_ISDIR(existing.st_mode or 0):
                raise FileConflict(
                    f"{path} is a directory",
                )
            if not overwrite:
                raise FileConflict(f"{path} exists and overwrite is false")
        final_mode = (
            mode
            if mode is not None
            else (statmod.S_IMODE(existing.st_mode) if existing is not None else 0o644)
        )
        # Write next to the target and rename over it: a reader never sees half a file.
        tmp = posixpath.join(
            posixpath.dirname(real), f".{posixpath.basename(real)}.vsb-{secrets.token_hex(4)}"
        )
        try:
            with self.sftp.open(tmp, "wb") as fh:
                fh.set_pipelined(True)
                view = memoryview(data)
                for start in range(0, len(data), _CHUNK):
                    fh.write(view[start : start + _CHUNK])
            self.sftp.chmod(tmp, final_mode)
            if existing is not None and existing.st_uid is not None:
                try:
                    self.sftp.chown(tmp, existing.st_uid, existing.st_gid)
                except OSError:
                    pass  # not root in the guest: keep our ownership
            self.sftp.posix_rename(tmp, real)
        except OSError as exc:
            try:
                self.sftp.remove(tmp)
            except OSError:
                pass
            raise FileError(f"cannot write {path}: {exc}") from None
        return {
            "path": path,
            "resolved": real,
            "bytes_written": len(data),
            "created": existing is None,
            "mode": f"{final_mode:04o}",
        }

    @_utf8_names
    def write_text(self, path: str, content: str, **options) -> dict:
        """`options`: mode (octal text, else kept or 0644), create_dirs, overwrite (True)."""
        return self._put(path, content.encode("utf-8"), self.max_write, "content", **options)

    @_utf8_names
    def upload(self, path: str, data: bytes, **options) -> dict:
        return self._put(path, data, self.max_transfer, "upload", **options)

    def _put(
        self,
        path: str,
        data: bytes,
        limit: int,
        what: str,
        *,
        mode: str | None = None,
        create_dirs: bool = False,
        overwrite: bool = True,
    ) -> dict:
        if len(data) > limit:
            raise FileTooLarge(f"{what} is {len(data)} bytes; the limit is {limit}")
        return self._write(
            path, data, mode=parse_mode(mode), create_dirs=create_dirs, overwrite=overwrite
        )

    @_utf8_names
    def edit(self, path: str, old_text: str, new_text: str, *, replace_all: bool = False) -> dict:
        """Exact string replacement. `old_text` must occur exactly once unless `replace_all`."""
        if not old_text:
            raise FileError("old_text must not be empty", field="old_text")
        before, real, _ = self._read_text(path, self.max_write)
        count = before.count(old_text)
        if count == 0:
            raise FileError(f"old_text was not found in {path}", field="old_text")
        if count > 1 and not replace_all:
            raise FileConflict(
                f"old_text occurs {count} times in {path}; give more context or set all=true"
            )
        after = (
            before.replace(old_text, new_text)
            if replace_all
            else before.replace(old_text, new_text, 1)
        )
        self._write(path, after.encode("utf-8"), mode=None, create_dirs=False, overwrite=True)
        diff = "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"a{real}",
                tofile=f"b{real}",
            )
        )
        return {
            "path": path,
            "resolved": real,
            "replacements": count if replace_all else 1,
            "diff": diff,
        }

    @_utf8_names
    def delete(self, path: str, *, recursive: bool = False) -> dict:
        normal = self.policy.normalise(path)
        self.policy.check(normal)
        # The link itself, not its target, is what a delete of a symlink removes.
        parent = self.resolve(posixpath.dirname(normal))
        target = posixpath.join(parent, posixpath.basename(normal))
        if target == "/":
            raise PathDenied("refusing to delete /")
        self.policy.check(target, original=normal)
        try:
            attr = self.sftp.lstat(target)
        except OSError as exc:
            if _missing(exc):
                raise FileMissing(f"{path} does not exist") from None
            raise FileError(f"cannot stat {path}: {exc}") from None
        is_dir = statmod.S_ISDIR(attr.st_mode or 0)
        if is_dir:
            if not recursive and self._has_entries(target):
                raise FileConflict(f"{path} is a non-empty directory; set recursive=true")
            self._remove_tree(target)
        else:
            self.sftp.remove(target)
        return {"path": path, "resolved": target, "deleted": True, "was_dir": is_dir}

    def _entries(self, directory: str, limit: int) -> list[paramiko.SFTPAttributes]:
        """Up to `limit` entries (lstat attributes) of `directory`, or an error past it; read
        to the end before anything else is sent on the session (paramiko's READDIR loop
        reads its answers raw, so another request in between would take them)."""
        entries = []
        for attr in self.sftp.listdir_iter(directory, read_aheads=_READ_AHEADS):
            if len(entries) >= limit:
                raise FileConflict(
                    f"{directory} holds more than {limit} entries; delete it with a command"
                )
            entries.append(attr)
        return entries

    def _has_entries(self, directory: str) -> bool:
        # An abandoned READDIR loop is safe: paramiko drops its late answers.
        for _ in self.sftp.listdir_iter(directory, read_aheads=1):
            return True
        return False

    def _remove_tree(self, directory: str) -> None:
        """Depth-first without recursion (the guest decides how deep the tree is) and with a
        budget of entries (it decides how wide). Entries come from READDIR, i.e. lstat: a
        symlink is removed, never followed."""
        budget = self.max_entries * 100
        pending = [(directory, False)]
        while pending:
            current, emptied = pending.pop()
            if emptied:
                self.sftp.rmdir(current)
                continue
            pending.append((current, True))
            entries = self._entries(current, budget)
            budget -= len(entries)
            for attr in entries:
                child = posixpath.join(current, attr.filename)
                if statmod.S_ISDIR(attr.st_mode or 0):
                    pending.append((child, False))
                else:
                    self.sftp.remove(child)
