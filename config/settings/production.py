"""What scripts/run.sh runs: DEBUG off, secrets from the environment (DJANGO_SECRET_KEY,
VSB_CREDENTIALS_KEY or their _FILE variants) or else generated once into VSB_SECRETS_DIR."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F401,F403
from .base import SECRET_KEY, VSB_CREDENTIALS_KEY, env, install_secrets

DEBUG = False
if SECRET_KEY and SECRET_KEY.startswith("insecure-"):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is the example's insecure value: unset it (a key is generated into "
        "VSB_SECRETS_DIR) or set your own."
    )
SECRET_KEY, VSB_CREDENTIALS_KEY = install_secrets(SECRET_KEY, VSB_CREDENTIALS_KEY)
# Cookies only over HTTPS once a TLS proxy is in front; run.sh's daphne speaks plain HTTP on
# loopback, where Secure cookies would make the admin login fail.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
