"""The terminals service layer: the only writer of terminal sessions and their audit events,
and the authorisation helpers the REST views and the websocket consumer share.

Everything that touches tmux or a guest runs on the worker of the sandbox's host
(`terminals.host_op` on `kvm.<host>.terminals`): this module sends the operation and waits for its
answer (a Redis wake-up, as commands do), so the web server may run on any machine."""

from __future__ import annotations

import logging
import time
import uuid

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import services as audit
from core import queues, wakeups
from core.conf import vsb
from core.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    OperationTimeout,
    ServiceError,
    TooLarge,
    from_http_status,
)
from sandboxes import idle
from sandboxes import services as sandbox_services
from sandboxes.choices import IDLE_STATES, WAKEABLE_STATES, SandboxState
from sandboxes.models import Host, Sandbox

from . import blobs, tasks
from .models import TerminalSession
from .tmux_driver import (
    SESSION_NAME_RULE,
    WINDOW_NAME_RULE,
    WINDOW_PANE_RE,
    valid_key_name,
    valid_pane_id,
    valid_session_name,
    valid_window_name,
)

log = logging.getLogger(__name__)

# --- scoping -------------------------------------------------------------------------------


def owned_sandboxes(user):
    """What an agent may drive through the terminal and file APIs: its own sandboxes only
    (staff included: operators watch and take over through the terminal page)."""
    return Sandbox.objects.select_related("host").filter(owner=user)


def owned_sandbox(user, sandbox_id) -> Sandbox:
    try:
        sandbox = owned_sandboxes(user).filter(pk=uuid.UUID(str(sandbox_id))).first()
    except ValueError:
        sandbox = None
    if sandbox is None:
        raise NotFound("Not found.")
    return sandbox


def _require_ready(sandbox: Sandbox) -> None:
    # Paused or hibernated: the host's worker wakes it before it uses the guest.
    if sandbox.state not in WAKEABLE_STATES:
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; terminals and files need it ready.",
            code="invalid_state",
        )


def _identity(user, sandbox: Sandbox) -> str:
    return f"terminal user:{user.get_username()} sandbox:{sandbox.id}"


# --- talking to the host -------------------------------------------------------------------


def call_host(host: Host, op: str, params: dict, timeout: float | None = None) -> dict:
    """Run `op` on the worker of `host` and return its answer, or raise its error. Not inside
    a transaction: the task is sent when it commits, and this waits for the answer. A host
    with no live worker is a 503 `host_unavailable` at once, not a wait until the timeout."""
    sandbox_services.require_live_host(host)
    request_id = uuid.uuid4().hex
    queues.enqueue(tasks.host_op, request_id, op, params, host=host.name)
    answer = wakeups.wait(request_id, timeout or vsb("TERMINAL_OP_TIMEOUT_SECONDS"), kind="term")
    if answer is None:
        raise OperationTimeout(
            f"The worker of host {host.name} did not answer the terminal operation {op}.",
            code="worker_timeout",
        )
    if "error" in answer:
        err = answer["error"]
        raise from_http_status(
            err["status"], err["message"], code=err["code"], field=err.get("field", "")
        )
    return answer["ok"]


def _scopes(user, sandbox: Sandbox | None) -> list[tuple[Host, dict]]:
    """(host, params) pairs to look for a pane in: one sandbox, or all the caller's live
    sandboxes grouped by host (of the hosts with a live worker)."""
    if sandbox is not None:
        sandboxes = [sandbox]
    else:
        sandboxes = list(
            owned_sandboxes(user)
            .filter(
                pk__in=TerminalSession.objects.filter(closed_at__isnull=True).values("sandbox_id")
            )
            .exclude(state=SandboxState.DESTROYED)
        )
    by_host: dict[int, tuple[Host, dict]] = {}
    blocked = set(
        TerminalSession.objects.filter(
            sandbox__in=sandboxes, closed_at__isnull=True, taken_over_by__isnull=False
        )
        .exclude(taken_over_by=user)
        .values_list("tmux_name", flat=True)
    )
    for sb in sandboxes:
        host, params = by_host.setdefault(
            sb.host_id, (sb.host, {"allowed": [], "allowed_ids": {}, "blocked": []})
        )
        params["allowed"].append(sb.id.hex)
        params["allowed_ids"][sb.id.hex] = str(sb.id)
    for _, params in by_host.values():
        params["blocked"] = [n for n in blocked if n.split("-")[1] in params["allowed"]]
    # Looking through all the caller's sandboxes: a host with no live worker cannot answer,
    # and the others' panes are still found (one named sandbox's dead host is a 503).
    return [(h, p) for h, p in by_host.values() if sandbox is not None or h.is_alive()]


