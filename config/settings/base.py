"""Settings shared by every environment. Everything comes from the environment (see
`.env.example`); the defaults are the embedded ones a new user gets: SQLite, local libvirt,
Redis on loopback with the password scripts/start-redis.sh generated, the project's own guest
image. Secrets the install generates for itself live in SECRETS_DIR (config/keyfiles.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import quote

import environ
from django.core.exceptions import ImproperlyConfigured

from config import keyfiles

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# A local .env is a convenience for developers; real deployments set the environment.
env_file = BASE_DIR / ".env"
if env_file.exists():
    environ.Env.read_env(str(env_file))


def vsb_ints(**defaults: int) -> dict[str, int]:
    """Whole-number settings, each read from the environment variable VSB_<its name>."""
    return {name: env.int(f"VSB_{name}", default=value) for name, value in defaults.items()}


def env_secret(name: str, default: str | None = None) -> str | None:
    """NAME, or the contents of the file named by NAME_FILE (for container secrets)."""
    file_path = env.str(f"{name}_FILE", default="")
    if file_path:
        return Path(file_path).read_text().strip()
    return env.str(name, default=default)


DATA_DIR = Path(env.str("VSB_DATA_DIR", default="/var/lib/virsh-sandbox"))
# 0700, files 0600. Not DATA_DIR itself: QEMU (user libvirt-qemu) must traverse DATA_DIR to
# reach the sandboxes' disks under it, so DATA_DIR stays 0755.
SECRETS_DIR = Path(env.str("VSB_SECRETS_DIR", default=str(DATA_DIR / "secrets")))


def secret_file(name: str, create: bool = True) -> str | None:
    """The install's own secret SECRETS_DIR/name, generated once on first use (`create`), or
    None when it does not exist and `create` is false."""
    try:
        if create:
            return keyfiles.read_or_create(SECRETS_DIR / name)
        return keyfiles.read(SECRETS_DIR / name)
    except (keyfiles.KeyFileError, OSError) as err:
        raise ImproperlyConfigured(str(err)) from None


def install_secrets(secret_key: str | None, credentials_key: str) -> tuple[str, str]:
    """SECRET_KEY and VSB_CREDENTIALS_KEY: the environment's, else the install's own files
    (what scripts/run.sh's daphne, its worker and manage.py all read)."""
    return (
        secret_key or secret_file("django-secret-key"),
        credentials_key or secret_file("credentials-key"),
    )


def default_allowed_hosts(bind: str) -> list[str]:
    """Loopback names, plus the address daphne binds to; on a wildcard bind this machine's
    host name (other names and addresses: DJANGO_ALLOWED_HOSTS)."""
    hosts = ["localhost", "127.0.0.1", "[::1]"]
    if bind in ("", "0.0.0.0", "::"):
        hosts.append(socket.gethostname())
    else:
        hosts.append(f"[{bind}]" if ":" in bind else bind)
    return list(dict.fromkeys(hosts))


# Set in local/production (generated into SECRETS_DIR when the environment has none) and test.
SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=default_allowed_hosts(env.str("VSB_BIND", default="127.0.0.1"))
)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Browser origins (scheme://host[:port]) allowed to open websockets; empty: the server's own
# origin, from the request's Host and scheme (config/ws_origin.py).
VSB_ALLOWED_ORIGINS = env.list("VSB_ALLOWED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "core",
    "audit",
    "accounts",
    "approvals",
    "egress",
    "sandboxes",
    "playbooks",
    "terminals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Every error of a /v1 or /api path in the API's JSON shape, whatever produced it (the URL
    # resolver's 404, a crash's 500, DEBUG's technical pages). Inside SecurityMiddleware so
    # the JSON answer still gets its headers.
    "config.middleware.api_json_errors",
    # Serves the admin's and the API docs' static files from STATIC_ROOT (no CDN, no nginx
    # needed for a single-machine install).
    "config.middleware.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After authentication, so an API call's audit event names its caller.
    "audit.middleware.AuditMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def pooled(database: dict) -> dict:
    """PostgreSQL through psycopg's pool, one per process: daphne runs each request in a new
    thread, so Django's persistent connections never get reused, and a connection per
    request cost ~10 ms of CPU on each side (a 2-core host spent a third of a GET on it).
    A thread gives its connection back on close (end of request, a waiter between
    re-reads, a worker before a long SSH step). VSB_DB_POOL_SIZE 0: a connection each."""
    size = env.int("VSB_DB_POOL_SIZE", default=20)
    if database["ENGINE"] == "django.db.backends.postgresql" and size > 0:
        # Django's backend whose pool fails fast when PostgreSQL is down (core/postgresql).
        database["ENGINE"] = "core.postgresql"
        # A pooled connection is checked when taken: after a PostgreSQL restart the idle
        # ones are dead, and a request must not be the one to find out.
        database["CONN_HEALTH_CHECKS"] = True
        database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": size,
            # A thread waits this long for a connection, then the request gets a 503.
            "timeout": 10,
            "max_idle": 60,  # connections above min_size, unused this long, are closed
        }
    return database


DATABASES = {
    "default": pooled(env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}")),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web server threads and the worker share one SQLite file: wait for the lock instead of
    # failing at once, and use WAL so readers never block the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        # synchronous=NORMAL: in WAL mode still safe against a crashed process, and a commit
        # no longer waits for an fsync (it costs every command call otherwise).
        # IMMEDIATE: a transaction takes the write lock when it begins. A deferred one that
        # read first (the audit chain head) could not upgrade once another process had
        # written, and SQLite answers that with "database is locked" at once, never waiting.
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("VSB_STATIC_ROOT", default=str(DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]


# --- Redis, Celery, Channels -------------------------------------------------------------
def local_redis_url(db: int) -> str:
    """The Redis scripts/start-redis.sh runs: loopback, VSB_REDIS_PORT, with the password it
    generated (none when that file does not exist: a Redis this install did not set up)."""
    password = secret_file("redis-password", create=False)
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}127.0.0.1:{env.int('VSB_REDIS_PORT', default=6379)}/{db}"


REDIS_URL = env.str("REDIS_URL", default="") or local_redis_url(0)

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "control"
# Longer than the longest task (a command may run an hour), so Redis never redelivers a
# message whose worker is still busy with it.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 3600}
CELERY_TASK_TIME_LIMIT = 3900
CELERY_TASK_SOFT_TIME_LIMIT = 3800
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A Redis restart: the worker reconnects however long it takes (Celery's default gives up
# after 100 tries and exits), and the tasks it is running go on (they need the database and
# the hypervisor, not the broker; their late acks may then fail, and a message redelivered
# after the visibility timeout finds its work done). Work whose message was lost is sent
# again by the resend-lost-work sweep (sandboxes.services.resend_lost_work).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # kombu's Redis transport, repaired so a worker outlives a Redis restart (config/broker.py).
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"


def control_beat(task: str, every: float, expires: int) -> dict:
    """A periodic task on the control queue. A run still queued after `expires` seconds is
    dropped: the next one is due soon and does the same work."""
    return {"task": task, "schedule": every, "options": {"queue": "control", "expires": expires}}


reaper_interval = env.float("VSB_REAPER_INTERVAL_SECONDS", default=30.0)
reconcile_interval = env.float("VSB_RECONCILE_INTERVAL_SECONDS", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "reap-expired-sandboxes": control_beat("sandboxes.reap_expired_sandboxes", reaper_interval, 25),
    "fail-stuck-operations": control_beat("sandboxes.fail_stuck_operations", reaper_interval, 25),
    "expire-approval-requests": control_beat(
        "approvals.expire_overdue",
        env.float("VSB_APPROVAL_EXPIRY_INTERVAL_SECONDS", default=5.0),
        5,
    ),
    "host-heartbeat-check": control_beat("sandboxes.check_host_heartbeats", 60.0, 55),
    # One reconcile of libvirt domains against sandbox rows per live host, on its own queue.
    "reconcile-hosts": control_beat(
        "sandboxes.reconcile_hosts", reconcile_interval, max(1, int(reconcile_interval) - 5)
    ),
    # One idle sweep (pause, hibernate) per live host, on its own queue.
    "idle-sweep": control_beat(
        "sandboxes.sweep_idle_hosts",
        env.float("VSB_IDLE_SWEEP_INTERVAL_SECONDS", default=30.0),
        25,
    ),
    "resend-lost-work": control_beat(
        "sandboxes.resend_lost_work", env.float("VSB_RESEND_INTERVAL_SECONDS", default=10.0), 9
    ),
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout None: redis-py 8 defaults to 5 s, which cuts channels-redis's
        # blocking 5 s BZPOPMIN short ("Timeout reading from ...").
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "capacity": 1500,
            "expiry": 30,
        },
    },
}

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.CursorPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON in, as the schema says (the upload takes its raw body with its own parser). A form
    # or multipart body is a 415 in the error shape; the serializers read JSON types, not a
    # form's lists of strings. (A multipart body so malformed that twisted, under daphne,
    # cannot split it is refused by twisted before the app, with its own empty 400.)
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "virsh-sandbox API",
    "DESCRIPTION": "Disposable VMs for AI agents: create, run commands, snapshot, review.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from static files: the docs page must work with no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One name for a choice set that several components share (else a hashed name).
    "ENUM_NAME_OVERRIDES": {"ApprovalStatusEnum": "approvals.choices.ApprovalStatus"},
}

