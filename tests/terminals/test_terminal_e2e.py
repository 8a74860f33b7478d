"""Terminals and files end to end: a real guest (libvirt + QEMU), the host's real worker
pools (the relay and tmux in the terminals pool), daphne for HTTP, and the real ASGI app for websockets (Channels'
WebsocketCommunicator against config.asgi.application, on the same Redis channel layer as
the worker's relay). One sandbox for the whole module."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.request

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from audit.models import AuditEvent
from tests.support.stack import ARTIFACTS

from .conftest import FILE_ROOT, terminal_socket, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


@pytest.fixture(scope="module")
def sandbox(term_stack):
    status, body = term_stack.alice.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base", "agent_id": "term-e2e", "wait_for_ip": True},
    )
    assert status == 201, body
    sb = body["sandbox"]
    yield sb
    term_stack.alice.delete(f"/v1/sandboxes/{sb['id']}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if term_stack.alice.get(f"/v1/sandboxes/{sb['id']}")[1]["sandbox"]["state"] == "destroyed":
            break
        time.sleep(0.5)


def poll(fn):
    return wait_for(fn, timeout=20, interval=0.2)


def read_screen(api, pane_id: str, **extra) -> str:
    status, body = api.post("/api/v1/tmux/panes/read", {"pane_id": pane_id, **extra})
    assert status == 200, body
    return body["content"]


def ws_headers(key: str | None = None, cookie: str | None = None) -> list:
    headers = []
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return headers


def communicator(sandbox, headers) -> WebsocketCommunicator:
    return terminal_socket(sandbox["id"], *headers)


async def receive_until(comm, predicate, timeout: float = 30) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = await comm.receive_from(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        message = json.loads(raw)
        seen.append(message)
        if predicate(message, seen):
            return seen
    raise AssertionError(f"not received in {timeout} s; last: {seen[-5:]}")


def text_of(messages) -> str:
    return "".join(m.get("data", "") for m in messages if m["type"] in ("screen", "output"))


def operator_cookie(term_stack) -> str:
    """A logged-in operator's session cookie. Written from another thread (its own, autocommit
    connection): the consumer reads it on yet another connection, and the test's own
    connection sits in a transaction nobody else can see."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def login() -> str:
        try:
            client = Client()
            with term_stack.blocker.unblock():
                client.force_login(term_stack.olivia)
            return f"sessionid={client.cookies['sessionid'].value}"
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(login).result()


# --- REST ---------------------------------------------------------------------------------


def test_it_types_through_rest_and_reads_the_screen(term_stack, sandbox):
    alice = term_stack.alice
    status, body = alice.post(f"/v1/sandboxes/{sandbox['id']}/terminals/sessions", {"name": "work"})
    assert status == 201, body
    pane = body["pane"]["pane_id"]
    assert body["pane"]["session_name"] == "work"
    # The pane is ssh into the guest: the prompt comes from the VM.
    poll(lambda: "#" in read_screen(alice, pane))
    status, sent = alice.post(
        "/api/v1/tmux/panes/send-keys",
        {"pane_id": pane, "text": "echo hi $((6*7))", "key": "Enter"},
    )
    assert status == 200 and sent == {"pane_id": pane, "sent": True}, sent
    screen = poll(lambda: (s := read_screen(alice, pane)) and "hi 42" in s and s)
    assert "echo hi $((6*7))" in screen
    status, sent = alice.post(
        f"/v1/sandboxes/{sandbox['id']}/terminals/panes/{pane[1:]}/send-keys",
        {"text": "seq 1 500; hostname", "enter": True},
    )
    assert status == 200, sent
    poll(lambda: f"\n500\n{sandbox['name']}" in read_screen(alice, pane))
    tail = read_screen(alice, pane, last_n_lines=300)
    assert "250\n251\n" in tail
    status, panes = alice.get(f"/v1/sandboxes/{sandbox['id']}/terminals/panes?session=work")
    assert status == 200 and [p["pane_id"] for p in panes["panes"]] == [pane]
    with term_stack.blocker.unblock():
        typed = AuditEvent.objects.filter(verb="terminal.input", actor="user:e2e-alice")
        assert any(
            e.data["text"] == "echo hi $((6*7))" and e.data["keys"] == ["Enter"] for e in typed
        )
        assert all(str(e.sandbox_id) == sandbox["id"] for e in typed)


def test_another_agent_cannot_reach_the_terminals_or_files(term_stack, sandbox):
    alice, bob = term_stack.alice, term_stack.bob
    status, body = alice.get(f"/v1/sandboxes/{sandbox['id']}/terminals/panes")
    pane = body["panes"][0]["pane_id"]
    assert bob.post("/api/v1/tmux/panes/send-keys", {"pane_id": pane, "text": "id"})[0] == 404
    assert bob.post("/api/v1/tmux/panes/read", {"pane_id": pane})[0] == 404
    status, body = bob.get(f"/v1/sandboxes/{sandbox['id']}/terminals/sessions")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert bob.get(f"/v1/sandboxes/{sandbox['id']}/files/stat?path=/etc")[0] == 404
    status, body = alice.post("/api/v1/tmux/panes/send-keys", {"pane_id": pane, "keys": ["Entr"]})
    assert status == 400 and "keys" in body["error"]["fields"], body


