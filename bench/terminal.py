"""Terminal benchmark: the websocket path against direct tmux on the same session, one run.

  1. keystroke-to-echo latency: type a short marker into the pane's shell (in the guest, over
     ssh) and wait until its echo is visible,
       via websocket: {"type": "input"} to the web server -> channel layer -> the host's
                      relay -> tmux -> ssh -> guest, and back as an "output" event;
       direct:        `tmux send-keys` + polling `tmux capture-pane` on the KVM host.
  2. `seq 1 200000` through the websocket: every number arrives, in order, with no gap in
     the events' seq; the time until the prompt is back, next to the same command run
     directly (polling capture-pane until the prompt returns).

Runs on the KVM host against the service started by scripts/run.sh (root, same machine:
the direct path needs its tmux socket):
    .venv/bin/python bench/terminal.py --api-key "$VSB_API_KEY" [--url http://127.0.0.1:8080]
Needs the `websocket-client` package (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import websocket  # noqa: E402  (websocket-client)
from django.conf import settings  # noqa: E402
from foundation import bench_parser, ms, parse_bench_args  # noqa: E402  (sets up Django and sys.path)

from terminals.tmux_driver import TmuxDriver  # noqa: E402

PROMPT_END = "# "


class Socket:
    def __init__(self, url: str, key: str, sandbox_id: str, session: str):
        ws_url = (
            url.replace("http", "ws", 1) + f"/ws/sandboxes/{sandbox_id}/terminal/?session={session}"
        )
        self.ws = websocket.create_connection(
            ws_url,
            header=[f"Authorization: Bearer {key}"],
            origin=url,
            timeout=60,
        )
        self.ws.sock.setsockopt(6, 1, 1)  # TCP_NODELAY
        self.screen = self.until(lambda m: m["type"] == "screen")[-1]
        self.seqs: list[int] = []

    def send(self, **message) -> None:
        self.ws.send(json.dumps(message))

    def until(self, predicate, timeout: float = 120) -> list[dict]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            seen.append(message)
            if message["type"] == "output":
                getattr(self, "seqs", []).append(message["seq"])
            if predicate(message):
                return seen
        raise TimeoutError("websocket: condition not met")

    def close(self) -> None:
        self.ws.close()


def wait_screen(tmux: TmuxDriver, pane: str, predicate, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = tmux.capture(pane)
        if predicate(screen):
            return screen
    raise TimeoutError("tmux: condition not met")


def main() -> None:
    parser = bench_parser(__doc__, argparse.RawTextHelpFormatter)
    parser.add_argument("--sandbox", help="use this ready sandbox instead of creating one")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tmux-socket", default=settings.VSB["TMUX_SOCKET"])
    args, api = parse_bench_args(parser)
    created = None
    if args.sandbox:
        sandbox_id = args.sandbox
    else:
        body = api.call(
            "POST", "/v1/sandboxes",
            {"source_vm_name": "debian-base", "agent_id": "bench-terminal", "wait_for_ip": True},
        )  # fmt: skip
        sandbox_id = created = body["sandbox"]["id"]
    session = f"bench{os.getpid()}"
    tmux = TmuxDriver(args.tmux_socket)
    sock = None
    try:
        pane = api.call(
            "POST", f"/v1/sandboxes/{sandbox_id}/terminals/sessions", {"name": session}
        )["pane"]["pane_id"]
        wait_screen(tmux, pane, lambda s: s.rstrip().endswith("#"), 60)
        sock = Socket(args.url, args.api_key, sandbox_id, session)

        # 1. keystroke-to-echo latency, alternating paths on the same pane.
        direct, via_ws = [], []
        for i in range(args.rounds):
            marker = f"d{i:03d}x"
            t0 = time.perf_counter()
            tmux.send_text(pane, marker.encode())
            wait_screen(tmux, pane, lambda s, m=marker: m in s, 30)
            direct.append(time.perf_counter() - t0)
            tmux.send_text(pane, b"\x15")  # C-u: clear the line again
            wait_screen(tmux, pane, lambda s, m=marker: m not in s, 30)

            marker = f"w{i:03d}x"
            t0 = time.perf_counter()
            sock.send(type="input", data=marker)
            acc = []
            sock.until(lambda m, acc=acc, mk=marker: m["type"] == "output" and (
                acc.append(m["data"]) or mk in "".join(acc)))  # fmt: skip
            via_ws.append(time.perf_counter() - t0)
            sock.send(type="input", data="\x15")
            wait_screen(tmux, pane, lambda s, m=marker: m not in s, 30)

        # 2. seq 1 200000: directly (until the prompt is back), then through the websocket.
        tmux.send_text(pane, b"clear\r")
        time.sleep(0.5)
        t0 = time.perf_counter()
        tmux.send_text(pane, b"seq 1 200000; echo SEQ-DONE\r")
        wait_screen(tmux, pane, lambda s: "\nSEQ-DONE" in s and s.rstrip().endswith("#"), 300)
        direct_seq = time.perf_counter() - t0

        # Everything the websocket saw of the direct run ends at a fresh screen.
        sock.send(type="snapshot")
        sock.until(lambda m: m["type"] == "screen")
        sock.seqs = []
        chunks: list[str] = []
        t0 = time.perf_counter()
        sock.send(type="input", data="seq 1 200000; echo WS-DONE\r")
        sock.until(lambda m: m["type"] == "output" and (chunks.append(m["data"]) or
                   "\nWS-DONE" in "".join(chunks[-3:]).replace("\r", "")), 300)  # fmt: skip
        ws_seq = time.perf_counter() - t0
        # Terminal control sequences (bash's bracketed-paste toggles) are not output lines.
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(chunks)).replace("\r", "")
        numbers = [line for line in text.split("\n") if line.isdigit()]
        complete = numbers == [str(n) for n in range(1, 200001)]
        gapless = sock.seqs == list(range(sock.seqs[0], sock.seqs[0] + len(sock.seqs)))
    finally:
        if sock is not None:
            sock.close()
        try:
            api.call("DELETE", f"/v1/sandboxes/{sandbox_id}/terminals/sessions/{session}")
        except Exception as exc:  # noqa: BLE001
            print(f"(could not kill session {session}: {exc})")
        if created:
            api.call("DELETE", f"/v1/sandboxes/{created}")

    def row(name: str, raw: str, ours: str, note: str = "") -> None:
        print(f"{name:<38}{raw:>14}{ours:>16}   {note}")

    print()
    row("measure", "direct tmux", "websocket")
    row(
        f"keystroke->echo median ({args.rounds} rounds)",
        ms(statistics.median(direct)),
        ms(statistics.median(via_ws)),
        f"+{ms(statistics.median(via_ws) - statistics.median(direct))}",
    )
    row(
        "keystroke->echo p90",
        ms(statistics.quantiles(direct, n=10)[-1]),
        ms(statistics.quantiles(via_ws, n=10)[-1]),
    )
    row("seq 1 200000 until prompt", f"{direct_seq:.2f} s", f"{ws_seq:.2f} s")
    row(
        "seq 1 200000 through the websocket",
        "",
        f"{len(numbers)} lines",
        f"complete and in order: {complete}; {len(sock.seqs)} events, seq gapless: {gapless}; "
        f"{len(text) / 1e6:.2f} MB",
    )
    if not (complete and gapless):
        sys.exit(1)


if __name__ == "__main__":
    main()
