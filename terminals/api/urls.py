"""Routes of the terminals app, included once at the root of config/urls.py: the sandbox-scoped
ones under /v1/sandboxes/{id}/ and the original tmux-client's under /api/v1/tmux/. The views
(and their OpenAPI descriptions) are `views.ROUTES`, by the route's name."""

from django.urls import path, re_path

from .. import views as pages
from .views import FILE_VERBS, PANE_VERBS, ROUTES

SB = "v1/sandboxes/<vsb_uuid:sandbox_id>"
TERM = f"{SB}/terminals"
TMUX = "api/v1/tmux"

# (path, name); a path starting with ^ is a regular expression.
PATHS = [
    (f"{TERM}/sessions", "terminal-sessions"),
    (f"{TERM}/sessions/<str:name>", "terminal-session"),
    (f"{TERM}/windows", "terminal-windows"),
    (f"{TERM}/panes", "terminal-panes"),
    *[(f"{TERM}/panes/<str:pane>/{verb}", f"terminal-pane-{verb}") for verb in PANE_VERBS],
    (f"{TERM}/panes/<str:pane>", "terminal-pane"),
    # The original tmux-client's paths (its `switch` is our select).
    (f"{TMUX}/sessions", "tmux-sessions"),
    (f"{TMUX}/sessions/create", "tmux-session-create"),
    (f"{TMUX}/sessions/<str:name>/release", "tmux-session-release"),
    (f"{TMUX}/windows", "tmux-windows"),
    (f"{TMUX}/panes", "tmux-panes"),
    *[(f"{TMUX}/panes/{verb}", f"tmux-pane-{verb}") for verb in ("send-keys", "read", "switch")],
    (f"{TMUX}/panes/create", "tmux-pane-create"),
    (rf"^{TMUX}/panes/(?P<pane>[^/]+)$", "tmux-pane-kill"),
    # Files in the guest.
    (f"{SB}/files/upload", "files-upload"),
    (f"{SB}/files/download", "files-download"),
    *[(f"{SB}/files/{verb}", f"files-{verb}") for verb in FILE_VERBS],
]

urlpatterns = [
    (re_path if route.startswith("^") else path)(route, ROUTES[name], name=name)
    for route, name in PATHS
] + [
    # The terminal page (operators and owners, Django session login).
    path("sandboxes/<str:sandbox_id>/terminal/", pages.terminal_page, name="terminal-page"),
]
