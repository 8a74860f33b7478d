"""What the KVM host's worker does for terminals and files: it is the only process that can
reach the guests (127.0.0.1 port forwards) and the host's tmux server.

`run(op, params)` is called by the `terminals.host_op` task and returns a JSON-safe dict, or
raises a `core.errors.ServiceError` kind (the task sends its status and code to the web
side). Authorisation happened on the web side; `params["allowed"]` still limits every pane
lookup to the caller's sandboxes, so a pane id of someone else's sandbox is "not found" here
too."""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache

from core.conf import vsb
from core.errors import Conflict, InvalidInput, NotFound, OperationFailed, ServiceError
from sandboxes import idle, provisioning
from sandboxes.models import Sandbox
from sandboxes.remote.errors import RemoteError
from sandboxes.runtime import get_ca

from . import blobs
from .files import GuestFiles, PathPolicy
from .models import TerminalSession
from .tmux_driver import (
    SESSION_TARGET_RE,
    PaneInfo,
    SSHLaunch,
    TmuxDriver,
    TmuxNotFound,
    check_new_pane_names,
    sandbox_hex_of,
    valid_key_name,
    valid_pane_id,
    write_credentials,
)

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _driver(socket: str) -> TmuxDriver:
    return TmuxDriver(socket, history_limit=vsb("TERMINAL_HISTORY_LINES"))


def driver() -> TmuxDriver:
    return _driver(vsb("TMUX_SOCKET"))


def _sandbox(sandbox_id: str) -> Sandbox:
    sandbox = Sandbox.objects.select_related("host").filter(pk=sandbox_id).first()
    if sandbox is None:
        raise NotFound("Not found.")
    return sandbox


def ssh_launch(sandbox: Sandbox, identity: str) -> SSHLaunch:
    """A fresh key and certificate for one pane's ssh, valid for minutes: ssh only needs it
    while it logs in; a respawned pane gets a new one."""
    sandbox = idle.ensure_awake(sandbox)  # a paused or hibernated one is woken first
    credential = get_ca().issue(
        [sandbox.principal], ttl_seconds=vsb("CERT_TTL_SECONDS"), identity=identity[:200]
    )
    return write_credentials(
        f"{vsb('TERMINAL_DIR').rstrip('/')}/{sandbox.id.hex}",
        private_key=credential.private_key,
        certificate=credential.certificate,
        host=sandbox.ssh_host or sandbox.ip_address,
        port=sandbox.ssh_port or 22,
        username=sandbox.ssh_username,
        host_key=sandbox.host_key,
    )


def _pane_dict(info: PaneInfo) -> dict:
    data = info.as_dict()
    data["sandbox_id"] = TerminalSession.sandbox_hex_of(info.session_name)
    parts = info.session_name.split("-", 2)
    data["session"] = parts[2] if len(parts) == 3 else info.session_name
    data["tmux_session"] = info.session_name
    return data


def _find_pane(target: str, allowed: list[str]) -> PaneInfo:
    """A pane by `%N` or `<tmux session>:<window>.<pane>`, only among `allowed` sandboxes."""
    if not isinstance(target, str) or not (
        valid_pane_id(target) or SESSION_TARGET_RE.fullmatch(target)
    ):
        raise InvalidInput(f"invalid pane {target!r}", field="pane_id")
    panes = [
        p
        for p in driver().list_panes()
        if TerminalSession.sandbox_hex_of(p.session_name) in allowed
    ]
    if valid_pane_id(target):
        found = [p for p in panes if p.pane_id == target]
    else:
        session, _, rest = target.partition(":")
        window, _, pane = rest.partition(".")
        found = [
            p
            for p in panes
            if p.session_name == session
            and (window == "" or str(p.window_index) == window)
            and (pane == "" and p.active or str(p.pane_index) == pane)
        ]
    if not found:
        raise NotFound(f"No pane {target} in your sandboxes.", field="pane_id")
    return found[0]


def _wake_pane_sandbox(info: PaneInfo, p: dict) -> None:
    """The pane's ssh talks to its guest: a paused or hibernated sandbox is woken first (and
    marked used), so what is typed arrives and what is read moves on."""
    sandbox_id = (p.get("allowed_ids") or {}).get(TerminalSession.sandbox_hex_of(info.session_name))
    if sandbox_id:
        sandbox = _sandbox(sandbox_id)
        if sandbox.state in idle.WAKEABLE:
            idle.ensure_awake(sandbox)


