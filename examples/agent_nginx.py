#!/usr/bin/env python3
"""An admin agent that sets up a small web service in a sandbox, using only the SDK.

The task: serve a static site with the guest's own packages (python3's http.server; the
guest is an offline Debian 12), configured by an environment file, run by a systemd unit
that is enabled at boot, and check that it answers. Around the work the agent checkpoints
("before"/"after"), shows exactly what changed, and, on servers that have them, asks a human
to approve and exports the Ansible playbook that reproduces the change. The sandbox is
destroyed at the end.

    VIRSH_SANDBOX_API_KEY=vsb_... python examples/agent_nginx.py [--url http://127.0.0.1:8080]

Scripted by default (no LLM). ``--llm`` lets a model do the work with the same tools; it
reads OPENAI_API_KEY (OpenAI-compatible, OPENAI_BASE_URL/OPENAI_MODEL) or ANTHROPIC_API_KEY
(ANTHROPIC_MODEL) from the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from virsh_sandbox import VirshSandbox, VirshSandboxError

HUMAN_ASK = ("POST", "/api/v1/human/ask")
PLAYBOOK = ("GET", "/v1/sandboxes/{id}/playbook")

PORT = 8080
SITE = "<!doctype html>\n<title>webapp</title>\n<h1>Hello from webapp</h1>\n"
CONFIG = f"WEBAPP_PORT={PORT}\nWEBAPP_BIND=0.0.0.0\nWEBAPP_ROOT=/srv/webapp\n"
UNIT = """[Unit]
Description=Static web site (python3 http.server)
After=network.target

[Service]
EnvironmentFile=/etc/webapp/webapp.env
ExecStart=/usr/bin/python3 -m http.server ${WEBAPP_PORT} --bind ${WEBAPP_BIND} --directory ${WEBAPP_ROOT}
User=www-data
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""
# Enable for the next boot; start it now. Under systemd, systemctl does both. The fast
# image boots busybox init (no systemd running), where the unit is still enabled for a
# systemd boot and the same command line is started directly, as the unit would.
ENABLE_AND_START = r"""set -e
systemctl enable webapp.service 2>/dev/null || \
  ln -sf /etc/systemd/system/webapp.service /etc/systemd/system/multi-user.target.wants/webapp.service
if [ -d /run/systemd/system ]; then
  systemctl restart webapp.service
else
  set -a; . /etc/webapp/webapp.env; set +a
  setsid runuser -u www-data -- python3 -m http.server "$WEBAPP_PORT" --bind "$WEBAPP_BIND" \
    --directory "$WEBAPP_ROOT" > /var/log/webapp.log 2>&1 < /dev/null &
fi
echo started
"""
# curl is not in the image; python3 is.
CHECK = f"""python3 - <<'PY'
import time, urllib.request
for attempt in range(1, 51):
    try:
        with urllib.request.urlopen("http://127.0.0.1:{PORT}/", timeout=2) as r:
            body = r.read().decode()
        print(f"attempt {{attempt}}: HTTP {{r.status}}")
        print(body.strip().splitlines()[-1])
        break
    except OSError as exc:
        print(f"attempt {{attempt}}: not yet ({{exc.__class__.__name__}})", flush=True)
        time.sleep(0.2)
else:
    raise SystemExit("webapp did not answer")
PY
"""
EXPECTED_PATHS = {
    "/srv/webapp/index.html",
    "/etc/webapp/webapp.env",
    "/etc/systemd/system/webapp.service",
    "/etc/systemd/system/multi-user.target.wants/webapp.service",
}


@dataclass
class Report:
    sandbox_id: str = ""
    answered: str = ""
    changed_paths: list[str] = field(default_factory=list)
    units_enabled: list[str] = field(default_factory=list)
    approval: str = "skipped: server has no /api/v1/human/ask yet"
    playbook: str = "skipped: server has no playbook endpoint yet"
    destroyed: bool = False
    seconds: float = 0.0


def say(message: str) -> None:
    print(f"[agent] {message}", flush=True)


def run(client: VirshSandbox, sandbox_id: str, command: str) -> str:
    result = client.sandbox.run_sandbox_command(sandbox_id, command, timeout_seconds=120)
    if result.exit_code != 0:
        raise SystemExit(f"command failed ({result.exit_code}): {command}\n{result.stderr}")
    return result.stdout


# -- the work -----------------------------------------------------------------------------------


def configure_webapp(client: VirshSandbox, sandbox_id: str) -> str:
    """The scripted admin work; returns what the site answered."""
    say("python3 in the guest: " + run(client, sandbox_id, "python3 --version").strip())
    for path, content, mode in (
        ("/srv/webapp/index.html", SITE, "0644"),
        ("/etc/webapp/webapp.env", CONFIG, "0644"),
        ("/etc/systemd/system/webapp.service", UNIT, "0644"),
    ):
        client.files.write_file(sandbox_id, path, content, mode=mode)
        say(f"wrote {path} ({len(content)} bytes)")
    back = client.files.read_file(sandbox_id, "/etc/webapp/webapp.env").text
    assert back == CONFIG, f"config read back differs: {back!r}"
    say("enable and start: " + run(client, sandbox_id, ENABLE_AND_START).strip())
    say("checking that it answers (output streamed):")
    lines: list[str] = []
    exit_code = None
    for event in client.sandbox.stream_command(sandbox_id, CHECK, timeout_seconds=60):
        if event.kind == "exit":
            exit_code = event.exit_code
        elif event.data:
            for line in event.data.splitlines():
                print(f"    {event.kind}: {line}", flush=True)
            lines.extend(event.data.splitlines())
    if exit_code != 0:
        raise SystemExit(f"the site did not answer (exit {exit_code})")
    return lines[-1] if lines else ""


