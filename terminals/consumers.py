"""`/ws/sandboxes/<id>/terminal/`: a live terminal of a sandbox in the browser (or an agent).

The owner (API key or session) controls it; a staff operator watches read-only until they
send `{"type": "takeover"}` (audited). Anyone else is closed with 4403.

Protocol (JSON text frames):
  client -> server  {"type": "input", "data": "ls\\r"}      keystrokes (controller only)
                    {"type": "resize", "cols": 120, "rows": 40}
                    {"type": "select", "pane": "%3"}        watch another pane
                    {"type": "snapshot"}                     send the current screen again
  (query: ?session=<name> (default main), ?pane=%N; a bad one is an error naming the field,
   then close 4400; a bad `select` pane is an error naming `pane`)
                    {"type": "takeover"} / {"type": "release"}
                    {"type": "respawn"}                      reconnect a pane whose ssh ended
  server -> client  {"type": "hello", "role", "sandbox", "taken_over_by"}
                    {"type": "screen", "pane", "seq", "data", "cursor", "cols", "rows"}
                    {"type": "output", "pane", "seq", "data"}   live, seq > the screen's
                    {"type": "control", "taken_over_by"}
                    {"type": "error", "code", "message"[, "fields"]}

The consumer never talks to tmux: output arrives through the group `sandbox.<hex>.term`,
which the relay on the sandbox's host fills; input and screen requests go to that relay's
channel. A (re)connect gets the current screen first, then only newer output (by `seq`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from urllib.parse import unquote

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from core.conf import vsb
from core.errors import ServiceError
from sandboxes import idle

from . import services
from .relay import relay_channel, term_group
from .tmux_driver import SESSION_NAME_RULE, valid_pane_id, valid_session_name

log = logging.getLogger(__name__)

CLOSE_INVALID = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_READY = 4409
PANE_RULE = "a pane id like %3"
SCREEN_TIMEOUT_SECONDS = 10
AUDIT_FLUSH_SECONDS = 2.0
AUDIT_FLUSH_BYTES = 1024


class TerminalConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.sandbox_id = self.scope["url_route"]["kwargs"]["sandbox_id"]
        self.pane: str | None = None
        self.screen: dict | None = None
        self.pending: list[dict] = []
        self.typed = ""
        self.typed_at = 0.0
        self.audit_task: asyncio.Task | None = None
        self.screen_task: asyncio.Task | None = None
        self.group = None
        self.hold_task: asyncio.Task | None = None
        access = await database_sync_to_async(services.terminal_access)(self.user, self.sandbox_id)
        # Accept, then close with a code: a refused handshake would only say "403" and the
        # client could not tell "not yours" from any other failure.
        await self.accept()
        if access is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.sandbox = access["sandbox"]
        self.role = access["role"]
        self.taken_over_by = access["taken_over_by"]
        self.hex = self.sandbox.id.hex
        self.group = term_group(self.hex)
        self.relay = relay_channel(self.sandbox.host.name)
        await self.channel_layer.group_add(self.group, self.channel_name)
        # While it watches, the sandbox is not paused (sandboxes/idle.py).
        self.hold_task = asyncio.create_task(self._hold_while_watching())
        await self._send(
            {
                "type": "hello",
                "role": self.role,
                "sandbox": str(self.sandbox.id),
                "user": self.user.get_username(),
                "taken_over_by": self.taken_over_by,
            }
        )
        query = dict(
            part.split("=", 1)
            for part in self.scope.get("query_string", b"").decode(errors="replace").split("&")
            if "=" in part
        )
        self.pane = query.get("pane", "").replace("%25", "%") or None
        session = unquote(query.get("session", "")) or "main"
        for field, bad, rule in (
            ("session", not valid_session_name(session), SESSION_NAME_RULE),
            ("pane", self.pane is not None and not valid_pane_id(self.pane), PANE_RULE),
        ):
            if bad:
                await self._invalid(field, rule)
                await self.close(code=CLOSE_INVALID)
                return
        self.screen_task = asyncio.create_task(self._start(session))

    async def _invalid(self, field: str, rule: str) -> None:
        await self._send(
            {
                "type": "error",
                "code": "invalid",
                "message": f"{field}: {rule}.",
                "fields": {field: [f"{rule}."]},
            }
        )

    async def _hold_while_watching(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await database_sync_to_async(services.viewer_watching)(
                    self.sandbox, self.channel_name
                )
            await asyncio.sleep(idle.VIEWER_HOLD_SECONDS / 2)

    async def _start(self, session: str) -> None:
        try:
            await database_sync_to_async(services.wake_for_viewer)(self.sandbox)
            await database_sync_to_async(services.ensure_session)(self.sandbox, self.user, session)
        except ServiceError as exc:
            await self._send({"type": "error", "code": exc.code, "message": exc.message})
            if exc.code == "invalid_state":
                await self.close(code=CLOSE_NOT_READY)
            return
        await self._request_screen()

    async def _request_screen(self) -> None:
        self.screen = None
        self.pending = []
        await self.channel_layer.send(
            self.relay,
            {
                "type": "term.snapshot",
                "sandbox": self.hex,
                "pane": self.pane,
                "reply_to": self.channel_name,
            },
        )
        await asyncio.sleep(SCREEN_TIMEOUT_SECONDS)
        if self.screen is None:
            await self._send(
                {
                    "type": "error",
                    "code": "relay_unavailable",
                    "message": f"The terminal relay of host {self.sandbox.host.name} did not answer.",
                }
            )

    def _schedule_screen(self) -> None:
        if self.screen_task is not None and not self.screen_task.done():
            self.screen_task.cancel()
        self.screen_task = asyncio.create_task(self._request_screen())

    async def disconnect(self, code) -> None:
        if self.group is None:
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        for task in (self.screen_task, self.audit_task, self.hold_task):
            if task is not None and not task.done():
                task.cancel()
        with contextlib.suppress(Exception):
            await database_sync_to_async(services.viewer_left)(self.sandbox, self.channel_name)
        await self._flush_audit()
        if self.role == "control" and self.user.is_staff and self.sandbox.owner_id != self.user.pk:
            await self._release()

    # -- from the client ---------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.group is None:
            return
        try:
            message = json.loads(text_data or (bytes_data or b"").decode())
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await self._send(
                {"type": "error", "code": "invalid", "message": "expected JSON with a type"}
            )
            return
        if kind == "input":
            await self._input(str(message.get("data", "")))
        elif kind == "resize":
            if self._may_type():
                with contextlib.suppress(TypeError, ValueError):
                    await self.channel_layer.send(
                        self.relay,
                        {
                            "type": "term.resize",
                            "sandbox": self.hex,
                            "pane": self.pane,
                            "cols": int(message["cols"]),
                            "rows": int(message["rows"]),
                        },
                    )
        elif kind == "select":
            pane = message.get("pane") or None
            if pane is not None and not valid_pane_id(pane):
                await self._invalid("pane", PANE_RULE)
                return
            self.pane = pane
            self._schedule_screen()
        elif kind == "snapshot":
            self._schedule_screen()
        elif kind == "takeover":
            await self._takeover()
        elif kind == "release":
            await self._release()
        elif kind == "respawn":
            await self._respawn()
        else:
            await self._send(
                {"type": "error", "code": "invalid", "message": f"unknown type {kind!r}"}
            )

    def _may_type(self) -> bool:
        if self.role != "control":
            return False
        taken = self.taken_over_by
        return taken is None or taken == self.user.get_username()

    async def _input(self, data: str) -> None:
        if not data:
            return
        limit = vsb("TERMINAL_MAX_INPUT_BYTES")
        if len(data.encode("utf-8", "surrogatepass")) > limit:
            await self._send(
                {
                    "type": "error",
                    "code": "too_large",
                    "message": f"data: at most {limit} bytes per message.",
                    "fields": {"data": [f"at most {limit} bytes per message."]},
                }
            )
            return
        if not self._may_type():
            code = "read_only" if self.role != "control" else "taken_over"
            message = (
                'You are watching read-only; send {"type": "takeover"} to type.'
                if code == "read_only"
                else f"{self.taken_over_by} has taken over this terminal."
            )
            await self._send({"type": "error", "code": code, "message": message})
            return
        if self.screen is None:
            await self._send({"type": "error", "code": "not_ready", "message": "no screen yet"})
            return
        await self.channel_layer.send(
            self.relay,
            {
                "type": "term.input",
                "sandbox": self.hex,
                "pane": self.screen["pane"],
                "data": data,
                "ts": time.time(),
            },
        )
        self._audit_typed(data)

    def _audit_typed(self, data: str) -> None:
        """Keystrokes are audited in batches: a line (Enter), 1 KiB, or 2 s of typing."""
        if not self.typed:
            self.typed_at = time.monotonic()
        self.typed += data
        if "\r" in data or "\n" in data or len(self.typed) >= AUDIT_FLUSH_BYTES:
            asyncio.create_task(self._flush_audit())
        elif self.audit_task is None or self.audit_task.done():
            self.audit_task = asyncio.create_task(self._flush_audit_later())

    async def _flush_audit_later(self) -> None:
        await asyncio.sleep(AUDIT_FLUSH_SECONDS)
        await self._flush_audit()

    async def _flush_audit(self) -> None:
        if not self.typed:
            return
        text, self.typed = self.typed, ""
        pane = self.screen["pane"] if self.screen else (self.pane or "")
        await database_sync_to_async(services.record_input)(
            self.user, self.sandbox, pane, text, via="websocket"
        )

    async def _takeover(self) -> None:
        if not self.user.is_staff:
            await self._send({"type": "error", "code": "forbidden", "message": "operators only"})
            return
        await database_sync_to_async(services.take_over)(self.sandbox, self.user)
        self.role = "control"
        await self.channel_layer.group_send(
            self.group, {"type": "term.control", "taken_over_by": self.user.get_username()}
        )

    async def _release(self) -> None:
        released = await database_sync_to_async(services.release)(self.sandbox, self.user)
        if self.sandbox.owner_id != self.user.pk:
            self.role = "view"
        if released:
            await self.channel_layer.group_send(
                self.group, {"type": "term.control", "taken_over_by": None}
            )

    async def _respawn(self) -> None:
        if not self._may_type() or self.screen is None:
            await self._send({"type": "error", "code": "read_only", "message": "cannot respawn"})
            return
        try:
            await database_sync_to_async(services.respawn_pane)(
                self.sandbox.owner, self.screen["pane"], sandbox=self.sandbox
            )
        except ServiceError as exc:
            await self._send({"type": "error", "code": exc.code, "message": exc.message})
            return
        self._schedule_screen()

    # -- from the relay and the group ---------------------------------------------------------

    async def term_screen(self, event: dict) -> None:
        if self.pane is not None and event["pane"] != self.pane:
            return  # an answer to an earlier pane selection
        self.screen = event
        self.pane = event["pane"]
        await self._send({**event, "type": "screen"})
        for pending in self.pending:
            await self.term_output(pending)
        self.pending = []

    async def term_error(self, event: dict) -> None:
        await self._send({"type": "error", "code": event["code"], "message": event["message"]})

    async def term_output(self, event: dict) -> None:
        if self.screen is None:
            self.pending.append(event)
            return
        if event["pane"] != self.screen["pane"]:
            return
        if event["epoch"] != self.screen["epoch"]:
            self._schedule_screen()  # the relay restarted: its numbering started over
            return
        if event["seq"] <= self.screen["seq"]:
            return  # already part of the screen we sent
        self.screen["seq"] = event["seq"]
        await self._send(
            {"type": "output", "pane": event["pane"], "seq": event["seq"], "data": event["data"]}
        )

    async def term_control(self, event: dict) -> None:
        self.taken_over_by = event["taken_over_by"]
        await self._send({"type": "control", "taken_over_by": self.taken_over_by})

    async def _send(self, payload: dict) -> None:
        await self.send(text_data=json.dumps(payload, default=str))
