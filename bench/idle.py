"""Idle benchmark: what 40 idle sandboxes cost the host, running vs paused, and what waking
one costs its first command.

  1. load: 40 ready sandboxes left alone, then the same 40 paused (POST /pause); for each,
     the CPU their QEMU processes used over a window (in cores: what they add to the load
     average) and the host's 1-minute load average at its end (shared machine: noisy).
  2. first command after a wake: p50 of `true` on a running sandbox (the baseline), on a
     paused one (resume + command) and on a hibernated one (restore + command); the
     resume's cost is against a running sandbox idle as long (both log in again).
  3. memory freed by hibernation: the host's MemAvailable before and after hibernating
     some of the sandboxes (POST /pause {"hibernate": true}).

The 40 are created a few at a time (the host boots them under TCG). More than 10 VMs: run
it under the machine's lock, against the service started by scripts/run.sh (root):
    flock /tmp/vsb-many-vms.lock .venv/bin/python bench/idle.py --api-key "$VSB_API_KEY"
The agent's quota and the host's capacity must allow 40 sandboxes.
Targets (issue 15): a paused resume adds <= 50 ms to the first command; 40 paused
sandboxes add < 0.5 to the load average.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import time

from foundation import bench_parser, parse_bench_args  # noqa: E402  (sets up Django and sys.path)

from sandboxes.remote.ssh import ConnectionPool  # noqa: E402

# How long the workers' SSH pool keeps an idle connection (its default).
SSH_POOL_IDLE_SECONDS = ConnectionPool().max_idle_seconds

WINDOW_SECONDS = 60.0


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def qemu_pids(names: list[str]) -> list[int]:
    """The QEMU processes of these domains (libvirt names them `guest=<name>,...`)."""
    wanted = {f"guest={n}," for n in names}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        # `-name guest=<name>,debug-threads=on`
        if any(a.decode(errors="replace").split(",", 1)[0] + "," in wanted for a in argv):
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / tick


def cost(names: list[str], window: float) -> tuple[float, float]:
    """(cores the domains' QEMU used over `window` s, host 1-min load average at its end).
    A window of settling first: the 1-min average still holds e^-1 of what was before a
    window ago, e^-2 after two."""
    time.sleep(window)
    pids = qemu_pids(names)
    before = cpu_seconds(pids)
    time.sleep(window)
    used = (cpu_seconds(pids) - before) / window
    return used, os.getloadavg()[0]


def p50_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f} ms" if samples else "-"


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4, help="creates in flight at once")
    parser.add_argument("--samples", type=int, default=10, help="wakes measured per kind")
    parser.add_argument("--hibernate", type=int, default=10, help="sandboxes hibernated")
    parser.add_argument("--window", type=float, default=WINDOW_SECONDS)
    parser.add_argument(
        "--reuse", action="store_true", help="count the key's ready sandboxes in (destroyed too)"
    )
    args, api = parse_bench_args(parser)

    def create(_i: int) -> dict:
        body = {"source_vm_name": "debian-base", "wait_for_ip": True, "ttl_seconds": 7200}
        return api.call("POST", "/v1/sandboxes", body)["sandbox"]

    def run(sandbox: dict, command: str = "true") -> float:
        started = time.perf_counter()
        reply = api.call("POST", f"/v1/sandboxes/{sandbox['id']}/command", {"command": command})
        assert reply["command"]["exit_code"] == 0, reply
        return time.perf_counter() - started

    def pause(sandbox: dict, hibernate: bool = False) -> None:
        body = {"hibernate": True} if hibernate else {}
        reply = api.call("POST", f"/v1/sandboxes/{sandbox['id']}/pause", body)
        assert reply["sandbox"]["state"] == ("hibernated" if hibernate else "paused"), reply

    sandboxes: list[dict] = []
    if args.reuse:
        listed = api.call("GET", "/v1/sandboxes?state=ready&limit=100")["results"]
        sandboxes = listed[: args.count]
    # The baseline: the host's load average with none of them (the service and its
    # workers idle), over the same window.
    time.sleep(args.window)
    empty_load = os.getloadavg()[0]
    print(f"  none yet: load {empty_load:.2f}", flush=True)
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(args.batch) as pool:
            wanted = args.count - len(sandboxes)
            for future in [pool.submit(create, i) for i in range(wanted)]:
                try:
                    sandboxes.append(future.result())
                except Exception as exc:  # noqa: BLE001 - measure the ones that came up
                    print(f"a create failed: {exc}")
        print(f"{len(sandboxes)} sandboxes ready after {time.monotonic() - started:.0f} s")
        names = [s["name"] for s in sandboxes]
        for s in sandboxes:
            run(s)  # each has been used once, and has an SSH connection in the pool

        running_cores, running_load = cost(names, args.window)
        print(f"  running: {running_cores:.2f} cores, load {running_load:.2f}", flush=True)
        # The baseline of a first command after idling: a running sandbox whose pooled SSH
        # connection expired (2 min) as a paused one's has, so both log in again.
        time.sleep(max(0.0, SSH_POOL_IDLE_SECONDS + 5 - 2 * args.window))
        probed = sandboxes[1 : 1 + args.samples]
        idle_running = [run(s) for s in probed]
        print(f"  first command, running and idle: {p50_ms(idle_running)}", flush=True)
        for s in sandboxes:
            pause(s)
        paused_cores, paused_load = cost(names, args.window)
        print(f"  paused:  {paused_cores:.2f} cores, load {paused_load:.2f}", flush=True)

        probe = sandboxes[0]
        api.call("POST", f"/v1/sandboxes/{probe['id']}/resume")
        run(probe)
        baseline = [run(probe) for _ in range(20)]
        after_pause = []
        for s in probed:
            time.sleep(1)
            after_pause.append(run(s))  # it was paused: resume + login + the command
        print(
            f"  first command: running {p50_ms(baseline)}, paused {p50_ms(after_pause)}", flush=True
        )
        hibernated = sandboxes[1 + args.samples : 1 + args.samples + args.hibernate]
        mem_before = mem_available_mib()  # they are paused: their memory is held
        for s in hibernated:
            pause(s, hibernate=True)
        time.sleep(5)
        mem_after = mem_available_mib()
        after_hibernate = [run(s) for s in hibernated[: args.samples]]
        print(f"  after hibernation: {p50_ms(after_hibernate)}", flush=True)

        print(f"\n{len(sandboxes)} idle sandboxes, {args.window:.0f} s windows:")
        print(f"  none yet: host load average {empty_load:.2f} (the baseline)")
        print(
            f"  running: their QEMU used {running_cores:.2f} cores; host load average "
            f"{running_load:.2f} (+{running_load - empty_load:.2f})"
        )
        print(
            f"  paused:  their QEMU used {paused_cores:.2f} cores; host load average "
            f"{paused_load:.2f} (+{paused_load - empty_load:.2f})   (target: paused add < 0.5)"
        )
        print("\nfirst command, p50:")
        print(f"  running, connected: {p50_ms(baseline)} (n={len(baseline)})")
        print(f"  running, idle:      {p50_ms(idle_running)} (n={len(idle_running)}) (a new login)")
        print(
            f"  paused sandbox:     {p50_ms(after_pause)} (n={len(after_pause)}): the resume "
            f"adds {(statistics.median(after_pause) - statistics.median(idle_running)) * 1000:.0f}"
            " ms (target <= 50 ms)"
        )
        print(f"  hibernated sandbox: {p50_ms(after_hibernate)} (n={len(after_hibernate)})")
        freed = mem_after - mem_before
        print(
            f"\nhibernating {len(hibernated)} sandboxes: MemAvailable {mem_before:.0f} -> "
            f"{mem_after:.0f} MiB, {freed:.0f} MiB freed "
            f"({freed / max(1, len(hibernated)):.0f} MiB each)"
        )
    finally:
        for s in sandboxes:
            try:
                api.call("DELETE", f"/v1/sandboxes/{s['id']}")
            except Exception as exc:  # noqa: BLE001 - destroy the rest
                print(f"destroy {s['name']}: {exc}")
        subprocess.run(["sync"], check=False)


if __name__ == "__main__":
    main()
