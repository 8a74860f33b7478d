"""``virsh-sandbox``: the command line for people.

    virsh-sandbox [--url URL] [--api-key KEY] [--json] COMMAND ...

Commands: list, get, create, exec, snapshot, snapshots, restore, diff, playbook, start,
stop, destroy, network (request, policy, log), vms, health. Results go to stdout (a table or text, or JSON with ``--json``);
progress of slow work goes to stderr. On an error the server's message goes to stderr and the
exit status is 1; ``exec`` exits with the command's own exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import errors
from ._core import API_KEY_ENV, URL_ENV
from ._version import __version__
from .client import VirshSandbox
from .models import Operation, as_data

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 124
EXIT_NO_STATUS = 255


# -- progress on stderr -----------------------------------------------------------------------


class Progress:
    """A progress line on stderr: redrawn in place on a terminal (bar, percent, message,
    elapsed time), one line per new message otherwise, nothing with ``quiet``. A
    ``transient`` one (while a command runs, whose own stderr follows) shows only on a
    terminal and is erased at the end."""

    FRAMES = "|/-\\"

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        quiet: bool = False,
        transient: bool = False,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.transient = transient
        self.quiet = quiet or (transient and not self.tty)
        self.started = time.monotonic()
        self.percent: int | None = None
        self.message = ""
        self._last_line = ""
        self._frame = 0
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> Progress:
        if self.tty and not self.quiet:
            # Keeps the elapsed time moving while a call blocks.
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        self.draw()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join()
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        outcome = "failed" if exc_type else "done"
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K")
            if not self.transient:
                self.stream.write(f"{self.label}: {outcome} in {elapsed:.1f}s\n")
            self.stream.flush()

    def update(self, op: Operation) -> None:
        self.percent = op.progress
        self.message = op.message or op.status or ""
        self.draw()

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            self._frame += 1
            self.draw()

    def draw(self) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        with self._lock:
            if self.tty:
                bar = ""
                if self.percent is not None:
                    filled = max(0, min(20, self.percent * 20 // 100))
                    bar = f" [{'#' * filled}{'.' * (20 - filled)}] {self.percent:3d}%"
                spin = self.FRAMES[self._frame % len(self.FRAMES)]
                line = f"{spin} {self.label}{bar} {self.message} ({elapsed:.1f}s)"
                self.stream.write("\r\033[K" + line[:200])
                self.stream.flush()
                return
            line = f"{self.label}: {self.message}" if self.message else f"{self.label} ..."
            if line != self._last_line:
                self._last_line = line
                pct = f" [{self.percent}%]" if self.percent is not None else ""
                self.stream.write(f"{line}{pct}\n")
                self.stream.flush()


# -- output -----------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    json.dump(as_data(value), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_result(args, result: Any, text: Any) -> int:
    """``result`` on stdout: as JSON with ``--json``, else the line(s) ``text(result)`` makes.
    Exit status 0."""
    if args.json:
        emit_json(result)
    else:
        print(text(result))
    return 0


def table(rows: list[list[str]], headers: list[str]) -> str:
    cells = [headers, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in cells
    )


def note_more(result: Any, shown: int) -> None:
    """On stderr, when a page shows only part of a list: how to get the next page."""
    if result.next_cursor:
        print(
            f"({shown} of {result.total}; next page: --cursor {result.next_cursor})",
            file=sys.stderr,
        )


def describe_sandbox(sb: Any) -> str:
    ssh = f"{sb.ssh_host}:{sb.ssh_port}" if sb.ssh_host else "-"
    lines = [
        f"id:      {sb.id}",
        f"name:    {sb.name}",
        f"state:   {sb.state}" + (f" ({sb.error})" if sb.error else ""),
        f"agent:   {sb.agent_id or '-'}",
        f"source:  {sb.source_vm_name}",
        f"host:    {sb.host}",
        f"size:    {sb.vcpus} vCPU, {sb.memory_mb} MiB",
        f"ssh:     {ssh}",
    ]
    return "\n".join(lines)


def print_diff(diff: Any, unified: bool) -> None:
    marks = {"added": "A", "removed": "D", "modified": "M", "touched": "T"}
    summary = diff.summary or {}
    print(
        f"diff {diff.from_} -> {diff.to}: "
        + ", ".join(
            f"{kind} " + " ".join(f"{k}={v}" for k, v in counts.items() if v)
            for kind, counts in summary.items()
            if isinstance(counts, dict) and any(counts.values())
        )
        or "no changes"
    )
    files = diff.files
    for change in files.results if files else []:
        print(f"{marks.get(change.change, '?')} {change.path}")
        if unified and change.unified_diff:
            print(change.unified_diff.rstrip("\n"))
    if files and files.count > len(files.results):
        print(f"... {files.count - len(files.results)} more file changes (use --limit/--offset)")
    for section in ("packages", "units", "users", "groups"):
        value = getattr(diff, section) or {}
        for kind, items in value.items():
            for item in items or []:
                name = item.get("name") if isinstance(item, dict) else item
                extra = item.get("version", "") if isinstance(item, dict) else ""
                print(f"{section[:-1]} {kind}: {name} {extra}".rstrip())
    for cmd in diff.commands or []:
        print(f"$ {cmd.command}  (exit {cmd.exit_code})")


# -- commands ---------------------------------------------------------------------------------


def parse_env(pairs: Sequence[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"virsh-sandbox: --env expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        env[name] = value
    return env


def wait_operation(
    client: VirshSandbox, op: Operation | None, label: str, args
) -> Operation | None:
    if op is None or op.is_done:
        return op
    with Progress(label, quiet=args.quiet) as progress:
        return client.operations.wait(op.id, args.wait_timeout, on_progress=progress.update)


def cmd_list(client: VirshSandbox, args) -> int:
    result = client.sandbox.list_sandboxes(
        state=args.state, agent_id=args.agent_id, limit=args.limit, cursor=args.cursor
    )
    if args.json:
        emit_json({"sandboxes": result.sandboxes, "total": result.total})
        return 0
    rows = [
        [sb.id, sb.name, sb.state, sb.agent_id or "-", sb.source_vm_name, sb.created_at or ""]
        for sb in result.sandboxes
    ]
    print(table(rows, ["ID", "NAME", "STATE", "AGENT", "SOURCE", "CREATED"]))
    note_more(result, len(result.sandboxes))
    return 0


def cmd_get(client: VirshSandbox, args) -> int:
    result = client.sandbox.get_sandbox(args.id)
    return print_result(args, result, lambda r: describe_sandbox(r.sandbox))


def cmd_create(client: VirshSandbox, args) -> int:
    result = client.sandbox.create_sandbox(
        source_vm_name=args.source,
        agent_id=args.agent_id,
        vcpus=args.vcpus,
        memory_mb=args.memory_mb,
        ttl_seconds=args.ttl,
        auto_start=not args.no_start,
        wait_for_ip=False,
        egress_allow=args.allow,
    )
    if not args.no_wait:
        result.operation = wait_operation(
            client, result.operation, f"creating {result.sandbox.name}", args
        )
        result.sandbox = client.sandbox.get_sandbox(result.sandbox.id).sandbox
    return print_result(args, result, lambda r: describe_sandbox(r.sandbox))


def cmd_exec(client: VirshSandbox, args) -> int:
    command = " ".join(args.command)
    if not command.strip():
        raise SystemExit("virsh-sandbox: exec needs a command")
    env = parse_env(args.env)
    if args.stream:
        final = None
        for event in client.sandbox.stream_command(
            args.id, command, timeout_seconds=args.timeout, env=env or None, cwd=args.cwd
        ):
            if event.kind == "stdout":
                sys.stdout.write(event.data)
                sys.stdout.flush()
            elif event.kind == "stderr":
                sys.stderr.write(event.data)
                sys.stderr.flush()
            else:
                final = event
        if final is None:
            return EXIT_NO_STATUS
        return EXIT_TIMED_OUT if final.timed_out else final.exit_code
    with Progress(f"running in {args.id[:8]}", quiet=args.quiet or args.json, transient=True):
        result = client.sandbox.run_sandbox_command(
            args.id, command, timeout_seconds=args.timeout, env=env or None, cwd=args.cwd
        )
    cmd = result.command
    if args.json:
        emit_json(result)
    else:
        sys.stdout.write(cmd.stdout or "")
        sys.stdout.flush()
        sys.stderr.write(cmd.stderr or "")
        if cmd.stdout_truncated or cmd.stderr_truncated:
            sys.stderr.write("virsh-sandbox: output was truncated by the server\n")
        if cmd.timed_out:
            sys.stderr.write(f"virsh-sandbox: timed out after {cmd.timeout_seconds}s\n")
    if cmd.timed_out:
        return EXIT_TIMED_OUT
    return EXIT_NO_STATUS if cmd.exit_code is None else cmd.exit_code


def cmd_snapshot(client: VirshSandbox, args) -> int:
    result = client.sandbox.create_snapshot(
        args.id,
        args.name,
        description=args.description,
        disk_only=args.disk_only or None,
        wait=False,
    )
    result.operation = wait_operation(client, result.operation, f"snapshot {args.name}", args)
    result.snapshot = client.sandbox.get_snapshot(args.id, args.name)
    if args.json:
        emit_json(result)
    else:
        snap = result.snapshot
        memory = "with memory" if snap.has_memory else "disk only"
        print(f"snapshot {snap.name}: {snap.status} ({memory}, taken {snap.taken_at})")
    return 0


def cmd_snapshots(client: VirshSandbox, args) -> int:
    snaps = client.sandbox.list_snapshots(args.id)
    if args.json:
        emit_json(snaps)
        return 0
    rows = [[s.name, s.status, "yes" if s.has_memory else "no", s.taken_at or ""] for s in snaps]
    print(table(rows, ["NAME", "STATUS", "MEMORY", "TAKEN"]))
    return 0


def cmd_restore(client: VirshSandbox, args) -> int:
    result = client.sandbox.restore_snapshot(args.id, args.name, wait=False)
    result.operation = wait_operation(client, result.operation, f"restore {args.name}", args)
    result.sandbox = client.sandbox.get_sandbox(args.id).sandbox
    return print_result(
        args, result, lambda r: f"restored {args.name}: sandbox is {r.sandbox.state}"
    )


def cmd_diff(client: VirshSandbox, args) -> int:
    with Progress("diff", quiet=args.quiet or args.json):
        diff = client.sandbox.get_diff(
            args.id, args.from_, args.to, limit=args.limit, offset=args.offset
        )
    if args.json:
        emit_json(diff)
    else:
        print_diff(diff, args.unified)
    return 0


def cmd_playbook(client: VirshSandbox, args) -> int:
    with Progress("playbook", quiet=args.quiet or args.json):
        playbook = client.playbooks.get_playbook(args.id, args.from_, args.to)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(playbook.yaml or "")
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        emit_json(playbook)
    elif not args.output:
        sys.stdout.write(playbook.yaml or "")
    return 0


def cmd_start(client: VirshSandbox, args) -> int:
    result = client.sandbox.start_sandbox(args.id, wait=False)
    result.operation = wait_operation(client, result.operation, "start", args)
    return _print_state(client, args, result)


def cmd_stop(client: VirshSandbox, args) -> int:
    result = client.sandbox.stop_sandbox(args.id, wait=False)
    result.operation = wait_operation(client, result.operation, "stop", args)
    return _print_state(client, args, result)


def cmd_destroy(client: VirshSandbox, args) -> int:
    result = client.sandbox.destroy_sandbox(args.id, wait=False)
    if not args.no_wait:
        result.operation = wait_operation(client, result.operation, "destroy", args)
    return _print_state(client, args, result)


def _print_state(client: VirshSandbox, args, result) -> int:
    try:
        result.sandbox = client.sandbox.get_sandbox(args.id).sandbox
    except errors.NotFound:
        pass
    return print_result(args, result, lambda r: f"{r.sandbox.name}: {r.sandbox.state}")


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` for an IPv6 literal) as (host, port); 443 by default."""
    host, sep, port = text.rpartition(":")
    if not sep or (":" in host and not host.endswith("]")):
        return text, 443
    if not port.isdigit():
        raise SystemExit(f"virsh-sandbox: expected HOST[:PORT], got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def describe_egress_request(result: Any) -> str:
    if result.allowed:
        return f"allowed: {result.rule}"
    approval = result.approval
    if approval is None:
        return "not allowed"
    if approval.is_pending:
        return f"pending: approval {approval.id} waits for an operator (--wait to wait for it)"
    by = f" by {approval.decided_by}" if approval.decided_by else ""
    why = f": {approval.reason}" if approval.reason else ""
    return f"{approval.status}{by}{why}"


def cmd_network_request(client: VirshSandbox, args) -> int:
    host, port = parse_host_port(args.target)
    with Progress(
        f"asking an operator for {host}:{port}", quiet=args.quiet or args.json or not args.wait
    ):
        result = client.sandbox.request_network_access(
            args.id,
            host,
            port,
            reason=args.reason,
            ttl_seconds=args.ttl,
            wait=args.wait,
            timeout=args.wait_timeout,
        )
    print_result(args, result, describe_egress_request)
    # Waited: the outcome is the exit status (a denial or expiry is 1).
    return EXIT_ERROR if args.wait and not result.allowed else 0


def cmd_network_policy(client: VirshSandbox, args) -> int:
    def text(policy: Any) -> str:
        state = "enabled" if policy.enabled else "disabled"
        rows = [[r.rule, r.source, r.expires_at or "-", r.approval_id or "-"] for r in policy.rules]
        return "\n".join(
            [
                f"egress {state}, proxy {policy.proxy or '-'}",
                table(rows, ["RULE", "SOURCE", "EXPIRES", "APPROVAL"]),
                "always denied: " + ", ".join(policy.always_denied),
            ]
        )

    return print_result(args, client.sandbox.get_egress_policy(args.id), text)


def cmd_network_log(client: VirshSandbox, args) -> int:
    result = client.sandbox.list_egress_log(
        args.id, allowed=False if args.denied else None, limit=args.limit, cursor=args.cursor
    )
    rows = [
        [
            c.started_at or "",
            f"{c.host}:{c.port}",
            "allowed" if c.allowed else "denied",
            c.rule or "-",
            f"{c.bytes_up or 0}/{c.bytes_down or 0}",
            f"{c.duration_ms or 0}ms",
            c.error or "",
        ]
        for c in result.connections
    ]
    headers = ["STARTED", "TARGET", "VERDICT", "RULE", "UP/DOWN", "TIME", "ERROR"]
    print_result(args, result, lambda r: table(rows, headers))
    if not args.json:
        note_more(result, len(result.connections))
    return 0


def cmd_vms(client: VirshSandbox, args) -> int:
    result = client.vms.list_vms()
    if args.json:
        emit_json(result)
        return 0
    print(
        table(
            [[v.name, v.kind, v.description or ""] for v in result.vms],
            ["NAME", "KIND", "DESCRIPTION"],
        )
    )
    return 0


def cmd_health(client: VirshSandbox, args) -> int:
    health = client.health.get_health()
    if args.json:
        emit_json(health)
    else:
        print(f"status: {health.status} (database {health.database}, broker {health.broker})")
        for host in health.hosts:
            print(f"host {host.name}: {'alive' if host.alive else 'no heartbeat'}")
    return 0 if health.ok else EXIT_ERROR


# -- parser -----------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the command. In subcommands they default to
    SUPPRESS, so `--json list` is not undone by the subparser's own default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--url",
        default=default(None),
        help=f"server URL (${URL_ENV}, default http://localhost:8080)",
    )
    parser.add_argument("--api-key", default=default(None), help=f"agent API key (${API_KEY_ENV})")
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress on stderr"
    )
    parser.add_argument(
        "--timeout",
        dest="http_timeout",
        type=float,
        default=default(None),
        help="seconds per request",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=default(900.0),
        help="seconds to wait for slow work (900)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virsh-sandbox",
        description="Disposable KVM sandboxes for AI agents: the command line.",
    )
    _common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True

    def add(name: str, func, help: str, within: Any = sub) -> argparse.ArgumentParser:
        p = within.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = add("list", cmd_list, "list your sandboxes")
    p.add_argument("--state")
    p.add_argument("--agent-id")
    p.add_argument("--limit", type=int)
    p.add_argument("--cursor", help="where a page starts: the one the previous page printed")

    p = add("get", cmd_get, "show one sandbox")
    p.add_argument("id")

    p = add("create", cmd_create, "create a sandbox from a source VM and wait until SSH answers")
    p.add_argument("source", help="source VM name, e.g. debian-base")
    p.add_argument("--agent-id")
    p.add_argument("--vcpus", type=int)
    p.add_argument("--memory-mb", type=int)
    p.add_argument("--ttl", type=int, help="seconds until it is destroyed")
    p.add_argument("--no-start", action="store_true", help="define it but do not boot it")
    p.add_argument("--no-wait", action="store_true", help="return once the create is queued")
    p.add_argument(
        "--allow",
        action="append",
        metavar="HOST[:PORT]",
        help="a host the guest may reach beyond the defaults (repeatable; agents: self-service only)",
    )

    p = add("exec", cmd_exec, "run a command in a sandbox; exits with its exit code")
    p.add_argument("id")
    p.add_argument("command", nargs="+", help="the command; put it after -- if it has options")
    p.add_argument("--env", action="append", metavar="NAME=VALUE")
    p.add_argument("--cwd")
    p.add_argument("--timeout-seconds", dest="timeout", type=int, help="command timeout")
    p.add_argument("--stream", action="store_true", help="print output while it runs")

    p = add("snapshot", cmd_snapshot, "take a snapshot")
    p.add_argument("id")
    p.add_argument("name")
    p.add_argument("--description")
    p.add_argument("--disk-only", action="store_true")

    p = add("snapshots", cmd_snapshots, "list a sandbox's snapshots")
    p.add_argument("id")

    p = add("restore", cmd_restore, "restore a snapshot")
    p.add_argument("id")
    p.add_argument("name")

    p = add("diff", cmd_diff, "what changed since a snapshot (files, packages, units, users)")
    p.add_argument("id")
    p.add_argument("--from", dest="from_", required=True, metavar="SNAPSHOT")
    p.add_argument("--to", metavar="SNAPSHOT", help="another snapshot, or now (default)")
    p.add_argument("--unified", "-u", action="store_true", help="show unified diffs of text files")
    p.add_argument("--limit", type=int)
    p.add_argument("--offset", type=int)

    p = add("playbook", cmd_playbook, "the Ansible playbook that reproduces a diff")
    p.add_argument("id")
    p.add_argument("--from", dest="from_", required=True, metavar="SNAPSHOT")
    p.add_argument("--to", metavar="SNAPSHOT")
    p.add_argument("-o", "--output", help="write the YAML to this file")

    for name, func, help in (
        ("start", cmd_start, "boot a stopped sandbox"),
        ("stop", cmd_stop, "shut a sandbox down"),
    ):
        add(name, func, help).add_argument("id")

    p = add("destroy", cmd_destroy, "destroy a sandbox (VM, disk, snapshots)")
    p.add_argument("id")
    p.add_argument("--no-wait", action="store_true")

    network = sub.add_parser(
        "network",
        help="the guest's network: ask for access, see the policy and the connection log",
        description="The guest reaches the network only through the host's egress proxy.",
    )
    _common(network, suppress=True)
    actions = network.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    p = add(
        "request",
        cmd_network_request,
        "ask for access to HOST[:PORT] (443): an operator approves, and the grant expires",
        actions,
    )
    p.add_argument("id")
    p.add_argument("target", metavar="HOST[:PORT]")
    p.add_argument("--reason", help="why, for the operator")
    p.add_argument("--ttl", type=int, help="seconds the grant lasts (the server's default)")
    p.add_argument(
        "--wait", action="store_true", help="wait for the decision; exit 1 unless allowed"
    )
    add("policy", cmd_network_policy, "what the guest may reach", actions).add_argument("id")
    p = add("log", cmd_network_log, "the guest's connections, newest first", actions)
    p.add_argument("id")
    p.add_argument("--denied", action="store_true", help="only the denied ones")
    p.add_argument("--limit", type=int)
    p.add_argument("--cursor", help="where a page starts: the one the previous page printed")

    add("vms", cmd_vms, "list source VMs")
    add("health", cmd_health, "server health")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"wait_timeout": args.wait_timeout}
    if args.http_timeout:
        options["timeout"] = args.http_timeout
    client = VirshSandbox(args.url or os.environ.get(URL_ENV), api_key=args.api_key, **options)
    try:
        return args.func(client, args)
    except errors.VirshSandboxError as exc:
        if args.json:
            emit_json(
                {
                    "error": {
                        "code": exc.code,
                        "message": exc.message,
                        "fields": exc.fields,
                        "status": exc.status,
                    }
                }
            )
        print(f"virsh-sandbox: error: {exc.message}", file=sys.stderr)
        for name, messages in exc.fields.items():
            for message in messages:
                print(f"  {name}: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("virsh-sandbox: interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
