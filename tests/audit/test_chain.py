"""The audit trail is append-only and tamper-evident: every event carries the hash of the
one before it, and verify_audit names the first link that no longer holds."""

from __future__ import annotations

import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audit import services
from audit.models import AppendOnly, AuditEvent

pytestmark = pytest.mark.django_db


def three_events():
    return [services.record(f"test.event{i}", data={"i": i}) for i in range(1, 4)]


def verify_output() -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def test_it_chains_each_event_to_the_one_before():
    first, second, third = three_events()
    assert first.prev_hash == "0" * 64
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert [e.seq for e in (first, second, third)] == [1, 2, 3]
    assert "audit chain intact: 3 events" in verify_output()


def test_verify_audit_names_a_row_changed_directly_in_the_database():
    three_events()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET data = %s WHERE seq = 2", ['{"i": 99}'])
    with pytest.raises(CommandError, match=r"broken at event #2: event #2 was changed"):
        call_command("verify_audit")


def test_verify_audit_notices_a_rewritten_hash_because_the_next_link_breaks():
    three_events()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET verb = 'x', hash = %s WHERE seq = 2", ["f" * 64]
        )
    with pytest.raises(CommandError, match=r"#2"):
        call_command("verify_audit")


def test_verify_audit_notices_a_removed_row_and_a_removed_tail():
    three_events()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 3")
    with pytest.raises(CommandError, match=r"#3: .*last ones were removed"):
        call_command("verify_audit")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = 1")
    with pytest.raises(CommandError, match=r"#1 is missing"):
        call_command("verify_audit")


def test_the_orm_refuses_to_update_or_delete_events():
    event = three_events()[0]
    event.verb = "rewritten"
    with pytest.raises(AppendOnly):
        event.save()
    with pytest.raises(AppendOnly):
        event.delete()
    with pytest.raises(AppendOnly):
        AuditEvent.objects.filter(seq=1).update(verb="x")
    with pytest.raises(AppendOnly):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(seq=1).verb == "test.event1"


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_extend_one_chain_without_forks():
    errors = []

    def write(n):
        try:
            for i in range(10):
                services.record("test.concurrent", data={"writer": n, "i": i})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert AuditEvent.objects.count() == 80
    verdict = services.verify()
    assert verdict.ok and verdict.checked == 80
