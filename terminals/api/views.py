"""Terminals (tmux in the sandbox's host, ssh into the guest) and files (SFTP in the guest)
for agents. Every route is scoped to the caller's own sandboxes: another agent's sandbox or
pane is a 404. Typed input and every change to a file is in the audit trail."""

from __future__ import annotations

import re
from urllib.parse import quote

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.serializers import ErrorSerializer
from core.conf import vsb
from core.errors import InvalidInput, TooLarge

from .. import services
from . import serializers as s

# Every route reaches a host's worker: a failed tmux or SSH step is a 502, no answer a 504.
ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404, 409, 502, 504)}
FILE_ERRORS = {**ERRORS, 413: ErrorSerializer, 422: ErrorSerializer}
TAG_TERMINALS = ["terminals"]
TAG_TMUX = ["tmux (original paths)"]
TAG_FILES = ["files"]
SANDBOX_QUERY = OpenApiParameter("sandbox_id", str)
SESSION_QUERY = OpenApiParameter("session", str)


def _valid(serializer_class, data) -> dict:
    ser = serializer_class(data=data)
    ser.is_valid(raise_exception=True)
    return dict(ser.validated_data)


def _answer(serializer_class, instance, code: int = status.HTTP_200_OK) -> Response:
    return Response(serializer_class(instance).data, status=code)


def _pane_from_url(pane: str) -> str:
    """`3`, `%3` and `%253` (a URL-encoded %) all name pane %3."""
    pane = pane.replace("%25", "%")
    return pane if pane.startswith("%") or ":" in pane else f"%{pane}"


def _optional_sandbox(user, sandbox_id):
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
        responses={200: s.TerminalSessionListSerializer, **ERRORS},
    )
    def get(self, request, sandbox_id):
        sessions = services.list_sessions(self.sandbox(request, sandbox_id))
        return _answer(s.TerminalSessionListSerializer, {"sessions": sessions})

    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Open a terminal session (ssh into the guest with a short-lived certificate)",
        request=s.CreateSessionSerializer,
        responses={201: s.SessionCreatedSerializer, **ERRORS},
    )
    def post(self, request, sandbox_id):
        data = _valid(s.CreateSessionSerializer, request.data)
        data.pop("sandbox_id", None)
        data.pop("command", None)
        row, pane = services.create_session(self.sandbox(request, sandbox_id), request.user, **data)
        return _answer(s.SessionCreatedSerializer, {"row": row, "pane": pane}, 201)


class SessionDetailView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Kill a terminal session",
        responses={200: s.SessionKilledSerializer, **ERRORS},
    )
    def delete(self, request, sandbox_id, name):
        result = services.kill_session(self.sandbox(request, sandbox_id), request.user, name)
        return _answer(s.SessionKilledSerializer, result)


class WindowsView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="List windows",
        parameters=[SESSION_QUERY],
        responses={200: s.WindowListSerializer, **ERRORS},
    )
    def get(self, request, sandbox_id):
        return _windows(request, self.sandbox(request, sandbox_id))


class PanesView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="List panes",
        parameters=[SESSION_QUERY],
        responses={200: s.PaneListSerializer, **ERRORS},
    )
    def get(self, request, sandbox_id):
        return _panes(request, self.sandbox(request, sandbox_id))

    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Open a pane: a new window, or a split of `pane_id`",
        request=s.CreatePaneSerializer,
        responses={201: s.PaneCreatedSerializer, **ERRORS},
    )
    def post(self, request, sandbox_id):
        return _create_pane(request, self.sandbox(request, sandbox_id))


class PaneView(SandboxScoped):
    @extend_schema(
        tags=TAG_TERMINALS,
        summary="Kill a pane",
        responses={200: s.PaneKilledSerializer, **ERRORS},
    )
    def delete(self, request, sandbox_id, pane):
        return _kill_pane(request, self.sandbox(request, sandbox_id), pane)


def _windows(request, sandbox) -> Response:
    windows = services.list_windows(
        request.user, sandbox=sandbox, session=request.query_params.get("session", "")
    )
    return _answer(s.WindowListSerializer, {"windows": windows})


def _panes(request, sandbox) -> Response:
    panes = services.list_panes(
        request.user, sandbox=sandbox, session=request.query_params.get("session", "")
    )
    return _answer(s.PaneListSerializer, {"panes": panes})


def _kill_pane(request, sandbox, pane: str) -> Response:
    result = services.kill_pane(request.user, _pane_from_url(pane), sandbox=sandbox)
    return _answer(s.PaneKilledSerializer, result)


def _create_pane(request, sandbox) -> Response:
    data = _valid(s.CreatePaneSerializer, request.data)
    if sandbox is None:
        sandbox = _optional_sandbox(request.user, data.pop("sandbox_id", None))
        if sandbox is None:
            sandbox = services.sandbox_with_session(request.user, data["session_name"])
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
    return _answer(s.PaneCreatedSerializer, pane, 201)


# --- pane verbs: POST .../panes/{pane}/<verb> and POST /api/v1/tmux/panes/<verb> ---------------