def _blocked(info: PaneInfo, blocked: list[str]) -> None:
    if info.session_name in blocked:
        raise Conflict(
            "An operator has taken over this terminal; input is refused until they release it.",
            code="taken_over",
        )


# --- operations ---------------------------------------------------------------------------


def _checked_names(p: dict) -> str | None:
    """The session must be one of this sandbox's (`vsb-<its hex>-<valid name>`) and the window
    name valid, before a certificate is issued or tmux is called; returns the window name
    (None: not given)."""
    if sandbox_hex_of(p.get("tmux_name")) != uuid.UUID(str(p["sandbox_id"])).hex:
        raise InvalidInput(f"invalid session {p.get('tmux_name')!r}", field="name")
    window_name = p.get("window_name") or None  # "" from the web side: not given
    check_new_pane_names(p["tmux_name"], window_name)
    return window_name


def op_create_session(p: dict) -> dict:
    window_name = _checked_names(p)
    sandbox = _sandbox(p["sandbox_id"])
    launch = ssh_launch(sandbox, p.get("identity", ""))
    cols, rows = (
        p.get("cols") or vsb("TERMINAL_DEFAULT_SIZE")[0],
        p.get("rows") or vsb("TERMINAL_DEFAULT_SIZE")[1],
    )
    info = driver().new_session(
        p["tmux_name"], launch.command(), cols=cols, rows=rows, window_name=window_name
    )
    _poke_relay()
    return {"pane": _pane_dict(info)}


def op_new_window(p: dict) -> dict:
    window_name = _checked_names(p)
    sandbox = _sandbox(p["sandbox_id"])
    launch = ssh_launch(sandbox, p.get("identity", ""))
    info = driver().new_window(p["tmux_name"], launch.command(), window_name=window_name)
    return {"pane": _pane_dict(info)}


