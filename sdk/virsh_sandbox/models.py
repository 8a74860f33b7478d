"""Typed answers of the API, as dataclasses with attribute access.

Models are tolerant: fields the server adds later land in ``extra`` (and read as attributes),
and missing ones are ``None``, so an older SDK keeps working against a newer server.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

TERMINAL_OPERATION_STATUSES = frozenset({"succeeded", "failed", "errored"})
# Sandbox states on the way to ready: a wait treats them as in progress ("queued": waiting
# for one of its host's boot slots, with ``queue_position``).
BOOTING_STATES = frozenset({"queued", "requested", "provisioning", "booting", "waiting_for_ip"})


@dataclass(repr=False)
class Model:
    """Base: ``from_dict`` keeps known fields, converts nested models, keeps the rest."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    # JSON name -> attribute name, for names Python reserves (``from``).
    _renames: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, data: Any):
        if data is None:
            return None
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        nested_models = _nested_models(cls)
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            attr = cls._renames.get(key, key)
            if attr not in nested_models:
                extra[key] = value
                continue
            nested = nested_models[attr]
            if isinstance(nested, list) and isinstance(value, list):
                value = [nested[0].from_dict(item) for item in value]
            elif nested is not None and not isinstance(nested, list) and isinstance(value, dict):
                value = nested.from_dict(value)
            kwargs[attr] = value
        obj = cls(**kwargs)
        obj.extra = extra
        return obj

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup failed: fields the server sent but we do not know.
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "extra" and getattr(self, f.name) not in (None, [], {})
        )
        return f"{type(self).__name__}({shown})"

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready data (unknown fields included)."""
        out: dict[str, Any] = {}
        reverse = {v: k for k, v in self._renames.items()}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[reverse.get(f.name, f.name)] = as_data(getattr(self, f.name))
        out.update(as_data(self.extra))
        return out


@functools.cache
def _nested_models(cls: type[Model]) -> dict[str, Any]:
    """Each field of ``cls``: the Model class it holds, ``[Model class]`` for a list of them,
    or ``None``; read from the annotations, so they are the one place a field's type is said."""
    hints = typing.get_type_hints(cls)
    return {f.name: _model_in(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "extra"}


def _model_in(hint: Any) -> Any:
    if isinstance(hint, types.UnionType):  # ``X | None``
        hint = next((arg for arg in typing.get_args(hint) if arg is not type(None)), None)
    if typing.get_origin(hint) is list:
        inner = _model_in(typing.get_args(hint)[0])
        return [inner] if isinstance(inner, type) else None
    plain_class = isinstance(hint, type) and typing.get_origin(hint) is None
    return hint if plain_class and issubclass(hint, Model) else None


def as_data(value: Any) -> Any:
    """Models, and lists and dicts of them, as plain JSON-able data."""
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, list):
        return [as_data(v) for v in value]
    if isinstance(value, dict):
        return {k: as_data(v) for k, v in value.items()}
    return value


@dataclass(repr=False)
class Record(Model):
    """An answer whose shape this SDK does not pin down (yet): every field is an attribute."""


@dataclass(repr=False)
class Page(Model):
    """A page of a list answer: ``total`` rows in all (matching the filters when the page
    was read), ``next``/``previous`` page URLs; each list model adds the field that holds
    its rows (see ``page``). Pass ``next_cursor`` as ``cursor=`` to the same list method for
    the next page, or use its ``iter_*`` twin, which follows every page."""

    total: int = 0
    next: str | None = None
    previous: str | None = None

    @property
    def next_cursor(self) -> str | None:
        """The ``cursor`` of the next page; None on the last one."""
        return cursor_in(self.next)

    @property
    def previous_cursor(self) -> str | None:
        return cursor_in(self.previous)


def cursor_in(url: str | None) -> str | None:
    """The ``cursor`` query parameter of a page URL (None without one, as an old server's
    offset links)."""
    if not url:
        return None
    return parse_qs(urlsplit(url).query).get("cursor", [None])[0]


