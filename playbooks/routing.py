from django.urls import re_path

from .consumers import PlaybookRunConsumer

websocket_urlpatterns = [
    re_path(r"^ws/playbook-runs/(?P<run_id>[0-9a-fA-F-]{32,36})/?$", PlaybookRunConsumer.as_asgi()),
]
