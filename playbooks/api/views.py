"""REST for playbooks: generate/read (per sandbox), versions, edits, the archive."""

from __future__ import annotations

import io
import json
import tarfile
import time

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from approvals import services as approvals
from core.api.serializers import ErrorSerializer
from core.errors import OperationFailed
from sandboxes import services as sandbox_services
from sandboxes.api.serializers import OperationSerializer
from sandboxes.models import Sandbox

from .. import runs, services
from ..models import Diff, Playbook, PlaybookRun, PlaybookVersion
from .serializers import (
    EditSerializer,
    InventorySerializer,
    RunSerializer,
    VerifyPlaybookSerializer,
)

ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer}


def version_body(playbook: Playbook, version: PlaybookVersion) -> dict:
    return {
        "id": str(playbook.id),
        "sandbox_id": str(playbook.sandbox_id),
        "from": playbook.from_name,
        "to": playbook.to_name,
        "version": version.number,
        "version_id": str(version.id),
        "sha256": version.sha256,
        "generated": version.generated,
        "yaml": version.yaml,
        "warnings": version.warnings,
        "skipped": version.skipped,
        "files": [
            {"name": f.name, "size": f.size, "sha256": f.sha256} for f in version.files.all()
        ],
        "syntax_ok": version.syntax_ok,
        "syntax_output": version.syntax_output,
        "note": version.note,
        "created_at": version.created_at.isoformat(),
        "created_by": version.created_by.get_username() if version.created_by_id else None,
        "versions": list(playbook.versions.values_list("number", flat=True)),
    }


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


