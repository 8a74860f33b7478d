"""Foundation benchmark: our API against the raw steps it wraps, side by side, in one run.

  1. create-to-ready: POST /v1/sandboxes with wait_for_ip=true
     vs raw: qemu-img overlay + virsh define + start + wait until an SSH login succeeds
     (same image, same domain XML, same readiness criterion: a certificate login works).
  2. exec latency: median of POST /v1/sandboxes/{id}/command running `true`
     vs a raw paramiko exec of `true` on an already open connection to the same VM.

Runs against the service started by scripts/run.sh, on the same machine (root):
    .venv/bin/python bench/foundation.py --api-key "$VSB_API_KEY" [--url http://127.0.0.1:8080]
Targets (issue 2): API exec <= 1.5 x raw + 20 ms; create overhead <= 10 % over raw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

import libvirt  # noqa: E402
from django.conf import settings  # noqa: E402

from sandboxes.drivers.base import CloneSpec, PortForward  # noqa: E402
from sandboxes.drivers.domain_xml import build_domain_xml, overlay_path  # noqa: E402
from sandboxes.drivers.qemu_img import overlay_command  # noqa: E402
from sandboxes.models import SourceVM  # noqa: E402
from sandboxes.remote import ssh  # noqa: E402
from sandboxes.remote.ca import CertificateAuthority  # noqa: E402


class Api:
    def __init__(self, url: str, key: str):
        self.url, self.key = url.rstrip("/"), key

    def call(self, method: str, path: str, body=None, timeout: float = 600):
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")


def bench_parser(
    description: str, formatter_class: type = argparse.RawDescriptionHelpFormatter
) -> argparse.ArgumentParser:
    """The options every API bench takes: --url and --api-key (or VSB_API_KEY)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=formatter_class)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=os.environ.get("VSB_API_KEY"))
    return parser


def parse_bench_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Api]:
    """The parsed command line and a client of the API it names."""
    args = parser.parse_args()
    if not args.api_key:
        parser.error("--api-key (or VSB_API_KEY) is required")
    return args, Api(args.url, args.api_key)


def raw_create(source: SourceVM, ca: CertificateAuthority, domain_type: str) -> tuple[float, str]:
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    workdir = Path(settings.VSB["SANDBOX_DIR"]) / name
    port = 44000 + int(uuid.uuid4().int % 900)
    principal = f"bench-{uuid.uuid4().hex[:8]}"
    ca_type, ca_b64 = ca.public_key_line().split()[:2]
    spec = CloneSpec(
        name=name,
        source_disk=source.disk_path,
        workdir=str(workdir),
        kernel=source.kernel,
        initrd=source.initrd,
        network=PortForward(port),
        cmdline=f"{source.cmdline} vsb.ca={ca_type}:{ca_b64} vsb.principals={principal} vsb.hostname={name}",
    )
    xml = build_domain_xml(spec, domain_type)
    conn = libvirt.open(settings.VSB["LIBVIRT_URI"])
    dom = None
    try:
        t0 = time.monotonic()
        workdir.mkdir(mode=0o755, parents=True)
        os.chmod(workdir, 0o755)
        subprocess.run(overlay_command(source.disk_path, overlay_path(spec)), check=True)
        dom = conn.defineXML(xml)
        dom.create()
        credential = ca.issue([principal])
        while True:
            if ssh.probe_ssh_banner("127.0.0.1", port, timeout=0.5):
                try:
                    client = ssh.connect(ssh.SSHTarget("127.0.0.1", port), credential, timeout=5)
                    client.close()
                    break
                except ssh.RemoteError:
                    pass
            time.sleep(0.25)
            if time.monotonic() - t0 > 180:
                raise RuntimeError("raw guest did not answer SSH in 180 s")
        return time.monotonic() - t0, name
    finally:
        if dom is not None:
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            dom.undefine()
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


def api_create(api: Api) -> tuple[float, dict]:
    t0 = time.monotonic()
    body = api.call(
        "POST",
        "/v1/sandboxes",
        {"source_vm_name": "debian-base", "agent_id": "bench", "wait_for_ip": True},
    )
    return time.monotonic() - t0, body["sandbox"]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--execs", type=int, default=50)
    args, api = parse_bench_args(parser)
    source = SourceVM.objects.get(name="debian-base")
    ca = CertificateAuthority(settings.VSB["SSH_CA_KEY"])
    domain_type = next(h["domain_type"] for h in api.call("GET", "/v1/health")["hosts"]) or "qemu"

    raw_times, api_times, keep = [], [], None
    for i in range(args.creates):
        # Alternate so that neither side always runs on a warmer host.
        raw_s, _ = raw_create(source, ca, domain_type)
        api_s, sandbox = api_create(api)
        raw_times.append(raw_s)
        api_times.append(api_s)
        print(f"  create #{i + 1}: raw {raw_s:.2f} s   api {api_s:.2f} s", flush=True)
        if keep is None:
            keep = sandbox
        else:
            api.call("DELETE", f"/v1/sandboxes/{sandbox['id']}")

    try:
        for _ in range(5):  # warm the worker's pooled connection
            api.call("POST", f"/v1/sandboxes/{keep['id']}/command", {"command": "true"})
        api_exec = []
        for _ in range(args.execs):
            t0 = time.monotonic()
            result = api.call("POST", f"/v1/sandboxes/{keep['id']}/command", {"command": "true"})
            api_exec.append(time.monotonic() - t0)
            assert result["command"]["exit_code"] == 0, result
        credential = ca.issue([f"sandbox-{uuid.UUID(keep['id']).hex}"])
        client = ssh.connect(
            ssh.SSHTarget("127.0.0.1", keep["ssh_port"], "root", keep["host_key"]), credential
        )
        raw_exec = []
        for _ in range(5):
            client.exec_command("true")[1].channel.recv_exit_status()
        for _ in range(args.execs):
            t0 = time.monotonic()
            _, stdout, _ = client.exec_command("true")
            assert stdout.channel.recv_exit_status() == 0
            raw_exec.append(time.monotonic() - t0)
        client.close()
    finally:
        api.call("DELETE", f"/v1/sandboxes/{keep['id']}")

    raw_c, api_c = statistics.median(raw_times), statistics.median(api_times)
    raw_e, api_e = statistics.median(raw_exec), statistics.median(api_exec)
    print()
    print(f"{'measure':<34}{'raw':>12}{'api':>12}{'ratio':>9}   target")
    print(
        f"{'create-to-ready (median of ' + str(args.creates) + ')':<34}{raw_c:>10.2f} s{api_c:>10.2f} s"
        f"{api_c / raw_c:>9.2f}   <= 1.10  {'OK' if api_c <= raw_c * 1.10 else 'MISSED'}"
    )
    print(
        f"{'exec `true` (median of ' + str(args.execs) + ')':<34}{ms(raw_e):>12}{ms(api_e):>12}"
        f"{api_e / raw_e:>9.2f}   <= 1.5x raw + 20 ms = {ms(raw_e * 1.5 + 0.020)}  "
        f"{'OK' if api_e <= raw_e * 1.5 + 0.020 else 'MISSED'}"
    )
    print(
        f"{'exec p90':<34}{ms(statistics.quantiles(raw_exec, n=10)[-1]):>12}"
        f"{ms(statistics.quantiles(api_exec, n=10)[-1]):>12}"
    )


if __name__ == "__main__":
    main()
