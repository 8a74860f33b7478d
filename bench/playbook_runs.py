"""Playbook benchmark: generation for a diff of 1,000 files, and replay verification against
the raw ansible-runner run it wraps, side by side, in one run.

  1. a sandbox writes 1,000 files between two snapshots;
     diff:      GET /v1/sandboxes/{id}/diff?from=b0&to=b1 (computed and stored)
     generate:  GET /v1/sandboxes/{id}/playbook?from=b0&to=b1 (reads the 'to' state, writes
                the YAML, ansible-playbook --syntax-check), against the raw read of those
                1,000 files from the mounted snapshot
  2. a small realistic change (config file, user, unit, directory):
     verify:    POST .../playbook/verify {"wait": true} (fork at 'from', boot, run, diff,
                run again, destroy) against raw: ansible-runner running the same playbook once
                on an already running clone

Runs against the service started by scripts/run.sh, on the same machine (root):
    .venv/bin/python bench/playbook_runs.py --api-key "$VSB_API_KEY"
"""

from __future__ import annotations

import os
import time

from django.conf import settings  # noqa: E402
from foundation import bench_parser, parse_bench_args  # noqa: E402  (sets up Django and sys.path)

from playbooks import (
    runner,  # noqa: E402
    runtime,  # noqa: E402
)
from playbooks.verify import target_for  # noqa: E402
from sandboxes.models import Sandbox  # noqa: E402

SMALL_CHANGE = """set -e
printf 'port = 8080\\n' > /etc/app.conf
useradd -m -s /bin/bash appuser
mkdir -p /srv/www && echo hello > /srv/www/index.html && chown -R appuser:appuser /srv/www
printf '[Service]\\nExecStart=/bin/sleep infinity\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/app.service
systemctl daemon-reload && systemctl enable --now app.service
"""


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value


def raw_read(sandbox: dict, snapshot: str, paths: list[str]) -> None:
    from rawread import kernel_mounted

    workdir = os.path.join(settings.VSB["SANDBOX_DIR"], sandbox["name"])
    with kernel_mounted(os.path.join(workdir, "disk.qcow2"), snapshot, workdir) as root:
        for p in paths:
            with open(root + p, "rb") as f:
                f.read()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--files", type=int, default=1000)
    args, api = parse_bench_args(parser)
    made = []

    def create(**body) -> dict:
        sb = api.call(
            "POST",
            "/v1/sandboxes",
            {"source_vm_name": "debian-base-systemd", "wait_for_ip": True, **body},
        )["sandbox"]
        made.append(sb["id"])
        return sb

    try:
        # 1. generation for 1,000 files
        sb = create(agent_id="bench-playbook")
        sid = sb["id"]
        api.call("POST", f"/v1/sandboxes/{sid}/snapshots", {"name": "b0", "wait": True})
        api.call(
            "POST",
            f"/v1/sandboxes/{sid}/command",
            {
                "command": f'mkdir -p /srv/bench && for i in $(seq 1 {args.files}); do echo "file $i" > /srv/bench/f$i.conf; done',
                "timeout_seconds": 600,
            },
        )
        api.call("POST", f"/v1/sandboxes/{sid}/snapshots", {"name": "b1", "wait": True})
        diff_s, diff = timed(
            lambda: api.call("GET", f"/v1/sandboxes/{sid}/diff?from=b0&to=b1&limit=1")
        )
        gen_s, pb = timed(lambda: api.call("GET", f"/v1/sandboxes/{sid}/playbook?from=b0&to=b1"))
        paths = [f"/srv/bench/f{i}.conf" for i in range(1, args.files + 1)]
        raw_s, _ = timed(lambda: raw_read(sb, "b1", paths))
        tasks = pb["playbook"]["yaml"].count("\n  - name: ")

        # 2. verify vs raw ansible-runner
        small = create(agent_id="bench-verify")
        api.call("POST", f"/v1/sandboxes/{small['id']}/snapshots", {"name": "v0", "wait": True})
        api.call("POST", f"/v1/sandboxes/{small['id']}/command", {"command": SMALL_CHANGE})
        api.call("POST", f"/v1/sandboxes/{small['id']}/snapshots", {"name": "v1", "wait": True})
        small_pb = api.call("GET", f"/v1/sandboxes/{small['id']}/playbook?from=v0&to=v1")[
            "playbook"
        ]
        verify_s, verify = timed(
            lambda: api.call(
                "POST",
                f"/v1/sandboxes/{small['id']}/playbook/verify",
                {"from": "v0", "to": "v1", "wait": True},
            )
        )
        result = verify["operation"]["result"]
        clone = create(from_sandbox=small["id"], from_snapshot="v0", agent_id="bench-raw")
        row = Sandbox.objects.get(pk=clone["id"])
        raw_run_s, raw_run = timed(
            lambda: runner.run(
                small_pb["yaml"], {}, [target_for(row)], isolation=runtime.ansible_isolation()
            )
        )
    finally:
        for sandbox_id in made:
            try:
                api.call("DELETE", f"/v1/sandboxes/{sandbox_id}")
            except Exception:  # noqa: BLE001
                pass

    print(f"\n1. {args.files} files changed between two snapshots")
    print(
        f"  {'diff (API, computed and stored)':42}{diff_s:8.2f} s   ({diff['diff']['summary']['files']})"
    )
    print(
        f"  {'playbook generation (API)':42}{gen_s:8.2f} s   ({tasks} tasks, syntax_ok={pb['playbook']['syntax_ok']})"
    )
    print(f"  {'raw: read the 1,000 files from the snapshot':42}{raw_s:8.2f} s")
    print("\n2. replay verification of a small change (file, user, directory, unit)")
    print(
        f"  {'verify (API: fork, boot, run, diff, run, destroy)':52}{verify_s:8.2f} s   reproduces={result.get('reproduces')} idempotent={result.get('idempotent')}"
    )
    print(
        f"  {'raw: ansible-runner, one run on a running clone':52}{raw_run_s:8.2f} s   status={raw_run.status} changed={raw_run.changed}"
    )
    print(
        f"  ratio verify / raw run: {verify_s / raw_run_s:.1f}x (verify runs the playbook twice and boots and diffs a clone)"
    )


if __name__ == "__main__":
    main()
