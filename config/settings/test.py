"""The test suite runs on PostgreSQL (set up by scripts/setup-services.sh)."""

from .base import *  # noqa: F401,F403
from .base import VSB, env

DATABASES = {
    "default": env.db(
        "DATABASE_URL",
        default="postgres://virsh_sandbox:virsh_sandbox@127.0.0.1:5432/virsh_sandbox",
    )
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
VSB.update(
    {
        "DRIVER": env.str("VSB_DRIVER", default="fake"),
        "HOST_NAME": env.str("VSB_HOST_NAME", default="testhost"),
        "SANDBOX_DIR": env.str("VSB_SANDBOX_DIR", default="/var/lib/virsh-sandbox/test-sandboxes"),
        "SSH_CA_KEY": env.str("VSB_SSH_CA_KEY", default="/var/lib/virsh-sandbox/test-ssh/ca"),
    }
)
