"""What an agent sends and a guest holds is data on the host, never a command. Names reach tmux
only when they match their pattern: every name field of every tmux-related route (REST, the
original tmux-client's paths, the websocket) answers 400 naming the field, and nothing happens
on the host. Files whose guest names are hostile are answered, not crashed on.

Driven through a real worker (fake hypervisor) whose relay keeps a control client on every
session — the condition under which tmux runs `#(cmd)` found in a window name — and a real
tmux server on a socket of this module; panes and SFTP reach a loopback sshd that plays the
guest (its filesystem is this machine's: the tests create their files under tmp)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from urllib.parse import quote

import pytest

from core.errors import ServiceError, http_status
from terminals import hostside
from terminals.models import TerminalSession
from terminals.tmux_driver import TmuxDriver
from tests.terminals.conftest import SANDBOX_ID, terminal_socket

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MARKER = f"/tmp/vsb-hostile-input-{os.getpid()}-{uuid.uuid4().hex[:8]}"

# Each is refused in every name field (session names, window names, pane ids, key names).
HOSTILE = [
    f"#(touch {MARKER})",
    f"x#(touch {MARKER})",
    "#(id)",  # no slash: it fits in a URL path segment
    "#{pid}",
    "#S",
    "a\nb",
    "main\n",
    "a;b",
    "a;",
    "a b",
    "a:b",
    "-x",
    "",
    "x" * 65,
]


def _tmux_state(tmux: TmuxDriver) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Sessions, and every pane by session, window id and pane id (not names: a window tmux
    names after its command is renamed as that command changes)."""
    panes = tmux.list_panes()
    return sorted(s["name"] for s in tmux.list_sessions()), sorted(
        (p.session_name, p.window_id, p.pane_id) for p in panes
    )


def _assert_refused(response, field: str, what: str) -> None:
    assert response.status_code == 400, (what, response.status_code, response.content[:300])
    error = response.json()["error"]
    named = {name.split(".")[0] for name in error["fields"]}  # a list item is `keys.0`
    assert error["code"] == "invalid" and named == {field}, (what, error)


