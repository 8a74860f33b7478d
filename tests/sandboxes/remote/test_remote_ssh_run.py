"""run(): a shell script goes to the guest intact, both streams come back separately, and
limits (timeout, output cap) hold without leaving processes behind."""

from __future__ import annotations

import time

import pytest

from sandboxes.remote.ssh import build_remote_command, run


def test_it_returns_the_exit_code(client):
    assert run(client, "exit 0", timeout=10).exit_code == 0
    assert run(client, "exit 3", timeout=10).exit_code == 3
    assert run(client, "false", timeout=10).exit_code == 1


def test_it_reports_a_child_killed_by_a_signal_as_128_plus_the_signal(client):
    result = run(client, "sleep 100 & kill -KILL $!; wait $!", timeout=10)
    assert result.exit_code == 137
    assert not result.timed_out


def test_it_reports_no_exit_code_when_the_script_kills_its_own_shell(client):
    result = run(client, "kill -KILL $$", timeout=10)
    assert result.exit_code is None
    assert not result.timed_out


def test_it_keeps_stdout_and_stderr_apart(client):
    result = run(client, "echo out; echo err >&2; echo out2", timeout=10)
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"
    assert not result.stdout_truncated and not result.stderr_truncated
    assert not result.timed_out
    assert result.duration_ms >= 0


MULTI_LINE_SCRIPT = r"""set -e
greeting='single "double" inside'
other="double 'single' inside"
echo "$greeting"
echo "$other"
echo "home=$HOME"
cat <<'END'
literal $HOME and `backticks` and \n stay
END
cat <<END
expanded $HOME
END
printf '%s\n' 'ünïcödé ✓'
"""


def test_it_delivers_a_multi_line_script_with_quotes_expansion_and_heredoc_intact(client):
    result = run(client, MULTI_LINE_SCRIPT, timeout=10)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        'single "double" inside',
        "double 'single' inside",
        "home=/root",
        "literal $HOME and `backticks` and \\n stay",
        "expanded /root",
        "ünïcödé ✓",
    ]


def test_it_runs_the_script_under_bash_when_the_guest_has_it(client):
    result = run(client, "[[ -n $BASH_VERSION ]] && echo bash", timeout=10)
    assert result.stdout == b"bash\n"


def test_it_sets_environment_variables_and_the_working_directory(client):
    env = {"GREETING": "hello 'world' \"$HOME\" $(id)", "EMPTY": ""}
    script = 'printf "%s|%s|" "$GREETING" "$EMPTY"; pwd'
    result = run(client, script, timeout=10, env=env, cwd="/tmp")
    assert result.stdout == b"hello 'world' \"$HOME\" $(id)||/tmp\n"


def test_it_fails_the_command_when_the_working_directory_is_missing(client):
    result = run(client, "echo should-not-run", timeout=10, cwd="/nonexistent dir")
    assert result.exit_code != 0
    assert result.stdout == b""
    assert b"nonexistent dir" in result.stderr


@pytest.mark.parametrize("bad", ["1ABC", "A-B", "A B", "", "X=Y", "X\n", "VSB_RUN_ID"])
def test_it_refuses_a_bad_environment_variable_name(client, bad):
    with pytest.raises(ValueError, match="environment variable name"):
        run(client, "true", timeout=10, env={bad: "x"})


def test_it_passes_stdin_to_the_script(client):
    payload = b"line1\nline2\n" * 50_000  # larger than one channel window
    result = run(client, "wc -c", timeout=20, stdin=payload)
    assert result.exit_code == 0
    assert result.stdout.strip() == str(len(payload)).encode()


def test_it_gives_the_script_an_empty_stdin_by_default(client):
    result = run(client, "cat; echo end", timeout=5)
    assert result.stdout == b"end\n"
    assert not result.timed_out


def test_it_returns_partial_output_on_timeout_and_kills_the_remote_processes(client):
    marker = f"vsb-timeout-marker-{time.monotonic_ns()}"
    # Unique durations, so the check below cannot confuse them with anyone else's sleep.
    nap = f"1000.{time.monotonic_ns() % 1_000_000:06d}"
    script = f"echo started; echo warming >&2; sleep {nap} & sleep {nap}1 # {marker}\n"
    started = time.monotonic()
    result = run(client, script, timeout=1.5)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code is None
    assert result.stdout == b"started\n"
    assert result.stderr == b"warming\n"
    assert 1.4 <= elapsed < 5
    # The marker is in the script's command line; split it so pgrep does not find itself.
    half = len(marker) // 2
    check = run(client, f"pgrep -f '{marker[:half]}''{marker[half:]}' || echo none", timeout=10)
    assert check.stdout == b"none\n"
    check = run(client, f"pgrep -a -x sleep | grep -F 'sleep {nap}' || echo none", timeout=10)
    assert check.stdout == b"none\n"


def test_it_caps_stored_output_but_lets_the_command_finish(client):
    cap = 10_000
    script = "head -c 50000 /dev/zero; head -c 30000 /dev/zero >&2; echo finished >&2; exit 7"
    result = run(client, script, timeout=10, max_output_bytes=cap)
    assert result.exit_code == 7
    assert len(result.stdout) == cap and result.stdout_truncated
    assert len(result.stderr) == cap and result.stderr_truncated
    assert not result.timed_out


def test_it_does_not_set_truncated_when_output_fits_exactly(client):
    result = run(client, "head -c 100 /dev/zero", timeout=10, max_output_bytes=100)
    assert len(result.stdout) == 100
    assert not result.stdout_truncated


def test_it_does_not_deadlock_on_megabytes_on_both_streams(client):
    # Interleaved 64 KiB writes, 5 MiB per stream: a reader that drained one stream at a
    # time would leave the other's window full and stall the command.
    script = "for i in $(seq 1 80); do head -c 65536 /dev/zero; head -c 65536 /dev/zero >&2; done"
    result = run(client, script, timeout=30, max_output_bytes=6 * 1024 * 1024)
    assert result.exit_code == 0
    assert len(result.stdout) == 80 * 65536
    assert len(result.stderr) == 80 * 65536
    assert not result.stdout_truncated and not result.stderr_truncated


def test_it_returns_soon_after_exit_even_if_a_background_job_holds_stdout(client):
    started = time.monotonic()
    result = run(client, "sleep 3 & echo parent-done", timeout=10)
    assert result.exit_code == 0
    assert result.stdout == b"parent-done\n"
    assert time.monotonic() - started < 2.5


def test_it_refuses_a_command_too_long_for_one_argument():
    with pytest.raises(ValueError, match="too long"):
        build_remote_command("x" * 200_000, run_id="ab")
