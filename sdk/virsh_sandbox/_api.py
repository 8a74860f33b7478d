"""The API surface, written once for both clients (see ``_core``: each method is a
generator of HTTP calls; ``VirshSandbox`` runs it synchronously, ``AsyncVirshSandbox``
awaits it). Method names follow the original SDK (``create_sandbox``,
``run_sandbox_command``, ...), so its README demo runs unchanged.
"""

from __future__ import annotations

import codecs
import functools
import inspect
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _guest, errors
from ._core import Call, Emit, Sleep, operation, streaming
from .models import (
    ApprovalList,
    ApprovalRequest,
    AuditEvent,
    AuditEventList,
    Command,
    CommandList,
    CommandResponse,
    Diff,
    EgressConnectionList,
    EgressPolicy,
    EgressRequest,
    FileContent,
    Health,
    HostList,
    HostStatus,
    Operation,
    OperationList,
    Playbook,
    Record,
    SandboxList,
    SandboxResponse,
    Snapshot,
    SnapshotList,
    SnapshotResponse,
    VMList,
    WriteResult,
    page,
)

# Server-side defaults the SDK sizes its read timeouts on (config/settings/base.py).
SERVER_COMMAND_TIMEOUT = 600
# How long to wait between polls of an operation: short at first (most finish in seconds
# under KVM), then backing off.
POLL_FIRST, POLL_MAX = 0.2, 2.0


def _with_timeout(fields: dict[str, Any], timeout_secs: int | None) -> dict[str, Any]:
    """``timeout_seconds``, or the original SDK's ``timeout_secs`` when it is not given."""
    if fields.get("timeout_seconds") is None:
        fields["timeout_seconds"] = timeout_secs
    return fields


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields that were given. The server refuses unknown fields and
    fills its own defaults, so unset ones are left out rather than sent as null."""
    return {k: v for k, v in fields.items() if v is not None}


def _shares(template: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Gives a method that takes ``**fields`` the parameters of ``template`` as its own: help()
    and ``inspect.signature`` show them, and a call is checked against them as Python checks
    a written-out signature. For methods that send the same fields (one list, not three)."""
    shared = inspect.signature(template).parameters

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind is not p.VAR_KEYWORD and p.name not in shared
        ]
        signature = inspect.signature(fn).replace(parameters=[own[0], *shared.values(), *own[1:]])

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            signature.bind(*args, **kwargs)  # the TypeError a written-out signature raises
            return fn(*args, **kwargs)

        checked.__signature__ = signature  # type: ignore[attr-defined]
        return checked

    return apply


def every_row(list_method: Callable[..., Any], rows: str, name: str) -> Callable[..., Any]:
    """The ``iter_*`` twin of a list method: every row of every page, following ``next`` by
    its cursor until the last page, with the list method's own filters (``limit`` is the
    page size; ``cursor`` a place to start). Rows added while it pages neither shift nor
    repeat the others: the server pages by keyset."""
    fn = list_method.__wrapped__  # the generator under @operation
    params = inspect.signature(list_method).parameters
    signature = inspect.Signature([p for n, p in params.items() if n != "offset"])

    def iterate(self, *args: Any, **kwargs: Any):
        signature.bind(self, *args, **kwargs)  # the TypeError a written-out signature raises
        while True:
            listing = yield from fn(self, *args, **kwargs)
            for row in getattr(listing, rows):
                yield Emit(row)
            kwargs["cursor"] = listing.next_cursor
            if not kwargs["cursor"]:
                return

    iterate.__name__ = iterate.__qualname__ = name
    iterate.__doc__ = (
        f"Every row of ``{list_method.__name__}``, page after page, following ``next``; "
        "``limit`` is the page size. Rows added meanwhile neither shift nor repeat others."
    )
    iterate.__signature__ = signature  # type: ignore[attr-defined]
    return streaming(iterate)


class _SubClient:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._engine = client._engine


# -- operations ---------------------------------------------------------------------------------


def poll_until(
    call: Call,
    parse: Callable[[Any], Any],
    done: Callable[[Any], bool],
    timeout: float | None,
    still: Callable[[Any], str],
    on_poll: Callable[[Any], None] | None = None,
):
    """Generator: make ``call`` until ``done(parse(answer))``, polling soon at first, then
    backing off; returns that last state. ``on_poll`` sees each state; ``WaitTimeout`` says
    ``still(state)`` once ``timeout`` seconds (None: no limit) would pass. The one wait for
    something the server finishes on its own (operations, approvals)."""
    deadline = time.monotonic() + timeout if timeout else None
    delay = POLL_FIRST
    while True:
        state = parse((yield call))
        if on_poll is not None:
            on_poll(state)
        if done(state):
            return state
        if deadline is not None and time.monotonic() + delay > deadline:
            raise errors.WaitTimeout(f"{still(state)} after {timeout:.0f} s", code="wait_timeout")
        yield Sleep(delay)
        delay = min(POLL_MAX, delay * 1.5)


def wait_for_operation(
    operation_id: str,
    timeout: float | None = None,
    on_progress: Any = None,
    raise_on_failure: bool = True,
):
    """Generator: poll ``GET /v1/operations/{id}`` until it is done (shared by every method
    that waits on a slow step)."""
    last = None

    def report(op: Operation) -> None:
        nonlocal last
        if on_progress is not None and (op.progress, op.message, op.status) != last:
            last = (op.progress, op.message, op.status)
            on_progress(op)

    op = yield from poll_until(
        Call("GET", "/v1/operations/{operation_id}", {"operation_id": operation_id}),
        Operation.from_dict,
        lambda op: op.is_done,
        timeout,
        lambda op: f"operation {operation_id} ({op.kind}) still {op.status}",
        report,
    )
    if raise_on_failure and not op.succeeded:
        raise errors.OperationFailed(
            f"{op.kind} {op.status}: {op.error or op.message or 'no reason given'}",
            code=f"operation_{op.status}",
            operation=op,
        )
    return op


def wait_for_approval(approval_id: str, timeout: float | None = None):
    """Generator: poll ``GET /v1/approvals/{id}`` until it is no longer pending (approved,
    denied, expired or cancelled: the server expires it when its time is up)."""
    return (
        yield from poll_until(
            Call("GET", "/v1/approvals/{approval_id}", {"approval_id": approval_id}),
            ApprovalRequest.from_dict,
            lambda approval: not approval.is_pending,
            timeout,
            lambda approval: f"approval {approval_id} still {approval.status}",
        )
    )


