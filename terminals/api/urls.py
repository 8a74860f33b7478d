"""Routes of the terminals app, included once at the root of config/urls.py: the sandbox-scoped
ones under /v1/sandboxes/{id}/ and the original tmux-client's under /api/v1/tmux/."""

from django.urls import path, re_path

from .. import views as pages
from . import serializers as s
from . import views

SB = "v1/sandboxes/<str:sandbox_id>"
PANE_ACTIONS = ("send-keys", "read", "respawn", "select")

urlpatterns = [
    path(f"{SB}/terminals/sessions", views.SessionsView.as_view(), name="terminal-sessions"),
    path(
        f"{SB}/terminals/sessions/<str:name>",
        views.SessionDetailView.as_view(),
        name="terminal-session",
    ),
    path(f"{SB}/terminals/windows", views.WindowsView.as_view(), name="terminal-windows"),
    path(f"{SB}/terminals/panes", views.PanesView.as_view(), name="terminal-panes"),
    *[
        path(
            f"{SB}/terminals/panes/<str:pane>/{action}",
            views.PaneActionView.as_view(action=action),
            name=f"terminal-pane-{action}",
        )
        for action in PANE_ACTIONS
    ],
    path(
        f"{SB}/terminals/panes/<str:pane>",
        views.PaneView.as_view(),
        name="terminal-pane",
    ),
    # The original tmux-client's paths.
    path("api/v1/tmux/sessions", views.TmuxSessionsView.as_view(), name="tmux-sessions"),
    path(
        "api/v1/tmux/sessions/create",
        views.TmuxCreateSessionView.as_view(),
        name="tmux-session-create",
    ),
    path(
        "api/v1/tmux/sessions/<str:name>/release",
        views.TmuxReleaseSessionView.as_view(),
        name="tmux-session-release",
    ),
    path("api/v1/tmux/windows", views.TmuxWindowsView.as_view(), name="tmux-windows"),
    path("api/v1/tmux/panes", views.TmuxPanesView.as_view(), name="tmux-panes"),
    *[
        path(
            f"api/v1/tmux/panes/{action}",
            views.TmuxPaneActionView.as_view(action=action),
            name=f"tmux-pane-{action}",
        )
        for action in ("send-keys", "read", "switch", "create")
    ],
    re_path(
        r"^api/v1/tmux/panes/(?P<pane>[^/]+)$",
        views.TmuxKillPaneView.as_view(),
        name="tmux-pane-kill",
    ),
    # Files in the guest.
    path(f"{SB}/files/upload", views.UploadView.as_view(), name="files-upload"),
    path(f"{SB}/files/download", views.DownloadView.as_view(), name="files-download"),
    *[
        path(
            f"{SB}/files/{action}",
            views.FileView.as_view(action=action, serializer=serializer),
            name=f"files-{action}",
        )
        for action, serializer in (
            ("read", s.ReadFileSerializer),
            ("write", s.WriteFileSerializer),
            ("edit", s.EditFileSerializer),
            ("list", s.PathSerializer),
            ("stat", s.PathSerializer),
            ("delete", s.DeleteFileSerializer),
        )
    ],
    # The terminal page (operators and owners, Django session login).
    path("sandboxes/<str:sandbox_id>/terminal/", pages.terminal_page, name="terminal-page"),
]
