"""The terminal relay: one per KVM host, running inside that host's Celery worker process
(a thread with its own asyncio loop, started when the worker is ready).

It keeps one tmux control-mode client per terminal session on the host and

* pumps pane output into the channel-layer group `sandbox.<hex>.term`, batched (one message
  per pane per `TERMINAL_FLUSH_MS`, or per 64 KiB), each batch numbered with a per-pane
  `seq` and the relay's `epoch` (a relay restart starts a new epoch, viewers re-sync);
* consumes the host's channel `terminals.host.<host>`: keystrokes, resizes and screen
  requests from the web servers' websocket consumers.

A screen request is answered through the session's own control client, so the capture is
ordered with the output stream: it contains exactly the batches up to the `seq` it reports.
The web server never talks to tmux; the browser only ever talks to the web server.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import secrets
import threading
import time

from channels.layers import get_channel_layer
from django.db import close_old_connections

from .tmux_driver import (
    ControlClient,
    InvalidTmuxArgument,
    TmuxDriver,
    TmuxError,
    capture_command,
    cursor_command,
    input_commands,
    new_capture_buffer,
    resize_command,
    sandbox_hex_of,
    valid_pane_id,
)

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 64 * 1024
SCAN_SECONDS = 1.0
REAP_EVERY_SCANS = 10
# Keystrokes older than this (queued while the relay was down) are dropped, not typed.
STALE_INPUT_SECONDS = 10.0


def relay_channel(host_name: str) -> str:
    return f"terminals.host.{host_name}"


def term_group(sandbox_hex: str) -> str:
    return f"sandbox.{sandbox_hex}.term"


class Relay:
    def __init__(
        self,
        host_name: str,
        driver: TmuxDriver,
        *,
        flush_ms: int = 15,
        layer=None,
        reaper=None,
    ) -> None:
        self.host_name = host_name
        self.channel = relay_channel(host_name)
        self.driver = driver
        self.flush_seconds = flush_ms / 1000
        self.layer = layer or get_channel_layer()
        self.reaper = reaper  # callable(list of tmux session names) -> names to kill
        self.epoch = secrets.token_hex(4)
        self.clients: dict[str, ControlClient] = {}
        self.pane_session: dict[str, str] = {}
        self.buffers: dict[str, bytearray] = {}
        self.seq: dict[str, int] = {}
        self.decoders: dict[str, codecs.IncrementalDecoder] = {}
        self.out_count: dict[str, int] = {}
        self.outbox: asyncio.Queue | None = None
        self.wake_flush: asyncio.Event | None = None
        self.wake_scan: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._attach_lock: asyncio.Lock | None = None

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox = asyncio.Queue()
        self.wake_flush = asyncio.Event()
        self.wake_scan = asyncio.Event()
        self._stopping = asyncio.Event()
        self._attach_lock = asyncio.Lock()
        tasks = [
            asyncio.create_task(self._scan_loop(), name="relay-scan"),
            asyncio.create_task(self._flush_loop(), name="relay-flush"),
            asyncio.create_task(self._send_loop(), name="relay-send"),
            asyncio.create_task(self._receive_loop(), name="relay-receive"),
        ]
        log.info("terminal relay for host %s on channel %s", self.host_name, self.channel)
        try:
            await self._stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for client in list(self.clients.values()):
                await client.close()
            self.clients.clear()

    def stop(self) -> None:
        if self.loop is not None and self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)

    def poke(self) -> None:
        if self.loop is not None and self.wake_scan is not None:
            self.loop.call_soon_threadsafe(self.wake_scan.set)

    # -- sessions ------------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        scans = 0
        while True:
            try:
                await self.scan(reap=scans % REAP_EVERY_SCANS == 0)
            except Exception:  # noqa: BLE001 - the loop must survive a bad scan
                log.exception("terminal relay scan failed")
            scans += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake_scan.wait(), SCAN_SECONDS)
            self.wake_scan.clear()

    async def scan(self, reap: bool = False) -> None:
        panes = await asyncio.to_thread(self.driver.list_panes)
        sessions = sorted({p.session_name for p in panes if sandbox_hex_of(p.session_name)})
        for pane in panes:
            self.pane_session[pane.pane_id] = pane.session_name
        for name in sessions:
            await self.attach(name)
        for name, client in list(self.clients.items()):
            if client.closed.is_set() or name not in sessions:
                await client.close()
                self.clients.pop(name, None)
        if reap and self.reaper is not None and sessions:
            doomed = await asyncio.to_thread(_call_db, self.reaper, sessions)
            for name in doomed:
                with contextlib.suppress(TmuxError):
                    await asyncio.to_thread(self.driver.kill_session, name)

    async def attach(self, session: str) -> ControlClient:
        async with self._attach_lock:
            client = self.clients.get(session)
            if client is not None and not client.closed.is_set():
                return client
            client = ControlClient(
                self.driver.socket_args,
                session,
                lambda pane, data, s=session: self._on_output(s, pane, data),
                tmux_bin=self.driver.tmux_bin,
            )
            await client.start()
            self.clients[session] = client
            return client

    async def _client_for_pane(
        self, sandbox_hex: str, pane: str | None
    ) -> tuple[ControlClient, str]:
        """The control client and pane for a request; `pane` None means the sandbox's
        default: the active pane of session `main`, else of its first session."""
        if pane is not None and not valid_pane_id(pane):
            raise LookupError(f"invalid pane id {pane!r}")
        if pane is None or self.pane_session.get(pane) is None:
            await self.scan()
        if pane is None:
            panes = await asyncio.to_thread(self.driver.list_panes)
            mine = [p for p in panes if sandbox_hex_of(p.session_name) == sandbox_hex]
            if not mine:
                raise LookupError("this sandbox has no terminal session")
            main = [p for p in mine if p.session_name.endswith("-main")] or mine
            active = [p for p in main if p.active] or main
            pane = active[0].pane_id
        session = self.pane_session.get(pane)
        if session is None or sandbox_hex_of(session) != sandbox_hex:
            raise LookupError(f"no pane {pane} in this sandbox")
        return await self.attach(session), pane

    # -- output --------------------------------------------------------------------------

    def _on_output(self, session: str, pane: str, data: bytes) -> None:
        self.pane_session.setdefault(pane, session)
        buf = self.buffers.get(pane)
        if buf is None:
            buf = self.buffers[pane] = bytearray()
        buf += data
        self.out_count[pane] = self.out_count.get(pane, 0) + 1
        if len(buf) >= MAX_BATCH_BYTES:
            self._cut(pane)
        else:
            self.wake_flush.set()

    def _cut(self, pane: str) -> int:
        """Turn the pane's buffered bytes into the next numbered batch; returns the pane's
        latest seq (unchanged when nothing was buffered)."""
        buf = self.buffers.get(pane)
        if buf:
            decoder = self.decoders.get(pane)
            if decoder is None:
                decoder = self.decoders[pane] = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(bytes(buf))
            buf.clear()
            seq = self.seq[pane] = self.seq.get(pane, 0) + 1
            session = self.pane_session.get(pane, "")
            sandbox_hex = sandbox_hex_of(session)
            if sandbox_hex:
                self.outbox.put_nowait(
                    (
                        term_group(sandbox_hex),
                        {
                            "type": "term.output",
                            "sandbox": sandbox_hex,
                            "pane": pane,
                            "seq": seq,
                            "epoch": self.epoch,
                            "data": text,
                        },
                    )
                )
        return self.seq.get(pane, 0)

    async def _flush_loop(self) -> None:
        while True:
            await self.wake_flush.wait()
            # Batch: whatever else arrives in the next few ms goes into the same message.
            await asyncio.sleep(self.flush_seconds)
            self.wake_flush.clear()
            for pane in list(self.buffers):
                self._cut(pane)

    async def _send_loop(self) -> None:
        while True:
            group, message = await self.outbox.get()
            try:
                await self.layer.group_send(group, message)
            except Exception:  # noqa: BLE001 - Redis hiccup: drop this batch, keep going
                log.exception("could not publish terminal output to %s", group)

    # -- requests from the web servers -----------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("terminal relay could not receive; retrying")
                await asyncio.sleep(1)
                continue
            kind = message.get("type")
            try:
                if kind == "term.input":
                    await self._input(message)
                elif kind == "term.resize":
                    await self._resize(message)
                elif kind == "term.snapshot":
                    asyncio.create_task(self._snapshot(message))
                else:
                    log.warning("terminal relay: unknown message type %r", kind)
            except Exception:  # noqa: BLE001
                log.exception("terminal relay failed to handle %s", kind)

    async def _input(self, message: dict) -> None:
        if time.time() - float(message.get("ts", 0)) > STALE_INPUT_SECONDS:
            return
        data = message.get("data", "")
        if not data:
            return
        client, pane = await self._client_for_pane(message["sandbox"], message.get("pane"))
        for line in input_commands(pane, data.encode("utf-8")):
            client.send_line(line)

    async def _resize(self, message: dict) -> None:
        client, pane = await self._client_for_pane(message["sandbox"], message.get("pane"))
        with contextlib.suppress(InvalidTmuxArgument, TypeError, ValueError):
            client.send_line(resize_command(pane, int(message["cols"]), int(message["rows"])))

    async def _snapshot(self, message: dict) -> None:
        reply_to = message["reply_to"]
        pane = message.get("pane") or None
        if pane is not None and not valid_pane_id(pane):
            pane = None
        try:
            client, pane = await self._client_for_pane(message["sandbox"], pane)
            screen = await self.capture(client, pane)
        except (LookupError, TmuxError, TimeoutError) as exc:
            await self.layer.send(
                reply_to, {"type": "term.error", "code": "no_terminal", "message": str(exc)}
            )
            return
        await self.layer.send(
            reply_to, {"type": "term.screen", "sandbox": message["sandbox"], **screen}
        )

    async def capture(self, client: ControlClient, pane: str) -> dict:
        """The pane's screen with colours, cursor and size, and the seq it is current to.
        The screen goes into a paste buffer, read outside the control client: its reply
        block then holds nothing the guest printed (see tmux_driver)."""
        for _ in range(5):
            marks: dict[str, int] = {}

            def mark(name: str, marks: dict = marks) -> None:
                marks[name] = self.out_count.get(pane, 0)
                if name == "screen":
                    marks["seq"] = self._cut(pane)

            info = await client.command(cursor_command(pane), on_begin=lambda: mark("info"))
            buffer = new_capture_buffer()
            await client.command(capture_command(pane, buffer), on_begin=lambda: mark("screen"))
            screen = await asyncio.to_thread(self.driver.take_buffer, buffer)
            if marks["info"] == marks["screen"]:
                break  # no output in between: cursor and screen belong together
        numbers = info[0].decode(errors="replace").split() if info else []
        if len(numbers) != 6 or not all(n.isdigit() for n in numbers):
            raise TmuxError(f"unexpected cursor reply {info[:1]!r}")
        x, y, w, h, dead, cursor_on = numbers
        lines = screen.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return {
            "pane": pane,
            "seq": marks["seq"],
            "epoch": self.epoch,
            "data": "\r\n".join(line.decode("utf-8", "replace") for line in lines),
            "cursor": [int(x), int(y)],
            "cols": int(w),
            "rows": int(h),
            "dead": dead == "1",
            "cursor_visible": cursor_on != "0",
        }


def _call_db(fn, *args):
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


# -- the relay of this process ---------------------------------------------------------------

_current: Relay | None = None
_thread: threading.Thread | None = None


def start(host_name: str, driver: TmuxDriver, *, flush_ms: int, reaper=None) -> Relay:
    """Run a relay in a daemon thread of this process (the host's worker)."""
    global _current, _thread
    relay = Relay(host_name, driver, flush_ms=flush_ms, reaper=reaper)

    def main() -> None:
        try:
            asyncio.run(relay.run())
        except Exception:  # noqa: BLE001
            log.exception("terminal relay stopped")

    _current = relay
    _thread = threading.Thread(target=main, name="vsb-terminal-relay", daemon=True)
    _thread.start()
    return relay


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        if _thread is not None:
            _thread.join(timeout=5)
        _current = None


def poke() -> None:
    if _current is not None:
        _current.poke()
