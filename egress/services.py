"""The egress service layer: a sandbox's policy, egress requests and grants, and the
connection log. The only writer of EgressRule and EgressConnection rows.

A guest reaches the network only through the KVM host's egress proxy (docs/egress.md). The
proxy asks `check` about each connection by name; what a name resolves to is judged after
that by the proxy's always-denied set (egress.addresses), whatever the policy says."""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from datetime import timedelta
from pathlib import Path

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals import services as approvals
from approvals.choices import ApprovalStatus
from approvals.models import ApprovalRequest
from audit import services as audit
from core import hostapt
from core.conf import vsb
from core.errors import Forbidden, InvalidInput

from .addresses import ALWAYS_DENIED, AddressGuard
from .choices import GRANT_ACTION, RuleSource
from .models import EgressConnection, EgressRule
from .proxy import ConnectionRecord, Verdict
from .rules import Rule, RuleError, normalize_host, parse_port, parse_rule

log = logging.getLogger(__name__)

# The address and port every guest reaches the proxy at (QEMU guestfwd; docs/egress.md).
GUEST_PROXY_ADDRESS, GUEST_PROXY_PORT = "10.0.2.100", 3128
GUEST_PROXY_URL = f"http://{GUEST_PROXY_ADDRESS}:{GUEST_PROXY_PORT}"
# A denial of the same host and port is audited once a minute per sandbox, not per retry.
DENIAL_AUDIT_SECONDS = 60
_MIRRORS_TTL = 60.0
_mirrors: tuple[float, list[Rule]] = (0.0, [])


def enabled() -> bool:
    return bool(vsb("EGRESS_ENABLED"))


# ---- where the proxy listens, and the relay QEMU spawns --------------------------------------


def egress_dir() -> Path:
    return Path(vsb("EGRESS_DIR"))


def socket_path(host_name: str) -> Path:
    return egress_dir() / f"{host_name}.sock"


def relay_path() -> Path:
    return egress_dir() / "relay.py"


def relay_argv(sandbox) -> tuple[str, ...] | None:
    """The command QEMU runs for each guest connection to the proxy address (its stdin and
    stdout are that connection), or None when egress is off. Every part is the host's own
    (paths from settings, the sandbox's UUID): nothing an agent sent."""
    if not enabled():
        return None
    return (
        vsb("EGRESS_RELAY_PYTHON"),
        "-I",
        "-S",
        str(relay_path()),
        str(socket_path(sandbox.host.name)),
        str(sandbox.id),
    )


def guest_proxy_url() -> str | None:
    return GUEST_PROXY_URL if enabled() else None


# ---- policy ----------------------------------------------------------------------------------


def mirror_rules() -> list[Rule]:
    """The Debian mirrors the KVM host's own apt uses, read from its sources at run time (and
    re-read a minute later), so a host's mirror or local cache is the guests' too."""
    global _mirrors
    if not vsb("EGRESS_HOST_MIRRORS"):
        return []
    read_at, rules = _mirrors
    if time.monotonic() - read_at > _MIRRORS_TTL:
        try:
            rules = [Rule(normalize_host(h), p) for h, p in hostapt.mirror_hosts()]
        except (OSError, RuleError, ValueError) as err:
            log.warning("could not read the host's apt sources: %s", err)
            rules = []
        _mirrors = (time.monotonic(), rules)
    return rules


def default_rules() -> list[tuple[Rule, str]]:
    """(rule, where it comes from) for every sandbox: the host's mirrors and VSB_EGRESS_ALLOW."""
    found = [(rule, "host apt mirror") for rule in mirror_rules()]
    found += [(parse_rule(entry), "settings") for entry in vsb("EGRESS_ALLOW")]
    return found


def own_rules(sandbox_id):
    """The sandbox's own rules still in force."""
    return EgressRule.objects.filter(sandbox_id=sandbox_id).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )


def check(sandbox_id: str, host: str, port: int) -> Verdict:
    """May this sandbox connect to host:port by name? (egress.proxy.Policy; the proxy then
    vets the addresses the name resolves to.)"""
    if not enabled():
        return Verdict(False, "egress is disabled on this server")
    try:
        host = normalize_host(host)
    except RuleError as err:
        return Verdict(False, f"bad host name: {err}")
    for rule, origin in default_rules():
        if rule.matches(host, port):
            return Verdict(True, f"{origin} {rule}")
    for row in own_rules(sandbox_id):
        if row.rule.matches(host, port):
            return Verdict(True, f"{row.source} {row.rule}")
    return Verdict(False, "not in policy")


def policy(sandbox) -> dict:
    """What GET /v1/sandboxes/{id}/egress shows: every rule in force and where it came from."""
    rules = [
        {"rule": str(rule), "source": origin, "expires_at": None, "approval_id": None}
        for rule, origin in default_rules()
    ]
    rules += [
        {
            "rule": str(row.rule),
            "source": row.source,
            "expires_at": row.expires_at,
            "approval_id": row.approval_id,
        }
        for row in own_rules(sandbox.pk)
    ]
    return {
        "enabled": enabled(),
        "proxy": guest_proxy_url(),
        "rules": rules,
        "always_denied": [f"{net} ({why})" for net, why in ALWAYS_DENIED]
        + ["the KVM host's own addresses"],
    }