# --- websocket ------------------------------------------------------------------------------


def test_websocket_viewers_see_output_live_and_keystrokes_run_in_the_vm(term_stack, sandbox):
    key = term_stack.keys["e2e-alice"]

    async def scenario():
        first = communicator(sandbox, ws_headers(key))
        second = communicator(sandbox, ws_headers(key))
        try:
            assert (await first.connect())[0] and (await second.connect())[0]
            hello = await receive_until(first, lambda m, _: m["type"] == "screen")
            assert hello[0]["type"] == "hello" and hello[0]["role"] == "control"
            await receive_until(second, lambda m, _: m["type"] == "screen")
            # Typed in one browser tab, run in the guest, seen live by both viewers.
            await first.send_to(
                text_data=json.dumps({"type": "input", "data": "echo ws $((7*6))\r"})
            )
            got = await receive_until(first, lambda _, seen: "ws 42" in text_of(seen))
            also = await receive_until(second, lambda _, seen: "ws 42" in text_of(seen))
            seqs = [m["seq"] for m in got if m["type"] == "output"]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert also
            # Output caused by someone else (the REST API) streams live too.
            pane = got[-1]["pane"]
            status, _ = await asyncio.to_thread(
                term_stack.alice.post,
                "/api/v1/tmux/panes/send-keys",
                {"pane_id": pane, "text": "uname -s", "enter": True},
            )
            assert status == 200
            await receive_until(second, lambda _, seen: "Linux" in text_of(seen))
        finally:
            await first.disconnect()
            await second.disconnect()
        # A reconnect starts from the current screen, which already shows the output.
        third = communicator(sandbox, ws_headers(key))
        try:
            await third.connect()
            again = await receive_until(third, lambda m, _: m["type"] == "screen")
            assert "ws 42" in again[-1]["data"] and "Linux" in again[-1]["data"]
        finally:
            await third.disconnect()

    asyncio.run(scenario())


def test_another_agent_is_closed_with_4403(term_stack, sandbox):
    async def scenario():
        for headers in (ws_headers(term_stack.keys["e2e-bob"]), ws_headers()):
            comm = communicator(sandbox, headers)
            connected, _ = await comm.connect()
            assert connected
            closed = await comm.receive_output(timeout=10)
            assert closed == {"type": "websocket.close", "code": 4403}
            await comm.wait()

    asyncio.run(scenario())


def test_an_operator_watches_read_only_then_takes_over_with_an_audit_trail(term_stack, sandbox):
    cookie = operator_cookie(term_stack)

    async def scenario():
        comm = communicator(sandbox, ws_headers(cookie=cookie))
        try:
            await comm.connect()
            seen = await receive_until(comm, lambda m, _: m["type"] == "screen")
            assert seen[0]["role"] == "view"
            await comm.send_to(text_data=json.dumps({"type": "input", "data": "echo nope\r"}))
            refused = await receive_until(comm, lambda m, _: m["type"] == "error")
            assert refused[-1]["code"] == "read_only"
            await comm.send_to(text_data=json.dumps({"type": "takeover"}))
            await receive_until(comm, lambda m, _: m["type"] == "control")
            pane = seen[-1]["pane"]
            # While the operator holds the keyboard the agent's typing is refused.
            status, body = await asyncio.to_thread(
                term_stack.alice.post,
                "/api/v1/tmux/panes/send-keys",
                {"pane_id": pane, "text": "echo agent"},
            )
            assert status == 409 and body["error"]["code"] == "taken_over", body
            await comm.send_to(
                text_data=json.dumps({"type": "input", "data": "echo op $((5*5))\r"})
            )
            await receive_until(comm, lambda _, s: "op 25" in text_of(s))
            await comm.send_to(text_data=json.dumps({"type": "release"}))
            await receive_until(comm, lambda m, _: m["type"] == "control")
        finally:
            await comm.disconnect()

    asyncio.run(scenario())
    with term_stack.blocker.unblock():
        takeover = AuditEvent.objects.get(verb="terminal.takeover")
        assert takeover.actor == "user:e2e-olivia" and str(takeover.sandbox_id) == sandbox["id"]
        typed = AuditEvent.objects.filter(verb="terminal.input", actor="user:e2e-olivia")
        assert "echo op $((5*5))\r" in "".join(e.data["text"] for e in typed)
        assert AuditEvent.objects.filter(verb="terminal.release", actor="user:e2e-olivia").exists()
    status, _ = term_stack.alice.post(
        "/api/v1/tmux/panes/send-keys", {"pane_id": pane_of(term_stack, sandbox), "keys": ["C-l"]}
    )
    assert status == 200, "released: the agent types again"


def pane_of(term_stack, sandbox) -> str:
    return term_stack.alice.get(f"/v1/sandboxes/{sandbox['id']}/terminals/panes?session=main")[1][
        "panes"
    ][0]["pane_id"]


