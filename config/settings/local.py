"""Developer settings: production's secrets (the same generated files, so manage.py reads what
the service wrote), DEBUG on unless DJANGO_DEBUG says otherwise. scripts/run.sh uses
config.settings.production."""

from .base import *  # noqa: F401,F403
from .base import SECRET_KEY, VSB_CREDENTIALS_KEY, env, install_secrets

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY, VSB_CREDENTIALS_KEY = install_secrets(SECRET_KEY, VSB_CREDENTIALS_KEY)
