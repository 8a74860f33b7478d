"""The serial console log is written by the guest: the host reads a bounded piece of it."""

from __future__ import annotations

import tracemalloc

from sandboxes import provisioning

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcDbRsHAGoXnKJD4ZDtGj1zHm8l0Y+0ybzdYb+ZzN9u"


def test_it_pins_the_first_key_and_reads_a_bounded_piece_of_a_flooded_console(
    tmp_path, monkeypatch
):
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.write(f"boot\nvsb-hostkey: {KEY}\n".encode())
        f.write(b"x" * (64 << 20))  # root in the guest floods the serial port
        f.write(b"\nvsb-hostkey: ssh-ed25519 AAAAforged\nlast words\n")
    monkeypatch.setattr(provisioning, "console_log_path", lambda sandbox: log)
    tracemalloc.start()
    try:
        assert provisioning.console_host_key(None) == KEY
        assert provisioning.console_tail(None, lines=1) == "last words"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