def test_every_tmux_name_field_answers_400_naming_it_and_nothing_runs(
    alice, ready_sandbox, term_host
):
    base = f"/v1/sandboxes/{SANDBOX_ID}/terminals"
    sid = str(SANDBOX_ID)
    created = alice.post(
        f"{base}/sessions", {"name": "main", "window_name": "build.log"}, format="json"
    )
    assert created.status_code == 201, created.content
    pane = created.json()["pane"]["pane_id"]
    before = _tmux_state(term_host["tmux"])
    assert before[0] == [f"vsb-{SANDBOX_ID.hex}-main"] and len(before[1]) == 1
    assert [p.window_name for p in term_host["tmux"].list_panes()] == ["build.log"]

    for value in HOSTILE:
        in_path = quote(value, safe="")
        in_query = quote(value, safe="")
        bodies = [
            ("post", f"{base}/sessions", {"name": value}, "name"),
            ("post", f"{base}/sessions", {"session_name": value}, "session_name"),
            ("post", f"{base}/sessions", {"name": "w2", "window_name": value}, "window_name"),
            ("post", f"{base}/panes", {"session_name": value, "new_window": True}, "session_name"),
            ("post", f"{base}/panes", {"window_name": value, "new_window": True}, "window_name"),
            ("post", f"{base}/panes", {"pane_id": value}, "pane_id"),
            ("post", "/api/v1/tmux/sessions/create", {"sandbox_id": sid, "name": value}, "name"),
            (
                "post",
                "/api/v1/tmux/sessions/create",
                {"sandbox_id": sid, "session_name": value},
                "session_name",
            ),
            (
                "post",
                "/api/v1/tmux/sessions/create",
                {"sandbox_id": sid, "name": "w3", "window_name": value},
                "window_name",
            ),
            (
                "post",
                "/api/v1/tmux/panes/create",
                {"sandbox_id": sid, "session_name": value, "new_window": True},
                "session_name",
            ),
            (
                "post",
                "/api/v1/tmux/panes/create",
                {"sandbox_id": sid, "window_name": value, "new_window": True},
                "window_name",
            ),
            ("post", "/api/v1/tmux/panes/create", {"sandbox_id": sid, "pane_id": value}, "pane_id"),
            *[
                (
                    "post",
                    f"/api/v1/tmux/panes/{action}",
                    {"sandbox_id": sid, "pane_id": value, **extra},
                    "pane_id",
                )
                for action, extra in (("send-keys", {"text": "id"}), ("read", {}), ("switch", {}))
            ],  # fmt: skip
            ("post", "/api/v1/tmux/panes/send-keys", {"pane_id": pane, "key": value}, "key"),
            ("post", "/api/v1/tmux/panes/send-keys", {"pane_id": pane, "keys": [value]}, "keys"),
            ("post", f"{base}/panes/{quote(pane)}/send-keys", {"keys": ["Enter", value]}, "keys"),
        ]
        if value:  # an empty path segment or query value is no name at all
            bodies += [
                ("delete", f"{base}/sessions/{in_path}", None, "name"),
                ("post", f"/api/v1/tmux/sessions/{in_path}/release?sandbox_id={sid}", {}, "name"),
                ("post", f"/api/v1/tmux/sessions/{in_path}/release", {}, "name"),
                ("get", f"{base}/windows?session={in_query}", None, "session"),
                ("get", f"{base}/panes?session={in_query}", None, "session"),
                ("get", f"/api/v1/tmux/windows?session={in_query}&sandbox_id={sid}", None,
                 "session"),
                ("get", f"/api/v1/tmux/panes?session={in_query}", None, "session"),
                *[
                    ("post", f"{base}/panes/{in_path}/{action}", extra, "pane_id")
                    for action, extra in (
                        ("send-keys", {"text": "id"}), ("read", {}), ("respawn", {}), ("select", {})
                    )
                ],
                ("delete", f"{base}/panes/{in_path}", None, "pane_id"),
                ("delete", f"/api/v1/tmux/panes/{in_path}?sandbox_id={sid}", None, "pane_id"),
            ]  # fmt: skip
        for method, path, body, field in bodies:
            response = getattr(alice, method)(path, body, format="json")
            if "/" in value and f"/{in_path}" in path.split("?")[0]:
                # A name with a slash cannot be one path segment: no view sees it.
                assert response.status_code == 404, (path, response.status_code)
                continue
            _assert_refused(response, field, f"{method} {path} {body!r}")

    time.sleep(1.5)  # a #(...) job runs in the background; the relay rescans every second
    assert not os.path.exists(MARKER)
    assert _tmux_state(term_host["tmux"]) == before
    assert list(TerminalSession.objects.values_list("name", flat=True)) == ["main"]
    screen = alice.post(f"{base}/panes/{quote(pane)}/read", {}, format="json")
    assert screen.status_code == 200, screen.content
    typed = [v for v in HOSTILE if "#" in v and v in screen.json()["content"]]
    assert typed == [], "refused key names typed nothing"


def _ws(sandbox, query: str, secret: str):
    return terminal_socket(sandbox.id, (b"x-api-key", secret.encode()), query=query)


def test_the_websocket_refuses_hostile_session_and_pane_names(alice, ready_sandbox, term_host):
    async def refused(query: str) -> dict:
        comm = _ws(ready_sandbox, query, alice.secret)
        assert (await comm.connect())[0]
        assert json.loads(await comm.receive_from(5))["type"] == "hello"
        error = json.loads(await comm.receive_from(5))
        assert await comm.receive_output(5) == {"type": "websocket.close", "code": 4400}
        await comm.disconnect()
        return error

    async def next_error(comm) -> dict:
        while True:  # the valid connection's screen may arrive in between
            message = json.loads(await comm.receive_from(10))
            if message["type"] == "error":
                return message

    async def scenario():
        for value in HOSTILE:
            if value:
                error = await refused(f"session={quote(value, safe='')}")
                assert error["code"] == "invalid" and "session" in error["fields"], (value, error)
                error = await refused(f"pane={quote(value, safe='')}")
                assert error["code"] == "invalid" and "pane" in error["fields"], (value, error)
        comm = _ws(ready_sandbox, "session=main", alice.secret)
        assert (await comm.connect())[0]
        assert json.loads(await comm.receive_from(5))["type"] == "hello"
        for value in HOSTILE:
            if value:
                await comm.send_to(text_data=json.dumps({"type": "select", "pane": value}))
                error = await next_error(comm)
                assert error["type"] == "error" and "pane" in error["fields"], (value, error)
        await comm.send_to(text_data=json.dumps({"type": "input", "data": "x" * 70000}))
        error = await next_error(comm)
        assert error["code"] == "too_large" and "data" in error["fields"]
        await comm.disconnect()

    asyncio.run(scenario())
    time.sleep(1.5)
    assert not os.path.exists(MARKER)
    sessions, _ = _tmux_state(term_host["tmux"])
    assert sessions == [f"vsb-{SANDBOX_ID.hex}-main"], "only the valid connection made one"


