"""Terminals (tmux in the sandbox's host, ssh into the guest) and files (SFTP in the guest)
for agents. Every route is scoped to the caller's own sandboxes: another agent's sandbox or
pane is a 404. Typed input and every change to a file is in the audit trail."""

from __future__ import annotations

import re
from urllib.parse import quote

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.serializers import ErrorSerializer
from core.conf import vsb
from core.errors import TooLarge

from .. import services
from . import serializers as s

ERRORS = {
    400: ErrorSerializer,
    401: ErrorSerializer,
    403: ErrorSerializer,
    404: ErrorSerializer,
    409: ErrorSerializer,
}
TAG_TERMINALS = ["terminals"]
TAG_TMUX = ["tmux (original paths)"]
TAG_FILES = ["files"]


def _valid(serializer_class, data):
    ser = serializer_class(data=data)
    ser.is_valid(raise_exception=True)
    return dict(ser.validated_data)


def _pane_from_url(pane: str) -> str:
    """`3`, `%3` and `%253` (a URL-encoded %) all name pane %3."""
    pane = pane.replace("%25", "%")
    return pane if pane.startswith("%") or ":" in pane else f"%{pane}"


def _optional_sandbox(user, data: dict):
    sandbox_id = data.pop("sandbox_id", None)
    return services.owned_sandbox(user, sandbox_id) if sandbox_id else None


class SandboxScoped(APIView):
    def sandbox(self, request, sandbox_id):
        return services.owned_sandbox(request.user, sandbox_id)


# --- /v1/sandboxes/{id}/terminals/... -------------------------------------------------------


