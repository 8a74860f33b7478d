"""Approvals over REST: the non-blocking twins of the ask, and decisions by operators."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import paths
from core.api.pagination import CursorPagination
from core.api.schema import errors
from core.errors import Forbidden, ServiceError

from .. import services
from ..asking import ask
from ..choices import ApprovalStatus
from .serializers import (
    ApprovalSerializer,
    AskSerializer,
    BulkDecisionSerializer,
    BulkResultSerializer,
    CancelledSerializer,
    DecisionSerializer,
    PendingSerializer,
    RespondSerializer,
)

# A decision on a request no longer pending (decided, cancelled, expired) is a 409; on
# one that is not there (or not yours to see) a 404, also when the body names it.
DECIDED = {200: ApprovalSerializer, **errors(404, 409)}


def ask_fields(request) -> dict:
    """A validated ask; the idempotency key may also come as the Idempotency-Key header."""
    serializer = AskSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    fields = dict(serializer.validated_data)
    fields["idempotency_key"] = (
        fields["idempotency_key"] or request.headers.get("Idempotency-Key", "")[:200]
    )
    return fields


def _create(request) -> Response:
    req, created = services.create_request(request.user, **ask_fields(request))
    return Response(
        ApprovalSerializer(req).data,
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )


class ApprovalViewSet(viewsets.ViewSet):
    """Approval requests. Agents see their own; operators (the view or decide permission)
    see all. Deciding needs the decide permission and is never open to the requester."""

    lookup_value_regex = paths.UUID
    # A queue: oldest first, so an operator paging forward sees every request, also those
    # that arrive while paging (they come after the position reached).
    pagination_class = CursorPagination.ordered_by("created_at", "id")

    @extend_schema(
        summary="List approval requests",
        description=(
            "Oldest first (a queue), paginated by `cursor`: follow `next`; a request that "
            "existed when paging began is on exactly one page."
        ),
        parameters=[OpenApiParameter("status", str, enum=ApprovalStatus.values)],
        responses={200: ApprovalSerializer(many=True), **errors(400)},
    )
    def list(self, request):
        qs = services.visible_requests(request.user)
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in ApprovalStatus.values:
                raise ServiceError(
                    f"status: must be one of {', '.join(ApprovalStatus.values)}.",
                    fields={"status": ["unknown status"]},
                )
            qs = qs.filter(status=wanted)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(ApprovalSerializer(page, many=True).data)

    @extend_schema(summary="One approval request", responses=ApprovalSerializer)
    def retrieve(self, request, pk=None):
        return Response(ApprovalSerializer(services.get_request(request.user, pk)).data)

    @extend_schema(
        summary="Ask without waiting",
        description="Creates a pending request (or returns the one with the same idempotency key).",
        request=AskSerializer,
        responses={201: ApprovalSerializer, 200: ApprovalSerializer},
    )
    def create(self, request):
        return _create(request)

    @extend_schema(summary="Approve", request=DecisionSerializer, responses=DECIDED)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._decide(request, pk, approve=True)

    @extend_schema(summary="Deny", request=DecisionSerializer, responses=DECIDED)
    @action(detail=True, methods=["post"])
    def deny(self, request, pk=None):
        return self._decide(request, pk, approve=False)

    @extend_schema(
        summary="Cancel (the requester or an operator)",
        request=DecisionSerializer,
        responses=DECIDED,
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        serializer = DecisionSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        req = services.cancel(request.user, pk, serializer.validated_data["reason"])
        return Response(ApprovalSerializer(req).data)

    @extend_schema(
        summary="Approve or deny many at once",
        request=BulkDecisionSerializer,
        responses=BulkResultSerializer,
    )
    @action(detail=False, methods=["post"], url_path="bulk")
    def bulk(self, request):
        serializer = BulkDecisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        results = []
        for request_id in data["ids"]:
            try:
                req = services.decide(
                    request.user,
                    request_id,
                    approve=data["decision"] == "approve",
                    reason=data["reason"],
                )
                results.append({"id": str(req.id), "status": req.status})
            except ServiceError as err:
                if (
                    isinstance(err, Forbidden)
                    and err.code == "forbidden"
                    and not services.can_decide(request.user)
                ):
                    raise
                results.append(
                    {"id": str(request_id), "error": {"code": err.code, "message": err.message}}
                )
        return Response(BulkResultSerializer({"results": results}).data)

    def _decide(self, request, pk, *, approve: bool) -> Response:
        serializer = DecisionSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        req = services.decide(
            request.user, pk, approve=approve, reason=serializer.validated_data["reason"]
        )
        return Response(ApprovalSerializer(req).data)


class HumanAskView(APIView):
    """POST /api/v1/human/ask: blocks until the request is decided, cancelled or expired.

    Under daphne this path is served by approvals.ask_endpoint (no thread held while
    waiting); this view documents it and serves it under WSGI. Both take JSON only."""

    @extend_schema(
        summary="Ask a human and wait for the answer",
        request=AskSerializer,
        responses={200: ApprovalSerializer, **errors(413)},
    )
    def post(self, request):
        return Response(async_to_sync(ask)(request.user, ask_fields(request)))


class HumanPendingView(APIView):
    @extend_schema(
        summary="Pending requests (original's shape)",
        operation_id="api_v1_human_pending_list",
        responses=PendingSerializer,
    )
    def get(self, request):
        qs = services.visible_requests(request.user).filter(status=ApprovalStatus.PENDING)[:500]
        return Response(PendingSerializer({"pending": qs}).data)


class HumanPendingDetailView(APIView):
    @extend_schema(summary="One request", responses=ApprovalSerializer)
    def get(self, request, request_id):
        return Response(ApprovalSerializer(services.get_request(request.user, request_id)).data)

    @extend_schema(
        summary="Cancel a pending request", responses={200: CancelledSerializer, **errors(409)}
    )
    def delete(self, request, request_id):
        return Response(CancelledSerializer(services.cancel(request.user, request_id)).data)


class HumanRespondView(APIView):
    @extend_schema(
        summary="Decide (original's respond; the decider is the caller)",
        request=RespondSerializer,
        responses=DECIDED,
    )
    def post(self, request):
        serializer = RespondSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        req = services.decide(
            request.user, data["request_id"], approve=data["approved"], reason=data["reason"]
        )
        return Response(ApprovalSerializer(req).data)