# --- names that reach tmux -----------------------------------------------------------------
# Checked here, before anything is stored or sent to a host, with the driver's own patterns
# (which the driver applies again): tmux expands formats in names, `#(cmd)` runs a command.


def check_session_name(value, field: str = "name") -> str:
    if not valid_session_name(value):
        raise InvalidInput.field(field, f"{SESSION_NAME_RULE}.")
    return value


def check_window_name(value, field: str = "window_name") -> str:
    """An empty name (or None) leaves the window named after its command."""
    if value in ("", None):
        return ""
    if not valid_window_name(value):
        raise InvalidInput.field(field, f"{WINDOW_NAME_RULE}.")
    return value


def _pane_target(user, pane_id: str, sandbox: Sandbox | None) -> str:
    """`%N` as is; `session:w.p` with the caller's session name mapped to its tmux name."""
    if not isinstance(pane_id, str) or not pane_id:
        raise InvalidInput.field("pane_id", "is required.")
    if valid_pane_id(pane_id):
        return pane_id
    session, sep, rest = pane_id.partition(":")
    if not valid_session_name(session) or not WINDOW_PANE_RE.fullmatch(rest):
        raise InvalidInput.field("pane_id", "must look like %3 or session:window.pane.")
    rows = TerminalSession.objects.filter(sandbox__owner=user, name=session, closed_at__isnull=True)
    if sandbox is not None:
        rows = rows.filter(sandbox=sandbox)
    names = list(rows.values_list("tmux_name", flat=True)[:2])
    if not names:
        raise NotFound(f"No terminal session {session!r} in your sandboxes.")
    if len(names) > 1:
        raise InvalidInput.field("sandbox_id", f"several sandboxes have a session {session!r}.")
    return f"{names[0]}{sep}{rest}"


def pane_op(user, op: str, pane_id: str, sandbox: Sandbox | None = None, **params) -> dict:
    """Run a pane operation wherever the pane lives among the caller's sandboxes."""
    target = _pane_target(user, pane_id, sandbox)
    scopes = _scopes(user, sandbox)
    if not scopes:
        raise NotFound(f"No pane {pane_id} in your sandboxes.")
    last: NotFound | None = None
    for host, scope in scopes:
        try:
            return call_host(host, op, {**scope, **params, "pane_id": target})
        except NotFound as exc:
            last = exc
    raise last


def _sandbox_of(result: dict) -> Sandbox | None:
    hexid = (result.get("pane") or {}).get("sandbox_id")
    return Sandbox.objects.filter(pk=uuid.UUID(hexid)).first() if hexid else None


# --- sessions --------------------------------------------------------------------------------


def _live_tmux_names(sandbox: Sandbox) -> set[str]:
    sessions = call_host(sandbox.host, "list_sessions", {"allowed": [sandbox.id.hex]})
    return {s["name"] for s in sessions["sessions"]}


