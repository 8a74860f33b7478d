"""The tmux driver against a real tmux server on a private socket."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from terminals.tmux_driver import (
    InvalidTmuxArgument,
    TmuxError,
    TmuxNotFound,
    decode_output,
    input_commands,
    known_hosts_line,
    valid_key_name,
    write_credentials,
)
from tests.terminals.conftest import wait_for


def test_it_types_text_byte_for_byte_and_reads_the_screen(tmux):
    pane = tmux.new_session("vsb-unit-a", "env PS1='$ ' sh", cols=80, rows=24)
    assert pane.pane_id.startswith("%") and (pane.pane_width, pane.pane_height) == (80, 24)
    wait_for(lambda: "$" in tmux.capture(pane.pane_id))  # typed before the prompt, it echoes first
    tmux.send_text(pane.pane_id, b"echo \"hi $((40+2))\" 'q\\x'\r")
    screen = wait_for(lambda: (s := tmux.capture(pane.pane_id)) and "hi 42 q\\x" in s and s)
    assert "$ echo" in screen


def test_it_presses_named_keys_and_refuses_unknown_ones(tmux):
    pane = tmux.new_session("vsb-unit-b", "cat -v", cols=80, rows=24)
    tmux.send_keys(pane.pane_id, ["Up", "Enter"])
    wait_for(lambda: "^[[A" in tmux.capture(pane.pane_id) or "^[OA" in tmux.capture(pane.pane_id))
    with pytest.raises(ValueError, match="unknown key"):
        tmux.send_keys(pane.pane_id, ["Enter; kill-server"])
    assert valid_key_name("C-c") and valid_key_name("M-x") and valid_key_name("F12")
    assert not valid_key_name("Entr") and not valid_key_name("C-") and not valid_key_name("")


def test_it_reads_the_last_lines_of_history(tmux):
    pane = tmux.new_session("vsb-unit-c", "sh -c 'seq 1 300; sleep 600'", cols=80, rows=24)
    wait_for(lambda: "300" in tmux.capture(pane.pane_id))
    assert tmux.capture(pane.pane_id, last_n_lines=5).split("\n") == [
        "296", "297", "298", "299", "300"
    ]  # fmt: skip
    assert "1\n2\n3" not in tmux.capture(pane.pane_id)  # the screen alone is 24 lines


def test_it_lists_splits_and_kills(tmux):
    first = tmux.new_session("vsb-unit-d", "sh", cols=100, rows=30)
    second = tmux.split(first.pane_id, "sh", horizontal=True)
    window = tmux.new_window("vsb-unit-d", "sh", window_name="logs")
    panes = tmux.list_panes("vsb-unit-d")
    assert {p.pane_id for p in panes} == {first.pane_id, second.pane_id, window.pane_id}
    assert [p.window_name for p in panes if p.pane_id == window.pane_id] == ["logs"]
    tmux.kill_pane(second.pane_id)
    with pytest.raises(TmuxNotFound):
        tmux.pane(second.pane_id)
    tmux.kill_session("vsb-unit-d")
    assert tmux.list_sessions() == []


def test_a_dead_pane_stays_visible_and_can_be_respawned(tmux):
    pane = tmux.new_session("vsb-unit-e", "sh -c 'echo first; exit 3'", cols=80, rows=24)
    wait_for(lambda: tmux.pane(pane.pane_id).dead)
    again = tmux.respawn(pane.pane_id, "sh -c 'echo second; sleep 600'")
    assert again.pane_id == pane.pane_id
    wait_for(lambda: "second" in tmux.capture(pane.pane_id))


def test_it_rejects_session_names_tmux_would_misread(tmux):
    with pytest.raises(TmuxError):
        tmux.new_session("a:b.c", "sh", cols=80, rows=24)


def test_control_mode_escapes_round_trip():
    assert decode_output(b"a\\015\\012b\\134c") == b"a\r\nb\\c"
    lines = input_commands("%7", bytes(range(256)) * 2 + b"x" * 88)
    assert len(lines) == 3 and lines[0].startswith("send-keys -t %7 -H 00 01 02")


def test_it_writes_credentials_privately_and_pins_the_host_key(tmp_path):
    directory = tmp_path / "creds"
    launch = write_credentials(
        str(directory),
        private_key="PRIVATE",
        certificate="ssh-ed25519-cert-v01@openssh.com AAAA",
        host="127.0.0.1",
        port=2222,
        username="root",
        host_key="ssh-ed25519 AAAAKEY",
    )
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(launch.key_path).st_mode) == 0o600
    assert open(launch.known_hosts_path).read() == "[127.0.0.1]:2222 ssh-ed25519 AAAAKEY\n"
    argv = launch.argv()
    assert (
        "StrictHostKeyChecking=yes" in argv
        and f"UserKnownHostsFile={launch.known_hosts_path}" in argv
    )
    with pytest.raises(TmuxError, match="pinned host key"):
        write_credentials(
            str(directory), private_key="k", certificate="c", host="h", port=22,
            username="root", host_key="",
        )  # fmt: skip


def _launch_into(guest, directory, host_key: str):
    """ssh into the loopback guest with a fresh certificate, pinning `host_key`."""
    credential = guest.ca.issue([guest.principal], ttl_seconds=60)
    return write_credentials(
        str(directory),
        private_key=credential.private_key,
        certificate=credential.certificate,
        host=guest.host,
        port=guest.port,
        username="root",
        host_key=host_key,
    )


def test_a_pane_logs_into_the_guest_with_a_short_lived_certificate(tmux, sftp_guest, tmp_path):
    launch = _launch_into(sftp_guest, tmp_path / "creds", sftp_guest.host_key_line)
    pane = tmux.new_session("vsb-unit-ssh", launch.command(), cols=100, rows=30)
    tmux.send_text(pane.pane_id, b"echo in-guest-$((2+3)) $SSH_CONNECTION\r")
    wait_for(lambda: "in-guest-5 127.0.0.1" in tmux.capture(pane.pane_id), timeout=15)


def test_a_pane_refuses_a_guest_presenting_another_host_key(tmux, sftp_guest, tmp_path):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    launch = _launch_into(sftp_guest, tmp_path / "creds", other)
    pane = tmux.new_session("vsb-unit-mitm", launch.command(), cols=100, rows=30)
    wait_for(lambda: tmux.pane(pane.pane_id).dead, timeout=15)
    assert "Host key verification failed" in tmux.capture(pane.pane_id, last_n_lines=20)


# --- agent-chosen names never reach tmux as formats or command syntax ------------------------

HOSTILE_NAMES = [
    "#(touch {marker})",  # a shell job, run by tmux when a client is attached
    "#{pid}",  # any format
    "a\nb",  # a second output line
    "main\n",  # `$` would let a trailing newline through
    "a;b",
    "a;",  # an argument ending in ; ends the tmux command
    "a b",
    "a:b",
    "-x",  # an option
    "",
    "x" * 129,
]


@pytest.fixture
def attached(tmux):
    """A session with a control-mode client attached, as the relay keeps one on every
    session: that is when tmux runs `#(...)` jobs found while expanding a name."""
    tmux.new_session("vsb-unit-h", "sh", cols=80, rows=24)
    proc = subprocess.Popen(
        [
            "tmux",
            *tmux.socket_args,
            "-C",
            "attach-session",
            "-f",
            "ignore-size",
            "-t",
            "=vsb-unit-h",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: "(attached)" in "".join(tmux.server.cmd("list-sessions").stdout))
        yield "vsb-unit-h"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_hostile_name_given_to_tmux_directly_runs_on_the_host(tmux, attached, tmp_path):
    """The canary for the test below: without the driver's checks, `-n '#(cmd)'` runs cmd
    (tmux kills the job when the command's client exits, so it is a race: try a few times)."""
    marker = tmp_path / "ran"
    for _ in range(20):
        tmux.server.cmd("new-window", "-d", "-t", f"={attached}:", "-n", f"#(touch {marker})", "sh")
        time.sleep(0.2)
        if marker.exists():
            break
    assert marker.exists()


def test_it_refuses_hostile_names_even_when_the_api_check_is_bypassed(tmux, attached, tmp_path):
    marker = tmp_path / "ran"
    pane = tmux.list_panes(attached)[0]
    for template in HOSTILE_NAMES:
        name = template.replace("{marker}", str(marker))
        calls = {
            "session": lambda n=name: tmux.new_session(n, "sh", cols=80, rows=24),
            "window_name": lambda n=name: tmux.new_window(attached, "sh", window_name=n),
            "first window_name": lambda n=name: tmux.new_session(
                "vsb-unit-h2", "sh", cols=80, rows=24, window_name=n
            ),
            "session of new_window": lambda n=name: tmux.new_window(n, "sh"),
            "list_panes": lambda n=name: tmux.list_panes(n),
            "kill_session": lambda n=name: tmux.kill_session(n),
            "kill_window": lambda n=name: tmux.kill_window(n),
            "kill_pane": lambda n=name: tmux.kill_pane(n),
            "split": lambda n=name: tmux.split(n, "sh"),
            "respawn": lambda n=name: tmux.respawn(n, "sh"),
            "select": lambda n=name: tmux.select_pane(n),
            "send_text": lambda n=name: tmux.send_text(n, b"x"),
            "capture": lambda n=name: tmux.capture(n),
            "resize": lambda n=name: tmux.resize_window(n, 80, 24),
        }
        for what, call in calls.items():
            with pytest.raises(InvalidTmuxArgument):
                call()
                pytest.fail(f"{what} accepted {name!r}")
    with pytest.raises(InvalidTmuxArgument):
        tmux.send_keys(pane.pane_id, ["Enter\n"])
    time.sleep(1)  # a #() job would run in the background
    assert not marker.exists()
    assert [s["name"] for s in tmux.list_sessions()] == [attached]
    assert [p.pane_id for p in tmux.list_panes()] == [pane.pane_id]


def test_window_names_allow_dots_and_sessions_do_not(tmux):
    pane = tmux.new_session("vsb-unit-n", "sh", cols=80, rows=24, window_name="build.log-2_x")
    assert pane.window_name == "build.log-2_x"
    with pytest.raises(InvalidTmuxArgument):
        tmux.new_session("vsb-unit.n", "sh", cols=80, rows=24)


def test_a_window_name_cannot_forge_lines_of_list_output(tmux):
    """tmux keeps a name given with `new-window -n` raw (tab and newline included) and prints it
    raw. Such a window (made before names were checked, or by anything else that reaches the
    tmux server) must not add a pane, move a pane to another sandbox, or shift a field."""
    alice, bob = "a1" * 16, "b2" * 16
    mine = tmux.new_session(f"vsb-{alice}-main", "sh", cols=80, rows=24)
    theirs = tmux.new_session(f"vsb-{bob}-main", "sh", cols=80, rows=24)
    forged = f"vsb-{alice}-main\t$9\t0\t@9\t0\t{theirs.pane_id}\t1\t80\t24\t1\t0\t/\tw\tt"
    name = f"x\n{forged}\n"
    tmux.server.cmd("new-window", "-d", "-t", f"=vsb-{alice}-main:", "-n", name, "sh")
    panes = {p.pane_id: p for p in tmux.list_panes()}
    assert len(panes) == 3 and panes[theirs.pane_id].session_name == f"vsb-{bob}-main"
    assert [p.pane_id for p in tmux.list_panes(f"vsb-{alice}-main")] == [
        p.pane_id for p in panes.values() if p.session_name == f"vsb-{alice}-main"
    ]
    (window,) = [p for p in panes.values() if p.window_name == name]
    assert (window.pane_width, window.pane_height, window.dead) == (80, 24, False)
    assert tmux.pane(mine.pane_id).window_name != name
    assert sorted(s["name"] for s in tmux.list_sessions()) == [
        f"vsb-{alice}-main",
        f"vsb-{bob}-main",
    ]


def test_a_known_hosts_line_is_built_only_from_a_well_formed_key():
    assert known_hosts_line("127.0.0.1", 22, "ssh-ed25519 AAAAC3Nz comment") == (
        "127.0.0.1 ssh-ed25519 AAAAC3Nz\n"
    )
    for bad in ("ssh-ed25519", "@cert-authority * ssh-ed25519 AAAA", "ssh-ed25519 AA#A"):
        with pytest.raises(TmuxError, match="host key"):
            known_hosts_line("127.0.0.1", 22, bad)