class OperationsAPI(_SubClient):
    """Slow steps (create, start, stop, destroy, snapshot, restore) and waiting for them."""

    @operation
    def get_operation(self, operation_id: str) -> Operation:
        return Operation.from_dict(
            (yield Call("GET", "/v1/operations/{operation_id}", {"operation_id": operation_id}))
        )

    @operation
    def list_operations(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        sandbox: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> OperationList:
        """One page, newest first; ``cursor=page.next_cursor`` for the next one."""
        params = {
            "status": status,
            "kind": kind,
            "sandbox": sandbox,
            "limit": limit,
            "offset": offset,
            "cursor": cursor,
        }
        return page(
            OperationList, "operations", (yield Call("GET", "/v1/operations", params=params))
        )

    iter_operations = every_row(list_operations, "operations", "iter_operations")

    @operation
    def wait(
        self,
        operation_id: str,
        timeout: float | None = None,
        *,
        on_progress: Any = None,
        raise_on_failure: bool = True,
    ) -> Operation:
        """Poll until the operation succeeded, failed or errored. ``on_progress(op)`` is
        called whenever its progress or message moves. Raises ``OperationFailed`` (unless
        ``raise_on_failure=False``) or ``WaitTimeout``."""
        return (yield from wait_for_operation(operation_id, timeout, on_progress, raise_on_failure))

    get = get_operation
    list = list_operations


# -- sandboxes ----------------------------------------------------------------------------------

EGRESS_ROUTE = "/v1/sandboxes/{sandbox_id}/egress"


@dataclass
class StreamEvent:
    """One piece of a streamed command: ``kind`` is ``stdout``, ``stderr`` or, last,
    ``exit`` (with ``exit_code`` and ``timed_out``)."""

    kind: str
    data: str = ""
    exit_code: int | None = None
    timed_out: bool = False


class SandboxAPI(_SubClient):
    """Sandboxes, their commands, snapshots and diffs."""

    # ---- lifecycle

    @operation
    def create_sandbox(
        self,
        source_vm_name: str | None = None,
        agent_id: str | None = None,
        *,
        cpu: int | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        ttl_seconds: int | None = None,
        auto_start: bool | None = None,
        wait_for_ip: bool | None = None,
        from_sandbox: str | None = None,
        from_snapshot: str | None = None,
        egress_allow: list[str] | None = None,
    ) -> SandboxResponse:
        """Clone a source VM (or fork another sandbox's snapshot with ``from_sandbox`` +
        ``from_snapshot``). Returns at once with the create operation, or, with
        ``wait_for_ip=True``, once the sandbox is ready and SSH answers. ``egress_allow``
        (``host[:port]`` entries) opens more of the network than the defaults from the
        start; an agent may name only what the operator made self-service, anything else
        goes through ``request_network_access``."""
        body = _body(
            # What to clone, for whom, how big, and when to return.
            source_vm_name=source_vm_name,
            from_sandbox=from_sandbox,
            from_snapshot=from_snapshot,
            agent_id=agent_id,
            vcpus=vcpus if vcpus is not None else cpu,
            memory_mb=memory_mb,
            ttl_seconds=ttl_seconds,
            auto_start=auto_start,
            wait_for_ip=wait_for_ip,
            # What the guest may reach beyond the defaults.
            egress_allow=list(egress_allow) if egress_allow else None,
        )
        timeout = self._engine.wait_timeout if wait_for_ip else None
        return SandboxResponse.from_dict(
            (yield Call("POST", "/v1/sandboxes", json=body, timeout=timeout))
        )

    @operation
    def list_sandboxes(
        self,
        *,
        state: str | None = None,
        agent_id: str | None = None,
        source_vm_name: str | None = None,
        host: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> SandboxList:
        """One page, newest first; ``cursor=page.next_cursor`` for the next one. ``offset``
        is the original's: the server takes only 0 (offsets skip rows while a list grows)."""
        params = {
            "state": state,
            "agent_id": agent_id,
            "source_vm_name": source_vm_name,
            "host": host,
            "limit": limit,
            "offset": offset,
            "cursor": cursor,
        }
        return page(SandboxList, "sandboxes", (yield Call("GET", "/v1/sandboxes", params=params)))

    iter_sandboxes = every_row(list_sandboxes, "sandboxes", "iter_sandboxes")

    @operation
    def get_sandbox(
        self, sandbox_id: str, *, include_commands: bool | None = None
    ) -> SandboxResponse:
        return SandboxResponse.from_dict(
            (
                yield Call(
                    "GET",
                    "/v1/sandboxes/{sandbox_id}",
                    {"sandbox_id": sandbox_id},
                    params={"include_commands": include_commands},
                )
            )
        )

    def _verb(self, verb: str, sandbox_id: str, wait: bool, wait_for_ip: bool | None):
        body = _body(wait=True if wait else None, wait_for_ip=wait_for_ip)
        return (yield from self._post_verb(verb, sandbox_id, body, held=bool(wait or wait_for_ip)))

    def _post_verb(self, verb: str, sandbox_id: str, body: dict | None, *, held: bool):
        """POST /v1/sandboxes/{id}/<verb>; `held`: the server answers once the work is done."""
        return SandboxResponse.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/" + verb,
                    {"sandbox_id": sandbox_id},
                    json=body,
                    timeout=self._engine.wait_timeout if held else None,
                )
            )
        )

    @operation
    def start_sandbox(
        self, sandbox_id: str, *, wait_for_ip: bool | None = None, wait: bool = True
    ) -> SandboxResponse:
        """Boot a stopped sandbox; with ``wait`` (default) returns once SSH answers."""
        return (yield from self._verb("start", sandbox_id, wait, wait_for_ip))

    @operation
    def stop_sandbox(self, sandbox_id: str, *, wait: bool = True) -> SandboxResponse:
        """ACPI shutdown, then power off; with ``wait`` (default) returns once stopped."""
        return (yield from self._verb("stop", sandbox_id, wait, None))

    @operation
    def pause_sandbox(self, sandbox_id: str, *, hibernate: bool = False) -> SandboxResponse:
        """Stop the guest's vCPUs now (its memory stays), or with ``hibernate`` save its
        memory to disk; any later call that needs the guest wakes it by itself."""
        body = _body(hibernate=True) if hibernate else None
        return (yield from self._post_verb("pause", sandbox_id, body, held=True))

    @operation
    def resume_sandbox(self, sandbox_id: str) -> SandboxResponse:
        """Resume a paused sandbox, or restore a hibernated one; returns once it is ready."""
        return (yield from self._post_verb("resume", sandbox_id, None, held=True))

    @operation
    def destroy_sandbox(
        self, sandbox_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> SandboxResponse:
        """Destroy the VM, its disk and snapshots. With ``wait`` (default) returns once the
        destroy operation succeeded, with the sandbox as it is then."""
        result = SandboxResponse.from_dict(
            (yield Call("DELETE", "/v1/sandboxes/{sandbox_id}", {"sandbox_id": sandbox_id}))
        )
        if wait and result.operation is not None:
            result.operation = yield from wait_for_operation(
                result.operation.id, timeout or self._engine.wait_timeout
            )
            try:
                again = SandboxResponse.from_dict(
                    (yield Call("GET", "/v1/sandboxes/{sandbox_id}", {"sandbox_id": sandbox_id}))
                )
                result.sandbox = again.sandbox
            except errors.NotFound:
                pass
        return result

    # ---- commands

    @operation
    def run_sandbox_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_seconds: int | None = None,
        timeout_sec: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResponse:
        """Run ``command`` (a shell script) as root and wait for it. A non-zero exit code is
        a normal answer: look at ``.command.exit_code`` (or ``.exit_code``)."""
        timeout = timeout_seconds if timeout_seconds is not None else timeout_sec
        body = _body(
            command=command, timeout_seconds=timeout, env=dict(env) if env else None, cwd=cwd
        )
        # The server holds the request for the whole run, plus connecting.
        read_timeout = (timeout or SERVER_COMMAND_TIMEOUT) + 90
        return CommandResponse.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/command",
                    {"sandbox_id": sandbox_id},
                    json=body,
                    timeout=read_timeout,
                )
            )
        )

    run_command = run_sandbox_command

    @operation
    def list_sandbox_commands(
        self,
        sandbox_id: str,
        *,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> CommandList:
        """One page of the history, oldest first; ``cursor=page.next_cursor`` for the next."""
        return page(
            CommandList,
            "commands",
            (
                yield Call(
                    "GET",
                    "/v1/sandboxes/{sandbox_id}/commands",
                    {"sandbox_id": sandbox_id},
                    params={"limit": limit, "offset": offset, "cursor": cursor},
                )
            ),
        )

    iter_sandbox_commands = every_row(list_sandbox_commands, "commands", "iter_sandbox_commands")

    @streaming
    def stream_command(
        self,
        sandbox_id: str,
        command: str,
        *,
        timeout_seconds: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        poll_interval: float = 0.25,
        max_poll_interval: float = 2.0,
    ):
        """Run ``command`` and yield its output as it comes: ``StreamEvent`` items of kind
        ``stdout``/``stderr``, then one ``exit``.

        The server has no streaming endpoint yet, and a command's output reaches its row only
        when it ends, so this runs the command detached in the guest with its output in files
        and reads their new bytes with short polling commands (``_guest``). Those polls show
        up in the command history. Stopping the iteration early kills the command.
        """
        started = yield from self._run_checked(
            sandbox_id,
            _guest.stream_start_script(command, timeout_seconds),
            env=env,
            cwd=cwd,
            what="start the streamed command",
        )
        directory = started.stdout.strip().splitlines()[-1]
        decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        offsets = {"stdout": 0, "stderr": 0}
        delay = poll_interval
        finished = False
        try:
            while True:
                polled = yield from self._run_checked(
                    sandbox_id,
                    _guest.stream_poll_script(directory, offsets["stdout"], offsets["stderr"]),
                    what="poll the streamed command",
                )
                result = _guest.parse_poll(polled.stdout or "")
                got = False
                for kind, data in (("stdout", result.out), ("stderr", result.err)):
                    if data:
                        offsets[kind] += len(data)
                        text = decoders[kind].decode(data)
                        got = True
                        if text:
                            yield Emit(StreamEvent(kind, text))
                caught_up = (
                    offsets["stdout"] >= result.out_size and offsets["stderr"] >= result.err_size
                )
                if result.exit_code is not None and caught_up:
                    for kind, decoder in decoders.items():
                        tail = decoder.decode(b"", final=True)
                        if tail:
                            yield Emit(StreamEvent(kind, tail))
                    finished = True
                    timed_out = bool(timeout_seconds) and result.exit_code in (124, 137)
                    yield Emit(StreamEvent("exit", exit_code=result.exit_code, timed_out=timed_out))
                    break
                if got:
                    delay = poll_interval
                    continue
                yield Sleep(delay)
                delay = min(max_poll_interval, delay * 1.5)
        except GeneratorExit:
            # The caller stopped reading: kill the command and remove its files (the engine
            # drives these last calls).
            yield Call(
                *self._command_call(sandbox_id, _guest.stream_cleanup_script(directory, True))
            )
            return
        yield from self._run_checked(
            sandbox_id, _guest.stream_cleanup_script(directory, not finished), what="clean up"
        )

    def _command_call(self, sandbox_id: str, script: str, env=None, cwd=None):
        body = _body(command=script, env=dict(env) if env else None, cwd=cwd)
        return ("POST", "/v1/sandboxes/{sandbox_id}/command", {"sandbox_id": sandbox_id}, body)

    def _run_checked(self, sandbox_id: str, script: str, *, env=None, cwd=None, what: str):
        method, route, path, body = self._command_call(sandbox_id, script, env, cwd)
        cmd = CommandResponse.from_dict((yield Call(method, route, path, json=body))).command
        if cmd is None or cmd.exit_code != 0:
            detail = (cmd.stderr or cmd.error or "").strip() if cmd else "no command in answer"
            raise errors.VirshSandboxError(
                f"could not {what}: exit {cmd.exit_code if cmd else None}: {detail}",
                code="guest_helper_failed",
            )
        return cmd

    # ---- snapshots

    @operation
    def create_snapshot(
        self,
        sandbox_id: str,
        name: str,
        *,
        description: str | None = None,
        disk_only: bool | None = None,
        external: bool | None = None,
        wait: bool = True,
    ) -> SnapshotResponse:
        """Take a snapshot (with the guest's memory while it runs, unless ``disk_only``).
        With ``wait`` (default) returns once it is taken."""
        body = _body(
            name=name,
            description=description,
            disk_only=disk_only if disk_only is not None else external,
            wait=True if wait else None,
        )
        return SnapshotResponse.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/snapshots",
                    {"sandbox_id": sandbox_id},
                    json=body,
                    timeout=self._engine.wait_timeout if wait else None,
                )
            )
        )

    @operation
    def list_snapshots(self, sandbox_id: str) -> list[Snapshot]:
        """Every snapshot, oldest first (all pages: a sandbox has few)."""
        found: list[Snapshot] = []
        cursor = None
        while True:
            body = yield Call(
                "GET",
                "/v1/sandboxes/{sandbox_id}/snapshots",
                {"sandbox_id": sandbox_id},
                params={"cursor": cursor},
            )
            listing = page(SnapshotList, "snapshots", body)
            found += listing.snapshots
            cursor = listing.next_cursor
            if not cursor:
                return found

    @operation
    def get_snapshot(self, sandbox_id: str, name: str) -> Snapshot:
        return Snapshot.from_dict(
            (
                yield Call(
                    "GET",
                    "/v1/sandboxes/{sandbox_id}/snapshots/{name}",
                    {"sandbox_id": sandbox_id, "name": name},
                )
            )
        )

    @operation
    def restore_snapshot(self, sandbox_id: str, name: str, *, wait: bool = True) -> SandboxResponse:
        """Return the sandbox to the snapshot: running with its memory, or stopped for a
        disk snapshot. With ``wait`` (default) returns once SSH answers again."""
        return SandboxResponse.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/snapshots/{name}/restore",
                    {"sandbox_id": sandbox_id, "name": name},
                    json=_body(wait=True if wait else None),
                    timeout=self._engine.wait_timeout if wait else None,
                )
            )
        )

    @operation
    def delete_snapshot(self, sandbox_id: str, name: str, *, wait: bool = True) -> Operation:
        op = Operation.from_dict(
            (
                yield Call(
                    "DELETE",
                    "/v1/sandboxes/{sandbox_id}/snapshots/{name}",
                    {"sandbox_id": sandbox_id, "name": name},
                )
            )
        )
        if wait and op.id:
            op = yield from wait_for_operation(op.id, self._engine.wait_timeout)
        return op

    # ---- diff

    @operation
    def get_diff(
        self,
        sandbox_id: str,
        from_snapshot: str,
        to_snapshot: str | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Diff:
        """What changed between snapshot ``from_snapshot`` and ``to_snapshot`` (another
        snapshot, or ``now``, the default): files, packages, units, users, groups and the
        commands run in between."""
        params = {"from": from_snapshot, "to": to_snapshot, "limit": limit, "offset": offset}
        body = yield Call(
            "GET",
            "/v1/sandboxes/{sandbox_id}/diff",
            {"sandbox_id": sandbox_id},
            params=params,
            timeout=self._engine.wait_timeout,
        )
        return Diff.from_dict(body.get("diff") if isinstance(body, dict) else None)

    diff = get_diff
    # The original SDK's name.
    diff_snapshots = get_diff

    # ---- network: the guest reaches out only through the host's egress proxy

    def _egress_policy(self, sandbox_id: str):
        return EgressPolicy.from_dict((yield Call("GET", EGRESS_ROUTE, {"sandbox_id": sandbox_id})))

    @operation
    def get_egress_policy(self, sandbox_id: str) -> EgressPolicy:
        """What the guest may reach: every rule in force (host mirrors, settings, the
        create's entries, unexpired grants) and the networks no rule opens."""
        return (yield from self._egress_policy(sandbox_id))

    @operation
    def request_network_access(
        self,
        sandbox_id: str,
        host: str,
        port: int = 443,
        *,
        reason: str | None = None,
        ttl_seconds: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> EgressRequest:
        """Ask for ``host:port``. Already allowed: ``allowed`` and the ``rule``. Else an
        operator decides the returned ``approval``; once approved the grant is live at once,
        for ``ttl_seconds`` (the server's default if not given). With ``wait`` this returns
        once the approval is decided, expired or cancelled (``approval.status`` says which; a
        denial is an answer, not an error), or raises ``WaitTimeout`` after ``timeout``
        seconds (the client's ``wait_timeout`` if not given)."""
        result = EgressRequest.from_dict(
            (
                yield Call(
                    "POST",
                    EGRESS_ROUTE + "/requests",
                    {"sandbox_id": sandbox_id},
                    json=_body(host=host, port=port, reason=reason, ttl_seconds=ttl_seconds),
                )
            )
        )
        if not wait or result.approval is None or not result.approval.is_pending:
            return result
        result.approval = yield from wait_for_approval(
            result.approval.id, timeout or self._engine.wait_timeout
        )
        result.allowed = result.approval.is_approved
        if result.allowed:
            # The grant the approval made, as the policy names it.
            policy = yield from self._egress_policy(sandbox_id)
            grant = next((r for r in policy.rules if r.approval_id == result.approval.id), None)
            result.rule = f"{grant.source} {grant.rule}" if grant else result.rule
        return result

    @operation
    def list_egress_log(
        self,
        sandbox_id: str,
        *,
        allowed: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> EgressConnectionList:
        """The guest's connections through the egress proxy, newest first (one page;
        ``cursor=page.next_cursor`` for older ones); ``allowed=False`` lists the denials only."""
        params = {"allowed": allowed, "limit": limit, "offset": offset, "cursor": cursor}
        return page(
            EgressConnectionList,
            "connections",
            (yield Call("GET", EGRESS_ROUTE + "/log", {"sandbox_id": sandbox_id}, params=params)),
        )

    iter_egress_log = every_row(list_egress_log, "connections", "iter_egress_log")


# -- read-only listings ------------------------------------------------------------------------


class VMsAPI(_SubClient):
    """Source VMs that sandboxes clone from, and the KVM hosts."""

    @operation
    def list_vms(self) -> VMList:
        return VMList.from_dict((yield Call("GET", "/v1/vms")))

    list_virtual_machines = list_vms


class HostsAPI(_SubClient):
    """The KVM hosts, for operators (``sandboxes.view_host``; draining needs
    ``sandboxes.drain_host``). To an agent's key the routes answer 404 (``NotFound``)."""

    @operation
    def list_hosts(self) -> HostList:
        """Every host: resources, committed and free memory, sandboxes by state, draining."""
        return HostList.from_dict((yield Call("GET", "/v1/hosts")))

    @operation
    def get_host(self, name: str) -> HostStatus:
        return HostStatus.from_dict((yield Call("GET", "/v1/hosts/{name}", {"name": name})))

    @operation
    def drain_host(self, name: str) -> HostStatus:
        """No new sandboxes (nor forks) go to the host; the ones it holds keep working."""
        return HostStatus.from_dict((yield Call("POST", "/v1/hosts/{name}/drain", {"name": name})))

    @operation
    def undrain_host(self, name: str) -> HostStatus:
        """The host takes new sandboxes again."""
        return HostStatus.from_dict(
            (yield Call("POST", "/v1/hosts/{name}/undrain", {"name": name}))
        )


class HealthAPI(_SubClient):
    @operation
    def get_health(self) -> Health:
        """Database, broker and workers. A degraded server answers 503 with the same body;
        that is returned (``.status == "degraded"``), not raised."""
        try:
            body = yield Call("GET", "/v1/health", retry=False)
        except errors.ServerError as exc:
            if isinstance(exc.body, dict) and "status" in exc.body:
                return Health.from_dict(exc.body)
            raise
        return Health.from_dict(body)

    check = get_health


# -- files --------------------------------------------------------------------------------------

UPLOAD_ROUTE = "/v1/sandboxes/{sandbox_id}/files/upload"
DOWNLOAD_ROUTE = "/v1/sandboxes/{sandbox_id}/files/download"


class FilesAPI(_SubClient):
    """Files in a sandbox. ``read_file``/``write_file`` are byte-exact: through the server's
    file endpoints (SFTP in the guest, with the operator's path policy) where it has them,
    else through the command API (base64 in a shell command, see ``_guest``), which every
    server has. ``via="server"`` or ``via="commands"`` forces one way."""

    @operation
    def read_file(self, sandbox_id: str, path: str, *, via: str = "auto") -> FileContent:
        if (yield from self._use_server(via, "GET", DOWNLOAD_ROUTE)):
            data, headers = yield Call(
                "GET",
                DOWNLOAD_ROUTE,
                {"sandbox_id": sandbox_id},
                params={"path": path},
                raw=True,
                timeout=self._engine.wait_timeout,
            )
            return FileContent(path=path, content=data, size=len(data))
        return (yield from self._read_via_commands(sandbox_id, path))

    @operation
    def write_file(
        self,
        sandbox_id: str,
        path: str,
        content: bytes | str,
        *,
        mode: str | None = None,
        create_dirs: bool = True,
        via: str = "auto",
    ) -> WriteResult:
        """Write ``content`` (bytes, or text as UTF-8) to ``path``, replacing the file
        atomically; parent directories are created unless ``create_dirs=False``."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        if (yield from self._use_server(via, "PUT", UPLOAD_ROUTE)):
            params = {"path": path, "mode": mode, "create_dirs": create_dirs, "overwrite": True}
            body = yield Call(
                "PUT",
                UPLOAD_ROUTE,
                {"sandbox_id": sandbox_id},
                params=params,
                content=data,
                timeout=self._engine.wait_timeout,
            )
            result = WriteResult.from_dict(body if isinstance(body, dict) else {})
            result.path = result.path or path
            result.bytes_written = result.bytes_written or len(data)
            return result
        return (yield from self._write_via_commands(sandbox_id, path, data, mode, create_dirs))

    def _use_server(self, via: str, method: str, route: str):
        if via not in ("auto", "server", "commands"):
            raise ValueError(f'via must be "auto", "server" or "commands", not {via!r}')
        if via == "auto":
            return (yield from self._client._supports(method, route))
        return via == "server"

    # The command-API way, for servers without file endpoints (and for `via="commands"`).

    def _read_via_commands(self, sandbox_id: str, path: str):
        chunks: list[bytes] = []
        offset, size, length = 0, None, _guest.READ_CHUNK
        while size is None or offset < size:
            cmd = yield from self._command(
                sandbox_id, _guest.read_chunk_script(path, offset, length)
            )
            if cmd.exit_code == _guest.NO_SUCH_FILE_EXIT:
                raise errors.NotFound(f"no such file in the sandbox: {path}", code="no_such_file")
            if cmd.exit_code == _guest.NOT_A_FILE_EXIT:
                raise errors.ValidationError(f"not a regular file: {path}", code="not_a_file")
            if cmd.exit_code != 0:
                raise errors.VirshSandboxError(
                    f"reading {path} failed (exit {cmd.exit_code}): {(cmd.stderr or '').strip()}",
                    code="guest_helper_failed",
                )
            if cmd.stdout_truncated:
                # The server caps output below our chunk: ask for less.
                length = max(1024, length // 4)
                continue
            file_size, data = _guest.parse_read_chunk(cmd.stdout or "")
            size = file_size if size is None else size
            if not data and offset < size:
                break  # the file shrank while we read it
            chunks.append(data)
            offset += len(data)
        content = b"".join(chunks)
        return FileContent(path=path, content=content, size=len(content))

    def _write_via_commands(self, sandbox_id, path, data, mode, create_dirs):
        scripts = _guest.write_scripts(path, data, mode=mode, create_dirs=create_dirs)
        for script in scripts:
            cmd = yield from self._command(sandbox_id, script)
            if cmd.exit_code != 0:
                if len(scripts) > 1:
                    yield from self._command(sandbox_id, _guest.remove_tmp_script(path))
                raise errors.VirshSandboxError(
                    f"writing {path} failed (exit {cmd.exit_code}): {(cmd.stderr or '').strip()}",
                    code="guest_helper_failed",
                )
        return WriteResult(path=path, bytes_written=len(data), written=True)

    def _command(self, sandbox_id: str, script: str):
        body = yield Call(
            "POST",
            "/v1/sandboxes/{sandbox_id}/command",
            {"sandbox_id": sandbox_id},
            json={"command": script},
        )
        return CommandResponse.from_dict(body).command or Command()

    # The file endpoints' other verbs (answers as the server sends them).

    def _file_call(self, verb: str, sandbox_id: str, body: dict[str, Any]):
        return Record.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/files/" + verb,
                    {"sandbox_id": sandbox_id},
                    json=body,
                    timeout=self._engine.wait_timeout,
                )
            )
        )

    @operation
    def read_text(
        self,
        sandbox_id: str,
        path: str,
        *,
        from_line: int | None = None,
        max_lines: int | None = None,
    ) -> Record:
        """A text file by lines (``content``, ``total_lines``, ``truncated``, ...)."""
        return (
            yield from self._file_call(
                "read", sandbox_id, _body(path=path, from_line=from_line, max_lines=max_lines)
            )
        )

    @operation
    def write_text(
        self,
        sandbox_id: str,
        path: str,
        content: str,
        *,
        mode: str | None = None,
        create_dirs: bool | None = None,
        overwrite: bool | None = None,
    ) -> Record:
        """Write a text file through the file endpoint (``write_file`` is the byte-exact,
        any-server way)."""
        body = _body(
            path=path, content=content, mode=mode, create_dirs=create_dirs, overwrite=overwrite
        )
        return (yield from self._file_call("write", sandbox_id, body))

    @operation
    def edit_file(
        self, sandbox_id: str, path: str, old_text: str, new_text: str, *, all: bool = False
    ) -> Record:
        """Exact-string replace (the first match, or ``all``); the answer has a unified diff."""
        body = {"path": path, "old_text": old_text, "new_text": new_text, "all": all}
        return (yield from self._file_call("edit", sandbox_id, body))

    @operation
    def list_directory(self, sandbox_id: str, path: str) -> Record:
        return (yield from self._file_call("list", sandbox_id, {"path": path}))

    @operation
    def stat_file(self, sandbox_id: str, path: str) -> Record:
        return (yield from self._file_call("stat", sandbox_id, {"path": path}))

    @operation
    def delete_file(self, sandbox_id: str, path: str, *, recursive: bool = False) -> Record:
        return (
            yield from self._file_call("delete", sandbox_id, {"path": path, "recursive": recursive})
        )

    read = read_file
    write = write_file


# -- human approval and audit -------------------------------------------------------------------


def _ask_fields(
    prompt: str,
    *,
    kind: str | None = None,
    action_type: str | None = None,
    context: str | None = None,
    urgency: str | None = None,
    timeout_seconds: int | None = None,
    alternatives: list[str] | None = None,
    sandbox_id: str | None = None,
    agent_id: str | None = None,
    payload: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> None:
    """What an ask sends (``ask``, ``ask_async``, ``create_approval``): the parameters only."""


def _ask_body(prompt: str, fields: dict[str, Any]) -> dict[str, Any]:
    # A key per call: a retry after a lost answer picks up the same request.
    key = fields.pop("idempotency_key", None) or str(uuid.uuid4())
    return _body(prompt=prompt, **fields, idempotency_key=key)


class HumanAPI(_SubClient):
    """Ask a person before doing something that matters (the original's ``/api/v1/human/*``).

    ``ask`` blocks until an operator decides, or the request expires (``status`` approved,
    denied, expired or cancelled). It sends an idempotency key, so after a dropped
    connection the SDK retries it and picks up the same request instead of opening another.
    """

    @operation
    @_shares(_ask_fields)
    def ask(
        self, prompt: str, *, timeout_secs: int | None = None, **fields: Any
    ) -> ApprovalRequest:
        """Ask and wait for the decision (``timeout_secs`` is the original's ``timeout_seconds``)."""
        body = _ask_body(prompt, _with_timeout(fields, timeout_secs))
        # The server holds the request until the decision or the request's expiry.
        read_timeout = (body.get("timeout_seconds") or 3600) + 60
        return ApprovalRequest.from_dict(
            (
                yield Call(
                    "POST", "/api/v1/human/ask", json=body, timeout=read_timeout, idempotent=True
                )
            )
        )

    @operation
    @_shares(_ask_fields)
    def ask_async(
        self, prompt: str, *, timeout_secs: int | None = None, **fields: Any
    ) -> ApprovalRequest:
        """Open the request and return at once (``status == "pending"``); poll ``get``."""
        body = _ask_body(prompt, _with_timeout(fields, timeout_secs))
        return ApprovalRequest.from_dict(
            (yield Call("POST", "/api/v1/human/ask-async", json=body, idempotent=True))
        )

    @operation
    def get(self, request_id: str) -> ApprovalRequest:
        return ApprovalRequest.from_dict(
            (yield Call("GET", "/api/v1/human/pending/{request_id}", {"request_id": request_id}))
        )

    @operation
    def list_pending(self) -> list[ApprovalRequest]:
        body = yield Call("GET", "/api/v1/human/pending")
        if isinstance(body, dict):
            body = body.get("pending", body.get("results", []))
        return [ApprovalRequest.from_dict(item) for item in body or []]

    @operation
    def cancel(self, request_id: str) -> Record:
        return Record.from_dict(
            (yield Call("DELETE", "/api/v1/human/pending/{request_id}", {"request_id": request_id}))
            or {}
        )

    @operation
    def respond(
        self, request_id: str, approved: bool, *, reason: str | None = None
    ) -> ApprovalRequest:
        """Decide (operators only; the decider is whoever the key belongs to)."""
        body = _body(request_id=request_id, approved=approved, reason=reason)
        return ApprovalRequest.from_dict((yield Call("POST", "/api/v1/human/respond", json=body)))

    # The original SDK's names.
    ask_human = ask
    ask_human_async = ask_async
    get_pending_approval = get
    list_pending_approvals = list_pending
    cancel_approval = cancel
    respond_to_approval = respond


class ApprovalsAPI(_SubClient):
    """Approval requests over ``/v1/approvals``: agents see theirs; operators see all and
    decide (an agent gets 403 on approve/deny, also for its own request)."""

    @operation
    def list_approvals(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
    ) -> ApprovalList:
        """One page, oldest first (a queue); ``cursor=page.next_cursor`` for the next one."""
        params = {"status": status, "limit": limit, "offset": offset, "cursor": cursor}
        return page(ApprovalList, "approvals", (yield Call("GET", "/v1/approvals", params=params)))

    iter_approvals = every_row(list_approvals, "approvals", "iter_approvals")

    @operation
    def get_approval(self, approval_id: str) -> ApprovalRequest:
        return ApprovalRequest.from_dict(
            (yield Call("GET", "/v1/approvals/{approval_id}", {"approval_id": approval_id}))
        )

    @operation
    @_shares(_ask_fields)
    def create_approval(self, prompt: str, **fields: Any) -> ApprovalRequest:
        """Open a request without waiting (like ``human.ask_async``)."""
        body = _ask_body(prompt, fields)
        return ApprovalRequest.from_dict(
            (yield Call("POST", "/v1/approvals", json=body, idempotent=True))
        )

    def _decide(self, verb: str, approval_id: str, reason: str | None):
        return ApprovalRequest.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/approvals/{approval_id}/" + verb,
                    {"approval_id": approval_id},
                    json=_body(reason=reason),
                )
            )
        )

    @operation
    def wait(self, approval_id: str, timeout: float | None = None) -> ApprovalRequest:
        """Poll until the request is decided, expired or cancelled, and return it (a denial
        is an answer, not an error). Raises ``WaitTimeout`` after ``timeout`` seconds."""
        return (yield from wait_for_approval(approval_id, timeout))

    @operation
    def approve(self, approval_id: str, *, reason: str | None = None) -> ApprovalRequest:
        return (yield from self._decide("approve", approval_id, reason))

    @operation
    def deny(self, approval_id: str, *, reason: str | None = None) -> ApprovalRequest:
        return (yield from self._decide("deny", approval_id, reason))

    @operation
    def cancel(self, approval_id: str, *, reason: str | None = None) -> ApprovalRequest:
        """Withdraw a pending request (its requester, or an operator)."""
        return (yield from self._decide("cancel", approval_id, reason))

    @operation
    def bulk_decide(self, ids: list[str], decision: str, *, reason: str | None = None) -> Record:
        """Approve or deny many at once: ``decision`` is ``approve`` or ``deny``."""
        body = _body(ids=list(ids), decision=decision, reason=reason)
        return Record.from_dict((yield Call("POST", "/v1/approvals/bulk", json=body)))

    list = list_approvals
    get = get_approval


def _audit_filters(
    *,
    sandbox: str | None = None,
    agent: str | None = None,
    actor: str | None = None,
    verb: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after: int | None = None,
    request_id: str | None = None,
) -> None:
    """The filters of ``list_events`` and ``export``: the parameters only."""


class AuditAPI(_SubClient):
    """The tamper-evident audit trail (``/v1/audit``), oldest first. Filters: ``sandbox``,
    ``agent``, ``actor``, ``verb`` (or a prefix like ``sandbox``), ``since``, ``until``,
    ``after`` (a seq), ``request_id``."""

    @operation
    @_shares(_audit_filters)
    def list_events(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        cursor: str | None = None,
        **filters: Any,
    ) -> AuditEventList:
        """One page, oldest first (by seq); ``cursor=page.next_cursor`` for the next one."""
        params = {**filters, "limit": limit, "offset": offset, "cursor": cursor}
        return page(AuditEventList, "events", (yield Call("GET", "/v1/audit", params=params)))

    iter_events = every_row(list_events, "events", "iter_events")

    @operation
    def get_event(self, seq: int) -> AuditEvent:
        return AuditEvent.from_dict((yield Call("GET", "/v1/audit/{seq}", {"seq": seq})))

    @operation
    @_shares(_audit_filters)
    def export(self, **filters: Any) -> list[AuditEvent]:
        """Every matching event (the JSON Lines export, parsed)."""
        data, _ = yield Call(
            "GET", "/v1/audit/export", params=filters, raw=True, timeout=self._engine.wait_timeout
        )
        return [
            AuditEvent.from_dict(json.loads(line)) for line in data.splitlines() if line.strip()
        ]

    list = list_events
    get = get_event


# -- playbooks (issue: Ansible from the diff) ---------------------------------------------------


class PlaybooksAPI(_SubClient):
    """Ansible playbooks generated from a sandbox's diff: versioned, editable by operators,
    downloadable as YAML or as a tar.gz with the files they copy."""

    @operation
    def get_playbook(
        self, sandbox_id: str, from_snapshot: str, to_snapshot: str | None = None
    ) -> Playbook:
        """The playbook that reproduces the change between two snapshots of a sandbox
        (generated on first request, then stored with versions)."""
        body = yield Call(
            "GET",
            "/v1/sandboxes/{sandbox_id}/playbook",
            {"sandbox_id": sandbox_id},
            params={"from": from_snapshot, "to": to_snapshot},
            timeout=self._engine.wait_timeout,
        )
        return _playbook(body)

    @operation
    def get_playbook_by_id(self, playbook_id: str, *, version: int | None = None) -> Playbook:
        body = yield Call(
            "GET",
            "/v1/playbooks/{playbook_id}",
            {"playbook_id": playbook_id},
            params={"version": version},
        )
        return _playbook(body)

    @operation
    def download_archive(self, playbook_id: str, *, version: int | None = None) -> bytes:
        """A tar.gz with ``playbook.yml`` and the ``files/`` it copies."""
        data, _ = yield Call(
            "GET",
            "/v1/playbooks/{playbook_id}/archive",
            {"playbook_id": playbook_id},
            params={"version": version},
            raw=True,
        )
        return data

    @operation
    def edit_playbook(self, playbook_id: str, yaml: str, *, note: str | None = None) -> Playbook:
        """Store an edited YAML as a new version (operators)."""
        body = yield Call(
            "POST",
            "/v1/playbooks/{playbook_id}/versions",
            {"playbook_id": playbook_id},
            json=_body(yaml=yaml, note=note),
        )
        return _playbook(body)

    @operation
    def verify_playbook(
        self,
        sandbox_id: str,
        from_snapshot: str,
        to_snapshot: str,
        *,
        version: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_progress: Any = None,
    ) -> Operation:
        """Replay the playbook on a fresh clone of the source at ``from_snapshot``, compare
        with the sandbox at ``to_snapshot``, then run it again for idempotency. A slow step:
        with ``wait`` (default) returns the finished operation, whose ``result`` reports
        ``reproduces`` and the residual differences."""
        body = _body(from_name=from_snapshot, to_name=to_snapshot, version=version)
        op = Operation.from_dict(
            (
                yield Call(
                    "POST",
                    "/v1/sandboxes/{sandbox_id}/playbook/verify",
                    {"sandbox_id": sandbox_id},
                    json=body,
                )
            ).get("operation")
        )
        if wait and op is not None and not op.is_done:
            op = yield from wait_for_operation(
                op.id, timeout or self._engine.wait_timeout, on_progress, raise_on_failure=False
            )
        return op

    @operation
    def check_playbook(
        self, playbook_id: str, inventory_id: str, *, version: int | None = None, wait: bool = True
    ) -> Record:
        """A dry run (``ansible --check --diff``) against an inventory; its result goes into the
        approval an apply needs. Returns ``{"run": {...}}`` (finished when ``wait``).
        Operators only (``playbooks.run_inventory``): for an agent's key, like every inventory
        and run method here, it raises NotFound (404)."""
        body = yield Call(
            "POST",
            "/v1/playbooks/{playbook_id}/check",
            {"playbook_id": playbook_id},
            json=_body(inventory=inventory_id, version=version, wait=wait),
            timeout=self._engine.wait_timeout,
        )
        return Record.from_dict(body)

    @operation
    def apply_playbook(
        self,
        playbook_id: str,
        inventory_id: str,
        *,
        approval_id: str | None = None,
        wait: bool = True,
    ) -> Record:
        """Apply the latest version to an inventory (operators with ``playbooks.run_inventory``;
        404 for agents). Without an approved ``approval_id`` the server refuses with
        ``approval_required`` (a Conflict whose ``body["approval"]`` is the request it opened
        for another operator to decide); call again with its id once approved. Only that
        request counts: one asked through ``ask``/``ask_async`` never allows an apply."""
        body = yield Call(
            "POST",
            "/v1/playbooks/{playbook_id}/apply",
            {"playbook_id": playbook_id},
            json=_body(inventory=inventory_id, approval_id=approval_id, wait=wait),
            timeout=self._engine.wait_timeout,
        )
        return Record.from_dict(body)

    @operation
    def get_run(self, run_id: str) -> Record:
        return Record.from_dict(
            (yield Call("GET", "/v1/playbook-runs/{run_id}", {"run_id": run_id}))
        )

    @operation
    def run_events(self, run_id: str, *, after: int | None = None) -> Record:
        """A run's events after ``after`` (their ``seq``)."""
        body = yield Call(
            "GET", "/v1/playbook-runs/{run_id}/events", {"run_id": run_id}, params={"after": after}
        )
        return Record.from_dict(body)

    @operation
    def cancel_run(self, run_id: str) -> Record:
        return Record.from_dict(
            (yield Call("POST", "/v1/playbook-runs/{run_id}/cancel", {"run_id": run_id}))
        )

    @operation
    def list_inventories(self) -> Record:
        return Record.from_dict((yield Call("GET", "/v1/inventories", {})))

    @operation
    def get_inventory(self, inventory_id: str) -> Record:
        return Record.from_dict(
            (yield Call("GET", "/v1/inventories/{inventory_id}", {"inventory_id": inventory_id}))
        )

    @operation
    def create_inventory(
        self,
        name: str,
        hosts: list[dict],
        *,
        description: str | None = None,
        variables: dict | None = None,
    ) -> Record:
        """Register production targets (operators). Each host: ``name`` plus either
        ``sandbox_id`` or ``address``, ``host_key`` and ``private_key`` (never returned)."""
        body = yield Call(
            "POST",
            "/v1/inventories",
            {},
            json=_body(name=name, hosts=hosts, description=description, variables=variables),
        )
        return Record.from_dict(body)

    get = get_playbook
    verify = verify_playbook
    export = get_playbook
    check = check_playbook
    apply = apply_playbook


def _playbook(body: Any) -> Playbook:
    if isinstance(body, dict) and isinstance(body.get("playbook"), dict):
        body = body["playbook"]
    return Playbook.from_dict(body if isinstance(body, dict) else {"yaml": body})


# -- terminals ----------------------------------------------------------------------------------


class TmuxAPI(_SubClient):
    """Terminals of a sandbox: tmux sessions whose panes are root shells in the guest
    (``/v1/sandboxes/{id}/terminals/*``). Pane ids look like ``%3``."""

    T = "/v1/sandboxes/{sandbox_id}/terminals"

    @operation
    def list_sessions(self, sandbox_id: str) -> Record:
        return Record.from_dict(
            (yield Call("GET", self.T + "/sessions", {"sandbox_id": sandbox_id}))
        )

    @operation
    def create_session(
        self,
        sandbox_id: str,
        name: str | None = None,
        *,
        cols: int | None = None,
        rows: int | None = None,
        window_name: str | None = None,
    ) -> Record:
        """Open a session (``name`` defaults to ``main``); the answer has its first pane."""
        body = _body(name=name, cols=cols, rows=rows, window_name=window_name)
        return Record.from_dict(
            (
                yield Call(
                    "POST",
                    self.T + "/sessions",
                    {"sandbox_id": sandbox_id},
                    json=body,
                    timeout=self._engine.wait_timeout,
                )
            )
        )

    @operation
    def kill_session(self, sandbox_id: str, name: str) -> Record:
        return Record.from_dict(
            (
                yield Call(
                    "DELETE", self.T + "/sessions/{name}", {"sandbox_id": sandbox_id, "name": name}
                )
            )
            or {}
        )

    @operation
    def list_windows(self, sandbox_id: str, *, session: str | None = None) -> Record:
        return Record.from_dict(
            (
                yield Call(
                    "GET",
                    self.T + "/windows",
                    {"sandbox_id": sandbox_id},
                    params={"session": session},
                )
            )
        )

    @operation
    def list_panes(self, sandbox_id: str, *, session: str | None = None) -> Record:
        return Record.from_dict(
            (
                yield Call(
                    "GET",
                    self.T + "/panes",
                    {"sandbox_id": sandbox_id},
                    params={"session": session},
                )
            )
        )

    @operation
    def create_pane(
        self,
        sandbox_id: str,
        *,
        session_name: str | None = None,
        window_name: str | None = None,
        new_window: bool | None = None,
        horizontal: bool | None = None,
        pane_id: str | None = None,
    ) -> Record:
        """A new window (``new_window=True``), or a split of ``pane_id``."""
        body = _body(
            session_name=session_name,
            window_name=window_name,
            new_window=new_window,
            horizontal=horizontal,
            pane_id=pane_id,
        )
        return Record.from_dict(
            (yield Call("POST", self.T + "/panes", {"sandbox_id": sandbox_id}, json=body))
        )

    def _pane(self, method: str, sandbox_id: str, pane_id: str, action: str = "", body=None):
        route = self.T + "/panes/{pane_id}" + (f"/{action}" if action else "")
        return Record.from_dict(
            (
                yield Call(
                    method,
                    route,
                    {"sandbox_id": sandbox_id, "pane_id": pane_id},
                    json=body if method == "POST" else None,
                )
            )
            or {}
        )

    @operation
    def send_keys(
        self,
        sandbox_id: str,
        pane_id: str,
        text: str = "",
        *,
        keys: list[str] | None = None,
        enter: bool = False,
    ) -> Record:
        """Type ``text`` literally, then press ``keys`` (tmux names: Enter, C-c, Up...),
        then Enter if ``enter``."""
        body = _body(text=text, keys=list(keys) if keys else None, enter=enter)
        return (yield from self._pane("POST", sandbox_id, pane_id, "send-keys", body))

    @operation
    def read_pane(
        self, sandbox_id: str, pane_id: str, *, last_n_lines: int | None = None
    ) -> Record:
        """The visible screen, or the last N lines of history (``content``)."""
        body = _body(last_n_lines=last_n_lines)
        return (yield from self._pane("POST", sandbox_id, pane_id, "read", body))

    @operation
    def select_pane(self, sandbox_id: str, pane_id: str) -> Record:
        return (yield from self._pane("POST", sandbox_id, pane_id, "select", {}))

    @operation
    def respawn_pane(self, sandbox_id: str, pane_id: str) -> Record:
        """Restart the pane's shell (a new ssh into the guest)."""
        return (yield from self._pane("POST", sandbox_id, pane_id, "respawn", {}))

    @operation
    def kill_pane(self, sandbox_id: str, pane_id: str) -> Record:
        return (yield from self._pane("DELETE", sandbox_id, pane_id))

    # The original SDK's names.
    send_keys_to_pane = send_keys
    read_tmux_pane = read_pane
    list_tmux_sessions = list_sessions
    create_tmux_session = create_session
    kill_tmux_session = kill_session
    list_tmux_panes = list_panes
    list_tmux_windows = list_windows
    create_tmux_pane = create_pane
    kill_tmux_pane = kill_pane
    switch_tmux_pane = select_pane