def create_session(
    sandbox: Sandbox,
    user,
    *,
    name: str = "main",
    cols: int | None = None,
    rows: int | None = None,
    window_name: str = "",
) -> tuple[TerminalSession, dict]:
    """A new tmux session on the sandbox's host whose first pane is ssh into the guest."""
    check_session_name(name, "name")
    window_name = check_window_name(window_name)
    _require_ready(sandbox)
    open_rows = TerminalSession.objects.filter(sandbox=sandbox, closed_at__isnull=True)
    if open_rows.count() >= vsb("TERMINAL_MAX_SESSIONS"):
        raise Conflict(
            f"Sandbox {sandbox.name} already has {vsb('TERMINAL_MAX_SESSIONS')} terminal sessions.",
            code="limit",
        )
    tmux_name = TerminalSession.tmux_name_for(sandbox.id, name)
    stale = open_rows.filter(name=name).first()
    if stale is not None:
        if tmux_name in _live_tmux_names(sandbox):
            raise Conflict(f"Terminal session {name!r} already exists.", code="exists")
        _close_rows(TerminalSession.objects.filter(pk=stale.pk), reason="gone")
    try:
        with transaction.atomic():
            row = TerminalSession.objects.create(
                sandbox=sandbox, name=name, tmux_name=tmux_name, created_by=user
            )
            audit.record(
                "terminal.session.create",
                user=user,
                target=sandbox,
                data={"session": name, "tmux": tmux_name},
            )
    except IntegrityError:
        raise Conflict(f"Terminal session {name!r} already exists.", code="exists") from None
    try:
        result = call_host(
            sandbox.host,
            "create_session",
            {
                "sandbox_id": str(sandbox.id),
                "tmux_name": tmux_name,
                "cols": cols,
                "rows": rows,
                "window_name": window_name,
                "identity": _identity(user, sandbox),
            },
        )
    except ServiceError:
        _close_rows(TerminalSession.objects.filter(pk=row.pk), reason="create failed")
        raise
    return row, result["pane"]


def ensure_session(sandbox: Sandbox, user, name: str = "main") -> TerminalSession:
    """The open session `name`, created when missing (or gone with a host reboot)."""
    check_session_name(name, "session")
    _require_ready(sandbox)
    row = TerminalSession.objects.filter(sandbox=sandbox, name=name, closed_at__isnull=True).first()
    if row is not None and row.tmux_name in _live_tmux_names(sandbox):
        return row
    try:
        return create_session(sandbox, user, name=name)[0]
    except Conflict as exc:
        if exc.code != "exists":
            raise
        return TerminalSession.objects.get(sandbox=sandbox, name=name, closed_at__isnull=True)


def _close_rows(rows, reason: str) -> int:
    closed = 0
    for row in rows.filter(closed_at__isnull=True).select_related("sandbox"):
        if TerminalSession.objects.filter(pk=row.pk, closed_at__isnull=True).update(
            closed_at=timezone.now(), taken_over_by=None
        ):
            closed += 1
            audit.record(
                "terminal.session.close",
                target=row.sandbox,
                data={"session": row.name, "reason": reason},
            )
    return closed


def list_sessions(sandbox: Sandbox) -> list[dict]:
    live = {}
    if sandbox.state in WAKEABLE_STATES:
        live = {
            s["name"]: s
            for s in call_host(sandbox.host, "list_sessions", {"allowed": [sandbox.id.hex]})[
                "sessions"
            ]
        }
    result = []
    for row in TerminalSession.objects.filter(
        sandbox=sandbox, closed_at__isnull=True
    ).select_related("taken_over_by"):
        info = live.get(row.tmux_name)
        result.append(
            {
                "id": str(row.id),
                "name": row.name,
                "session_name": row.name,
                "tmux_session": row.tmux_name,
                "sandbox_id": str(sandbox.id),
                "created_at": row.created_at,
                "windows": info["windows"] if info else 0,
                "alive": info is not None,
                "taken_over_by": row.taken_over_by.get_username() if row.taken_over_by else None,
            }
        )
    return result


def list_sessions_of(user, sandbox: Sandbox | None = None) -> list[dict]:
    """The sessions of one sandbox, or of all the caller's ready sandboxes."""
    sandboxes = [sandbox] if sandbox else owned_sandboxes(user).filter(state__in=WAKEABLE_STATES)
    return [session for sb in sandboxes for session in list_sessions(sb)]


def sandbox_with_session(user, session_name: str) -> Sandbox:
    """The one sandbox of the caller's with an open session `session_name` (for the original
    tmux-client's paths, which name no sandbox)."""
    ids = list(
        TerminalSession.objects.filter(
            sandbox__owner=user, name=session_name, closed_at__isnull=True
        ).values_list("sandbox_id", flat=True)[:2]
    )
    if len(ids) != 1:
        raise InvalidInput.field(
            "sandbox_id", "is required (no single sandbox has a session of that name)."
        )
    return owned_sandbox(user, ids[0])