# -- human approval and playbook export, on servers that have them ------------------------------


def request_approval(client: VirshSandbox, sandbox_id: str, report: Report) -> bool:
    """Ask a person to approve applying the change to production. Returns True when
    approved, or when the server has no approval endpoint yet (nothing to ask)."""
    if not client.supports(*HUMAN_ASK):
        say(report.approval)
        return True
    say("asking a human to approve applying webapp to production ...")
    answer = client.human.ask(
        "Apply the webapp service (python3 http.server on :8080, enabled at boot) to production?",
        action_type="apply_change",
        sandbox_id=sandbox_id,
        timeout_secs=600,
    )
    report.approval = answer.status or ("approved" if answer.is_approved else "denied")
    say(f"approval: {report.approval} {('by ' + answer.decided_by) if answer.decided_by else ''}")
    return answer.is_approved


def export_playbook(client: VirshSandbox, sandbox_id: str, report: Report, path: str) -> None:
    """Save the Ansible playbook that reproduces before -> after, if the server makes one."""
    if not client.supports(*PLAYBOOK):
        say(report.playbook)
        return
    playbook = client.playbooks.get_playbook(sandbox_id, "before", "after")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(playbook.yaml or "")
    report.playbook = path
    syntax = {True: "syntax ok", False: "syntax FAILED", None: "syntax not checked"}[
        playbook.syntax_ok
    ]
    say(f"playbook v{playbook.version} written to {path} ({syntax})")
    for warning in playbook.warnings or []:
        say(f"  playbook warning: {warning}")


# -- optional LLM mode --------------------------------------------------------------------------

TASK = (
    "You are a Linux admin working in a disposable Debian 12 VM with no internet access. "
    f"Serve a static site from /srv/webapp on port {PORT} using python3 -m http.server, "
    "configured by /etc/webapp/webapp.env, run by a systemd unit /etc/systemd/system/"
    "webapp.service that is enabled at boot. systemd may not be PID 1: if /run/systemd/system "
    "is missing, start the same command in the background yourself. curl is not installed; "
    "check with python3 that the site answers, then call done."
)
TOOLS = {
    "run_command": (
        "Run a shell command as root; returns exit code, stdout, stderr.",
        {"command": "string"},
    ),
    "write_file": ("Write a text file.", {"path": "string", "content": "string"}),
    "read_file": ("Read a text file.", {"path": "string"}),
    "done": ("Finish, with a one-line summary.", {"summary": "string"}),
}


def llm_key() -> tuple[str, str]:
    if os.environ.get("OPENAI_API_KEY"):
        return "openai", os.environ["OPENAI_API_KEY"]
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic", os.environ["ANTHROPIC_API_KEY"]
    raise SystemExit(
        "--llm needs OPENAI_API_KEY (or an OpenAI-compatible OPENAI_BASE_URL) or ANTHROPIC_API_KEY "
        "in the environment; without --llm the agent runs its scripted steps."
    )


def run_tool(client: VirshSandbox, sandbox_id: str, name: str, args: dict[str, Any]) -> str:
    try:
        if name == "run_command":
            cmd = client.sandbox.run_sandbox_command(
                sandbox_id, args["command"], timeout_seconds=120
            ).command
            return json.dumps(
                {
                    "exit_code": cmd.exit_code,
                    "stdout": cmd.stdout[-4000:],
                    "stderr": cmd.stderr[-2000:],
                }
            )
        if name == "write_file":
            client.files.write_file(sandbox_id, args["path"], args["content"])
            return "written"
        if name == "read_file":
            return client.files.read_file(sandbox_id, args["path"]).text[-8000:]
    except (VirshSandboxError, KeyError) as exc:
        return f"error: {exc}"
    return f"error: unknown tool {name}"


