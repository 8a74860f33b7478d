from __future__ import annotations

import json

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action

from core.api import paths
from core.api.pagination import CursorPagination
from core.api.schema import errors

from .. import queries
from ..models import AuditEvent
from .filters import AuditEventFilter
from .serializers import AuditEventSerializer

FILTER_PARAMS = [
    OpenApiParameter("sandbox", OpenApiTypes.UUID),
    OpenApiParameter("agent", str),
    OpenApiParameter("actor", str, description="a username, 'system' or 'anonymous'"),
    OpenApiParameter("verb", str, description="exact verb, or a prefix such as 'sandbox'"),
    OpenApiParameter("since", OpenApiTypes.DATETIME),
    OpenApiParameter("until", OpenApiTypes.DATETIME),
    OpenApiParameter("after", int, description="only events with seq greater than this"),
    OpenApiParameter("request_id", str),
]


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, oldest first. Operators see every event; an agent sees its own."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    lookup_field = "seq"
    lookup_value_regex = paths.SEQ
    # The chain's own order: seq is unique and given out in commit order.
    pagination_class = CursorPagination.ordered_by("seq")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return AuditEvent.objects.none()
        return queries.visible_events(self.request.user).order_by("seq")

    @extend_schema(
        summary="List audit events",
        description="Oldest first (by seq), paginated by `cursor` (follow `next`).",
        parameters=FILTER_PARAMS,
        responses={200: AuditEventSerializer(many=True), **errors(400)},
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="One audit event",
        parameters=[OpenApiParameter("seq", int, OpenApiParameter.PATH)],
        responses=AuditEventSerializer,
    )
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Export audit events as JSON Lines",
        parameters=FILTER_PARAMS,
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR},
    )
    @action(detail=False, methods=["get"], url_path="export")
    def export(self, request):
        events = self.filter_queryset(self.get_queryset())

        def lines():
            for event in events.iterator(chunk_size=1000):
                yield json.dumps(AuditEventSerializer(event).data, default=str) + "\n"

        response = StreamingHttpResponse(lines(), content_type="application/x-ndjson")
        response["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
        return response
