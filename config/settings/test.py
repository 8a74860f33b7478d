"""The test suite: PostgreSQL (started by scripts/start-services.sh --postgres), its own Redis
database, its own port range and sandbox directory, so a running service is not disturbed."""

from .base import *  # noqa: F401,F403
from .base import (
    CACHES,
    CHANNEL_LAYERS,
    REST_FRAMEWORK,
    SECRET_KEY,
    VSB,
    VSB_CREDENTIALS_KEY,
    env,
    local_redis_url,
    pooled,
    throttle_rate,
)

# Fixed test keys: every process of a test run (pytest, its daphne, its worker) agrees.
SECRET_KEY = SECRET_KEY or "test-only-secret-key"
VSB_CREDENTIALS_KEY = VSB_CREDENTIALS_KEY or "test-only-credentials-key"

DATABASES = {
    "default": pooled(
        env.db(
            "DATABASE_URL",
            default="postgres://virsh_sandbox:virsh_sandbox@127.0.0.1:5432/virsh_sandbox",
        )
    )
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REDIS_URL = env.str("TEST_REDIS_URL", default="") or local_redis_url(15)
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [{"address": REDIS_URL, "socket_timeout": None}]
CACHES["throttle"]["LOCATION"] = REDIS_URL

# Limits no test meets by accident: the tests of limits set them lower (per key, or these
# settings), the rest of the suite (parallel commands, many sandboxes per agent) runs free.
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"agent": throttle_rate("AGENT", "100000/min")}
VSB.update(
    {
        "QUOTA_MAX_SANDBOXES": env.int("VSB_QUOTA_MAX_SANDBOXES", default=1000),
        "QUOTA_MAX_MEMORY_MB": env.int("VSB_QUOTA_MAX_MEMORY_MB", default=1_000_000),
        "QUOTA_MAX_SNAPSHOTS_PER_SANDBOX": env.int(
            "VSB_QUOTA_MAX_SNAPSHOTS_PER_SANDBOX", default=1000
        ),
        "QUOTA_MAX_CONCURRENT_COMMANDS": env.int("VSB_QUOTA_MAX_CONCURRENT_COMMANDS", default=1000),
    }
)

# The port of the tests' loopback HTTP server that guests reach through the egress proxy: the
# last of the test host's port range (sandbox SSH forwards take the others first).
EGRESS_TEST_SERVER_PORT = int(env.str("VSB_PORT_RANGE", default="43000-43999").split("-")[1])

VSB.update(
    {
        "DRIVER": env.str("VSB_DRIVER", default="fake"),
        "HOST_NAME": env.str("VSB_HOST_NAME", default="testhost"),
        "SANDBOX_DIR": env.str("VSB_SANDBOX_DIR", default="/var/lib/virsh-sandbox/test-sandboxes"),
        "SSH_CA_KEY": env.str("VSB_SSH_CA_KEY", default="/var/lib/virsh-sandbox/test-ssh/ca"),
        # Per test host: parallel test stacks on one machine never share a tmux server.
        "TMUX_SOCKET": env.str(
            "VSB_TMUX_SOCKET", default=f"vsb-{env.str('VSB_HOST_NAME', default='testhost')}"
        ),
        "TERMINAL_DIR": env.str(
            "VSB_TERMINAL_DIR",
            default=f"/var/lib/virsh-sandbox/terminals-{env.str('VSB_HOST_NAME', default='testhost')}",
        ),
        "PORT_RANGE": tuple(
            int(p) for p in env.str("VSB_PORT_RANGE", default="43000-43999").split("-")
        ),
        # A host whose worker was killed is taken as dead within seconds (tests/e2e/
        # test_two_hosts.py), not the production 90 s; five missed beats, so a loaded
        # machine that delays one beat does not take a live host for dead.
        "HEARTBEAT_SECONDS": env.float("VSB_HEARTBEAT_SECONDS", default=2.0),
        "HOST_DEAD_SECONDS": env.float("VSB_HOST_DEAD_SECONDS", default=10.0),
        # Nothing runs the reconcile in the tests but the tests themselves: a short grace
        # lets them watch a stray go within seconds.
        "RECONCILE_STRAY_GRACE_SECONDS": env.int("VSB_RECONCILE_STRAY_GRACE_SECONDS", default=2),
        "EGRESS_DIR": env.str(
            "VSB_EGRESS_DIR",
            default=f"/var/lib/virsh-sandbox/egress-{env.str('VSB_HOST_NAME', default='testhost')}",
        ),
        # The one exemption from the always-denied set the tests need: their own HTTP server
        # on loopback, which guests reach by a name through the proxy (tests/egress). A test
        # proves the default settings deny it.
        # (Both loopback addresses: where `localhost` also names ::1, every address a name
        # resolves to must pass.)
        "EGRESS_EXEMPT": [
            f"127.0.0.1:{EGRESS_TEST_SERVER_PORT}",
            f"[::1]:{EGRESS_TEST_SERVER_PORT}",
        ],
    }
)
