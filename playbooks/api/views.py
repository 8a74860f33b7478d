"""REST for playbooks: diffs and playbooks of a sandbox, playbooks by id (versions, edits,
the archive), inventories, dry runs and applies."""

from __future__ import annotations

import io
import tarfile

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from approvals import services as approvals
from core.api import paths
from core.api.errors import error_body
from core.api.schema import errors
from core.errors import NotFound
from sandboxes import services as sandbox_services
from sandboxes.models import Operation, Sandbox

from .. import runs, services
from ..choices import RunKind
from ..models import Diff, PlaybookVersion
from .serializers import (
    ApprovalRequiredSerializer,
    DiffBodySerializer,
    EditSerializer,
    EventListSerializer,
    InventoryBodySerializer,
    InventoryListSerializer,
    NewInventorySerializer,
    OperationBodySerializer,
    PlaybookBodySerializer,
    RunBodySerializer,
    StartRunSerializer,
    VerifyPlaybookSerializer,
    WaitQuerySerializer,
)

# 400/401/403/404 are implied (core.api.schema.AutoSchema); a sandbox or run may be in the
# wrong state, and a step on the host may fail (502) or take too long (504).
ERRORS = errors(409, 502, 504)
# Inventory routes are 404 to anyone without an inventory permission, paths or not.
NOT_AN_OPERATOR = errors(404)
RUN_WAIT_SECONDS = 3600
VERSION = OpenApiParameter("version", int)


def _int(value, name: str = "version") -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise serializers.ValidationError({name: ["must be an integer."]}) from None


def _raw(request) -> bool:
    return request.query_params.get("raw") in ("1", "true")


def _playbook(version: PlaybookVersion, code: int = status.HTTP_200_OK) -> Response:
    return Response(PlaybookBodySerializer({"playbook": version}).data, status=code)


def _accepted(op: Operation, code: int = status.HTTP_202_ACCEPTED) -> Response:
    """The operation doing a slow step: 202 while it runs, 200 when the caller waited for it."""
    return Response(OperationBodySerializer({"operation": op}).data, status=code)