# --- Logging ------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "paramiko": {"level": "CRITICAL"},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Sandboxes ----------------------------------------------------------------------------
VSB = {
    # This machine's KVM host: its Host row and the Celery queue its worker consumes.
    "HOST_NAME": env.str("VSB_HOST_NAME", default=socket.gethostname().split(".")[0]),
    "LIBVIRT_URI": env.str("VSB_LIBVIRT_URI", default="qemu:///system"),
    # auto: probe once whether KVM really runs guests, else fall back to TCG.
    "DOMAIN_TYPE": env.str("VSB_DOMAIN_TYPE", default="auto"),
    "SANDBOX_DIR": env.str("VSB_SANDBOX_DIR", default=str(DATA_DIR / "sandboxes")),
    "IMAGE_CACHE": env.str("VSB_IMAGE_CACHE", default="/var/cache/virsh-sandbox/images"),
    "KVM_PROBE_CACHE": env.str("VSB_KVM_PROBE_CACHE", default="/run/virsh-sandbox/kvm-probe.json"),
    "SSH_CA_KEY": env.str("VSB_SSH_CA_KEY", default=str(DATA_DIR / "ssh" / "ca")),
    "CERT_TTL_SECONDS": env.int("VSB_CERT_TTL_SECONDS", default=300),
    # port_forward: QEMU user networking, SSH at 127.0.0.1:<port> on the KVM host.
    # network / bridge: a NIC on a libvirt network or bridge, IP found by lease/agent/ARP.
    "NETWORK_MODE": env.str("VSB_NETWORK_MODE", default="port_forward"),
    "LIBVIRT_NETWORK": env.str("VSB_LIBVIRT_NETWORK", default="default"),
    "IP_SOURCES": env.list("VSB_IP_SOURCES", default=["agent", "lease", "arp"]),
    "PORT_RANGE": tuple(
        int(p) for p in env.str("VSB_PORT_RANGE", default="42000-42999").split("-")
    ),
    **vsb_ints(
        DEFAULT_VCPUS=1,
        DEFAULT_MEMORY_MB=256,
        MAX_VCPUS=8,
        MIN_MEMORY_MB=128,
        MAX_MEMORY_MB=16384,
        MAX_TTL_SECONDS=7 * 24 * 3600,
        # A sandbox created without ttl_seconds lives this long; 0: until destroyed. An API
        # key may set its own (accounts.ApiKey.default_ttl_seconds).
        DEFAULT_TTL_SECONDS=24 * 3600,
        READY_TIMEOUT_SECONDS=180,
    ),
    "READY_POLL_SECONDS": env.float("VSB_READY_POLL_SECONDS", default=0.25),
    **vsb_ints(
        SHUTDOWN_TIMEOUT_SECONDS=30,
        COMMAND_TIMEOUT_SECONDS=600,
        MAX_COMMAND_TIMEOUT_SECONDS=3600,
        COMMAND_OUTPUT_LIMIT=1024 * 1024,
        # Work (an operation, a command) that nobody holds and that showed no sign of life
        # for this long is taken as lost (its message vanished in a Redis restart, or a
        # database restart failed its task): its task is sent again, up to
        # OPERATION_MAX_RESENDS times (the wait doubling each time), then it fails saying so.
        # Running tasks beat every 5 s; longer than a step's longest gap between beats.
        OPERATION_STALE_SECONDS=20,
        OPERATION_MAX_RESENDS=5,
        TASK_MAX_ATTEMPTS=5,
    ),
    # Path patterns left out of diffs on top of the built-in volatile list (docs/diff.md).
    "DIFF_EXTRA_EXCLUDES": env.list("VSB_DIFF_EXTRA_EXCLUDES", default=[]),
    # Guest disks are read by an unprivileged, network-less process (drivers/guest_reader.py):
    # the host interpreter it runs (its files must be readable by any uid), the first of the
    # 65536 host uids its user namespace maps to (a range no one else uses), and its limits.
    "GUEST_READER_PYTHON": env.str("VSB_GUEST_READER_PYTHON", default="/usr/bin/python3"),
    **vsb_ints(
        GUEST_READER_UID_BASE=2_000_000_000,
        GUEST_READ_TIMEOUT_SECONDS=600,
        GUEST_READ_OUTPUT_LIMIT=768 * 1024 * 1024,
        # Files larger than this are not hashed for a diff ("changed, content unverified").
        DIFF_HASH_LIMIT=256 * 1024 * 1024,
    ),
    # Which hypervisor driver to build: "libvirt" or "fake" (unit tests only).
    "DRIVER": env.str("VSB_DRIVER", default="libvirt"),
    # Written into every domain's metadata with the host name, so the reconcile touches only
    # this installation's domains on a libvirtd it shares; empty: the database's name.
    "DEPLOYMENT": env.str("VSB_DEPLOYMENT", default=""),
    # The reconcile (sandboxes/reconcile.py) destroys a domain carrying our metadata but no
    # live row only once it has been seen as such for this long.
    **vsb_ints(RECONCILE_STRAY_GRACE_SECONDS=300),
    # A host's lifecycle pool writes Host.last_heartbeat every HEARTBEAT_SECONDS; a host
    # with no heartbeat for HOST_DEAD_SECONDS has no live worker: no new sandboxes go there,
    # its sandboxes answer `available: false` and the calls that need its worker a 503
    # `host_unavailable` (docs/fleet.md). Floats: the tests beat every second or two.
    "HEARTBEAT_SECONDS": env.float("VSB_HEARTBEAT_SECONDS", default=15.0),
    "HOST_DEAD_SECONDS": env.float("VSB_HOST_DEAD_SECONDS", default=90.0),
    # Idle sandboxes (sandboxes/idle.py): a ready sandbox with no command, terminal viewer or
    # file operation for IDLE_PAUSE_SECONDS is paused (vCPUs stopped, memory kept), and
    # after IDLE_HIBERNATE_SECONDS hibernated (memory saved to disk); any use wakes it.
    # 0: never.
    **vsb_ints(IDLE_PAUSE_SECONDS=300, IDLE_HIBERNATE_SECONDS=3600),
    # Threads of each worker pool of a host (`manage.py worker <pool>`, core/queues.py).
    # Lifecycle steps are short; a command holds its thread (and nothing else: no database
    # connection) for as long as it runs, so the commands pool is the host's ceiling on
    # commands, diffs and playbook runs at once; terminal operations are short.
    # Guests a host boots at once (README "Limits"); the rest wait in the `queued` state.
    # 0: derived by the host's worker from its cores: as many under TCG, twice as many
    # under KVM (a TCG boot keeps a core busy; a KVM boot mostly waits).
    **vsb_ints(BOOT_CONCURRENCY=0),
    **vsb_ints(
        WORKER_LIFECYCLE_THREADS=8,
        WORKER_COMMANDS_THREADS=32,
        WORKER_TERMINALS_THREADS=8,
    ),
    # A host accepts a sandbox while the memory of its sandboxes that hold memory (not
    # stopped, destroyed or in error), the new one's included, stays at most this × its
    # memory (sandboxes/capacity.py); a host's own `memory_overcommit` overrides it. 1.0 on a
    # 24 GiB host: about 90 guests of 256 MiB. Each guest's QEMU costs ~50 MiB on top of its
    # memory (307 MiB for a 256 MiB guest), which idle guests' untouched memory makes up
    # for; lower it for guests that use all their memory, raise it for idle fleets.
    "MEMORY_OVERCOMMIT": env.float("VSB_MEMORY_OVERCOMMIT", default=1.0),
    # Each host's lifecycle pool beats this often (a host is live while it beat in the last
    # 90 s) with its measured memory, CPUs, disk and guests (sandboxes/worker.py).
    **vsb_ints(HEARTBEAT_SECONDS=15),
}

