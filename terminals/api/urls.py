"""Routes of the terminals app, included once at the root of config/urls.py: the sandbox-scoped
ones under /v1/sandboxes/{id}/ and the original tmux-client's under /api/v1/tmux/."""

from django.urls import path, re_path

from .. import views as pages
from . import views

SB = "v1/sandboxes/<str:sandbox_id>"
TERM = f"{SB}/terminals"
TMUX = "api/v1/tmux"

urlpatterns = [
    path(f"{TERM}/sessions", views.SessionsView.as_view(), name="terminal-sessions"),
    path(f"{TERM}/sessions/<str:name>", views.SessionDetailView.as_view(), name="terminal-session"),
    path(f"{TERM}/windows", views.WindowsView.as_view(), name="terminal-windows"),
    path(f"{TERM}/panes", views.PanesView.as_view(), name="terminal-panes"),
    *[
        path(f"{TERM}/panes/<str:pane>/{verb}", view, name=f"terminal-pane-{verb}")
        for verb, view in views.PANE_VERB_VIEWS.items()
    ],
    path(f"{TERM}/panes/<str:pane>", views.PaneView.as_view(), name="terminal-pane"),
    # The original tmux-client's paths.
    path(f"{TMUX}/sessions", views.TmuxSessionsView.as_view(), name="tmux-sessions"),
    path(
        f"{TMUX}/sessions/create", views.TmuxCreateSessionView.as_view(), name="tmux-session-create"
    ),
    path(
        f"{TMUX}/sessions/<str:name>/release",
        views.TmuxReleaseSessionView.as_view(),
        name="tmux-session-release",
    ),
    path(f"{TMUX}/windows", views.TmuxWindowsView.as_view(), name="tmux-windows"),
    path(f"{TMUX}/panes", views.TmuxPanesView.as_view(), name="tmux-panes"),
    *[
        path(f"{TMUX}/panes/{verb}", view, name=f"tmux-pane-{verb}")
        for verb, view in views.TMUX_PANE_VERB_VIEWS.items()
    ],
    re_path(
        rf"^{TMUX}/panes/(?P<pane>[^/]+)$", views.TmuxKillPaneView.as_view(), name="tmux-pane-kill"
    ),
    # Files in the guest.
    path(f"{SB}/files/upload", views.UploadView.as_view(), name="files-upload"),
    path(f"{SB}/files/download", views.DownloadView.as_view(), name="files-download"),
    *[
        path(f"{SB}/files/{verb}", view, name=f"files-{verb}")
        for verb, view in views.FILE_VIEWS.items()
    ],
    # The terminal page (operators and owners, Django session login).
    path("sandboxes/<str:sandbox_id>/terminal/", pages.terminal_page, name="terminal-page"),
]
