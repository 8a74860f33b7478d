from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from . import services, webhook
from .models import ApprovalRequest

log = logging.getLogger(__name__)


@shared_task(name="approvals.expire_overdue", ignore_result=True)
def expire_overdue() -> int:
    return services.expire_overdue()


@shared_task(
    name="approvals.send_webhook",
    bind=True,
    ignore_result=True,
    max_retries=5,
    acks_late=True,
)
def send_webhook(self, request_id: str) -> None:
    conf = settings.APPROVALS
    if not conf["WEBHOOK_URL"]:
        return
    req = (
        ApprovalRequest.objects.select_related("requested_by", "decided_by")
        .filter(pk=request_id)
        .first()
    )
    if req is None:
        return
    try:
        webhook.deliver(
            conf["WEBHOOK_URL"], conf["WEBHOOK_SECRET"], "approval.created", services.as_dict(req)
        )
    except webhook.WebhookError as err:
        if err.transient and self.request.retries < self.max_retries:
            raise self.retry(countdown=min(60, 2**self.request.retries)) from err
        log.warning("approval webhook for %s failed: %s", request_id, err)
