"""An SFTP server (protocol 3, stdin/stdout) such as root in a guest could put in place of
sftp-server: every path is a directory, and a directory listing never ends (100 entries per
READDIR, up to a hard stop). It writes how many entries it has sent to the file named by its
argument, so a test can tell how much the host read. Run by sshd as `Subsystem sftp`."""

from __future__ import annotations

import os
import struct
import sys

HARD_STOP = 200_000  # entries; a client that reads without a cap gets this many
PER_READDIR = 100

INIT, VERSION, CLOSE, LSTAT, OPENDIR, READDIR, REALPATH, STAT = 1, 2, 4, 7, 11, 12, 16, 17
STATUS, HANDLE, NAME, ATTRS = 101, 102, 104, 105
OK, EOF, UNSUPPORTED = 0, 1, 8
DIR_ATTRS = struct.pack(">II", 0x4, 0o40755)  # flags: permissions


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def main() -> None:
    count_file = sys.argv[1]
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    sent = 0

    def reply(kind: int, body: bytes) -> None:
        wr.write(struct.pack(">IB", len(body) + 1, kind) + body)
        wr.flush()

    while True:
        head = rd.read(5)
        if len(head) < 5:
            return
        length, kind = struct.unpack(">IB", head)
        body = rd.read(length - 1)
        if kind == INIT:
            reply(VERSION, struct.pack(">I", 3))
            continue
        rid = body[:4]  # the request id, echoed
        if kind == REALPATH:
            (size,) = struct.unpack(">I", body[4:8])
            path = body[8 : 8 + size] or b"/"
            reply(NAME, rid + struct.pack(">I", 1) + string(path) + string(path) + DIR_ATTRS)
        elif kind in (STAT, LSTAT):
            reply(ATTRS, rid + DIR_ATTRS)
        elif kind == OPENDIR:
            reply(HANDLE, rid + string(b"dir"))
        elif kind == READDIR and sent < HARD_STOP:
            names = b"".join(
                string(f"entry-{sent + i:09d}".encode()) * 2 + DIR_ATTRS for i in range(PER_READDIR)
            )
            sent += PER_READDIR
            with open(f"{count_file}.tmp", "w") as fh:  # before the answer: the test reads it
                fh.write(str(sent))  # after; whole (a rename), never half-written
            os.replace(f"{count_file}.tmp", count_file)
            reply(NAME, rid + struct.pack(">I", PER_READDIR) + names)
        elif kind in (READDIR, CLOSE):
            reply(STATUS, rid + struct.pack(">I", EOF if kind == READDIR else OK) + string(b"") * 2)
        else:
            reply(STATUS, rid + struct.pack(">I", UNSUPPORTED) + string(b"no") + string(b""))


if __name__ == "__main__":
    main()
