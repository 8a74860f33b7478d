import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from accounts.ws_auth import ApiKeyAuthMiddleware  # noqa: E402
from approvals.ask_endpoint import blocking_ask_app  # noqa: E402
from approvals.routing import websocket_urlpatterns as approval_sockets  # noqa: E402
from config.http_server import stop_form_parsing_in_daphne  # noqa: E402
from config.middleware import api_crash_guard  # noqa: E402
from config.ws_origin import OriginValidator  # noqa: E402
from playbooks.routing import websocket_urlpatterns as playbook_sockets  # noqa: E402
from terminals.routing import websocket_urlpatterns as terminal_sockets  # noqa: E402

stop_form_parsing_in_daphne()
websocket_urlpatterns = [*approval_sockets, *terminal_sockets, *playbook_sockets]

application = ProtocolTypeRouter(
    {
        # The blocking ask waits on the channel layer outside Django's per-request thread.
        "http": URLRouter(
            [
                re_path(r"^api/v1/human/ask/?$", api_crash_guard(blocking_ask_app)),
                re_path(r"", django_asgi_app),
            ]
        ),
        # Same origin (scheme, host, port) or no Origin at all: config/ws_origin.py.
        "websocket": OriginValidator(
            AuthMiddlewareStack(ApiKeyAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
