"""REST for playbooks: generate/read (per sandbox), versions, edits, the archive."""

from __future__ import annotations

import io
import tarfile

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from ..api.serializers import StrictInputSerializer
from . import services
from .models import Playbook, PlaybookVersion


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
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in version.files.all()],
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

    @extend_schema(summary="The playbook as a tar.gz (playbook.yml + files/)", parameters=[OpenApiParameter("version", int)], responses={(200, "application/gzip"): bytes})
    @action(detail=True, methods=["get"])
    def archive(self, request, pk=None):
        version = services.get_version(request.user, pk, _int(request.query_params.get("version")))
        response = HttpResponse(archive(version), content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="playbook-{pk}-v{version.number}.tar.gz"'
        return response

    @extend_schema(summary="Edit: a new version (operators)", request=EditSerializer, responses={201: dict})
    @action(detail=True, methods=["post"])
    def versions(self, request, pk=None):
        playbook = services.visible_playbooks(request.user).filter(pk=pk).first()
        if playbook is None:
            raise services.NotFound(f"No playbook {pk}.")
        serializer = EditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.edit(playbook, request.user, **serializer.validated_data)
        return Response({"playbook": version_body(playbook, version)}, status=201)


def _int(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise serializers.ValidationError({"version": ["must be an integer."]}) from None
