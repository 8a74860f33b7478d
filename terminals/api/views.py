"""Terminals (tmux in the sandbox's host, ssh into the guest) and files (SFTP in the guest)
for agents. Every route is scoped to the caller's own sandboxes: another agent's sandbox or
pane is a 404. Typed input and every change to a file is in the audit trail.

The view classes below hold what a route does; `ROUTES` at the end gives each route its view
and its OpenAPI description (what it takes and answers, as serializers of serializers.py):
several routes share a view (the sandbox-scoped path and the original tmux-client's path of
the same thing), each with its own description."""

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

from core.api.schema import errors
from core.conf import vsb
from core.errors import InvalidInput, TooLarge

from .. import services
from . import serializers as s


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


class TerminalView(APIView):
    def sandbox(self, request, sandbox_id=None):
        """The sandbox of the path (`/v1/sandboxes/{id}/...`), or on the original
        tmux-client's paths the one `?sandbox_id=` names (None: all the caller's)."""
        if sandbox_id is not None:
            return services.owned_sandbox(request.user, sandbox_id)
        return _optional_sandbox(request.user, request.query_params.get("sandbox_id"))


# --- sessions ---------------------------------------------------------------------------------


class SessionListView(TerminalView):
    def get(self, request, sandbox_id=None):
        """Terminal sessions (tmux sessions whose panes are shells in the guest) of the
        sandbox; on the original's path, of every ready sandbox of yours or of `sandbox_id`."""
        sessions = services.list_sessions_of(request.user, self.sandbox(request, sandbox_id))
        return _answer(s.TerminalSessionListSerializer, {"sessions": sessions})


class CreateSessionView(TerminalView):
    answer = s.SessionCreatedSerializer

    def post(self, request, sandbox_id=None):
        """A new tmux session whose first pane is ssh into the guest."""
        data = _valid(s.CreateSessionSerializer, request.data)
        data.pop("command", None)
        named = data.pop("sandbox_id", None)  # the original paths name it in the body
        if sandbox_id is None and not named:
            raise InvalidInput.field("sandbox_id", "is required: sessions live in a sandbox.")
        sandbox = services.owned_sandbox(request.user, sandbox_id or named)
        row, pane = services.create_session(sandbox, request.user, **data)
        return _answer(self.answer, {"row": row, "pane": pane}, status.HTTP_201_CREATED)


class SessionsView(SessionListView, CreateSessionView):
    pass


class SessionDetailView(TerminalView):
    def delete(self, request, sandbox_id, name):
        result = services.kill_session(self.sandbox(request, sandbox_id), request.user, name)
        return _answer(s.SessionKilledSerializer, result)


class ReleaseSessionView(TerminalView):
    def post(self, request, name):
        """The session's sandbox is `sandbox_id` (query or body), else the one sandbox of
        yours with a session of that name."""
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


# --- windows and panes ------------------------------------------------------------------------

# listing: (the service, what it answers)
LISTINGS = {
    "windows": (services.list_windows, s.WindowListSerializer),
    "panes": (services.list_panes, s.PaneListSerializer),
}


class ListingView(TerminalView):
    listing = ""

    def get(self, request, sandbox_id=None):
        """Of every session of the sandbox, or of `session`; on the original's path, of
        every sandbox of yours with a session, or of `sandbox_id`."""
        list_them, answer = LISTINGS[self.listing]
        found = list_them(
            request.user,
            sandbox=self.sandbox(request, sandbox_id),
            session=request.query_params.get("session", ""),
        )
        return _answer(answer, {self.listing: found})


class CreatePaneView(TerminalView):
    def post(self, request, sandbox_id=None):
        """A new window of `session_name`, or a split of `pane_id` (else of the session's
        active pane); its shell is ssh into the guest."""
        # On the original's path, the sandbox is named in the body (or found by session).
        sandbox = services.owned_sandbox(request.user, sandbox_id) if sandbox_id else None
        data = _valid(s.CreatePaneSerializer, request.data)
        if sandbox is None:
            sandbox = _optional_sandbox(request.user, data.pop("sandbox_id", None))
            if sandbox is None:
                sandbox = services.sandbox_with_session(request.user, data["session_name"])
        if data["new_window"]:
            pane = services.new_window(
                sandbox, request.user, data["session_name"], data.get("window_name", "")
            )
        else:
            pane = services.split_pane(
                request.user,
                data.get("pane_id") or f"{data['session_name']}:",
                sandbox=sandbox,
                horizontal=data["horizontal"],
            )
        return _answer(s.PaneCreatedSerializer, pane, status.HTTP_201_CREATED)


class PanesView(ListingView, CreatePaneView):
    listing = "panes"