def _send_keys(user, pane_id: str, sandbox, data: dict) -> dict:
    keys = data.get("keys", [])
    return services.send_keys(
        user, pane_id, sandbox=sandbox, text=data.get("text", ""), keys=keys, enter=data["enter"]
    )


def _read(user, pane_id: str, sandbox, data: dict) -> dict:
    return services.read_pane(user, pane_id, sandbox=sandbox, last_n_lines=data.get("last_n_lines"))


def _respawn(user, pane_id: str, sandbox, data: dict) -> dict:
    return services.respawn_pane(user, pane_id, sandbox=sandbox)


def _select(user, pane_id: str, sandbox, data: dict) -> dict:
    return services.select_pane(user, pane_id, sandbox=sandbox)


# verb: (what it takes, what it answers, how, summary). respawn and select take only the pane,
# which their sandbox-scoped path names (a body there is ignored).
PANE_VERBS = {
    "send-keys": (s.SendKeysSerializer, s.PaneSentSerializer, _send_keys, "Type into a pane"),
    "read": (s.ReadPaneSerializer, s.PaneReadSerializer, _read, "Read a pane's screen"),
    "respawn": (s.PaneTargetSerializer, s.PaneRespawnedSerializer, _respawn, "Restart a pane"),
    "select": (s.PaneTargetSerializer, s.PaneSelectedSerializer, _select, "Select a pane"),
}


def _pane_verb(request, verb: str, pane_id: str | None, sandbox) -> Response:
    takes, answers, run, _ = PANE_VERBS[verb]
    body = (request.data or {}) if verb == "read" else request.data  # read: no body is fine
    body_ignored = pane_id is not None and takes is s.PaneTargetSerializer
    data = {} if body_ignored else _valid(takes, body)
    sandbox = sandbox or _optional_sandbox(request.user, data.pop("sandbox_id", None))
    pane_id = pane_id or data.get("pane_id")
    if not pane_id:
        raise InvalidInput.field("pane_id", "is required.")
    return _answer(answers, run(request.user, pane_id, sandbox, data))


class PaneVerbView(SandboxScoped):
    """POST .../panes/{pane}/send-keys | read | respawn | select."""

    verb = ""

    def post(self, request, sandbox_id, pane):
        sandbox = self.sandbox(request, sandbox_id)
        return _pane_verb(request, self.verb, _pane_from_url(pane), sandbox)


class TmuxPaneVerbView(APIView):
    """`POST /api/v1/tmux/panes/send-keys | read | switch`: the pane and sandbox in the body."""

    verb = ""

    def post(self, request):
        return _pane_verb(request, self.verb, None, None)


def _verb_view(base, verb: str, tags: list[str]):
    takes, answers, _, summary = PANE_VERBS[verb]
    request = (
        OpenApiTypes.OBJECT if base is PaneVerbView and takes is s.PaneTargetSerializer else takes
    )
    view = type(f"{base.__name__}_{verb.replace('-', '_')}", (base,), {"verb": verb})
    schema = extend_schema(
        tags=tags, summary=summary, request=request, responses={200: answers, **ERRORS}
    )
    return extend_schema_view(post=schema)(view).as_view()


PANE_VERB_VIEWS = {verb: _verb_view(PaneVerbView, verb, TAG_TERMINALS) for verb in PANE_VERBS}


# --- /api/v1/tmux/... (the original tmux-client's paths) -------------------------------------


class TmuxSessionsView(APIView):
    """The original's `GET /v1/tmux/sessions`: your sessions in every sandbox (or one)."""

    @extend_schema(
        tags=TAG_TMUX,
        summary="List sessions",
        parameters=[SANDBOX_QUERY],
        responses={200: s.TerminalSessionListSerializer, **ERRORS},
    )
    def get(self, request):
        sandbox = _optional_sandbox(request.user, request.query_params.get("sandbox_id"))
        sessions = services.list_sessions_of(request.user, sandbox)
        return _answer(s.TerminalSessionListSerializer, {"sessions": sessions})


class TmuxCreateSessionView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Create a session in a sandbox (sandbox_id required)",
        request=s.CreateSessionSerializer,
        responses={201: s.TmuxSessionCreatedSerializer, **ERRORS},
    )
    def post(self, request):
        data = _valid(s.CreateSessionSerializer, request.data)
        data.pop("command", None)
        sandbox_id = data.pop("sandbox_id", None)
        if not sandbox_id:
            raise InvalidInput.field("sandbox_id", "is required: sessions live in a sandbox.")
        sandbox = services.owned_sandbox(request.user, sandbox_id)
        row, pane = services.create_session(sandbox, request.user, **data)
        return _answer(s.TmuxSessionCreatedSerializer, {"row": row, "pane": pane}, 201)


