"""Admission benchmark: many creates sent at once through our API (the host's worker admits
them into its boot slots, the rest wait `queued`) against the same number created two at a
time by the client (the pacing a careful user did by hand before admission existed).

  client-paced: N x POST /v1/sandboxes with wait_for_ip, two at a time: a new one as soon
                as one is ready
  at once:      the same N requests from N threads at the same moment (the host's worker
                boots `boot_slots` of them, the others wait queued); each answers when ready
  --poll:       also the same N at once without wait_for_ip, each client polling its
                operation every 0.5 s (shows what pollers cost a small host: every GET is
                CPU taken from the booting guests)

Both compared runs send the same request and wait the same way; only the pacing differs.

Each run reports its time from the first request to all ready, and its failures; all
sandboxes are destroyed after each run. The host must accept N sandboxes (Host.capacity in
the admin) and the key N sandboxes of N x 256 MiB (its quotas).

Runs against the service started by scripts/run.sh, on the same machine, with > 10 guests
alive: hold the many-VMs lock:
    flock /tmp/vsb-many-vms.lock .venv/bin/python bench/admission.py --api-key "$VSB_API_KEY"
Target (issue 15): at once <= 1.2 x client-paced, none failed.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

from foundation import Api, bench_parser, parse_bench_args  # noqa: E402  (sets up Django and sys.path)

BODY = {"source_vm_name": "debian-base", "agent_id": "bench-admission", "memory_mb": 256}
DONE = ("succeeded", "failed", "errored")
SHOWN_STATES = (
    "queued",
    "requested",
    "provisioning",
    "booting",
    "waiting_for_ip",
    "ready",
    "error",
)


def wait_operation(api: Api, op_id: str) -> dict:
    while True:
        op = api.call("GET", f"/v1/operations/{op_id}")
        if op["status"] in DONE:
            return op
        time.sleep(0.5)


def create_waited(api: Api) -> tuple[str | None, str]:
    """One create that waits until ready: (sandbox id, "" or why it failed)."""
    try:
        body = api.call("POST", "/v1/sandboxes", {**BODY, "wait_for_ip": True}, timeout=3600)
        return body["sandbox"]["id"], ""
    except urllib.error.HTTPError as exc:
        return None, f"{exc.code}: {exc.read()[:300]!r}"


def at_once(api: Api, count: int) -> tuple[float, list[str], list[str]]:
    """N waiting creates at once: (seconds to all ready, sandbox ids, failures)."""
    t0 = time.monotonic()
    finished = threading.Event()
    query = f"agent_id={BODY['agent_id']}"

    def report() -> None:
        while not finished.wait(20):
            counts = {
                state: api.call("GET", f"/v1/sandboxes?{query}&state={state}&limit=1")["count"]
                for state in SHOWN_STATES
            }
            shown = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
            print(f"    {time.monotonic() - t0:5.0f} s: {shown}", flush=True)

    threading.Thread(target=report, daemon=True).start()
    try:
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(lambda _: create_waited(api), range(count)))
    finally:
        finished.set()
    elapsed = time.monotonic() - t0
    return elapsed, [i for i, _ in results if i], [why for _, why in results if why]


def at_once_polling(api: Api, count: int) -> tuple[float, list[str], list[str]]:
    """N creates at once, each polling its operation: (seconds, sandbox ids, failures)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: api.call("POST", "/v1/sandboxes", BODY), range(count)))
        queued = sum(a["sandbox"]["state"] == "queued" for a in answers)
        print(f"  at once: {count} accepted in {time.monotonic() - t0:.1f} s, {queued} queued")
        ops = list(pool.map(lambda a: wait_operation(api, a["operation"]["id"]), answers))
    elapsed = time.monotonic() - t0
    failures = [f"{op['status']}: {op['error'][:200]}" for op in ops if op["status"] != "succeeded"]
    return elapsed, [a["sandbox"]["id"] for a in answers], failures


def client_paced(api: Api, count: int, width: int = 2) -> tuple[float, list[str], list[str]]:
    t0 = time.monotonic()
    with ThreadPoolExecutor(width) as pool:
        results = list(pool.map(lambda _: create_waited(api), range(count)))
    elapsed = time.monotonic() - t0
    return elapsed, [i for i, _ in results if i], [why for _, why in results if why]


def destroy_all(api: Api, ids: list[str]) -> None:
    def destroy(sandbox_id: str) -> None:
        op = api.call("DELETE", f"/v1/sandboxes/{sandbox_id}")["operation"]
        wait_operation(api, op["id"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(destroy, ids))


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--poll", action="store_true", help="also run the polling clients")
    args, api = parse_bench_args(parser)
    host = api.call("GET", "/v1/health")["hosts"][0]
    print(f"host {host['name']} ({host.get('domain_type') or '?'}), {args.count} sandboxes")

    runs = {}
    plan = [("client-paced (2 at a time)", client_paced), ("at once", at_once)]
    if args.poll:
        plan.append(("at once, polling", at_once_polling))
    for name, run in plan:
        elapsed, ids, failures = run(api, args.count)
        try:
            runs[name] = (elapsed, failures)
            print(f"  {name}: all ready in {elapsed:.1f} s, {len(failures)} failed", flush=True)
            for why in failures[:5]:
                print(f"    {why}")
        finally:
            destroy_all(api, ids)

    (paced, paced_failed), (crowd, crowd_failed) = list(runs.values())[:2]
    ratio = crowd / paced
    ok = ratio <= 1.2 and not paced_failed and not crowd_failed
    print()
    print(f"{'measure':<34}{'paced':>10}{'at once':>10}{'ratio':>8}   target")
    print(
        f"{'all ' + str(args.count) + ' ready':<34}{paced:>8.1f} s{crowd:>8.1f} s{ratio:>8.2f}"
        f"   <= 1.20, none failed  {'OK' if ok else 'MISSED'}"
    )
    print(f"{'failed':<34}{len(paced_failed):>10}{len(crowd_failed):>10}")
    if args.poll:
        polled, polled_failed = runs["at once, polling"]
        print(
            f"{'all ready, clients polling':<34}{paced:>8.1f} s{polled:>8.1f} s"
            f"{polled / paced:>8.2f}   (information: {len(polled_failed)} failed)"
        )


if __name__ == "__main__":
    main()