def _session_row(sandbox: Sandbox, name: str, field: str = "name") -> TerminalSession:
    check_session_name(name, field)
    row = TerminalSession.objects.filter(sandbox=sandbox, name=name, closed_at__isnull=True).first()
    if row is None:
        raise NotFound(f"No terminal session {name!r} in this sandbox.")
    return row


def kill_session(sandbox: Sandbox, user, name: str) -> dict:
    row = _session_row(sandbox, name)
    result = call_host(sandbox.host, "kill_session", {"tmux_name": row.tmux_name})
    with transaction.atomic():
        _close_rows(TerminalSession.objects.filter(pk=row.pk), reason=f"killed by {user}")
    return {"session_name": name, "killed": True, "was_alive": result["killed"]}


def new_window(sandbox: Sandbox, user, session: str, window_name: str = "") -> dict:
    window_name = check_window_name(window_name)
    _require_ready(sandbox)
    row = _session_row(sandbox, session, "session_name")
    result = call_host(
        sandbox.host,
        "new_window",
        {
            "sandbox_id": str(sandbox.id),
            "tmux_name": row.tmux_name,
            "window_name": window_name,
            "identity": _identity(user, sandbox),
        },
    )
    return result["pane"]


def split_pane(user, pane_id: str, *, sandbox: Sandbox | None = None, horizontal: bool = False):
    return pane_op(
        user, "split", pane_id, sandbox, horizontal=horizontal, identity=f"terminal user:{user}"
    )["pane"]


def respawn_pane(user, pane_id: str, *, sandbox: Sandbox | None = None) -> dict:
    result = pane_op(user, "respawn", pane_id, sandbox, identity=f"terminal user:{user}")
    audit.record("terminal.respawn", user=user, target=_sandbox_of(result), data={"pane": pane_id})
    return {"pane_id": result["pane"]["pane_id"], "respawned": True}


def list_panes(user, *, sandbox: Sandbox | None = None, session: str = "") -> list[dict]:
    tmux_name = ""
    if session:
        check_session_name(session, "session")
        if sandbox is None:
            raise InvalidInput.field("sandbox_id", "is required with session.")
        tmux_name = _session_row(sandbox, session, "session").tmux_name
    panes: list[dict] = []
    for host, scope in _scopes(user, sandbox):
        panes += call_host(host, "list_panes", {**scope, "tmux_name": tmux_name})["panes"]
    return panes


def list_windows(user, *, sandbox: Sandbox | None = None, session: str = "") -> list[dict]:
    windows: dict[tuple[str, str], dict] = {}
    for pane in list_panes(user, sandbox=sandbox, session=session):
        key = (pane["tmux_session"], pane["window_id"])
        win = windows.setdefault(
            key,
            {
                "session_name": pane["session"],
                "tmux_session": pane["tmux_session"],
                "sandbox_id": pane["sandbox_id"],
                "window_id": pane["window_id"],
                "window_index": pane["window_index"],
                "window_name": pane["window_name"],
                "panes": 0,
                "active": False,
            },
        )
        win["panes"] += 1
    return list(windows.values())


def kill_pane(user, pane_id: str, *, sandbox: Sandbox | None = None) -> dict:
    result = pane_op(user, "kill_pane", pane_id, sandbox)
    return {"pane_id": result["pane"]["pane_id"], "killed": True}


def kill_window(user, pane_id: str, *, sandbox: Sandbox | None = None) -> dict:
    result = pane_op(user, "kill_window", pane_id, sandbox)
    return {"window_id": result["pane"]["window_id"], "killed": True}


def select_pane(user, pane_id: str, *, sandbox: Sandbox | None = None) -> dict:
    result = pane_op(user, "select", pane_id, sandbox)
    return {"pane_id": result["pane"]["pane_id"], "switched": True}


