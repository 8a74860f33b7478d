"""Websocket routes of the terminals app."""

from django.urls import re_path

from .consumers import TerminalConsumer

websocket_urlpatterns: list = [
    re_path(
        r"^ws/sandboxes/(?P<sandbox_id>[0-9a-fA-F-]{32,36})/terminal/?$",
        TerminalConsumer.as_asgi(),
    ),
]