def op_split(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    sandbox = _sandbox(p["allowed_ids"][TerminalSession.sandbox_hex_of(target.session_name)])
    launch = ssh_launch(sandbox, p.get("identity", ""))
    info = driver().split(target.pane_id, launch.command(), horizontal=p.get("horizontal", False))
    return {"pane": _pane_dict(info)}


def op_respawn(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    _blocked(target, p.get("blocked", []))
    sandbox = _sandbox(p["allowed_ids"][TerminalSession.sandbox_hex_of(target.session_name)])
    launch = ssh_launch(sandbox, p.get("identity", ""))
    return {"pane": _pane_dict(driver().respawn(target.pane_id, launch.command()))}


def op_list_panes(p: dict) -> dict:
    allowed = p["allowed"]
    session = p.get("tmux_name")
    panes = [
        _pane_dict(info)
        for info in driver().list_panes()
        if TerminalSession.sandbox_hex_of(info.session_name) in allowed
        and (not session or info.session_name == session)
    ]
    return {"panes": panes}


def op_list_sessions(p: dict) -> dict:
    allowed = p["allowed"]
    return {
        "sessions": [
            s
            for s in driver().list_sessions()
            if TerminalSession.sandbox_hex_of(s["name"]) in allowed
        ]
    }


def op_kill_session(p: dict) -> dict:
    try:
        driver().kill_session(p["tmux_name"])
    except TmuxNotFound:
        return {"killed": False}
    return {"killed": True}


def op_kill_window(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    driver().kill_window(target.window_id)
    return {"pane": _pane_dict(target), "killed": True}


def op_kill_pane(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    driver().kill_pane(target.pane_id)
    return {"pane": _pane_dict(target), "killed": True}


def op_select(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    driver().select_pane(target.pane_id)
    return {"pane": _pane_dict(target), "switched": True}


def op_send(p: dict) -> dict:
    bad = [k for k in p.get("keys") or [] if not valid_key_name(k)]
    if bad:  # before any text is typed
        raise InvalidInput(f"unknown key name(s): {bad!r}", field="keys")
    target = _find_pane(p["pane_id"], p["allowed"])
    _blocked(target, p.get("blocked", []))
    _wake_pane_sandbox(target, p)
    tmux = driver()
    if p.get("text"):
        tmux.send_text(target.pane_id, p["text"].encode("utf-8"))
    if p.get("keys"):
        tmux.send_keys(target.pane_id, p["keys"])
    return {"pane": _pane_dict(target), "sent": True}


def op_read(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    _wake_pane_sandbox(target, p)
    last = p.get("last_n_lines")
    content = driver().capture(target.pane_id, last_n_lines=last, escapes=p.get("escapes", False))
    return {
        "pane": _pane_dict(target),
        "content": content,
        "lines": content.count("\n") + 1 if content else 0,
    }


def op_resize(p: dict) -> dict:
    target = _find_pane(p["pane_id"], p["allowed"])
    driver().resize_window(target.pane_id, p["cols"], p["rows"])
    return {"pane": _pane_dict(driver().pane(target.pane_id))}


def op_file(p: dict) -> dict:
    sandbox = _sandbox(p["sandbox_id"])
    token = f"file-{uuid.uuid4().hex}"
    # Held while it runs (an upload may outlast the idle time), woken before it starts.
    idle.hold(sandbox.pk, token, idle.WORK_HOLD_SECONDS)
    try:
        return _file_op(idle.ensure_awake(sandbox), p)
    finally:
        idle.release(sandbox.pk, token)


def op_wake(p: dict) -> dict:
    """A terminal viewer connected: its sandbox runs while it watches."""
    sandbox = idle.ensure_awake(_sandbox(p["sandbox_id"]))
    return {"state": sandbox.state}


def _file_op(sandbox: Sandbox, p: dict) -> dict:
    policy = PathPolicy.from_lists(vsb("FILE_ALLOW"), vsb("FILE_DENY"))
    action, kw = p["action"], dict(p.get("kwargs") or {})
    for attempt in (1, 2):
        try:
            client = provisioning.pooled_client(sandbox)
            sftp = client.open_sftp()
            break
        except (RemoteError, OSError, EOFError) as exc:
            provisioning.get_ssh_pool().discard(str(sandbox.id))
            if attempt == 2:
                raise OperationFailed(
                    f"SFTP to the sandbox failed: {exc}", code="ssh_failed"
                ) from None
    try:
        files = GuestFiles(
            sftp,
            policy,
            max_read=vsb("FILE_MAX_READ_BYTES"),
            max_write=vsb("FILE_MAX_WRITE_BYTES"),
            max_transfer=vsb("FILE_MAX_TRANSFER_BYTES"),
            max_entries=vsb("FILE_MAX_LIST_ENTRIES"),
        )
        if action == "upload":
            data = blobs.take(kw.pop("blob"))
            if data is None:
                raise ServiceError(
                    "The uploaded data expired before the worker got it.", code="gone"
                )
            return files.upload(kw.pop("path"), data, **kw)
        if action == "download":
            data, meta = files.download(kw["path"])
            meta["blob"] = blobs.put(data)
            return meta
        method = {
            "read": files.read_text,
            "write": files.write_text,
            "edit": files.edit,
            "list": files.list,
            "stat": files.stat,
            "delete": files.delete,
        }[action]
        return method(kw.pop("path"), **kw)
    finally:
        sftp.close()


OPS = {
    "create_session": op_create_session,
    "new_window": op_new_window,
    "split": op_split,
    "respawn": op_respawn,
    "list_panes": op_list_panes,
    "list_sessions": op_list_sessions,
    "kill_session": op_kill_session,
    "kill_window": op_kill_window,
    "kill_pane": op_kill_pane,
    "select": op_select,
    "send": op_send,
    "read": op_read,
    "resize": op_resize,
    "file": op_file,
    "wake": op_wake,
}


def run(op: str, params: dict) -> dict:
    handler = OPS.get(op)
    if handler is None:
        raise InvalidInput(f"unknown terminal operation {op!r}")
    try:
        return handler(params)
    except RemoteError as exc:
        raise OperationFailed(str(exc), code="ssh_failed") from None


def _poke_relay() -> None:
    """The relay of this worker process (if it runs here) attaches to new sessions at once
    instead of at its next scan."""
    from . import relay

    relay.poke()