class SessionsView(SandboxScoped):
    """Terminal sessions of a sandbox: tmux sessions whose panes are shells in the guest."""

    @extend_schema(
        tags=TAG_TERMINALS,
        summary="List terminal sessions",
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request, sandbox_id):
        return Response({"sessions": services.list_sessions(self.sandbox(request, sandbox_id))})

    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Open a terminal session (ssh into the guest with a short-lived certificate)",
        request=s.CreateSessionSerializer,
        responses={201: OpenApiTypes.OBJECT, **ERRORS},
    )
    def post(self, request, sandbox_id):
        data = _valid(s.CreateSessionSerializer, request.data)
        data.pop("sandbox_id", None)
        data.pop("command", None)
        row, pane = services.create_session(self.sandbox(request, sandbox_id), request.user, **data)
        body = {
            "session": {"id": str(row.id), "name": row.name, "tmux_session": row.tmux_name},
            "session_id": str(row.id),
            "session_name": row.name,
            "pane": s.PaneSerializer(pane).data,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class SessionDetailView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Kill a terminal session",
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def delete(self, request, sandbox_id, name):
        return Response(
            services.kill_session(self.sandbox(request, sandbox_id), request.user, name)
        )


class WindowsView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="List windows",
        parameters=[OpenApiParameter("session", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        windows = services.list_windows(
            request.user, sandbox=sandbox, session=request.query_params.get("session", "")
        )
        return Response({"windows": windows})


class PanesView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="List panes",
        parameters=[OpenApiParameter("session", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        panes = services.list_panes(
            request.user, sandbox=sandbox, session=request.query_params.get("session", "")
        )
        return Response({"panes": s.PaneSerializer(panes, many=True).data})

    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Open a pane: a new window, or a split of `pane_id`",
        request=s.CreatePaneSerializer,
        responses={201: OpenApiTypes.OBJECT, **ERRORS},
    )
    def post(self, request, sandbox_id):
        return _create_pane(request, self.sandbox(request, sandbox_id))


class PaneActionView(SandboxScoped):
    """POST .../panes/{pane}/send-keys | read | respawn | select."""

    action = ""

    @extend_schema(
        tags=TAG_TERMINALS,
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def post(self, request, sandbox_id, pane):
        sandbox = self.sandbox(request, sandbox_id)
        return _pane_action(request, self.action, _pane_from_url(pane), sandbox)


class PaneView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS, summary="Kill a pane", responses={200: OpenApiTypes.OBJECT, **ERRORS}
    )
    def delete(self, request, sandbox_id, pane):
        sandbox = self.sandbox(request, sandbox_id)
        return Response(services.kill_pane(request.user, _pane_from_url(pane), sandbox=sandbox))


def _create_pane(request, sandbox):
    data = _valid(s.CreatePaneSerializer, request.data)
    if sandbox is None:
        sandbox = _optional_sandbox(request.user, data)
        if sandbox is None:
            sandbox = _only_sandbox_with_session(request.user, data["session_name"])
    if data.get("pane_id") and not data["new_window"]:
        pane = services.split_pane(
            request.user, data["pane_id"], sandbox=sandbox, horizontal=data["horizontal"]
        )
    elif data["new_window"]:
        pane = services.new_window(
            sandbox, request.user, data["session_name"], data.get("window_name", "")
        )
    else:
        pane = services.split_pane(
            request.user, f"{data['session_name']}:", sandbox=sandbox, horizontal=data["horizontal"]
        )
    body = {
        "pane_id": pane["pane_id"],
        "session_name": pane["session"],
        "window_index": pane["window_index"],
        "pane_index": pane["pane_index"],
        "pane": s.PaneSerializer(pane).data,
    }
    return Response(body, status=status.HTTP_201_CREATED)


def _only_sandbox_with_session(user, session_name: str):
    from ..models import TerminalSession

    ids = list(
        TerminalSession.objects.filter(
            sandbox__owner=user, name=session_name, closed_at__isnull=True
        ).values_list("sandbox_id", flat=True)[:2]
    )
    if len(ids) != 1:
        from core.errors import InvalidInput

        raise InvalidInput.field(
            "sandbox_id", "is required (no single sandbox has a session of that name)."
        )
    return services.owned_sandbox(user, ids[0])


def _pane_action(request, action: str, pane_id: str | None, sandbox):
    user = request.user
    if action == "send-keys":
        data = _valid(s.SendKeysSerializer, request.data)
        sandbox = sandbox or _optional_sandbox(user, data)
        pane_id = pane_id or data.get("pane_id")
        if not pane_id:
            from core.errors import InvalidInput

            raise InvalidInput.field("pane_id", "is required.")
        return Response(
            services.send_keys(
                user,
                pane_id,
                sandbox=sandbox,
                text=data.get("text", ""),
                keys=data.get("keys", []),
                enter=data["enter"],
            )
        )
    if action == "read":
        data = _valid(s.ReadPaneSerializer, request.data or {})
        sandbox = sandbox or _optional_sandbox(user, data)
        pane_id = pane_id or data.get("pane_id")
        if not pane_id:
            from core.errors import InvalidInput

            raise InvalidInput.field("pane_id", "is required.")
        return Response(
            services.read_pane(
                user, pane_id, sandbox=sandbox, last_n_lines=data.get("last_n_lines")
            )
        )
    data = _valid(s.PaneTargetSerializer, request.data) if pane_id is None else {}
    sandbox = sandbox or _optional_sandbox(user, data)
    pane_id = pane_id or data["pane_id"]
    if action == "respawn":
        pane = services.respawn_pane(user, pane_id, sandbox=sandbox)
        return Response({"pane_id": pane["pane_id"], "respawned": True})
    if action == "select":
        return Response(services.select_pane(user, pane_id, sandbox=sandbox))
    raise AssertionError(action)


# --- /api/v1/tmux/... (the original tmux-client's paths) -------------------------------------


class TmuxSessionsView(APIView):
    """The original's `GET /v1/tmux/sessions`: your sessions in every sandbox (or one)."""

    @extend_schema(
        tags=TAG_TMUX,
        summary="List sessions",
        parameters=[OpenApiParameter("sandbox_id", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request):
        sandbox_id = request.query_params.get("sandbox_id")
        sandboxes = (
            [services.owned_sandbox(request.user, sandbox_id)]
            if sandbox_id
            else list(services.owned_sandboxes(request.user).filter(state="ready"))
        )
        sessions = []
        for sandbox in sandboxes:
            sessions += services.list_sessions(sandbox)
        return Response({"sessions": sessions})


class TmuxCreateSessionView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Create a session in a sandbox (sandbox_id required)",
        request=s.CreateSessionSerializer,
        responses={201: OpenApiTypes.OBJECT, **ERRORS},
    )
    def post(self, request):
        data = _valid(s.CreateSessionSerializer, request.data)
        data.pop("command", None)
        sandbox_id = data.pop("sandbox_id", None)
        if not sandbox_id:
            from core.errors import InvalidInput

            raise InvalidInput.field("sandbox_id", "is required: sessions live in a sandbox.")
        sandbox = services.owned_sandbox(request.user, sandbox_id)
        row, pane = services.create_session(sandbox, request.user, **data)
        return Response(
            {
                "session_id": str(row.id),
                "session_name": row.name,
                "sandbox_id": str(sandbox.id),
                "pane_id": pane["pane_id"],
            },
            status=status.HTTP_201_CREATED,
        )


class TmuxReleaseSessionView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Kill (release) a session",
        parameters=[OpenApiParameter("sandbox_id", str)],
        request=None,
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def post(self, request, name):
        services.check_session_name(name, "name")
        sandbox_id = request.query_params.get("sandbox_id") or (request.data or {}).get(
            "sandbox_id"
        )
        sandbox = (
            services.owned_sandbox(request.user, sandbox_id)
            if sandbox_id
            else _only_sandbox_with_session(request.user, name)
        )
        result = services.kill_session(sandbox, request.user, name)
        return Response({"session_name": name, "success": result["killed"]})


class TmuxWindowsView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="List windows",
        parameters=[OpenApiParameter("session", str), OpenApiParameter("sandbox_id", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request):
        sandbox_id = request.query_params.get("sandbox_id")
        sandbox = services.owned_sandbox(request.user, sandbox_id) if sandbox_id else None
        windows = services.list_windows(
            request.user, sandbox=sandbox, session=request.query_params.get("session", "")
        )
        return Response({"windows": windows})


class TmuxPanesView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="List panes",
        parameters=[OpenApiParameter("session", str), OpenApiParameter("sandbox_id", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request):
        sandbox_id = request.query_params.get("sandbox_id")
        sandbox = services.owned_sandbox(request.user, sandbox_id) if sandbox_id else None
        panes = services.list_panes(
            request.user, sandbox=sandbox, session=request.query_params.get("session", "")
        )
        return Response({"panes": s.PaneSerializer(panes, many=True).data})


class TmuxPaneActionView(APIView):
    """`POST /api/v1/tmux/panes/send-keys | read | switch | create`."""

    action = ""

    @extend_schema(
        tags=TAG_TMUX, request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, **ERRORS}
    )
    def post(self, request):
        if self.action == "create":
            return _create_pane(request, None)
        action = "select" if self.action == "switch" else self.action
        return _pane_action(request, action, None, None)


class TmuxKillPaneView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Kill a pane",
        parameters=[OpenApiParameter("sandbox_id", str)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def delete(self, request, pane):
        sandbox_id = request.query_params.get("sandbox_id")
        sandbox = services.owned_sandbox(request.user, sandbox_id) if sandbox_id else None
        return Response(services.kill_pane(request.user, _pane_from_url(pane), sandbox=sandbox))


# --- /v1/sandboxes/{id}/files/... --------------------------------------------------------------


def _params(request, serializer_class):
    data = request.query_params.dict() if request.method in ("GET", "DELETE") else request.data
    if request.method == "DELETE" and request.data:
        data = {**data, **request.data}
    return _valid(serializer_class, data)


class FileView(SandboxScoped):
    action = ""
    serializer = s.PathSerializer

    def _run(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        data = _params(request, self.serializer)
        if self.action == "edit":
            data["replace_all"] = data.pop("all")
        return Response(services.file_op(sandbox, request.user, self.action, **data))

    @extend_schema(
        tags=TAG_FILES,
        parameters=[OpenApiParameter("path", str, required=True)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request, sandbox_id):
        return self._run(request, sandbox_id)

    @extend_schema(
        tags=TAG_FILES, request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, **ERRORS}
    )
    def post(self, request, sandbox_id):
        return self._run(request, sandbox_id)

    @extend_schema(
        tags=TAG_FILES,
        parameters=[OpenApiParameter("path", str, required=True)],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def delete(self, request, sandbox_id):
        return self._run(request, sandbox_id)


class _RawBodyParser(BaseParser):
    """Leaves the body unread: the upload view streams it with its own size limit."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream


class UploadView(SandboxScoped):
    parser_classes = [_RawBodyParser]

    @extend_schema(
        tags=TAG_FILES,
        summary="Upload a file (raw body, any bytes)",
        parameters=[
            OpenApiParameter("path", str, required=True),
            OpenApiParameter("mode", str),
            OpenApiParameter("create_dirs", bool),
            OpenApiParameter("overwrite", bool),
        ],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: OpenApiTypes.OBJECT, 413: ErrorSerializer, **ERRORS},
    )
    def put(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        params = _valid(s.UploadQuerySerializer, request.query_params.dict())
        limit = vsb("FILE_MAX_TRANSFER_BYTES")
        chunks, size = [], 0
        stream = request.stream
        while stream is not None:
            chunk = stream.read(1024 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"upload is over the limit of {limit} bytes.")
            chunks.append(chunk)
        path = params.pop("path")
        return Response(services.upload(sandbox, request.user, path, b"".join(chunks), **params))

    post = put


class DownloadView(SandboxScoped):
    @extend_schema(
        tags=TAG_FILES,
        summary="Download a file (raw bytes)",
        parameters=[OpenApiParameter("path", str, required=True)],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **ERRORS},
    )
    def get(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        params = _valid(s.PathSerializer, request.query_params.dict())
        data, meta = services.download(sandbox, request.user, params["path"])
        response = HttpResponse(data, content_type="application/octet-stream")
        response["Content-Disposition"] = attachment(meta["resolved"].rsplit("/", 1)[-1])
        response["X-File-Mode"] = meta["mode"]
        return response


def attachment(name: str) -> str:
    """Content-Disposition for a file name the guest chose (any character but / and NUL):
    an ASCII stand-in with anything outside printable ASCII, quotes, backslashes and `:` `;`
    replaced, plus the exact name percent-encoded (RFC 6266). Never a CR or LF in a header."""
    plain = re.sub(r'[^\x20-\x7e]|["\\:;]', "_", name)[:200] or "download"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
