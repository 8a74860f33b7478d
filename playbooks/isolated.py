"""The Ansible side of a playbook run, in processes of its own (runner.py starts it).

`launch` runs as root, as PID 1 of a new PID and mount namespace
(`unshare --mount --pid --fork --kill-child --mount-proc`). It covers the service's secrets
with empty tmpfs (the SSH CA key's directory, the data directory, root's home, the other runs'
directories), shows back only what the run needs (the Python installation, the virtualenv,
this file, this run's directory), starts `run` or `syntax` through `setpriv` as the
unprivileged user with a clean environment, waits for it and exits with its status. The
kernel then ends whatever is left in the namespace (ssh ControlPersist masters included).

`run` (the unprivileged user, HOME in the run directory) is ansible-runner on the run
directory: every event is one JSON line on stdout, the last line is the result. SIGTERM asks
ansible-runner to cancel. `syntax` is `ansible-playbook --syntax-check`, its result one line.

Standard library only (and ansible_runner in `run`): no project import, no Django, no
settings, no database."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pwd
import signal
import subprocess
import sys

SETPRIV = "/usr/bin/setpriv"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    if (
        libc.mount(
            encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def hide(hidden: list[str], keep: list[str]) -> None:
    """Cover each directory in `hidden` with an empty read-only tmpfs, then bind back the
    paths of `keep` that lay under it. Outer directories first, so a kept path under two
    hidden ones is shown back after the inner one is covered too."""
    handles = {k: os.open(k, os.O_PATH | os.O_CLOEXEC) for k in keep if os.path.exists(k)}
    for top in sorted(set(hidden), key=lambda h: h.count("/")):
        if not os.path.isdir(top):  # absent, or already under an outer tmpfs
            continue
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m")
        for path, fd in handles.items():
            if not _under(path, top):
                continue
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        _mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for fd in handles.values():
        os.close(fd)


def launch(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the worker signals the child; PID 1 stays
    account = pwd.getpwnam(args.user)
    if account.pw_uid == 0 or account.pw_gid == 0:
        print(f"refusing to run ansible as {args.user}: it is root", file=sys.stderr)
        return 2
    hide(args.hide, args.keep)
    run_dir = args.run_dir
    env = {
        "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
        "HOME": os.path.join(run_dir, "home"),
        "TMPDIR": os.path.join(run_dir, "tmp"),
        "USER": args.user,
        "LOGNAME": args.user,
        "LANG": "C.UTF-8",
    }
    command = [
        SETPRIV,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        "--no-new-privs",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
        sys.executable,
        "-I",
        "-B",
        os.path.abspath(__file__),
        args.mode,
        run_dir,
    ]
    child = subprocess.Popen(command, env=env, cwd=run_dir, stdin=subprocess.DEVNULL)
    rc = child.wait()
    return rc if rc >= 0 else 128 - rc


def _channel():
    """The worker's line protocol on a private copy of stdout; anything else that prints goes
    to stderr instead of into the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    return lambda obj: (out.write(json.dumps(obj, default=str) + "\n"), out.flush())


def run(run_dir: str) -> int:
    send = _channel()
    with open(os.path.join(run_dir, "spec.json")) as f:
        spec = json.load(f)
    cancel = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: cancel.update(asked=True))
    import ansible_runner

    def event(data: dict) -> bool:
        send({"event": data})
        return True  # kept on disk: ansible-runner reads its stats from there

    result = ansible_runner.run(
        private_data_dir=run_dir,
        playbook="playbook.yml",
        inventory=spec["inventory"],
        envvars=spec["envvars"],
        cmdline=spec["cmdline"],
        event_handler=event,
        cancel_callback=lambda: cancel["asked"],
        quiet=True,
        timeout=spec["timeout"],
        ident="run",
    )
    send({"result": {"status": result.status, "rc": result.rc, "stats": result.stats or {}}})
    return 0


def syntax(run_dir: str) -> int:
    send = _channel()
    project = os.path.join(run_dir, "project")
    env = dict(
        os.environ, ANSIBLE_LOCAL_TEMP=os.path.join(run_dir, "tmp", "ansible"), ANSIBLE_NOCOLOR="1"
    )
    proc = subprocess.run(
        [
            "ansible-playbook",
            "--syntax-check",
            "-i",
            "localhost,",
            os.path.join(project, "playbook.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=project,
        stdin=subprocess.DEVNULL,
    )
    send({"result": {"rc": proc.returncode, "output": (proc.stdout + proc.stderr).strip()[-4000:]}})
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        return run(argv[1])
    if argv[:1] == ["syntax"]:
        return syntax(argv[1])
    parser = argparse.ArgumentParser(prog="isolated.py launch")
    parser.add_argument("launch")
    parser.add_argument("--user", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--mode", choices=("run", "syntax"), required=True)
    parser.add_argument("--hide", action="append", default=[])
    parser.add_argument("--keep", action="append", default=[])
    return launch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