# --- Limits (README "Limits") --------------------------------------------------------------
# Each agent's quotas, unless its API key sets its own (the admin's API key page); usage is
# counted over the agent (the key's user). Operators (staff) have none.
VSB.update(
    vsb_ints(
        QUOTA_MAX_SANDBOXES=10,
        QUOTA_MAX_MEMORY_MB=16384,
        QUOTA_MAX_SNAPSHOTS_PER_SANDBOX=20,
        QUOTA_MAX_CONCURRENT_COMMANDS=4,
    )
)


def throttle_rate(name: str, default: str) -> str | None:
    """A DRF rate ("600/min") from VSB_THROTTLE_<name>; "off" (or empty) for none."""
    rate = env.str(f"VSB_THROTTLE_{name}", default=default).strip()
    return None if rate.lower() in ("", "off", "none", "0") else rate


# Requests per API key (per user for a browser session), all endpoints together: a 429 with
# Retry-After past it (accounts/api/throttling.py). Counted in Redis, shared by all web
# processes.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["accounts.api.throttling.ApiKeyRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"agent": throttle_rate("AGENT", "600/min")}
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "vsb-throttle",
        # A Redis that hangs must not hang every request: the throttle then lets it pass.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    },
}

# Encrypts inventory credentials at rest (playbooks/secrets.py). Separate from
# SECRET_KEY: rotating that one (sessions, signed values) keeps the credentials readable.
VSB_CREDENTIALS_KEY = env_secret("VSB_CREDENTIALS_KEY") or ""

