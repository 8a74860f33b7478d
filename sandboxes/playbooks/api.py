"""REST for playbooks: generate/read (per sandbox), versions, edits, the archive."""

from __future__ import annotations

import io
import tarfile
import time

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from approvals import services as approvals
from core.api.serializers import StrictInputSerializer

from . import runs, services
from .models import Playbook, PlaybookRun, PlaybookVersion


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


class EditSerializer(StrictInputSerializer):
    yaml = serializers.CharField()
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class InventoryHostSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=100)
    address = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    port = serializers.IntegerField(required=False, min_value=1, max_value=65535, default=22)
    user = serializers.CharField(max_length=64, required=False, default="root")
    groups = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, default=list
    )
    variables = serializers.DictField(required=False, default=dict)
    host_key = serializers.CharField(required=False, allow_blank=True, default="")
    private_key = serializers.CharField(
        required=False, allow_blank=True, default="", write_only=True, trim_whitespace=False
    )
    certificate = serializers.CharField(required=False, allow_blank=True, default="")
    sandbox_id = serializers.UUIDField(required=False, allow_null=True, default=None)


class InventorySerializer(StrictInputSerializer):
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    variables = serializers.DictField(required=False, default=dict)
    hosts = InventoryHostSerializer(many=True)


class RunSerializer(StrictInputSerializer):
    inventory = serializers.UUIDField()
    version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    approval_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    wait = serializers.BooleanField(required=False, default=False)


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