# ---- rules a create request names ------------------------------------------------------------


def _covered(rule: Rule, allowed: Rule) -> bool:
    if rule.port != allowed.port:
        return False
    if allowed.pattern.startswith("*."):
        return rule.pattern.endswith(allowed.pattern[1:])
    return rule.pattern == allowed.pattern


def create_rules(user, entries) -> list[Rule]:
    """The rules a create request names (`egress_allow`), checked before anything is made. An
    operator (who may decide approvals) names any; an agent only what VSB_EGRESS_SELF_SERVICE
    covers: anything else goes through POST /v1/sandboxes/{id}/egress/requests."""
    entries = list(entries or ())
    if not entries:
        return []
    if len(entries) > vsb("EGRESS_MAX_RULES"):
        raise InvalidInput.field("egress_allow", f"at most {vsb('EGRESS_MAX_RULES')} entries.")
    try:
        rules = [parse_rule(entry) for entry in entries]
    except RuleError as err:
        raise InvalidInput.field("egress_allow", str(err)) from None
    if approvals.can_decide(user):
        return rules
    self_service = [parse_rule(entry) for entry in vsb("EGRESS_SELF_SERVICE")]
    refused = [r for r in rules if not any(_covered(r, ok) for ok in self_service)]
    if refused:
        raise Forbidden(
            f"egress_allow: {', '.join(map(str, refused))} needs an operator's approval: "
            "create the sandbox without it, then POST /v1/sandboxes/{id}/egress/requests.",
            fields={"egress_allow": [f"{r} is not self-service" for r in refused]},
        )
    return rules


def save_create_rules(sandbox, rules: list[Rule], user) -> None:
    """Inside the create's transaction."""
    _add_rules(
        sandbox,
        user,
        "egress.rules_set",
        [
            EgressRule(
                sandbox=sandbox,
                pattern=rule.pattern,
                port=rule.port,
                source=RuleSource.CREATE,
                created_by=user.get_username(),
            )
            for rule in rules
        ],
    )


def copy_rules(origin, replica, user) -> None:
    """A replay replica reaches what its origin may (rules in force now, same expiry), so a
    playbook that installs from the network replays behind the same policy."""
    _add_rules(
        replica,
        user,
        "egress.rules_copied",
        [
            EgressRule(
                sandbox=replica,
                pattern=row.pattern,
                port=row.port,
                source=row.source,
                reason=f"as {origin.name}: {row.reason}"[:2000],
                created_by=row.created_by,
                expires_at=row.expires_at,
            )
            for row in own_rules(origin.pk)
        ],
        **{"from": str(origin.pk)},
    )


def _add_rules(sandbox, user, verb: str, rows: list[EgressRule], **data) -> None:
    """Write a sandbox's new rules and one audit event naming them."""
    if not rows:
        return
    EgressRule.objects.bulk_create(rows)
    audit.record(
        verb,
        user=user,
        target=sandbox,
        sandbox_id=sandbox.pk,
        agent=sandbox.agent_id,
        data={**data, "rules": [str(row.rule) for row in rows]},
    )


# ---- egress requests and grants --------------------------------------------------------------


def request_access(
    user, sandbox, *, host: str, port: int = 443, reason: str = "", ttl_seconds: int | None = None
) -> tuple[Verdict | None, object | None]:
    """An agent asks for host:port. Already allowed: (verdict, None). Else a server-reserved
    approval request an operator decides: (None, approval); its approval is the grant."""
    try:
        host = normalize_host(host)
    except RuleError as err:
        raise InvalidInput.field("host", str(err)) from None
    try:
        port = parse_port(port)
    except RuleError as err:
        raise InvalidInput.field("port", str(err)) from None
    ttl = ttl_seconds if ttl_seconds is not None else vsb("EGRESS_GRANT_DEFAULT_TTL_SECONDS")
    if not 0 < ttl <= vsb("EGRESS_GRANT_MAX_TTL_SECONDS"):
        raise InvalidInput.field(
            "ttl_seconds", f"must be between 1 and {vsb('EGRESS_GRANT_MAX_TTL_SECONDS')} seconds."
        )
    if not enabled():
        raise Forbidden("Egress is disabled on this server (VSB_EGRESS=off).", code="egress_off")
    denial = _literal_denial(host, port)
    if denial:
        raise InvalidInput.field(
            "host", f"{host}:{port} is always denied ({denial}); no grant can open it."
        )
    verdict = check(str(sandbox.pk), host, port)
    if verdict.allowed:
        return verdict, None
    waiting = (
        ApprovalRequest.objects.filter(
            sandbox=sandbox,
            action_type=GRANT_ACTION,
            status=ApprovalStatus.PENDING,
            expires_at__gt=timezone.now(),
            payload__host=host,
            payload__port=port,
        )
        .order_by("created_at")
        .first()
    )
    if waiting is not None:
        # Asking again while an operator has not decided yet: the same request, not a second.
        return None, waiting
    payload = {"sandbox_id": str(sandbox.pk), "host": host, "port": port, "ttl_seconds": ttl}
    with transaction.atomic():
        approval = approvals.create_system_request(
            user,
            action_type=GRANT_ACTION,
            prompt=(
                f"Sandbox {sandbox.name} (agent {sandbox.agent_id}) asks for network access "
                f"to {host}:{port} for {ttl} s."
            ),
            payload=payload,
            context=reason[:2000],
            sandbox=sandbox,
        )
        audit.record(
            "egress.requested",
            user=user,
            target=approval,
            sandbox_id=sandbox.pk,
            agent=sandbox.agent_id,
            data={**payload, "reason": reason[:2000]},
        )
    return None, approval