# Who runs ansible-playbook (playbooks/runner.py, docs/playbooks.md "Who runs
# Ansible"): an unprivileged system user (scripts/install-system.sh creates it), one private
# directory per run under ANSIBLE_RUN_DIR, and these directories covered in its namespace on
# top of the data, sandbox, terminal and CA key directories and root's home.
VSB.update(
    {
        "ANSIBLE_USER": env.str("VSB_ANSIBLE_USER", default="vsb-ansible"),
        "ANSIBLE_RUN_DIR": env.str("VSB_ANSIBLE_RUN_DIR", default="/run/virsh-sandbox/ansible"),
        "ANSIBLE_HIDE": env.list("VSB_ANSIBLE_HIDE", default=[]),
    }
)

# --- Egress (egress app, docs/egress.md) ---------------------------------------------------
# Guests reach the network only through the KVM host's egress proxy, by host name, on the
# policy's terms; loopback, private and link-local addresses and the host's own are always
# denied after name resolution.
VSB.update(
    {
        "EGRESS_ENABLED": env.bool("VSB_EGRESS", default=True),
        # The proxy's unix socket (<host name>.sock) and the relay QEMU runs per connection:
        # both must be reachable by the libvirt-qemu user.
        "EGRESS_DIR": env.str("VSB_EGRESS_DIR", default=str(DATA_DIR / "egress")),
        "EGRESS_RELAY_PYTHON": env.str("VSB_EGRESS_RELAY_PYTHON", default="/usr/bin/python3"),
        # Allowed for every sandbox: the Debian mirrors the host's own apt sources name (read
        # at run time), plus these `host[:port]` entries (e.g. a PyPI mirror).
        "EGRESS_HOST_MIRRORS": env.bool("VSB_EGRESS_HOST_MIRRORS", default=True),
        "EGRESS_ALLOW": env.list("VSB_EGRESS_ALLOW", default=[]),
        # What an agent may add at create without an operator (`egress_allow`); the rest goes
        # through POST /v1/sandboxes/{id}/egress/requests and an approval.
        "EGRESS_SELF_SERVICE": env.list("VSB_EGRESS_SELF_SERVICE", default=[]),
        # `ip:port` pairs the always-denied set lets through (a private registry you vouch for).
        "EGRESS_EXEMPT": env.list("VSB_EGRESS_EXEMPT", default=[]),
        **vsb_ints(
            EGRESS_GRANT_DEFAULT_TTL_SECONDS=3600,
            EGRESS_GRANT_MAX_TTL_SECONDS=24 * 3600,
            EGRESS_MAX_RULES=64,
            EGRESS_MAX_CONNECTIONS=512,
            EGRESS_MAX_CONNECTIONS_PER_SANDBOX=64,
        ),
    }
)