# --- files ----------------------------------------------------------------------------------


def upload(term_stack, sandbox, path: str, data: bytes, query: str = ""):
    req = urllib.request.Request(
        f"{term_stack.url}/v1/sandboxes/{sandbox['id']}/files/upload?path={path}{query}",
        data=data,
        method="PUT",
        headers={
            "Authorization": f"Bearer {term_stack.keys['e2e-alice']}",
            "Content-Type": "application/octet-stream",
        },
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, json.loads(resp.read())


def download(term_stack, sandbox, path: str) -> bytes:
    req = urllib.request.Request(
        f"{term_stack.url}/v1/sandboxes/{sandbox['id']}/files/download?path={path}",
        headers={"Authorization": f"Bearer {term_stack.keys['e2e-alice']}"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


def test_files_round_trip_10_mb_exactly_and_refuse_escapes(term_stack, sandbox):
    alice, base = term_stack.alice, f"/v1/sandboxes/{sandbox['id']}"
    blob = os.urandom(10 * 1024 * 1024)
    status, body = upload(
        term_stack, sandbox, f"{FILE_ROOT}/in/blob.bin", blob, "&create_dirs=true"
    )
    assert status == 200 and body["bytes_written"] == len(blob), body
    assert download(term_stack, sandbox, f"{FILE_ROOT}/in/blob.bin") == blob
    status, cmd = alice.post(f"{base}/command", {"command": f"sha256sum {FILE_ROOT}/in/blob.bin"})
    assert cmd["command"]["stdout"].split()[0] == hashlib.sha256(blob).hexdigest()

    status, body = alice.post(
        f"{base}/files/write", {"path": f"{FILE_ROOT}/app.conf", "content": "port=80\nhost=a\n"}
    )
    assert status == 200 and body["created"], body
    status, body = alice.post(
        f"{base}/files/edit",
        {"path": f"{FILE_ROOT}/app.conf", "old_text": "port=80", "new_text": "port=8080"},
    )
    assert status == 200 and "-port=80\n+port=8080\n" in body["diff"], body
    status, body = alice.get(f"{base}/files/read?path={FILE_ROOT}/app.conf")
    assert body["content"] == "port=8080\nhost=a\n"
    status, body = alice.get(f"{base}/files/list?path={FILE_ROOT}")
    assert {e["name"] for e in body["entries"]} == {"in", "app.conf"}

    # ../ out of the allowed directory, and symlinks that lead out of it: 403.
    status, body = alice.get(f"{base}/files/read?path={FILE_ROOT}/../etc/passwd")
    assert status == 403 and body["error"]["code"] == "path_denied", body
    alice.post(
        f"{base}/command",
        {"command": f"ln -s /etc/shadow {FILE_ROOT}/shadow; ln -s /etc {FILE_ROOT}/etc"},
    )
    status, body = alice.get(f"{base}/files/read?path={FILE_ROOT}/shadow")
    assert status == 403 and "/etc/shadow" in body["error"]["message"], body
    status, body = alice.post(
        f"{base}/files/write", {"path": f"{FILE_ROOT}/etc/evil", "content": "x"}
    )
    assert status == 403, body
    status, cmd = alice.post(f"{base}/command", {"command": "test -e /etc/evil; echo $?"})
    assert cmd["command"]["stdout"] == "1\n"
    status, body = alice.post(
        f"{base}/files/delete", {"path": f"{FILE_ROOT}/in", "recursive": True}
    )
    assert status == 200 and body["was_dir"], body
    with term_stack.blocker.unblock():
        assert AuditEvent.objects.filter(verb="file.upload", sandbox_id=sandbox["id"]).exists()
        edit = AuditEvent.objects.get(verb="file.edit", sandbox_id=sandbox["id"])
        assert edit.data["path"] == f"{FILE_ROOT}/app.conf"


# --- the page in a real browser ------------------------------------------------------------


def test_the_terminal_page_runs_a_command_in_headless_chromium(term_stack, sandbox):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(
            f"{term_stack.url}/admin/login/?next=/admin/sandboxes/sandbox/{sandbox['id']}/change/"
        )
        browser.find_element(By.NAME, "username").send_keys("e2e-olivia")
        browser.find_element(By.NAME, "password").send_keys("olivia-pass-1")
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        link = wait.until(lambda b: b.find_element(By.LINK_TEXT, "Open the live terminal"))
        browser.get(link.get_attribute("href"))
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("pane %"))
        browser.find_element(By.ID, "takeover").click()
        wait.until(lambda b: "taken over by e2e-olivia" in b.find_element(By.ID, "role").text)
        browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys(
            "echo browser $((6*7))\n"
        )
        wait.until(lambda b: "browser 42" in b.find_element(By.CSS_SELECTOR, ".xterm-rows").text)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "terminal-page.png"))
        assert (ARTIFACTS / "terminal-page.png").stat().st_size > 1000
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "terminal-page-failure.png"))
        (ARTIFACTS / "terminal-page-failure.html").write_text(browser.page_source)
        raise
    finally:
        browser.quit()