@dataclass(repr=False)
class Host(Model):
    name: str | None = None
    queue_name: str | None = None
    capacity: int | None = None
    enabled: bool | None = None
    last_heartbeat: str | None = None
    domain_type: str | None = None
    alive: bool | None = None


@dataclass(repr=False)
class HostStatus(Model):
    """A KVM host as operators see it (``GET /v1/hosts``): its worker's last report
    (``resources``: memory, CPUs, disk, guests), its limits, committed and free memory, its
    sandboxes by state, and whether it drains."""

    name: str | None = None
    queue_name: str | None = None
    enabled: bool | None = None
    draining: bool | None = None
    alive: bool | None = None
    last_heartbeat: str | None = None
    domain_type: str | None = None
    capacity: int | None = None
    memory_overcommit: float | None = None
    overcommit_ratio: float | None = None
    resources: dict[str, Any] | None = None
    memory_limit_mb: int | None = None
    committed_memory_mb: int | None = None
    free_memory_mb: int | None = None
    holding_memory: int | None = None
    accepting: bool | None = None
    sandboxes: dict[str, int] = field(default_factory=dict)


@dataclass(repr=False)
class HostList(Model):
    hosts: list[HostStatus] = field(default_factory=list)


@dataclass(repr=False)
class SourceVM(Model):
    name: str | None = None
    kind: str | None = None
    host: str | None = None
    disk_path: str | None = None
    disk_format: str | None = None
    domain_name: str | None = None
    description: str | None = None
    enabled: bool | None = None


@dataclass(repr=False)
class VMList(Model):
    vms: list[SourceVM] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)


@dataclass(repr=False)
class Health(Model):
    status: str | None = None
    database: str | None = None
    broker: str | None = None
    hosts: list[Host] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(repr=False)
class Sandbox(Model):
    id: str | None = None
    name: str | None = None
    sandbox_name: str | None = None
    agent_id: str | None = None
    state: str | None = None
    # False while the sandbox's host has no live worker (`state` is then the last one it
    # reported): calls that need the host answer 503 `host_unavailable` until it is back.
    available: bool | None = None
    unavailable_reason: str | None = None
    state_changed_at: str | None = None
    # While `state` is "queued" (waiting for one of its host's boot slots): 1 = boots next.
    queue_position: int | None = None
    error: str | None = None
    host: str | None = None
    source_vm_name: str | None = None
    base_image: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    ttl_seconds: int | None = None
    expires_at: str | None = None
    network_mode: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_username: str | None = None
    ip_address: str | None = None
    host_key: str | None = None
    created_at: str | None = None
    ready_at: str | None = None
    last_used_at: str | None = None
    destroyed_at: str | None = None

    @property
    def is_booting(self) -> bool:
        """On its way to ready (queued for a boot slot included)."""
        return self.state in BOOTING_STATES


@dataclass(repr=False)
class Operation(Model):
    id: str | None = None
    kind: str | None = None
    status: str | None = None
    sandbox_id: str | None = None
    host: str | None = None
    queue: str | None = None
    attempt: int | None = None
    progress: int | None = None
    message: str | None = None
    # A create or start waiting for a boot slot (still "pending"): its place in the queue.
    queue_position: int | None = None
    error: str | None = None
    result: Any = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    deadline: str | None = None

    @property
    def is_done(self) -> bool:
        return self.status in TERMINAL_OPERATION_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(repr=False)
class Command(Model):
    id: str | None = None
    sandbox_id: str | None = None
    command: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    timeout_seconds: int | None = None
    status: str | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None
    timed_out: bool | None = None
    duration_ms: int | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(repr=False)
class Snapshot(Model):
    id: str | None = None
    sandbox_id: str | None = None
    name: str | None = None
    description: str | None = None
    status: str | None = None
    has_memory: bool | None = None
    domain_state: str | None = None
    error: str | None = None
    created_at: str | None = None
    taken_at: str | None = None