# --- Approvals ------------------------------------------------------------------------------
APPROVALS = {
    "DEFAULT_TIMEOUT_SECONDS": env.int("VSB_APPROVAL_DEFAULT_TIMEOUT_SECONDS", default=300),
    "MAX_TIMEOUT_SECONDS": env.int("VSB_APPROVAL_MAX_TIMEOUT_SECONDS", default=24 * 3600),
    # Optional: POSTed (HMAC-SHA256 signed with the secret) whenever a request is created.
    "WEBHOOK_URL": env.str("VSB_APPROVAL_WEBHOOK_URL", default=""),
    "WEBHOOK_SECRET": env.str("VSB_APPROVAL_WEBHOOK_SECRET", default=""),
}

# --- Terminals and files (terminals app, docs/terminals.md) -------------------------------
VSB.update(
    {
        # tmux on each KVM host: a dedicated server (`tmux -L <name>`, or a path for -S), so
        # the host user's own tmux is never touched.
        "TMUX_SOCKET": env.str("VSB_TMUX_SOCKET", default="vsb"),
        # Per-sandbox 0700 directories with the panes' short-lived SSH keys, certificates and
        # the pinned known_hosts line.
        "TERMINAL_DIR": env.str("VSB_TERMINAL_DIR", default=str(DATA_DIR / "terminals")),
        "TERMINAL_DEFAULT_SIZE": (
            env.int("VSB_TERMINAL_COLS", default=120),
            env.int("VSB_TERMINAL_ROWS", default=36),
        ),
        **vsb_ints(
            TERMINAL_HISTORY_LINES=10000,
            TERMINAL_MAX_READ_LINES=5000,
            TERMINAL_MAX_SESSIONS=16,
            TERMINAL_MAX_INPUT_BYTES=65536,
            # The relay batches pane output for this long before one channel-layer message.
            TERMINAL_FLUSH_MS=15,
            TERMINAL_OP_TIMEOUT_SECONDS=30,
        ),
        # Files over SFTP: absolute guest paths, checked after the guest resolved `..` and
        # symlinks. A path must be under one FILE_ALLOW prefix and under no FILE_DENY prefix.
        "FILE_ALLOW": env.list("VSB_FILE_ALLOW", default=["/"]),
        "FILE_DENY": env.list("VSB_FILE_DENY", default=["/proc", "/sys", "/dev"]),
        **vsb_ints(
            FILE_MAX_READ_BYTES=1024 * 1024,
            FILE_MAX_WRITE_BYTES=4 * 1024 * 1024,
            FILE_MAX_TRANSFER_BYTES=64 * 1024 * 1024,
            FILE_MAX_LIST_ENTRIES=5000,
        ),
    }
)
