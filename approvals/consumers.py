"""/ws/approvals/: operators receive new and decided requests live.

History comes over REST (GET /v1/approvals?status=pending); the socket gives the live tail.
Each event carries `seq` (the audit event's), so a client can de-duplicate and order."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import events, services

DENIED = 4403


class ApprovalEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if not await database_sync_to_async(services.is_operator)(user):
            await self.close(code=DENIED)
            return
        await self.channel_layer.group_add(events.OPERATORS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(events.OPERATORS_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def approval_event(self, message):
        await self.send_json(
            {
                "type": f"approval.{message['event']}",
                "seq": message["seq"],
                "request": message["request"],
            }
        )
