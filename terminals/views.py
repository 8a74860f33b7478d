"""The terminal page: xterm.js (served from static/, no CDN) on the sandbox's websocket."""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from sandboxes.models import Sandbox


@login_required(login_url="/admin/login/")
def terminal_page(request, sandbox_id: str):
    try:
        sandbox = Sandbox.objects.select_related("host").filter(pk=uuid.UUID(sandbox_id)).first()
    except ValueError:
        sandbox = None
    if sandbox is None or not (request.user.is_staff or sandbox.owner_id == request.user.pk):
        raise Http404("No such sandbox.")
    role = "control" if sandbox.owner_id == request.user.pk else "view"
    return render(
        request,
        "terminals/terminal.html",
        {
            "sandbox": sandbox,
            "role": role,
            "settings": {
                "wsPath": f"/ws/sandboxes/{sandbox.id}/terminal/",
                "session": request.GET.get("session", "main")[:64],
                "role": role,
            },
        },
    )