def send_keys(
    user,
    pane_id: str,
    *,
    sandbox: Sandbox | None = None,
    text: str = "",
    keys: list[str] | None = None,
    enter: bool = False,
) -> dict:
    """Type `text` literally, then press `keys` (tmux key names: Enter, C-c, Up, ...), then
    Enter when `enter`. Audited; refused while an operator has taken the terminal over."""
    keys = list(keys or [])
    if enter:
        keys.append("Enter")
    if not text and not keys:
        raise InvalidInput.field("text", "give text to type and/or keys to press.")
    if len(text.encode()) > vsb("TERMINAL_MAX_INPUT_BYTES"):
        raise InvalidInput.field("text", f"at most {vsb('TERMINAL_MAX_INPUT_BYTES')} bytes.")
    bad = [k for k in keys if not isinstance(k, str) or not valid_key_name(k)]
    if bad:
        raise InvalidInput.field("keys", f"unknown key name(s): {', '.join(map(str, bad))}.")
    result = pane_op(user, "send", pane_id, sandbox, text=text, keys=keys)
    record_input(user, _sandbox_of(result), result["pane"]["pane_id"], text, keys, via="api")
    return {"pane_id": result["pane"]["pane_id"], "sent": True}


def read_pane(
    user, pane_id: str, *, sandbox: Sandbox | None = None, last_n_lines: int | None = None
) -> dict:
    if last_n_lines is not None and not 1 <= last_n_lines <= vsb("TERMINAL_MAX_READ_LINES"):
        raise InvalidInput.field(
            "last_n_lines", f"must be between 1 and {vsb('TERMINAL_MAX_READ_LINES')}."
        )
    result = pane_op(user, "read", pane_id, sandbox, last_n_lines=last_n_lines)
    return {
        "pane_id": result["pane"]["pane_id"],
        "content": result["content"],
        "lines": result["lines"],
        "sandbox_id": result["pane"]["sandbox_id"],
    }


def record_input(user, sandbox: Sandbox | None, pane: str, text: str, keys=(), *, via: str):
    audit.record(
        "terminal.input",
        user=user,
        target=sandbox,
        target_type="" if sandbox else "pane",
        target_id="" if sandbox else pane,
        data={"pane": pane, "text": text[:4096], "keys": list(keys), "via": via},
    )


# --- the websocket: who may watch, who may type -------------------------------------------------