@dataclass(repr=False)
class SandboxResponse(Model):
    """``{sandbox, operation?, ip_address?, commands?}``: create, get, start, stop, restore,
    destroy. ``operation`` is the slow step the call started (final when the call waited)."""

    sandbox: Sandbox | None = None
    operation: Operation | None = None
    ip_address: str | None = None
    commands: list[Command] | None = None


@dataclass(repr=False)
class SandboxList(Page):
    sandboxes: list[Sandbox] = field(default_factory=list)


@dataclass(repr=False)
class CommandResponse(Model):
    """``{command}``: what ``run_sandbox_command`` answers (the original's shape)."""

    command: Command | None = None

    # Shortcuts, so `client.sandbox.run_sandbox_command(...).exit_code` reads naturally.
    @property
    def exit_code(self) -> int | None:
        return self.command.exit_code if self.command else None

    @property
    def stdout(self) -> str:
        return (self.command.stdout or "") if self.command else ""

    @property
    def stderr(self) -> str:
        return (self.command.stderr or "") if self.command else ""


@dataclass(repr=False)
class CommandList(Page):
    commands: list[Command] = field(default_factory=list)


@dataclass(repr=False)
class SnapshotList(Page):
    snapshots: list[Snapshot] = field(default_factory=list)


@dataclass(repr=False)
class SnapshotResponse(Model):
    snapshot: Snapshot | None = None
    operation: Operation | None = None


@dataclass(repr=False)
class OperationList(Page):
    operations: list[Operation] = field(default_factory=list)


@dataclass(repr=False)
class FileChange(Model):
    change: str | None = None  # added / removed / modified / touched
    path: str | None = None
    type: str | None = None
    size: int | None = None
    mode: str | None = None
    sha256: str | None = None
    unified_diff: str | None = None


@dataclass(repr=False)
class FileChanges(Model):
    count: int = 0
    limit: int | None = None
    offset: int | None = None
    results: list[FileChange] = field(default_factory=list)


@dataclass(repr=False)
class Diff(Model):
    """What changed in a sandbox between two states (``from_`` is the JSON ``from``).
    ``packages``, ``units``, ``users`` and ``groups`` are dicts of lists, as the server sends."""

    id: str | None = None
    from_: str | None = None
    to: str | None = None
    files: FileChanges | None = None
    packages: dict[str, Any] | None = None
    units: dict[str, Any] | None = None
    users: dict[str, Any] | None = None
    groups: dict[str, Any] | None = None
    commands: list[Command] | None = None
    summary: dict[str, Any] | None = None
    duration_ms: int | None = None
    _renames: ClassVar[dict[str, str]] = {"from": "from_"}


@dataclass(repr=False)
class ApprovalRequest(Model):
    """A human-approval request. ``status``: pending, approved, denied, expired or cancelled
    (an expiry is not a denial). ``decided_by`` is the operator who decided."""

    id: str | None = None
    request_id: str | None = None
    status: str | None = None
    approved: bool | None = None
    kind: str | None = None
    prompt: str | None = None
    action_type: str | None = None
    payload: dict[str, Any] | None = None
    context: str | None = None
    urgency: str | None = None
    alternatives: list[str] | None = None
    agent_id: str | None = None
    requested_by: str | None = None
    sandbox_id: str | None = None
    decided_by: str | None = None
    approved_by: str | None = None
    decided_at: str | None = None
    approved_at: str | None = None
    reason: str | None = None
    comment: str | None = None
    timeout_seconds: int | None = None
    expires_at: str | None = None
    idempotency_key: str | None = None
    consumed_at: str | None = None
    created_at: str | None = None

    @property
    def is_approved(self) -> bool:
        return self.status == "approved" or (self.status is None and bool(self.approved))

    @property
    def is_pending(self) -> bool:
        return self.status == "pending"