class PlaybookViewSet(viewsets.ViewSet):
    """Playbooks by id: versions, raw YAML, a tar.gz with files/, and operators' edits."""

    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    @extend_schema(
        summary="A playbook (latest version, or ?version=N)",
        parameters=[OpenApiParameter("version", int), OpenApiParameter("raw", bool)],
        responses={200: dict},
    )
    def retrieve(self, request, pk=None):
        version = services.get_version(request.user, pk, _int(request.query_params.get("version")))
        if request.query_params.get("raw") in ("1", "true"):
            return yaml_response(version)
        return Response({"playbook": version_body(version.playbook, version)})

    @extend_schema(
        summary="The playbook as a tar.gz (playbook.yml + files/)",
        parameters=[OpenApiParameter("version", int)],
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

    @extend_schema(
        summary="Dry run (ansible --check --diff) against an inventory (run_inventory; else 404)",
        request=RunSerializer,
        responses={202: dict, 200: dict},
    )
    @action(detail=True, methods=["post"])
    def check(self, request, pk=None):
        return run_playbook_action(request, pk, "check")

    @extend_schema(
        summary="Apply to an inventory (run_inventory; else 404): 409 approval_required (with the new request) until approved",
        request=RunSerializer,
        responses={202: dict, 200: dict, 409: dict},
    )
    @action(detail=True, methods=["post"])
    def apply(self, request, pk=None):
        return run_playbook_action(request, pk, "apply")

    @extend_schema(
        summary="Edit: a new version (operators)", request=EditSerializer, responses={201: dict}
    )
    @action(detail=True, methods=["post"])
    def versions(self, request, pk=None):
        playbook = services.visible_playbooks(request.user).filter(pk=pk).first()
        if playbook is None:
            raise services.NotFound(f"No playbook {pk}.")
        serializer = EditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = services.edit(playbook, request.user, data["yaml"], data["note"])
        return Response({"playbook": version_body(playbook, version)}, status=201)


def _int(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise serializers.ValidationError({"version": ["must be an integer."]}) from None


# --- inventories, dry runs, applies -----------------------------------------------------------


class InventoryViewSet(viewsets.ViewSet):
    """Production targets, for operators only (an inventory permission: view_inventory,
    add_inventory or run_inventory); anyone else gets 404. Credentials are write-only: never
    in a response."""

    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    @extend_schema(summary="Inventories (operators)", responses={200: dict})
    def list(self, request):
        runs.require(request.user)
        inventories = runs.visible_inventories(request.user).order_by("name")[:500]
        return Response({"results": [runs.inventory_dict(i) for i in inventories]})

    @extend_schema(summary="One inventory (operators)", responses={200: dict})
    def retrieve(self, request, pk=None):
        return Response({"inventory": runs.inventory_dict(runs.get_inventory(request.user, pk))})

    @extend_schema(
        summary="Register an inventory (add_inventory)",
        request=InventorySerializer,
        responses={201: dict},
    )
    def create(self, request):
        runs.require(request.user, runs.ADD_PERMISSION)
        serializer = InventorySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        inventory = runs.create_inventory(
            request.user,
            name=data["name"],
            description=data["description"],
            variables=data["variables"],
            hosts=[dict(h) for h in data["hosts"]],
        )
        return Response({"inventory": runs.inventory_dict(inventory)}, status=201)


def _wait_run(run, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = PlaybookRun.objects.select_related("version", "inventory").get(pk=run.pk)
        if run.is_done:
            return run
        time.sleep(0.5)
    return run


def run_playbook_action(request, pk, kind: str):
    # Before the body is read: to an agent the route answers 404 whatever it sends.
    runs.require(request.user, runs.RUN_PERMISSION, what=f"No playbook {pk} to run.")
    serializer = RunSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if kind == "check":
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
            body = {
                "error": {
                    "code": "approval_required",
                    "message": (
                        f"Applying needs an operator's approval: request {value.id} is {value.status}. "
                        "Call again with approval_id once it is approved."
                    ),
                    "fields": {},
                },
                "approval": approvals.as_dict(value),
            }
            return Response(body, status=409)
        run = value
    if data["wait"]:
        run = _wait_run(run, 3600)
        return Response({"run": runs.run_dict(run)}, status=200)
    return Response({"run": runs.run_dict(run)}, status=202)


class PlaybookRunViewSet(viewsets.ViewSet):
    """Dry runs and applies: status, per-host results, events (`?after=seq`), cancel. For
    operators only (an inventory permission; cancelling needs run_inventory); else 404."""

    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    @extend_schema(summary="One run", responses={200: dict})
    def retrieve(self, request, pk=None):
        return Response({"run": runs.run_dict(runs.get_run(request.user, pk))})

    @extend_schema(
        summary="A run's events after seq",
        parameters=[OpenApiParameter("after", int)],
        responses={200: dict},
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        run = runs.get_run(request.user, pk)
        after = _int(request.query_params.get("after")) or 0
        rows = run.events.filter(seq__gt=after).order_by("seq")[:1000]
        return Response(
            {
                "events": [
                    {"seq": e.seq, "event": e.event, "host": e.host, "task": e.task, "data": e.data}
                    for e in rows
                ]
            }
        )

    @extend_schema(summary="Cancel a run", request=None, responses={200: dict})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return Response({"run": runs.run_dict(runs.cancel_run(request.user, pk))})


class SandboxChangeViewSet(viewsets.GenericViewSet):
    """What an agent changed in its sandbox, and the playbook that reproduces it: routes
    under /v1/sandboxes/{id}/ served by the playbooks app."""

    lookup_value_regex = "[^/]+"

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
            "the API count too. The file changes paginate with `limit` and `offset`."
        ),
        parameters=[
            OpenApiParameter("from", str, required=True),
            OpenApiParameter("to", str, description="snapshot name or now (default)"),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: dict, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        sandbox = self.get_object()
        diff = services.get_diff(
            sandbox,
            request.user,
            request.query_params.get("from", ""),
            request.query_params.get("to") or Diff.NOW,
        )
        if diff.status != "ready":
            raise OperationFailed(f"the diff failed: {diff.error}")
        result = json.loads(diff.result)
        changes = [
            {"change": kind, **entry}
            for kind in ("added", "removed", "modified", "touched")
            for entry in result["files"].get(kind, [])
        ]
        try:
            limit = max(1, min(int(request.query_params.get("limit", 200)), 1000))
            offset = max(0, int(request.query_params.get("offset", 0)))
        except ValueError:
            raise serializers.ValidationError(
                {"limit": ["limit and offset must be integers."]}
            ) from None
        result["files"] = {
            "count": len(changes),
            "limit": limit,
            "offset": offset,
            "results": changes[offset : offset + limit],
        }
        body = {"id": str(diff.id), "from": diff.from_name, "to": diff.to_name, **result}
        return Response({"diff": body})

    @extend_schema(
        summary="Ansible playbook reproducing the change between two snapshots",
        parameters=[
            OpenApiParameter("from", str, required=True),
            OpenApiParameter("to", str, required=True),
            OpenApiParameter("raw", bool, description="answer with the YAML itself"),
        ],
        responses={200: dict, **ERRORS},
    )
    @action(detail=True, methods=["get"])
    def playbook(self, request, pk=None):
        sandbox = self.get_object()
        playbook = services.get_playbook(
            sandbox,
            request.user,
            request.query_params.get("from", ""),
            request.query_params.get("to", ""),
        )
        if playbook.status != "ready":
            raise OperationFailed(f"generating the playbook failed: {playbook.error}")
        version = playbook.latest
        if request.query_params.get("raw") in ("1", "true"):
            return yaml_response(version)
        return Response({"playbook": version_body(playbook, version)})

    @extend_schema(
        summary="Verify the playbook by replay on a fresh clone (slow: an operation)",
        request=VerifyPlaybookSerializer,
        responses={202: dict, 200: dict, **ERRORS},
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
            return Response({"operation": OperationSerializer(op).data}, status=status.HTTP_200_OK)
        return Response(
            {"operation": OperationSerializer(op).data}, status=status.HTTP_202_ACCEPTED
        )