def yaml_response(version: PlaybookVersion) -> HttpResponse:
    response = HttpResponse(version.yaml, content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="playbook-v{version.number}.yml"'
    return response


def archive(version: PlaybookVersion) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        entries = [("playbook.yml", version.yaml.encode())]
        entries += [(f"files/{f.name}", bytes(f.content)) for f in version.files.all()]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


RUN_ANSWERS = {202: RunBodySerializer, 200: RunBodySerializer, **ERRORS}
OPERATION_ANSWERS = {202: OperationBodySerializer, 200: OperationBodySerializer, **ERRORS}


@extend_schema_view(
    check=extend_schema(
        summary="Dry run (ansible --check --diff) against an inventory (run_inventory; else 404)",
        request=StartRunSerializer,
        responses=RUN_ANSWERS,
    ),
    apply=extend_schema(
        summary="Apply to an inventory (run_inventory; else 404): 409 approval_required (with the new request) until approved",
        request=StartRunSerializer,
        responses={**RUN_ANSWERS, 409: ApprovalRequiredSerializer},
    ),
)
class PlaybookViewSet(viewsets.ViewSet):
    """Playbooks by id: versions, raw YAML, a tar.gz with files/, and operators' edits."""

    lookup_value_regex = paths.UUID

    @extend_schema(
        summary="A playbook (latest version, or ?version=N)",
        parameters=[VERSION, OpenApiParameter("raw", bool)],
        responses={200: PlaybookBodySerializer, (200, "application/yaml"): str, **ERRORS},
    )
    def retrieve(self, request, pk=None):
        version = services.get_version(request.user, pk, _int(request.query_params.get("version")))
        return yaml_response(version) if _raw(request) else _playbook(version)

    @extend_schema(
        summary="The playbook as a tar.gz (playbook.yml + files/)",
        parameters=[VERSION],
        responses={(200, "application/gzip"): bytes},
    )
    @action(detail=True, methods=["get"])
    def archive(self, request, pk=None):
        version = services.get_version(request.user, pk, _int(request.query_params.get("version")))
        response = HttpResponse(archive(version), content_type="application/gzip")
        response["Content-Disposition"] = (
            f'attachment; filename="playbook-{pk}-v{version.number}.tar.gz"'
        )
        return response

    @action(detail=True, methods=["post"])
    def check(self, request, pk=None):
        return run_playbook_action(request, pk, RunKind.CHECK)

    @action(detail=True, methods=["post"])
    def apply(self, request, pk=None):
        return run_playbook_action(request, pk, RunKind.APPLY)

    @extend_schema(
        summary="Edit: a new version (operators)",
        request=EditSerializer,
        responses={201: PlaybookBodySerializer, **ERRORS},
    )
    @action(detail=True, methods=["post"])
    def versions(self, request, pk=None):
        playbook = services.visible_playbooks(request.user).filter(pk=pk).first()
        if playbook is None:
            raise NotFound(f"No playbook {pk}.")
        serializer = EditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = services.edit(playbook, request.user, data["yaml"], data["note"])
        return _playbook(version, status.HTTP_201_CREATED)


# --- inventories, dry runs, applies -----------------------------------------------------------


class InventoryViewSet(viewsets.ViewSet):
    """Production targets, for operators only (an inventory permission: view_inventory,
    add_inventory or run_inventory); anyone else gets 404. Credentials are write-only: never
    in a response."""

    lookup_value_regex = paths.UUID

    @extend_schema(
        summary="Inventories (operators)",
        operation_id="v1_inventories_list",
        responses={200: InventoryListSerializer, **NOT_AN_OPERATOR},
    )
    def list(self, request):
        runs.require(request.user)
        inventories = runs.visible_inventories(request.user).order_by("name")[:500]
        return Response(InventoryListSerializer({"results": inventories}).data)

    @extend_schema(
        summary="One inventory (operators)", responses={200: InventoryBodySerializer, **ERRORS}
    )
    def retrieve(self, request, pk=None):
        inventory = runs.get_inventory(request.user, pk)
        return Response(InventoryBodySerializer({"inventory": inventory}).data)

    @extend_schema(
        summary="Register an inventory (add_inventory)",
        request=NewInventorySerializer,
        responses={201: InventoryBodySerializer, **ERRORS, **NOT_AN_OPERATOR},
    )
    def create(self, request):
        runs.require(request.user, runs.ADD_PERMISSION)
        serializer = NewInventorySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        inventory = runs.create_inventory(
            request.user,
            name=data["name"],
            description=data["description"],
            variables=data["variables"],
            hosts=[dict(h) for h in data["hosts"]],
        )
        return Response(InventoryBodySerializer({"inventory": inventory}).data, status=201)


def run_playbook_action(request, pk, kind: str):
    # Before the body is read: to an agent the route answers 404 whatever it sends.
    runs.require(request.user, runs.RUN_PERMISSION, what=f"No playbook {pk} to run.")
    serializer = StartRunSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if kind == RunKind.CHECK:
        run = runs.start_check(request.user, pk, data["inventory"], data["version"])
    else:
        if data["version"] is not None:
            raise serializers.ValidationError(
                {"version": ["an apply always uses the latest version."]}
            )
        outcome, value = runs.request_apply(
            request.user, pk, data["inventory"], data["approval_id"]
        )
        if outcome == "approval":
            message = (
                f"Applying needs an operator's approval: request {value.id} is {value.status}. "
                "Call again with approval_id once it is approved."
            )
            body = {
                **error_body("approval_required", message),
                "approval": approvals.as_dict(value),
            }
            return Response(ApprovalRequiredSerializer(body).data, status=409)
        run = value
    if data["wait"]:
        return Response(RunBodySerializer({"run": runs.wait_for_run(run, RUN_WAIT_SECONDS)}).data)
    return Response(RunBodySerializer({"run": run}).data, status=status.HTTP_202_ACCEPTED)


class PlaybookRunViewSet(viewsets.ViewSet):
    """Dry runs and applies: status, per-host results, events (`?after=seq`), cancel. For
    operators only (an inventory permission; cancelling needs run_inventory); else 404."""

    lookup_value_regex = paths.UUID

    @extend_schema(summary="One run", responses={200: RunBodySerializer, **ERRORS})
    def retrieve(self, request, pk=None):
        return Response(RunBodySerializer({"run": runs.get_run(request.user, pk)}).data)

    @extend_schema(
        summary="A run's events after seq",
        parameters=[OpenApiParameter("after", int)],
        responses={200: EventListSerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        run = runs.get_run(request.user, pk)
        after = _int(request.query_params.get("after"), "after") or 0
        rows = run.events.filter(seq__gt=after).order_by("seq")[:1000]
        return Response(EventListSerializer({"events": rows}).data)

    @extend_schema(
        summary="Cancel a run", request=None, responses={200: RunBodySerializer, **ERRORS}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return Response(RunBodySerializer({"run": runs.cancel_run(request.user, pk)}).data)


WAIT = OpenApiParameter(
    "wait",
    bool,
    description=(
        "Wait for a result still being made (default true); false answers 202 with the "
        "operation making it."
    ),
)


class SandboxChangeViewSet(viewsets.GenericViewSet):
    """What an agent changed in its sandbox, and the playbook that reproduces it: routes
    under /v1/sandboxes/{id}/ served by the playbooks app. Computing a diff and generating
    a playbook are operations on the sandbox's host: a kept result answers at once, else
    the request waits for the operation (or, with `wait=false`, answers 202 with it)."""

    lookup_value_regex = paths.UUID

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Sandbox.objects.none()
        return sandbox_services.visible_sandboxes(self.request.user)

    @extend_schema(
        summary="What changed between two states",
        description=(
            "Files added/removed/modified/touched (path, size, mode, owner, sha256, unified diff "
            "for small text files), packages, systemd units, users and groups, and the commands "
            "run in between. `from` is a snapshot name; `to` a snapshot name or `now` (default). "
            "Both states are read from the sandbox's disk on its host, so changes made outside "
            "the API count too. The file changes paginate with `limit` and `offset`. A diff of "
            "two snapshots is kept; `diff_id` (named by a diff operation's result) reads one "
            "computed before, also to now, without computing it again."
        ),
        parameters=[
            OpenApiParameter("from", str, description="snapshot name (required without diff_id)"),
            OpenApiParameter("to", str, description="snapshot name or now (default)"),
            OpenApiParameter("diff_id", str, description="a diff computed before"),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
            WAIT,
        ],
        responses={200: DiffBodySerializer, 202: OperationBodySerializer, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        sandbox = self.get_object()
        query = request.query_params
        try:
            limit = max(1, min(int(query.get("limit", 200)), 1000))
            offset = max(0, int(query.get("offset", 0)))
        except ValueError:
            raise serializers.ValidationError(
                {"limit": ["limit and offset must be integers."]}
            ) from None
        wait = _wait(request)
        diff, op = services.request_diff(
            sandbox,
            request.user,
            query.get("from", ""),
            query.get("to") or Diff.NOW,
            diff_id=query.get("diff_id"),
        )
        if op is not None:
            if not wait:
                return _accepted(op)
            diff = services.wait_for_diff(diff, op)
        context = {"limit": limit, "offset": offset}
        return Response(DiffBodySerializer({"diff": diff}, context=context).data)

    @extend_schema(
        summary="Ansible playbook reproducing the change between two snapshots",
        parameters=[
            OpenApiParameter("from", str, required=True),
            OpenApiParameter("to", str, required=True),
            OpenApiParameter("raw", bool, description="answer with the YAML itself"),
            WAIT,
        ],
        responses={
            200: PlaybookBodySerializer,
            (200, "application/yaml"): str,
            202: OperationBodySerializer,
            **ERRORS,
        },
    )
    @action(detail=True, methods=["get"])
    def playbook(self, request, pk=None):
        sandbox = self.get_object()
        wait = _wait(request)
        playbook, op = services.request_playbook(
            sandbox,
            request.user,
            request.query_params.get("from", ""),
            request.query_params.get("to", ""),
        )
        if op is not None:
            if not wait:
                return _accepted(op)
            playbook = services.wait_for_playbook(playbook, op)
        version = playbook.latest
        return yaml_response(version) if _raw(request) else _playbook(version)

    @extend_schema(
        summary="Verify the playbook by replay on a fresh clone (slow: an operation)",
        request=VerifyPlaybookSerializer,
        responses=OPERATION_ANSWERS,
    )
    @action(detail=True, methods=["post"], url_path="playbook/verify")
    def verify_playbook(self, request, pk=None):
        sandbox = self.get_object()
        params = VerifyPlaybookSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        op = services.start_verify(
            sandbox, request.user, data["from_name"], data["to_name"], data["version"]
        )
        if data["wait"]:
            op = sandbox_services.wait_for_operation(op, services.VERIFY_DEADLINE_SECONDS)
            return _accepted(op, status.HTTP_200_OK)
        return _accepted(op)


def _wait(request) -> bool:
    params = WaitQuerySerializer(data=request.query_params.dict())
    params.is_valid(raise_exception=True)
    return params.validated_data["wait"]