@dataclass(repr=False)
class ApprovalList(Page):
    approvals: list[ApprovalRequest] = field(default_factory=list)


@dataclass(repr=False)
class EgressRule(Model):
    """A rule in force for a sandbox's network: ``rule`` is ``host-pattern:port``; ``source``
    is where it comes from (host apt mirror, settings, create, grant); a grant has
    ``expires_at`` and the ``approval_id`` that made it."""

    rule: str | None = None
    source: str | None = None
    expires_at: str | None = None
    approval_id: str | None = None


@dataclass(repr=False)
class EgressPolicy(Model):
    """What a sandbox's guest may reach through the host's egress proxy (at ``proxy``):
    ``rules``, and the ``always_denied`` networks no rule opens."""

    enabled: bool | None = None
    proxy: str | None = None
    rules: list[EgressRule] = field(default_factory=list)
    always_denied: list[str] = field(default_factory=list)


@dataclass(repr=False)
class EgressRequest(Model):
    """The answer to a request for network access: ``allowed`` with the ``rule`` that allows
    it, or the ``approval`` an operator decides (its ``status`` says approved, denied,
    expired or cancelled; once approved the grant is live until it expires)."""

    allowed: bool = False
    rule: str | None = None
    approval: ApprovalRequest | None = None


@dataclass(repr=False)
class EgressConnection(Model):
    """One connection of a sandbox through the egress proxy (allowed or denied)."""

    id: int | None = None
    sandbox_id: str | None = None
    host: str | None = None
    port: int | None = None
    allowed: bool | None = None
    rule: str | None = None
    address: str | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    started_at: str | None = None
    duration_ms: int | None = None
    error: str | None = None


@dataclass(repr=False)
class EgressConnectionList(Page):
    connections: list[EgressConnection] = field(default_factory=list)


@dataclass(repr=False)
class AuditEvent(Model):
    """One link of the audit chain: ``hash`` covers the event and ``prev_hash``."""

    seq: int | None = None
    created_at: str | None = None
    actor: str | None = None
    source_ip: str | None = None
    request_id: str | None = None
    verb: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    sandbox_id: str | None = None
    agent: str | None = None
    data: Any = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass(repr=False)
class AuditEventList(Page):
    events: list[AuditEvent] = field(default_factory=list)


@dataclass(repr=False)
class Playbook(Model):
    """One version of an Ansible playbook generated from a diff (``from_`` is ``from``)."""

    id: str | None = None
    sandbox_id: str | None = None
    from_: str | None = None
    to: str | None = None
    version: int | None = None
    version_id: str | None = None
    sha256: str | None = None
    generated: bool | None = None
    yaml: str | None = None
    warnings: list[Any] | None = None
    skipped: list[Any] | None = None
    files: list[dict[str, Any]] | None = None
    syntax_ok: bool | None = None
    syntax_output: str | None = None
    note: str | None = None
    created_at: str | None = None
    created_by: str | None = None
    versions: list[int] | None = None
    _renames: ClassVar[dict[str, str]] = {"from": "from_"}


@dataclass(repr=False)
class FileContent(Model):
    path: str | None = None
    content: bytes = b""
    size: int | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(repr=False)
class WriteResult(Model):
    path: str | None = None
    bytes_written: int = 0
    written: bool = True


def page(cls: type[Model], key: str, body: Any) -> Any:
    """A list answer as ``cls(<key>=[...], total=...)``: the server paginates
    (``{count, next, previous, results}``); a plain list or ``{<key>: [...]}`` work too."""
    if isinstance(body, list):
        return cls.from_dict({key: body, "total": len(body)})
    if isinstance(body, dict) and "results" in body:
        rest = {k: v for k, v in body.items() if k not in ("results", "count")}
        return cls.from_dict(
            {key: body["results"], "total": body.get("count", len(body["results"])), **rest}
        )
    if isinstance(body, dict):
        return cls.from_dict(body)
    return cls.from_dict({})