def terminal_access(user, sandbox_id) -> dict | None:
    """For the websocket: None when `user` may not see this sandbox's terminals (another
    agent, anonymous); else its role: the owner controls, staff operators view and may take
    over."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    try:
        sandbox = (
            Sandbox.objects.select_related("host").filter(pk=uuid.UUID(str(sandbox_id))).first()
        )
    except ValueError:
        return None
    if sandbox is None:
        return None
    if sandbox.owner_id == user.pk:
        role = "control"
    elif user.is_staff:
        role = "view"
    else:
        return None
    row = (
        TerminalSession.objects.filter(
            sandbox=sandbox, closed_at__isnull=True, taken_over_by__isnull=False
        )
        .select_related("taken_over_by")
        .first()
    )
    return {
        "sandbox": sandbox,
        "role": role,
        "taken_over_by": row.taken_over_by.get_username() if row else None,
    }


# --- viewers keep their sandbox awake --------------------------------------------------------


def viewer_watching(sandbox: Sandbox, token: str) -> None:
    """A websocket viewer (`token`: its channel) watches the sandbox's terminal: the idle
    sweep leaves it running. Renewed every VIEWER_HOLD_SECONDS / 2 while it stays."""
    idle.hold(sandbox.pk, token, idle.VIEWER_HOLD_SECONDS)


def viewer_left(sandbox: Sandbox, token: str) -> None:
    idle.release(sandbox.pk, token)


def wake_for_viewer(sandbox: Sandbox) -> None:
    """A viewer connected to a paused or hibernated sandbox: its host's worker wakes it, so
    the screen moves and keystrokes arrive."""
    sandbox.refresh_from_db(fields=["state"])
    if sandbox.state in IDLE_STATES:
        call_host(sandbox.host, "wake", {"sandbox_id": str(sandbox.pk)}, idle.POWER_TIMEOUT_SECONDS)


def sandboxes_with_open_sessions(sandbox_ids: list[str]) -> set[str]:
    """Which of these sandboxes have an open terminal session: never hibernated, since the
    ssh in their tmux panes would not survive the restore (registered in apps.py)."""
    return {
        str(pk)
        for pk in TerminalSession.objects.filter(
            sandbox_id__in=sandbox_ids, closed_at__isnull=True
        ).values_list("sandbox_id", flat=True)
    }


def take_over(sandbox: Sandbox, user) -> int:
    """An operator takes the keyboard of every open session of the sandbox. Audited."""
    if not user.is_staff:
        raise Conflict("Only operators can take over a terminal.", code="forbidden")
    with transaction.atomic():
        count = (
            TerminalSession.objects.filter(sandbox=sandbox, closed_at__isnull=True)
            .exclude(taken_over_by=user)
            .update(taken_over_by=user, taken_over_at=timezone.now())
        )
        audit.record("terminal.takeover", user=user, target=sandbox, data={"sessions": count})
    return count


def release(sandbox: Sandbox, user) -> int:
    with transaction.atomic():
        count = TerminalSession.objects.filter(sandbox=sandbox, taken_over_by=user).update(
            taken_over_by=None, taken_over_at=None
        )
        if count:
            audit.record("terminal.release", user=user, target=sandbox, data={"sessions": count})
    return count


def reap_sessions(tmux_names: list[str]) -> list[str]:
    """Called by the host's relay with the tmux sessions it sees: the ones whose sandbox is
    gone or being destroyed are to be killed; their rows are closed."""
    by_hex = {}
    for name in tmux_names:
        parts = name.split("-", 2)
        if len(parts) == 3:
            by_hex.setdefault(parts[1], []).append(name)
    live = {
        sb.id.hex
        for sb in Sandbox.objects.filter(pk__in=[uuid.UUID(h) for h in by_hex]).exclude(
            state__in=[SandboxState.DESTROYING, SandboxState.DESTROYED, SandboxState.ERROR]
        )
    }
    doomed = [n for h, names in by_hex.items() if h not in live for n in names]
    if doomed:
        _close_rows(
            TerminalSession.objects.filter(tmux_name__in=doomed).select_related("sandbox"),
            reason="sandbox gone",
        )
    return doomed


# --- files ---------------------------------------------------------------------------------------

_AUDITED_FILE_ACTIONS = {"write", "edit", "upload", "delete", "download"}


def file_op(sandbox: Sandbox, user, action: str, **kwargs) -> dict:
    """Run a file operation in the guest over SFTP, on the sandbox host's worker."""
    _require_ready(sandbox)
    started = time.monotonic()
    result = call_host(
        sandbox.host,
        "file",
        {"sandbox_id": str(sandbox.id), "action": action, "kwargs": kwargs},
        timeout=vsb("TERMINAL_OP_TIMEOUT_SECONDS") + 60,
    )
    if action in _AUDITED_FILE_ACTIONS:
        data = {k: v for k, v in kwargs.items() if k in ("path", "mode", "recursive", "all")}
        data["resolved"] = result.get("resolved")
        if action == "edit":
            data["replacements"] = result.get("replacements")
        if action in ("write", "upload"):
            data["bytes"] = result.get("bytes_written")
        if action == "download":
            data["bytes"] = result.get("size")
        data["ms"] = int((time.monotonic() - started) * 1000)
        audit.record(f"file.{action}", user=user, target=sandbox, data=data)
    return result


def upload(sandbox: Sandbox, user, path: str, data: bytes, **kwargs) -> dict:
    _require_ready(sandbox)
    if len(data) > vsb("FILE_MAX_TRANSFER_BYTES"):
        raise TooLarge(
            f"upload is {len(data)} bytes; the limit is {vsb('FILE_MAX_TRANSFER_BYTES')}."
        )
    key = blobs.put(data)
    try:
        return file_op(sandbox, user, "upload", path=path, blob=key, **kwargs)
    finally:
        blobs.take(key)  # gone already when the worker got it; this frees it otherwise


def download(sandbox: Sandbox, user, path: str) -> tuple[bytes, dict]:
    meta = file_op(sandbox, user, "download", path=path)
    data = blobs.take(meta.pop("blob"))
    if data is None:
        raise ServiceError("The downloaded data expired before it could be sent.", code="gone")
    return data, meta
