"""The example agent's optional LLM mode without a model: a stand-in for the provider's HTTP
API drives the tool loop against a real local shell. (The scripted mode runs end to end
against real VMs in test_e2e.)"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import httpx
import pytest
from virsh_sandbox import VirshSandbox

from tests.sdk.fakes import LocalShellServer
from tests.support.stack import ROOT

AGENT = ROOT / "examples" / "agent_nginx.py"


@pytest.fixture
def agent_module(monkeypatch):
    spec = importlib.util.spec_from_file_location("agent_nginx", AGENT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "agent_nginx", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_llm_mode_without_a_key_stops_before_creating_anything():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    # An unreachable URL: reaching the server at all would be a different error.
    run = subprocess.run(
        [sys.executable, str(AGENT), "--llm", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode != 0
    assert "--llm needs OPENAI_API_KEY" in run.stderr and "ANTHROPIC_API_KEY" in run.stderr
    assert "creating a sandbox" not in run.stdout


class FakeModel:
    """Plays a model that writes a file, reads it back with a command, then says done."""

    def __init__(self, provider: str, target: str) -> None:
        self.provider = provider
        self.plan = [
            ("write_file", {"path": target, "content": "WEBAPP_PORT=8080\n"}),
            ("run_command", {"command": f"cat {target}"}),
            ("done", {"summary": "configured"}),
        ]
        self.requests: list[dict] = []

    def __call__(self, url, headers=None, json=None, timeout=None):
        # A copy: the agent keeps appending to the list it sent.
        self.requests.append({"url": url, "headers": headers, "json": copy.deepcopy(json)})
        name, args = self.plan.pop(0)
        call_id = f"call_{len(self.requests)}"
        if self.provider == "openai":
            body = {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": call_id,
                                    "type": "function",
                                    "function": {"name": name, "arguments": _json(args)},
                                }
                            ],
                        }
                    }
                ]
            }
        else:
            body = {"content": [{"type": "tool_use", "id": call_id, "name": name, "input": args}]}
        return httpx.Response(200, json=body, request=httpx.Request("POST", url))


def _json(value) -> str:
    return json.dumps(value)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_llm_mode_runs_the_models_tool_calls_in_the_sandbox(
    provider, agent_module, tmp_path, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", "sk-test")
    target = tmp_path / "etc" / "webapp.env"
    model = FakeModel(provider, str(target))
    monkeypatch.setattr(httpx, "post", model)
    client = VirshSandbox(
        "http://x",
        api_key="k",
        backoff=0,
        transport=httpx.MockTransport(LocalShellServer(tmp_path)),
    )

    summary = agent_module.configure_with_llm(client, "5f0c3a52-4a59-4be4-9f5c-2f0a5b1c9d11")

    assert summary == "configured"
    assert target.read_text() == "WEBAPP_PORT=8080\n"
    # The command's result went back to the model as the tool's answer.
    last = model.requests[-1]["json"]["messages"][-1]
    if provider == "openai":
        assert model.requests[0]["url"].endswith("/chat/completions")
        assert (
            last["role"] == "tool" and json.loads(last["content"])["stdout"] == "WEBAPP_PORT=8080\n"
        )
        tools = {t["function"]["name"] for t in model.requests[0]["json"]["tools"]}
    else:
        assert model.requests[0]["headers"]["x-api-key"] == "sk-test"
        result = last["content"][0]
        assert result["type"] == "tool_result"
        assert json.loads(result["content"])["stdout"] == "WEBAPP_PORT=8080\n"
        tools = {t["name"] for t in model.requests[0]["json"]["tools"]}
    assert tools == {"run_command", "write_file", "read_file", "done"}
