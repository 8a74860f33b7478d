"""Secrets the install generates for itself: Django's SECRET_KEY, the inventory credentials key
and the Redis password, each a file in a directory only its owner can enter (0700, files
0600). A file is created once and never overwritten: a second start, and every other process
(daphne, the worker, manage.py, scripts/start-redis.sh), reads the same value.

Creation is atomic: the value is written to a private temporary file which is then hard-linked
to its name, and link() fails when the name exists. Of processes starting together exactly
one creates the file, the others read it, and no reader ever sees a half-written one.
Nothing here logs or prints a secret; errors name the file, never its contents.

Standard library only: scripts/start-redis.sh runs this file with the system's python3
(`python3 config/keyfiles.py PATH`) before the virtualenv exists."""

from __future__ import annotations

import os
import secrets
import stat
import sys
from pathlib import Path


class KeyFileError(Exception):
    """A secret file or its directory is not safe to use (mode, owner, type)."""


def _check_private(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{what} {path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"{what} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"chmod go-rwx it"
        )


def private_dir(directory: Path) -> Path:
    """`directory`, created 0700 if missing; refused if others can enter it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileError(f"secrets directory {directory} is not a directory")
    _check_private(directory, st, "secrets directory")
    return directory


def read(path: Path) -> str | None:
    """The secret in `path`, or None when there is no such file. Refuses a symlink, anything
    but a regular file, a file others can read and an empty one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise KeyFileError(f"secret file {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"secret file {path} is not a regular file")
        _check_private(path, st, "secret file")
        value = f.read(4096).decode("ascii", "replace").strip()
    if not value:
        raise KeyFileError(f"secret file {path} is empty; delete it to generate a new one")
    return value


def read_or_create(path: Path, nbytes: int = 48) -> str:
    """The secret in `path`; on first use a new random one (URL-safe, `nbytes` of entropy)
    written there 0600, its directory 0700. Never overwrites an existing file."""
    path = Path(path)
    private_dir(path.parent)
    value = read(path)
    if value is not None:
        return value
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_urlsafe(nbytes).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    value = read(path)
    assert value is not None
    return value


if __name__ == "__main__":
    # `python3 config/keyfiles.py PATH...`: make sure each secret exists; prints nothing.
    try:
        for name in sys.argv[1:]:
            read_or_create(Path(name))
    except KeyFileError as err:
        sys.exit(f"error: {err}")
