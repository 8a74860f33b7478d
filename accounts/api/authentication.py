from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from .. import services


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer vsb_...` (or `X-API-Key: vsb_...`): an agent's API key;
    `request.auth` is the ApiKey row."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        secret = ""
        if header:
            parts = header.split()
            if len(parts) != 2 or parts[0].lower() not in ("bearer", "token"):
                raise exceptions.AuthenticationFailed(
                    "Authorization header must be 'Bearer <api key>'."
                )
            secret = parts[1]
        else:
            secret = request.META.get("HTTP_X_API_KEY", "")
        if not secret:
            return None
        key = services.api_key_for(secret)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or unknown API key.")
        # request.auth is the key: its quotas and its throttle bucket.
        return (key.user, key)

    def authenticate_header(self, request) -> str:
        return self.keyword


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An agent API key: vsb_..."}
