"""REST for a sandbox's network: its egress policy, egress requests (an operator's approval
makes a grant), and the log of its connections."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core import hooks
from core.api import paths
from core.api.pagination import CursorPagination
from core.api.schema import errors

from .. import services
from ..models import EgressRule
from .serializers import (
    EgressConnectionSerializer,
    EgressPolicySerializer,
    EgressRequestAnswerSerializer,
    EgressRequestSerializer,
)

# 400/401/403/404 are implied (core.api.schema.AutoSchema).
ERRORS = errors(409)


class SandboxEgressViewSet(viewsets.GenericViewSet):
    """Routes under /v1/sandboxes/{id}/egress served by the egress app."""

    lookup_value_regex = paths.UUID
    serializer_class = EgressPolicySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return EgressRule._meta.get_field("sandbox").related_model.objects.none()
        return hooks.visible_sandboxes(self.request.user)

    @extend_schema(
        summary="The sandbox's egress policy",
        description=(
            "Every rule in force (the host's apt mirrors, the settings' defaults, the create "
            "request's entries and unexpired grants) and the networks no rule opens."
        ),
        responses={200: EgressPolicySerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"], url_path="egress")
    def egress(self, request, pk=None):
        return Response(EgressPolicySerializer(services.policy(self.get_object())).data)

    @extend_schema(
        summary="Ask for network access to a host",
        description=(
            "Opens an approval request (server-reserved action `egress_grant`) an operator "
            "decides; once approved the grant is live at once, until `ttl_seconds` pass. "
            "Answers 200 with `allowed: true` when the policy already allows host:port, else "
            "202 with the approval to wait on (GET /v1/approvals/{id})."
        ),
        request=EgressRequestSerializer,
        responses={
            200: EgressRequestAnswerSerializer,
            202: EgressRequestAnswerSerializer,
            **ERRORS,
        },
    )
    @action(detail=True, methods=["post"], url_path="egress/requests")
    def egress_requests(self, request, pk=None):
        params = EgressRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        verdict, approval = services.request_access(
            request.user, self.get_object(), **params.validated_data
        )
        answer = {
            "allowed": verdict is not None,
            "rule": verdict.rule if verdict else "",
            "approval": approval,
        }
        code = status.HTTP_200_OK if verdict else status.HTTP_202_ACCEPTED
        return Response(EgressRequestAnswerSerializer(answer).data, status=code)

    @extend_schema(
        summary="The sandbox's connections through the egress proxy",
        description=(
            "Newest first (a log viewer's order), paginated by `cursor`: follow `next` for "
            "older connections; `allowed=false` lists the denials only."
        ),
        parameters=[OpenApiParameter("allowed", bool)],
        responses={200: EgressConnectionSerializer(many=True), **ERRORS},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="egress/log",
        pagination_class=CursorPagination.ordered_by("-started_at", "-id"),
    )
    def egress_log(self, request, pk=None):
        sandbox = self.get_object()
        allowed = {"true": True, "1": True, "false": False, "0": False}.get(
            request.query_params.get("allowed", "").lower()
        )
        page = self.paginate_queryset(services.connections(sandbox.pk, allowed))
        return self.get_paginated_response(EgressConnectionSerializer(page, many=True).data)
