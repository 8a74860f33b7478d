"""Production: refuse to start with development secrets."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F401,F403
from .base import SECRET_KEY

if SECRET_KEY.startswith("insecure-"):
    raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) in production.")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
