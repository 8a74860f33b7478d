"""Approvals benchmark: what N concurrent blocking asks cost the server that holds them.

  1. server RSS and thread count before the asks, while N asks wait, and after they resolve
  2. time from one bulk approval to the last of the N answers
  3. for scale, the same figures per waiting ask

Runs against the service started by scripts/run.sh, on the same machine (root):
    .venv/bin/python bench/approvals.py [--asks 200] [--url http://127.0.0.1:8080]
It creates (once) an agent `bench-asker` and an operator `bench-approver` with the decide
permission, in the service's own database.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Permission, User  # noqa: E402

from accounts import services as accounts  # noqa: E402


def call(url: str, key: str, method: str, path: str, body=None, timeout: float = 600):
    req = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "Threads"):
                fields[name] = int(value.split()[0])
    return fields


def server_pid(port: int) -> int:
    pid_file = Path(settings.DATA_DIR) / "daphne.pid"
    if pid_file.exists():
        return int(pid_file.read_text())
    raise SystemExit(f"no {pid_file}: start the service with scripts/run.sh (port {port})")


def key_for(username: str, decider: bool = False) -> str:
    user, _ = User.objects.get_or_create(username=username)
    if decider:
        user.user_permissions.add(Permission.objects.get(codename="decide_approvalrequest"))
    accounts.revoke_api_keys(user, "bench")
    return accounts.create_api_key(user, "bench")[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--asks", type=int, default=200)
    args = parser.parse_args()
    url = args.url.rstrip("/")
    pid = server_pid(int(url.rsplit(":", 1)[-1]))
    asker, approver = key_for("bench-asker"), key_for("bench-approver", decider=True)
    tag = f"bench-{int(time.time())}"

    before = proc_status(pid)
    pool = concurrent.futures.ThreadPoolExecutor(args.asks)
    started = time.monotonic()
    asks = [
        pool.submit(
            call,
            url,
            asker,
            "POST",
            "/api/v1/human/ask",
            {"prompt": f"{tag} #{i}", "timeout_secs": 600},
        )
        for i in range(args.asks)
    ]
    ids: list[str] = []
    while len(ids) < args.asks:
        page = call(url, approver, "GET", "/v1/approvals?status=pending&limit=500")
        ids = [r["id"] for r in page["results"] if r["prompt"].startswith(tag)]
        if time.monotonic() - started > 120:
            raise SystemExit(f"only {len(ids)} of {args.asks} asks arrived in 120 s")
        time.sleep(0.2)
    all_pending_s = time.monotonic() - started
    time.sleep(2)  # let every ask settle into its wait
    during = proc_status(pid)
    early = sum(a.done() for a in asks)

    decided = time.monotonic()
    call(url, approver, "POST", "/v1/approvals/bulk", {"ids": ids, "decision": "approve"})
    answers = [a.result() for a in asks]
    resolved_s = time.monotonic() - decided
    after = proc_status(pid)
    approved = sum(a["status"] == "approved" for a in answers)

    grow_kib = during["VmRSS"] - before["VmRSS"]
    print(f"\n{args.asks} concurrent blocking asks against {url} (daphne pid {pid})")
    print(f"  {'':28}{'before':>12}{'while waiting':>16}{'after':>12}")
    print(
        f"  {'server RSS (MiB)':28}{before['VmRSS'] / 1024:>12.1f}{during['VmRSS'] / 1024:>16.1f}{after['VmRSS'] / 1024:>12.1f}"
    )
    print(
        f"  {'server threads':28}{before['Threads']:>12}{during['Threads']:>16}{after['Threads']:>12}"
    )
    print(
        f"  memory per waiting ask: {grow_kib / args.asks:.1f} KiB; threads per waiting ask: "
        f"{(during['Threads'] - before['Threads']) / args.asks:.2f}"
    )
    print(
        f"  all {args.asks} asks pending after {all_pending_s:.2f} s; answered before the decision: {early}"
    )
    print(
        f"  bulk approval -> last answer: {resolved_s:.2f} s; approved answers: {approved}/{args.asks}"
    )
    if approved != args.asks or early:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
