"""The relay against a real tmux server and an in-memory channel layer: output is pumped
into the sandbox's group in numbered batches, screens are consistent with that numbering,
and keystrokes from the host's channel reach the pane."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

from channels.layers import InMemoryChannelLayer

from terminals.relay import Relay, relay_channel, term_group

HEX = uuid.uuid4().hex
SESSION = f"vsb-{HEX}-main"


async def _collect(layer, channel, until, timeout=20.0) -> list[dict]:
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = await asyncio.wait_for(layer.receive(channel), 0.5)
        except TimeoutError:
            continue
        events.append(event)
        if until(events):
            return events
    raise AssertionError(f"not done after {timeout} s: {events[-3:]}")


def _run(tmux, body):
    async def main():
        layer = InMemoryChannelLayer(capacity=10000, expiry=60)
        relay = Relay("unit", tmux, flush_ms=10, layer=layer)
        task = asyncio.create_task(relay.run())
        try:
            viewer = await layer.new_channel()
            await layer.group_add(term_group(HEX), viewer)
            await asyncio.sleep(0.05)
            await relay.scan()
            return await body(layer, relay, viewer)
        finally:
            relay.stop()
            await asyncio.wait_for(task, 10)

    return asyncio.run(main())


def test_it_streams_200k_lines_complete_and_in_order(tmux):
    pane = tmux.new_session(SESSION, "sh -c 'read go; seq 1 200000; sleep 600'", cols=80, rows=24)

    async def body(layer, relay, viewer):
        tmux.send_text(pane.pane_id, b"\r")
        events = await _collect(
            layer, viewer, lambda ev: "200000\r\n" in "".join(e["data"] for e in ev[-2:]), 60
        )
        return events

    events = _run(tmux, body)
    assert all(e["type"] == "term.output" and e["pane"] == pane.pane_id for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "batches are numbered without gaps"
    text = "".join(e["data"] for e in events).replace("\r", "")
    numbers = [line for line in text.split("\n") if line.isdigit()]
    assert numbers == [str(n) for n in range(1, 200001)]
    assert len(events) < 2000, "output is batched, not one message per chunk"


def test_a_screen_request_is_consistent_with_the_stream(tmux):
    pane = tmux.new_session(SESSION, "env PS1='$ ' sh", cols=80, rows=24)

    async def body(layer, relay, viewer):
        reply = await layer.new_channel()
        await layer.send(
            relay_channel("unit"),
            {"type": "term.input", "sandbox": HEX, "pane": pane.pane_id, "data": "echo before\r",
             "ts": time.time()},
        )  # fmt: skip
        await _collect(layer, viewer, lambda ev: "before\r\n" in "".join(e["data"] for e in ev))
        await layer.send(
            relay_channel("unit"),
            {"type": "term.snapshot", "sandbox": HEX, "pane": None, "reply_to": reply},
        )
        screen = await asyncio.wait_for(layer.receive(reply), 10)
        await layer.send(
            relay_channel("unit"),
            {"type": "term.input", "sandbox": HEX, "pane": pane.pane_id, "data": "echo after\r",
             "ts": time.time()},
        )  # fmt: skip
        later = await _collect(
            layer, viewer, lambda ev: "after\r\n" in "".join(e["data"] for e in ev)
        )
        stale = await layer.new_channel()
        await layer.send(
            relay_channel("unit"),
            {"type": "term.input", "sandbox": HEX, "pane": pane.pane_id, "data": "echo stale\r",
             "ts": time.time() - 60},
        )  # fmt: skip
        await layer.send(
            relay_channel("unit"),
            {"type": "term.snapshot", "sandbox": uuid.uuid4().hex, "pane": None, "reply_to": stale},
        )
        refused = await asyncio.wait_for(layer.receive(stale), 10)
        await asyncio.sleep(0.3)
        return screen, later, refused

    screen, later, refused = _run(tmux, body)
    assert screen["type"] == "term.screen" and screen["pane"] == pane.pane_id
    assert "before" in screen["data"] and "after" not in screen["data"]
    assert (screen["cols"], screen["rows"]) == (80, 24)
    newer = [e for e in later if e["seq"] > screen["seq"]]
    assert "after" in "".join(e["data"] for e in newer)
    assert all("before" not in e["data"] for e in newer)
    assert refused["type"] == "term.error", "another sandbox's terminal is not served"
    assert "stale" not in tmux.capture(pane.pane_id), "keystrokes queued too long are dropped"


def _current_command_number(tmux) -> tuple[int, int]:
    """(time, number) of a command run now: tmux numbers commands server-wide, so the next
    ones get slightly higher numbers. A guest can guess both as well."""
    proc = subprocess.run(
        ["tmux", *tmux.socket_args, "-C", "attach-session", "-t", f"={SESSION}"],
        input=b"display-message -p x\n",
        capture_output=True,
        timeout=10,
        check=True,
    )
    begins = [line.split() for line in proc.stdout.splitlines() if line.startswith(b"%begin ")]
    _, when, number, _ = begins[-1]
    return int(when), int(number)


def test_a_guest_screen_cannot_end_a_control_mode_reply_early(tmux, tmp_path):
    """tmux does not escape the lines of a command's reply in control mode. A guest that prints
    `%end <time> <number> 1` lines (it can guess both) and then `%output %<pane> ...` must
    neither cut a screen capture short nor have the relay publish output it made up."""
    script = tmp_path / "screen"
    pane = tmux.new_session(SESSION, f"sh -c 'read go; cat {script}; sleep 600'", cols=80, rows=400)

    async def body(layer, relay, viewer):
        when, number = _current_command_number(tmux)
        forged = [
            f"%end {t} {n} 1" for t in range(when, when + 3) for n in range(number, number + 120)
        ]
        script.write_text(
            "\n".join([*forged, "%output %99 INJECTED\\015\\012", "last line"]) + "\n"
        )
        tmux.send_text(pane.pane_id, b"\r")
        await _collect(layer, viewer, lambda ev: "last line" in "".join(e["data"] for e in ev))
        reply = await layer.new_channel()
        await layer.send(
            relay_channel("unit"),
            {"type": "term.snapshot", "sandbox": HEX, "pane": pane.pane_id, "reply_to": reply},
        )
        screen = await asyncio.wait_for(layer.receive(reply), 10)
        await asyncio.sleep(0.5)
        later = []
        while True:
            try:
                later.append(await asyncio.wait_for(layer.receive(viewer), 0.2))
            except TimeoutError:
                return screen, later

    screen, later = _run(tmux, body)
    assert screen["type"] == "term.screen" and screen["pane"] == pane.pane_id
    assert screen["data"].count("%end ") == 360
    assert "%output %99 INJECTED\\015\\012" in screen["data"] and "last line" in screen["data"]
    assert (screen["cols"], screen["rows"]) == (80, 400)
    assert [e for e in later if e["pane"] != pane.pane_id] == []
