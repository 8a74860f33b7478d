"""/ws/playbook-runs/{id}/: a run's events live. History first (`?after=seq` in the query
string, default 0), then the live tail; events carry `seq` so clients de-duplicate."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.errors import NotFound

from .api.serializers import PlaybookEventSerializer
from .runs import get_run, group_for

DENIED = 4403


class PlaybookRunConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        user = self.scope.get("user")
        if await self._history(user) is None:
            await self.close(code=DENIED)
            return
        # Join first, then read history and state: a run that ends in between is announced
        # twice (clients take the first "finished"), never zero times.
        await self.channel_layer.group_add(group_for(self.run_id), self.channel_name)
        await self.accept()
        history, finished = await self._history(user)
        for event in history:
            await self.send_json({"type": "event", **event})
        if finished is not None:
            await self.send_json({"type": "finished", **finished})

    @database_sync_to_async
    def _history(self, user):
        if user is None or not user.is_authenticated:
            return None
        try:
            run = get_run(user, self.run_id)
        except NotFound:
            return None
        raw_after = (parse_qs(self.scope.get("query_string", b"").decode()).get("after") or ["0"])[
            0
        ]
        after = int(raw_after) if raw_after.isdigit() else 0
        rows = run.events.filter(seq__gt=after).order_by("seq")[:5000]
        events = PlaybookEventSerializer(rows, many=True).data
        finished = (
            {"status": run.status, "host_stats": run.host_stats, "error": run.error}
            if run.is_done
            else None
        )
        return events, finished

    async def disconnect(self, code):
        await self.channel_layer.group_discard(group_for(self.run_id), self.channel_name)

    async def run_events(self, message):
        for event in message["events"]:
            await self.send_json({"type": "event", **event})

    async def run_finished(self, message):
        await self.send_json(
            {"type": "finished", **{k: v for k, v in message.items() if k != "type"}}
        )