def _literal_denial(host: str, port: int) -> str | None:
    """Why an IP literal can never be granted (loopback, private, the host's own...), or None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return _guard(tuple(exemptions())).denial(host, port)


@functools.cache
def _guard(exempt: tuple[tuple[str, int], ...]) -> AddressGuard:
    """One guard per set of exemptions: it re-reads the host's addresses itself (every 30 s),
    so a request does not start `ip` each time."""
    return AddressGuard(exempt=exempt)


def exemptions() -> list[tuple[str, int]]:
    """VSB_EGRESS_EXEMPT: `ip:port` pairs the always-denied set lets through (a private
    registry the operator vouches for; the tests' loopback server)."""
    pairs = []
    for entry in vsb("EGRESS_EXEMPT"):
        rule = parse_rule(entry)
        pairs.append((rule.pattern, rule.port))
    return pairs


def on_approval_decided(approval) -> None:
    """core.hooks.approval_decided: an approved egress request becomes a grant at once (the
    proxy reads rules per connection: nothing restarts); it expires on its own."""
    if approval.action_type != GRANT_ACTION or approval.status != ApprovalStatus.APPROVED:
        return
    payload = approval.payload or {}
    rule = EgressRule.objects.create(
        sandbox_id=payload["sandbox_id"],
        pattern=payload["host"],
        port=payload["port"],
        source=RuleSource.GRANT,
        approval=approval,
        reason=approval.context[:2000],
        created_by=approval.decided_by.get_username() if approval.decided_by_id else "",
        expires_at=timezone.now() + timedelta(seconds=payload["ttl_seconds"]),
    )
    audit.record(
        "egress.granted",
        user=approval.decided_by,
        target=rule,
        sandbox_id=rule.sandbox_id,
        agent=approval.agent_id,
        data={"rule": str(rule.rule), "expires_at": rule.expires_at.isoformat()},
    )


# ---- the connection log ----------------------------------------------------------------------


def record_connection(record: ConnectionRecord) -> None:
    """The proxy's sink: one row per connection; a denial is audited too (once a minute per
    sandbox, host and port, so a retrying client does not flood the trail)."""
    sandboxes = EgressConnection._meta.get_field("sandbox").related_model.objects
    if not sandboxes.filter(pk=record.sandbox_id).exists():
        # Only a relay QEMU started for a sandbox names one; anything else is not logged
        # against a sandbox (the foreign key would refuse it at commit).
        log.warning("egress connection for unknown sandbox %r not logged", record.sandbox_id)
        return
    try:
        with transaction.atomic():
            recent_denial = (
                not record.allowed
                and EgressConnection.objects.filter(
                    sandbox_id=record.sandbox_id,
                    host=record.host[:260],
                    port=record.port,
                    allowed=False,
                    started_at__gte=record.started_at - timedelta(seconds=DENIAL_AUDIT_SECONDS),
                ).exists()
            )
            row = EgressConnection.objects.create(
                sandbox_id=record.sandbox_id,
                host=record.host[:260],
                port=record.port,
                allowed=record.allowed,
                rule=record.rule[:300],
                address=(getattr(record, "address", "") or "")[:64],
                bytes_up=record.bytes_up,
                bytes_down=record.bytes_down,
                started_at=record.started_at,
                duration_ms=min(record.duration_ms, 2**31 - 1),
                error=(record.error or "")[:500],
            )
            if not record.allowed and not recent_denial:
                audit.record(
                    "egress.denied",
                    actor="egress-proxy",
                    target=row,
                    sandbox_id=record.sandbox_id,
                    data={"host": row.host, "port": row.port, "rule": row.rule},
                )
    except Exception:  # an unknown sandbox id, a database hiccup: the proxy keeps serving
        log.exception("could not record an egress connection of sandbox %s", record.sandbox_id)


def connections(sandbox_id, allowed: bool | None = None):
    qs = EgressConnection.objects.filter(sandbox_id=sandbox_id)
    return qs if allowed is None else qs.filter(allowed=allowed)


def install_relay() -> Path:
    """Put the relay where QEMU (as libvirt-qemu) can run it: a world-readable copy of
    egress/relay.py in the egress directory, replaced atomically when it changed."""
    directory = egress_dir()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    source = Path(__file__).with_name("relay.py").read_bytes()
    target = relay_path()
    if not target.is_file() or target.read_bytes() != source:
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(source)
        tmp.chmod(0o644)
        tmp.replace(target)
    return target
