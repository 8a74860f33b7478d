"""Egress benchmark: downloading a large .deb from the KVM host's own Debian mirror, from
inside a guest through the egress proxy (guest curl -> QEMU guestfwd -> relay -> proxy ->
mirror), against curl of the same file on the host, side by side.

Also measured, to tell the proxy from the guest:
  - host curl through the same relay and proxy (a local listener spawns the relay per
    connection exactly as QEMU does): the proxy's own cost, without the guest;
  - the guest's own ceiling: curl of a file of the same size from a server inside the same
    guest over its loopback (no proxy, no QEMU network): under TCG the guest's emulated CPU
    may be what limits the download.

Runs against the service started by scripts/run.sh (its egress proxy included), as root:
    .venv/bin/python bench/egress.py --api-key "$VSB_API_KEY" [--package libllvm15] [--rounds 3]
Target (issue 13): guest through the proxy >= 0.8 x host curl.
"""

from __future__ import annotations

import shlex
import socket
import socketserver
import statistics
import subprocess
import threading
from contextlib import contextmanager

from django.conf import settings
from foundation import bench_parser, parse_bench_args  # noqa: E402  (sets up Django and sys.path)

CURL = "curl -s -o /dev/null -w '%{size_download} %{time_total}'"


def package_uri(package: str) -> tuple[str, int]:
    """The .deb's URL on the host's own mirror (apt's own answer, so a mirror or cache the
    host is configured with is the one measured) and its size."""
    out = subprocess.run(
        ["apt-get", "download", "--print-uris", package],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    if len(out) < 3:
        raise SystemExit(f"apt has no download for {package!r}: run apt-get update first")
    return out[0].strip("'"), int(out[2])


def rate(curl_output: str) -> float:
    size, seconds = curl_output.split()
    return int(size) / float(seconds) / 1e6


def host_rounds(url: str, rounds: int, proxy: str = "") -> list[float]:
    via = ["-x", proxy] if proxy else ["--noproxy", "*"]
    return [
        rate(subprocess.run([*shlex.split(CURL), *via, url], capture_output=True, text=True).stdout)
        for _ in range(rounds)
    ]


@contextmanager
def relay_front(sandbox_id: str):
    """A TCP proxy address on loopback that hands each connection to the real relay, as QEMU's
    guestfwd does (the relay's stdin and stdout are the connection)."""
    from egress import services

    argv = [
        settings.VSB["EGRESS_RELAY_PYTHON"],
        "-I",
        "-S",
        str(services.relay_path()),
        str(services.socket_path(settings.VSB["HOST_NAME"])),
        sandbox_id,
    ]

    class Spawn(socketserver.BaseRequestHandler):
        def handle(self):
            conn: socket.socket = self.request
            subprocess.run(argv, stdin=conn, stdout=conn, stderr=subprocess.DEVNULL)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Spawn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def guest_run(api, sandbox_id: str, command: str, timeout: int = 900) -> str:
    body = api.call(
        "POST",
        f"/v1/sandboxes/{sandbox_id}/command",
        {"command": command, "timeout_seconds": timeout},
    )["command"]
    if body["exit_code"] != 0:
        raise SystemExit(f"guest: {command!r} failed: {body['stderr'][-800:]}")
    return body["stdout"]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--package", default="libllvm15", help="a large .deb of the host's mirror")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", default="debian-base")
    args, api = parse_bench_args(parser)
    url, size = package_uri(args.package)
    print(f"file: {url.rsplit('/', 1)[-1]} ({size / 1e6:.1f} MB) from the host's mirror")

    host = host_rounds(url, args.rounds)
    sandbox = api.call(
        "POST",
        "/v1/sandboxes",
        {"source_vm_name": args.source, "agent_id": "bench-egress", "wait_for_ip": True},
    )["sandbox"]
    try:
        sid = sandbox["id"]
        # curl in the guest too (from the same mirror, through the proxy): the same tool on
        # both sides.
        guest_run(api, sid, "apt-get update -q >/dev/null && apt-get install -y -q curl >/dev/null")
        guest = [
            rate(guest_run(api, sid, f"{CURL} {shlex.quote(url)}")) for _ in range(args.rounds)
        ]
        with relay_front(sid) as proxy:
            via_proxy = host_rounds(url, args.rounds, proxy)
        ceiling_cmd = (
            f"head -c {size} /dev/urandom > /tmp/f.bin && "
            "(cd /tmp && setsid python3 -m http.server 8099 -b 127.0.0.1 >/dev/null 2>&1 &) && "
            "for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:8099/ && break; "
            "sleep 0.2; done && "
            f"for i in $(seq {args.rounds}); do {CURL} http://127.0.0.1:8099/f.bin; echo; done"
        )
        ceiling = [rate(line) for line in guest_run(api, sid, ceiling_cmd).splitlines() if line]
        log = api.call("GET", f"/v1/sandboxes/{sid}/egress/log?allowed=false")
    finally:
        api.call("DELETE", f"/v1/sandboxes/{sandbox['id']}")

    h, g, p, c = (statistics.median(x) for x in (host, guest, via_proxy, ceiling))
    print(f"\n{'':<58}{'MB/s (median of ' + str(args.rounds) + ')':>22}")
    print(f"{'raw: curl on the host, direct to the mirror':<58}{h:>22.1f}")
    print(f"{'ours: curl in the guest through the egress proxy':<58}{g:>22.1f}")
    print(f"{'the proxy alone: curl on the host through relay + proxy':<58}{p:>22.1f}")
    print(f"{'guest ceiling: curl in the guest from its own loopback':<58}{c:>22.1f}")
    ratio = g / h
    verdict = "meets" if ratio >= 0.8 else "misses"
    print(f"\nguest via proxy / host: {ratio:.2f} x ({verdict} the 0.8 x target)")
    print(f"host via relay + proxy / host: {p / h:.2f} x")
    if ratio < 0.8 and c and g >= 0.8 * c:
        print(
            f"the guest's emulated CPU is the limit: through the proxy it reaches "
            f"{g / c:.0%} of what it does without any network at all"
        )
    print(f"denied connections during the run: {log['count']}")


if __name__ == "__main__":
    main()
