"""The relay against a real tmux server and an in-memory channel layer: output is pumped
into the sandbox's group in numbered batches, screens are consistent with that numbering,
and keystrokes from the host's channel reach the pane."""

from __future__ import annotations

import asyncio
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