class PaneView(TerminalView):
    def delete(self, request, pane, sandbox_id=None):
        sandbox = self.sandbox(request, sandbox_id)
        result = services.kill_pane(request.user, _pane_from_url(pane), sandbox=sandbox)
        return _answer(s.PaneKilledSerializer, result)


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


class PaneVerbView(TerminalView):
    verb = ""

    def post(self, request, pane=None, sandbox_id=None):
        """On the pane the path names; on the original's paths, on `pane_id` (`%3` or
        `session:window.pane`) among your sandboxes, or in `sandbox_id`."""
        sandbox = self.sandbox(request, sandbox_id) if sandbox_id else None
        pane_id = _pane_from_url(pane) if pane is not None else None
        takes, answers, run, _ = PANE_VERBS[self.verb]
        body = (request.data or {}) if self.verb == "read" else request.data  # read: none is fine
        body_ignored = pane_id is not None and takes is s.PaneTargetSerializer
        data = {} if body_ignored else _valid(takes, body)
        sandbox = sandbox or _optional_sandbox(request.user, data.pop("sandbox_id", None))
        pane_id = pane_id or data.get("pane_id")
        if not pane_id:
            raise InvalidInput.field("pane_id", "is required.")
        return _answer(answers, run(request.user, pane_id, sandbox, data))


# --- files --------------------------------------------------------------------------------------

# verb: (what it takes, what it answers, summary). Each verb answers GET and DELETE (parameters
# in the query) as well as POST (a JSON body).
FILE_VERBS = {
    "read": (s.ReadFileSerializer, s.FileContentSerializer, "Read a text file, or some lines"),
    "write": (s.WriteFileSerializer, s.FileWrittenSerializer, "Write a text file"),
    "edit": (s.EditFileSerializer, s.FileEditedSerializer, "Replace text in a file"),
    "list": (s.FilePathSerializer, s.DirectoryListingSerializer, "List a directory"),
    "stat": (s.FilePathSerializer, s.FileStatSerializer, "A path's type, size, mode, owner"),
    "delete": (s.DeleteFileSerializer, s.FileDeletedSerializer, "Delete a file or directory"),
}


class FileView(TerminalView):
    verb = ""

    def run(self, request, sandbox_id):
        takes, answers, _ = FILE_VERBS[self.verb]
        sandbox = self.sandbox(request, sandbox_id)
        in_query = request.method in ("GET", "DELETE")
        data = request.query_params.dict() if in_query else request.data
        if request.method == "DELETE" and request.data:
            data = {**data, **request.data}
        data = _valid(takes, data)
        if self.verb == "edit":
            data["replace_all"] = data.pop("all")
        return _answer(answers, services.file_op(sandbox, request.user, self.verb, **data))

    get = post = delete = run