class TmuxReleaseSessionView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Kill (release) a session",
        parameters=[SANDBOX_QUERY],
        request=None,
        responses={200: s.SessionReleasedSerializer, **ERRORS},
    )
    def post(self, request, name):
        services.check_session_name(name, "name")
        sandbox_id = request.query_params.get("sandbox_id") or (request.data or {}).get(
            "sandbox_id"
        )
        sandbox = (
            services.owned_sandbox(request.user, sandbox_id)
            if sandbox_id
            else services.sandbox_with_session(request.user, name)
        )
        result = services.kill_session(sandbox, request.user, name)
        return _answer(s.SessionReleasedSerializer, result)


class TmuxWindowsView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="List windows",
        parameters=[SESSION_QUERY, SANDBOX_QUERY],
        responses={200: s.WindowListSerializer, **ERRORS},
    )
    def get(self, request):
        return _windows(
            request, _optional_sandbox(request.user, request.query_params.get("sandbox_id"))
        )


class TmuxPanesView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="List panes",
        parameters=[SESSION_QUERY, SANDBOX_QUERY],
        responses={200: s.PaneListSerializer, **ERRORS},
    )
    def get(self, request):
        return _panes(
            request, _optional_sandbox(request.user, request.query_params.get("sandbox_id"))
        )


class TmuxCreatePaneView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Open a pane: a new window, or a split of `pane_id`",
        request=s.CreatePaneSerializer,
        responses={201: s.PaneCreatedSerializer, **ERRORS},
    )
    def post(self, request):
        return _create_pane(request, None)


class TmuxKillPaneView(APIView):
    @extend_schema(
        tags=TAG_TMUX,
        summary="Kill a pane",
        parameters=[SANDBOX_QUERY],
        responses={200: s.PaneKilledSerializer, **ERRORS},
    )
    def delete(self, request, pane):
        sandbox = _optional_sandbox(request.user, request.query_params.get("sandbox_id"))
        return _kill_pane(request, sandbox, pane)


# The original's `switch` is our `select`.
TMUX_PANE_VERB_VIEWS = {
    "send-keys": _verb_view(TmuxPaneVerbView, "send-keys", TAG_TMUX),
    "read": _verb_view(TmuxPaneVerbView, "read", TAG_TMUX),
    "switch": _verb_view(TmuxPaneVerbView, "select", TAG_TMUX),
    "create": TmuxCreatePaneView.as_view(),
}


# --- /v1/sandboxes/{id}/files/... --------------------------------------------------------------

# verb: (what it takes, what it answers, summary). Each verb answers GET and DELETE (parameters in the
# query) as well as POST (a JSON body).
FILE_VERBS = {
    "read": (s.ReadFileSerializer, s.FileContentSerializer, "Read a text file, or some lines"),
    "write": (s.WriteFileSerializer, s.FileWrittenSerializer, "Write a text file"),
    "edit": (s.EditFileSerializer, s.FileEditedSerializer, "Replace text in a file"),
    "list": (s.FilePathSerializer, s.DirectoryListingSerializer, "List a directory"),
    "stat": (s.FilePathSerializer, s.FileStatSerializer, "A path's type, size, mode, owner"),
    "delete": (s.DeleteFileSerializer, s.FileDeletedSerializer, "Delete a file or directory"),
}


def _params(request, serializer_class):
    data = request.query_params.dict() if request.method in ("GET", "DELETE") else request.data
    if request.method == "DELETE" and request.data:
        data = {**data, **request.data}
    return _valid(serializer_class, data)


class FileView(SandboxScoped):
    verb = ""

    def _run(self, request, sandbox_id):
        takes, answers, _ = FILE_VERBS[self.verb]
        sandbox = self.sandbox(request, sandbox_id)
        data = _params(request, takes)
        if self.verb == "edit":
            data["replace_all"] = data.pop("all")
        return _answer(answers, services.file_op(sandbox, request.user, self.verb, **data))

    def get(self, request, sandbox_id):
        return self._run(request, sandbox_id)

    def post(self, request, sandbox_id):
        return self._run(request, sandbox_id)

    def delete(self, request, sandbox_id):
        return self._run(request, sandbox_id)


def _file_view(verb: str):
    takes, answers, summary = FILE_VERBS[verb]
    view = type(f"FileView_{verb}", (FileView,), {"verb": verb})
    common = {"tags": TAG_FILES, "summary": summary, "responses": {200: answers, **FILE_ERRORS}}
    in_query = extend_schema(parameters=[takes], **common)
    return extend_schema_view(
        get=in_query, delete=in_query, post=extend_schema(request=takes, **common)
    )(view).as_view()


FILE_VIEWS = {verb: _file_view(verb) for verb in FILE_VERBS}


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
        parameters=[s.UploadQuerySerializer],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: s.FileWrittenSerializer, **FILE_ERRORS},
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
        result = services.upload(sandbox, request.user, path, b"".join(chunks), **params)
        return _answer(s.FileWrittenSerializer, result)

    post = put


class DownloadView(SandboxScoped):
    @extend_schema(
        tags=TAG_FILES,
        summary="Download a file (raw bytes)",
        parameters=[s.FilePathSerializer],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **FILE_ERRORS},
    )
    def get(self, request, sandbox_id):
        sandbox = self.sandbox(request, sandbox_id)
        params = _valid(s.FilePathSerializer, request.query_params.dict())
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
