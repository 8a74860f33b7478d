"""The approvals service layer: the only writer of approval requests.

Decisions are compare-and-set (a conditional UPDATE of a pending, unexpired row): of two
operators who click at the same moment exactly one wins, the other gets 409."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import services as audit
from core import hooks
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.queues import enqueue

from . import events, tasks
from .api.serializers import ApprovalSerializer
from .choices import ApprovalKind, ApprovalOrigin, ApprovalStatus, is_reserved_action
from .models import ApprovalRequest

log = logging.getLogger(__name__)

DECIDE_PERMISSION = "approvals.decide_approvalrequest"
VIEW_PERMISSION = "approvals.view_approvalrequest"


def can_decide(user) -> bool:
    return bool(user and user.is_authenticated and user.has_perm(DECIDE_PERMISSION))


def is_operator(user) -> bool:
    """Who sees every request and its live events: deciders and those who may view them."""
    return bool(
        user
        and user.is_authenticated
        and (user.has_perm(DECIDE_PERMISSION) or user.has_perm(VIEW_PERMISSION))
    )


def visible_requests(user):
    qs = ApprovalRequest.objects.select_related("requested_by", "decided_by", "sandbox")
    if is_operator(user):
        return qs
    return qs.filter(requested_by=user)


def get_request(user, request_id) -> ApprovalRequest:
    try:
        return visible_requests(user).get(pk=request_id)
    except (ApprovalRequest.DoesNotExist, ValueError, TypeError) as err:
        raise NotFound(f"No approval request {request_id}.") from err


def as_dict(req: ApprovalRequest) -> dict:
    """The one JSON form of a request (api.serializers.ApprovalSerializer), sent by the API,
    the websocket, the webhook and the blocking ask alike."""
    return dict(ApprovalSerializer(req).data)  # plain: it travels (socket, wake-up, webhook)


def _timeout(value: int | None) -> int:
    conf = settings.APPROVALS
    if value is None:
        return conf["DEFAULT_TIMEOUT_SECONDS"]
    if not 1 <= value <= conf["MAX_TIMEOUT_SECONDS"]:
        raise InvalidInput.field(
            "timeout_seconds", f"must be between 1 and {conf['MAX_TIMEOUT_SECONDS']} seconds."
        )
    return value


def _same_request(existing: ApprovalRequest, prompt: str, payload: dict) -> bool:
    return existing.prompt == prompt and existing.payload == payload


def create_request(
    user,
    *,
    prompt: str,
    action_type: str = "",
    payload: dict | None = None,
    timeout_seconds: int | None = None,
    sandbox_id=None,
    idempotency_key: str = "",
    **fields,
) -> tuple[ApprovalRequest, bool]:
    """What the public routes (/v1/approvals, /api/v1/human/ask, ask-async) create: a new
    pending request, or, for an idempotency key this requester used before, that same request
    (whatever its status now): a retry after a dropped connection or a server restart picks
    up where it was. Returns (request, created). `fields` are the rest of an ask (kind,
    context, urgency, alternatives, agent_id: api.serializers.AskSerializer), kept as given.

    An action the server reserves for itself (choices.RESERVED_ACTION_TYPES) is refused, also
    when only the payload's "action" names it: such approvals are opened by the server alone
    (create_system_request) and only those unlock the action."""
    payload = payload or {}
    if not prompt.strip():
        raise InvalidInput.field("prompt", "must not be empty.")
    timeout = _timeout(timeout_seconds)
    if is_reserved_action(action_type):
        raise InvalidInput.field(
            "action_type",
            f"{action_type!r} is reserved: the server opens these requests itself when the "
            "action is asked for through its own route.",
        )
    if isinstance(payload, dict) and is_reserved_action(payload.get("action")):
        raise InvalidInput.field(
            "payload",
            f"action {payload['action']!r} is reserved: the server opens these requests itself.",
        )
    if idempotency_key:
        existing = ApprovalRequest.objects.filter(
            requested_by=user, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return _reuse(existing, prompt, payload), False
    sandbox = None
    if sandbox_id:
        sandbox = hooks.visible_sandboxes(user).filter(pk=sandbox_id).first()
        if sandbox is None:
            raise InvalidInput.field("sandbox_id", f"no sandbox {sandbox_id} of yours.")
    fields.update(action_type=action_type, payload=payload, idempotency_key=idempotency_key)
    try:
        return _insert(
            user, ApprovalOrigin.CALLER, prompt, timeout, sandbox=sandbox, **fields
        ), True
    except IntegrityError:
        # The same key, at the same moment, from another connection of this requester.
        existing = ApprovalRequest.objects.get(requested_by=user, idempotency_key=idempotency_key)
        return _reuse(existing, prompt, payload), False


def create_system_request(
    user, *, action_type: str, prompt: str, payload: dict, context: str = "", sandbox=None
) -> ApprovalRequest:
    """The server asks an operator before an action it is about to take for `user` (an apply):
    origin=system, so consume() accepts it for a reserved action. Never reached from a public
    route. `context` is kept whole (the operator decides on all of it, e.g. the playbook)."""
    return _insert(
        user,
        ApprovalOrigin.SYSTEM,
        prompt,
        _timeout(None),
        kind=ApprovalKind.ACTION,
        action_type=action_type,
        payload=payload,
        context=context,
        sandbox=sandbox,
    )


def _insert(
    user,
    origin: str,
    prompt: str,
    timeout: int,
    *,
    sandbox=None,
    alternatives=None,
    agent_id: str = "",
    **fields,
) -> ApprovalRequest:
    """The one INSERT of a request, its audit event and its announcements (after commit)."""
    with transaction.atomic():
        req = ApprovalRequest.objects.create(
            requested_by=user,
            agent_id=agent_id or (sandbox.agent_id if sandbox else user.get_username()),
            sandbox=sandbox,
            prompt=prompt,
            alternatives=list(alternatives or ()),
            timeout_seconds=timeout,
            expires_at=timezone.now() + timedelta(seconds=timeout),
            origin=origin,
            **fields,
        )
        event = audit.record(
            "approval.requested",
            user=user,
            target=req,
            sandbox_id=req.sandbox_id,
            agent=req.agent_id,
            data={
                "prompt": prompt[:2000],
                "kind": req.kind,
                "action_type": req.action_type,
                "payload": req.payload,
                "timeout_seconds": timeout,
                "origin": origin,
            },
        )
        events.publish_on_commit("created", as_dict(req), event.seq)
        if settings.APPROVALS["WEBHOOK_URL"]:
            enqueue(tasks.send_webhook, str(req.id))
    return req


def _reuse(existing: ApprovalRequest, prompt: str, payload: dict) -> ApprovalRequest:
    if not _same_request(existing, prompt, payload):
        raise Conflict(
            "idempotency_key was already used for a different request "
            f"({existing.id}); use a new key for a new question.",
            fields={"idempotency_key": ["already used for a different request"]},
            code="idempotency_conflict",
        )
    if existing.is_pending and existing.expires_at <= timezone.now():
        expire(existing.id)
        existing.refresh_from_db()
    return existing


def decide(user, request_id, *, approve: bool, reason: str = "") -> ApprovalRequest:
    """Approve or deny. Only a person holding the decide permission, never the requester."""
    if not can_decide(user):
        raise Forbidden(
            f"You do not have permission to decide approval requests (needs {DECIDE_PERMISSION})."
        )
    req = get_request(user, request_id)
    if req.requested_by_id == user.pk:
        raise Forbidden("A request cannot be decided by the one who asked it.")
    status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
    now = timezone.now()
    with transaction.atomic():
        won = ApprovalRequest.objects.filter(
            pk=req.pk, status=ApprovalStatus.PENDING, expires_at__gt=now
        ).update(status=status, decided_by=user, decided_at=now, reason=reason)
        if won:
            req.refresh_from_db()
            hooks.approval_decided(req)
            _announce(
                req,
                status,
                "decided",
                user=user,
                data={"reason": reason[:2000], "requested_by": req.requested_by.get_username()},
            )
    if won:
        return req
    req.refresh_from_db()
    if req.is_pending:  # its time ran out a moment ago and the sweeper has not run yet
        expire(req.pk)
        req.refresh_from_db()
    who = f" by {req.decided_by.get_username()}" if req.decided_by_id else ""
    raise Conflict(
        f"Approval request {req.id} is already {req.status}{who}; a decision is final.",
        code="already_decided",
    )


def cancel(user, request_id, reason: str = "") -> ApprovalRequest:
    """The requester (or an operator) withdraws a pending request."""
    req = get_request(user, request_id)
    if req.requested_by_id != user.pk and not can_decide(user):
        raise Forbidden("Only the requester or an operator can cancel a request.")
    return _close(
        req.pk, ApprovalStatus.CANCELLED, user=user, reason=reason or "cancelled"
    ) or _final(req)


def expire(request_id) -> ApprovalRequest | None:
    """Pending and past its time: expired (reported apart from a denial)."""
    return _close(request_id, ApprovalStatus.EXPIRED, reason="nobody decided in time", overdue=True)


def expire_overdue() -> int:
    """The periodic sweep. Returns how many requests it expired."""
    overdue = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=timezone.now()
    ).values_list("pk", flat=True)
    return sum(1 for pk in list(overdue[:1000]) if expire(pk))


def _close(request_id, status: str, *, user=None, reason: str = "", overdue: bool = False):
    now = timezone.now()
    with transaction.atomic():
        qs = ApprovalRequest.objects.filter(pk=request_id, status=ApprovalStatus.PENDING)
        if overdue:
            qs = qs.filter(expires_at__lte=now)
        if not qs.update(status=status, decided_at=now, reason=reason):
            return None
        req = ApprovalRequest.objects.select_related("requested_by", "decided_by").get(
            pk=request_id
        )
        _announce(req, status, status, user=user, data={"reason": reason})
    return req


def _announce(req: ApprovalRequest, status: str, kind: str, *, user, data: dict) -> None:
    """Audit a change of status and tell operators and waiters once it commits."""
    event = audit.record(
        f"approval.{status}",
        user=user,
        target=req,
        sandbox_id=req.sandbox_id,
        agent=req.agent_id,
        data=data,
    )
    events.publish_on_commit(kind, as_dict(req), event.seq)


def _final(req: ApprovalRequest) -> ApprovalRequest:
    req.refresh_from_db()
    raise Conflict(f"Approval request {req.id} is already {req.status}.", code="already_decided")


def consume(
    request_id, *, expected_payload: dict | None = None, action_type: str | None = None
) -> ApprovalRequest:
    """Spend an approval on the action it allowed: once, and only for the payload approved.
    With `action_type`, only a request of that type; for a reserved type
    (choices.RESERVED_ACTION_TYPES) only one the server opened itself (origin=system), so a
    request a caller crafted with the same type and payload (one from before the type was
    reserved) never unlocks the action."""
    now = timezone.now()
    with transaction.atomic():
        req = ApprovalRequest.objects.select_for_update().get(pk=request_id)
        if action_type is not None and req.action_type != action_type:
            raise Conflict(
                f"Approval request {req.id} is for {req.action_type or 'a question'!r}, not {action_type!r}.",
                code="approval_mismatch",
            )
        reserved = any(
            is_reserved_action(value)
            for value in (action_type, req.action_type, (expected_payload or {}).get("action"))
        )
        if reserved and req.origin != ApprovalOrigin.SYSTEM:
            raise Conflict(
                f"Approval request {req.id} was not opened by the server for this action "
                f"(origin {req.origin}); only the request the server opens for it can allow it.",
                code="approval_not_system",
            )
        if req.status != ApprovalStatus.APPROVED:
            raise Conflict(
                f"Approval request {req.id} is {req.status}, not approved.", code="not_approved"
            )
        if req.consumed_at is not None:
            raise Conflict(f"Approval request {req.id} was already used.", code="approval_used")
        if expected_payload is not None and req.payload != expected_payload:
            raise Conflict(
                f"Approval request {req.id} approved a different action.", code="approval_mismatch"
            )
        ApprovalRequest.objects.filter(pk=req.pk).update(consumed_at=now)
        audit.record("approval.consumed", target=req, sandbox_id=req.sandbox_id, agent=req.agent_id)
        req.consumed_at = now
    return req