class _RawBodyParser(BaseParser):
    """Leaves the body unread: the upload view streams it with its own size limit."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream


class UploadView(TerminalView):
    parser_classes = [_RawBodyParser]

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


class DownloadView(TerminalView):
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


# --- the routes, each with its view and its OpenAPI description -----------------------------------

# Every route reaches a host's worker: a failed tmux or SSH step is a 502, no answer a 504.
# (400/401/403 are implied: core.api.schema.AutoSchema.) 404 on every route: a body or query
# (`sandbox_id`, a pane, a session) may name what is not there, whatever the path.
ERRORS = errors(404, 409, 502, 504)
FILE_ERRORS = {**ERRORS, **errors(413, 422)}
TERMINALS, TMUX, FILES = ["terminals"], ["tmux (original paths)"], ["files"]
SANDBOX_QUERY = OpenApiParameter("sandbox_id", str)
SESSION_QUERY = OpenApiParameter("session", str)


def _doc(tags: list[str], summary: str, answer, code: int | tuple = 200, **more):
    """@extend_schema of one method: what it answers (plus the error answers), and `more`
    (request, parameters)."""
    errors = FILE_ERRORS if tags is FILES else ERRORS
    return extend_schema(tags=tags, summary=summary, responses={code: answer, **errors}, **more)


def _route(view_class, /, **spec):
    """`view_class` as a Django view; `spec` maps HTTP methods to their `_doc`, other names
    to class attributes (which verb, which listing)."""
    methods = {k: v for k, v in spec.items() if k in APIView.http_method_names}
    attrs = {k: v for k, v in spec.items() if k not in methods}
    named = [view_class.__name__, *(v for v in attrs.values() if isinstance(v, str))]
    name = "_".join(named).replace("-", "_")
    return extend_schema_view(**methods)(type(name, (view_class,), attrs)).as_view()


def _verb_route(tags: list[str], verb: str, *, on_pane_path: bool):
    takes, answers, _, summary = PANE_VERBS[verb]
    if on_pane_path and takes is s.PaneTargetSerializer:
        takes = OpenApiTypes.OBJECT  # ignored
    return _route(PaneVerbView, verb=verb, post=_doc(tags, summary, answers, request=takes))


def _file_route(verb: str):
    takes, answers, summary = FILE_VERBS[verb]
    in_query = _doc(FILES, summary, answers, parameters=[takes])
    posted = _doc(FILES, summary, answers, request=takes)
    return _route(FileView, verb=verb, get=in_query, post=posted, delete=in_query)


_OPEN_SESSION = "Open a terminal session (ssh into the guest with a short-lived certificate)"
_OPEN_PANE = "Open a pane: a new window, or a split of `pane_id`"
_BY_SANDBOX = [SESSION_QUERY, SANDBOX_QUERY]
_UPLOAD = _doc(
    FILES,
    "Upload a file (raw body, any bytes)",
    s.FileWrittenSerializer,
    parameters=[s.UploadQuerySerializer],
    request={"application/octet-stream": OpenApiTypes.BINARY},
)

# name: view, as urls.py routes them
ROUTES = {
    "terminal-sessions": _route(
        SessionsView,
        get=_doc(TERMINALS, "List terminal sessions", s.TerminalSessionListSerializer),
        post=_doc(
            TERMINALS,
            _OPEN_SESSION,
            s.SessionCreatedSerializer,
            201,
            request=s.CreateSessionSerializer,
        ),
    ),
    "terminal-session": _route(
        SessionDetailView,
        delete=_doc(TERMINALS, "Kill a terminal session", s.SessionKilledSerializer),
    ),
    "terminal-windows": _route(
        ListingView,
        listing="windows",
        get=_doc(TERMINALS, "List windows", s.WindowListSerializer, parameters=[SESSION_QUERY]),
    ),
    "terminal-panes": _route(
        PanesView,
        get=_doc(TERMINALS, "List panes", s.PaneListSerializer, parameters=[SESSION_QUERY]),
        post=_doc(
            TERMINALS, _OPEN_PANE, s.PaneCreatedSerializer, 201, request=s.CreatePaneSerializer
        ),
    ),
    **{
        f"terminal-pane-{verb}": _verb_route(TERMINALS, verb, on_pane_path=True)
        for verb in PANE_VERBS
    },
    "terminal-pane": _route(
        PaneView, delete=_doc(TERMINALS, "Kill a pane", s.PaneKilledSerializer)
    ),
    # The original tmux-client's paths.
    "tmux-sessions": _route(
        SessionListView,
        get=_doc(
            TMUX, "List sessions", s.TerminalSessionListSerializer, parameters=[SANDBOX_QUERY]
        ),
    ),
    "tmux-session-create": _route(
        CreateSessionView,
        answer=s.TmuxSessionCreatedSerializer,
        post=_doc(
            TMUX,
            "Create a session in a sandbox (sandbox_id required)",
            s.TmuxSessionCreatedSerializer,
            201,
            request=s.CreateSessionSerializer,
        ),
    ),
    "tmux-session-release": _route(
        ReleaseSessionView,
        post=_doc(
            TMUX,
            "Kill (release) a session",
            s.SessionReleasedSerializer,
            parameters=[SANDBOX_QUERY],
            request=None,
        ),
    ),
    "tmux-windows": _route(
        ListingView,
        listing="windows",
        get=_doc(TMUX, "List windows", s.WindowListSerializer, parameters=_BY_SANDBOX),
    ),
    "tmux-panes": _route(
        ListingView,
        listing="panes",
        get=_doc(TMUX, "List panes", s.PaneListSerializer, parameters=_BY_SANDBOX),
    ),
    "tmux-pane-send-keys": _verb_route(TMUX, "send-keys", on_pane_path=False),
    "tmux-pane-read": _verb_route(TMUX, "read", on_pane_path=False),
    "tmux-pane-switch": _verb_route(TMUX, "select", on_pane_path=False),  # our select
    "tmux-pane-create": _route(
        CreatePaneView,
        post=_doc(TMUX, _OPEN_PANE, s.PaneCreatedSerializer, 201, request=s.CreatePaneSerializer),
    ),
    "tmux-pane-kill": _route(
        PaneView,
        delete=_doc(TMUX, "Kill a pane", s.PaneKilledSerializer, parameters=[SANDBOX_QUERY]),
    ),
    # Files in the guest.
    "files-upload": _route(UploadView, put=_UPLOAD, post=_UPLOAD),
    "files-download": _route(
        DownloadView,
        get=_doc(
            FILES,
            "Download a file (raw bytes)",
            OpenApiTypes.BINARY,
            (200, "application/octet-stream"),
            parameters=[s.FilePathSerializer],
        ),
    ),
    **{f"files-{verb}": _file_route(verb) for verb in FILE_VERBS},
}