def test_the_host_side_refuses_hostile_names_if_the_web_side_check_is_bypassed(
    alice, ready_sandbox, term_host
):
    """What reaches the worker through Redis is checked again before a certificate is issued
    or tmux is called."""
    tmux_main = f"vsb-{SANDBOX_ID.hex}-main"
    created = alice.post(
        f"/v1/sandboxes/{SANDBOX_ID}/terminals/sessions", {"name": "main"}, format="json"
    )
    assert created.status_code == 201, created.content
    pane = created.json()["pane"]["pane_id"]
    before = _tmux_state(term_host["tmux"])
    keys_before = sorted(os.listdir(term_host["dir"] / SANDBOX_ID.hex))
    scope = {"allowed": [SANDBOX_ID.hex], "allowed_ids": {SANDBOX_ID.hex: str(SANDBOX_ID)}}
    for value in HOSTILE:
        for op, params, field in (
            ("create_session", {"tmux_name": f"vsb-{SANDBOX_ID.hex}-{value}"}, "name"),
            ("new_window", {"tmux_name": f"vsb-{uuid.uuid4().hex}-main"}, "name"),
            ("create_session", {"tmux_name": f"{tmux_main}2", "window_name": value}, "window_name"),
            ("new_window", {"tmux_name": tmux_main, "window_name": value}, "window_name"),
            ("send", {**scope, "pane_id": value, "text": "typed-anyway"}, "pane_id"),
            ("send", {**scope, "pane_id": pane, "text": "typed-anyway", "keys": [value]}, "keys"),
            ("kill_pane", {**scope, "pane_id": value}, "pane_id"),
        ):
            if field == "window_name" and value == "":
                continue  # "" from the web side means "no name given"
            with pytest.raises(ServiceError) as refused:
                hostside.run(op, {"sandbox_id": str(SANDBOX_ID), **params})
            assert (http_status(refused.value), list(refused.value.fields)) == (400, [field]), (
                op,
                value,
            )
    time.sleep(1.5)
    assert not os.path.exists(MARKER)
    assert _tmux_state(term_host["tmux"]) == before
    assert sorted(os.listdir(term_host["dir"] / SANDBOX_ID.hex)) == keys_before
    assert "typed-anyway" not in term_host["tmux"].capture(pane)


def test_guest_file_names_are_data_in_answers_never_headers_or_crashes(
    alice, ready_sandbox, tmp_path
):
    """A name the guest chose (here reached through a symlink it resolves) may hold CR/LF or
    bytes that are not UTF-8: a download still answers with one Content-Disposition header,
    a listing with a 4xx naming the path."""
    work = tmp_path / "guest-files"
    work.mkdir()
    hostile = "report\r\nX-Injected: 1.txt"
    (work / hostile).write_bytes(b"data")
    os.symlink(work / hostile, work / "latest")
    os.mkdir(os.path.join(bytes(work), b"caf\xe9"))
    base = f"/v1/sandboxes/{SANDBOX_ID}/files"
    response = alice.get(f"{base}/download", {"path": str(work / "latest")})
    assert response.status_code == 200 and response.content == b"data"
    assert "X-Injected" not in response.headers
    disposition = response["Content-Disposition"]
    assert disposition == (
        'attachment; filename="report__X-Injected_ 1.txt"; '
        "filename*=UTF-8''report%0D%0AX-Injected%3A%201.txt"
    )
    listing = alice.get(f"{base}/list", {"path": str(work)})
    assert listing.status_code == 422, listing.content
    error = listing.json()["error"]
    assert error["code"] == "not_utf8" and "path" in error["fields"]