def tool_specs() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, JSON schema of the arguments) of each tool, for either provider."""
    return [
        (
            name,
            desc,
            {
                "type": "object",
                "properties": {k: {"type": t} for k, t in props.items()},
                "required": list(props),
            },
        )
        for name, (desc, props) in TOOLS.items()
    ]


def llm_step(
    provider: str, key: str, messages: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    """One model turn: (text, [{"id", "name", "arguments"}]). Appends the assistant turn."""
    import httpx

    if provider == "openai":
        tools = [
            {
                "type": "function",
                "function": {"name": name, "description": desc, "parameters": schema},
            }
            for name, desc, schema in tool_specs()
        ]
        base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        resp = httpx.post(
            f"{base}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
                "messages": messages,
                "tools": tools,
            },
            timeout=120,
        )
        resp.raise_for_status()
        msg = resp.json()["choices"][0]["message"]
        messages.append(msg)
        calls = [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"] or "{}"),
            }
            for c in msg.get("tool_calls") or []
        ]
        return msg.get("content") or "", calls
    tools = [
        {"name": name, "description": desc, "input_schema": schema}
        for name, desc, schema in tool_specs()
    ]
    resp = httpx.post(
        "https://api.anthropic.com/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={
            "model": os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5"),
            "max_tokens": 2048,
            "system": TASK,
            "messages": [m for m in messages if m["role"] != "system"],
            "tools": tools,
        },
        timeout=120,
    )
    resp.raise_for_status()
    content = resp.json()["content"]
    messages.append({"role": "assistant", "content": content})
    text = " ".join(block.get("text", "") for block in content if block["type"] == "text")
    calls = [
        {"id": b["id"], "name": b["name"], "arguments": b.get("input") or {}}
        for b in content
        if b["type"] == "tool_use"
    ]
    return text, calls


def configure_with_llm(client: VirshSandbox, sandbox_id: str, max_turns: int = 30) -> str:
    provider, key = llm_key()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": TASK},
        {"role": "user", "content": "Begin."},
    ]
    for _ in range(max_turns):
        text, calls = llm_step(provider, key, messages)
        if text:
            say(f"model: {text.strip()[:300]}")
        if not calls:
            messages.append({"role": "user", "content": "Use the tools; call done when finished."})
            continue
        results = []
        for call in calls:
            if call["name"] == "done":
                return call["arguments"].get("summary", "")
            say(f"tool {call['name']} {json.dumps(call['arguments'])[:200]}")
            results.append((call, run_tool(client, sandbox_id, call["name"], call["arguments"])))
        if provider == "openai":
            messages.extend(
                {"role": "tool", "tool_call_id": c["id"], "content": out} for c, out in results
            )
        else:
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": c["id"], "content": out}
                        for c, out in results
                    ],
                }
            )
    raise SystemExit(f"the model did not finish in {max_turns} turns")


# -- the agent ----------------------------------------------------------------------------------


def agent(client: VirshSandbox, args: argparse.Namespace) -> Report:
    report = Report()
    started = time.monotonic()
    say(f"creating a sandbox from {args.source} ...")
    sandbox = client.sandbox.create_sandbox(
        source_vm_name=args.source, agent_id=args.agent_id, auto_start=True, wait_for_ip=True
    ).sandbox
    report.sandbox_id = sandbox.id
    say(f"sandbox {sandbox.name} ({sandbox.id}) is {sandbox.state}")
    try:
        client.sandbox.create_snapshot(sandbox.id, name="before", description="clean clone")
        say("checkpoint 'before' taken")
        if args.llm:
            report.answered = configure_with_llm(client, sandbox.id)
        else:
            report.answered = configure_webapp(client, sandbox.id)
        say(f"the site answered: {report.answered}")
        client.sandbox.create_snapshot(sandbox.id, name="after", description="webapp configured")
        say("checkpoint 'after' taken")

        diff = client.sandbox.get_diff(sandbox.id, "before", "after")
        report.changed_paths = sorted(f.path for f in diff.files.results)
        report.units_enabled = sorted(u["name"] for u in (diff.units or {}).get("enabled", []))
        say(f"diff before -> after: {diff.summary}")
        for change in diff.files.results:
            print(f"    {change.change:9} {change.path}")
        missing = EXPECTED_PATHS - set(report.changed_paths)
        if not args.llm and missing:
            raise SystemExit(f"the diff misses {sorted(missing)}")

        if request_approval(client, sandbox.id, report):
            export_playbook(client, sandbox.id, report, args.playbook_out)
        else:
            say("not approved: nothing exported")
    finally:
        if args.keep:
            say(f"keeping sandbox {sandbox.id} (--keep)")
        else:
            client.sandbox.destroy_sandbox(sandbox.id)
            report.destroyed = True
            say("sandbox destroyed")
        report.seconds = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("VIRSH_SANDBOX_URL", "http://127.0.0.1:8080")
    )
    parser.add_argument("--api-key", default=None, help="default: $VIRSH_SANDBOX_API_KEY")
    parser.add_argument("--source", default="debian-base", help="source VM to clone")
    parser.add_argument("--agent-id", default="webapp-setup-agent")
    parser.add_argument("--playbook-out", default="webapp-playbook.yml")
    parser.add_argument("--report", help="write a JSON report to this file")
    parser.add_argument("--keep", action="store_true", help="do not destroy the sandbox")
    parser.add_argument(
        "--llm", action="store_true", help="let a model do the work (needs an API key)"
    )
    args = parser.parse_args(argv)
    if args.llm:
        llm_key()  # fail before creating anything
    with VirshSandbox(args.url, api_key=args.api_key) as client:
        try:
            report = agent(client, args)
        except VirshSandboxError as exc:
            print(f"[agent] error from the server: {exc}", file=sys.stderr)
            return 1
    say(f"done in {report.seconds} s")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(asdict(report), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
