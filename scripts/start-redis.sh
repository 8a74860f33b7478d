#!/usr/bin/env bash
# Redis for the service and the tests (called by start-services.sh): bound to loopback only
# (127.0.0.1 and ::1), with a password generated once into $VSB_SECRETS_DIR/redis-password
# (0600, directory 0700). Every client reads that file through the settings
# (config/settings/base.py: local_redis_url); an explicit REDIS_URL / TEST_REDIS_URL wins.
#   - nothing answers on the port: start redis-server from $VSB_SECRETS_DIR/redis.conf (0600:
#     it holds the password, which stays off the command line where `ps` shows it to everyone);
#   - it answers to our password: nothing to do;
#   - it answers WITHOUT a password (started by an older version of these scripts, or by
#     Debian's own unit): set the password and the loopback bind on the running server with
#     CONFIG SET, without a restart (queued tasks survive), and CONFIG REWRITE them into its
#     config file when it has one. One started from the command line keeps them until it
#     stops; its successor is started by this script, with the file above. Clients that
#     connected before keep their connection; new ones need the password (restart an older
#     run.sh's daphne and worker: scripts/run.sh does);
#   - it wants another password: stop and say what to do.
# Persistence: an append-only file (appendonly yes, fsync every second) in its directory, so
# a Redis restart keeps the queued tasks (at most the last second's writes are lost; what is
# lost anyway is sent again by the resend-lost-work sweep, docs/operations.md). A running
# Redis without it gets it with CONFIG SET (and CONFIG REWRITE when it has a config file).
# Port and directories are variables so a test can run its own instance:
#   VSB_REDIS_PORT (6379), VSB_REDIS_DIR (/var/lib/redis: working dir and pid file),
#   VSB_REDIS_LOG (/var/log/redis/redis-server.log), VSB_SECRETS_DIR ($VSB_DATA_DIR/secrets).
source "$(dirname "$0")/lib.sh"

PORT="${VSB_REDIS_PORT:-6379}"
DIR="${VSB_REDIS_DIR:-/var/lib/redis}"
LOG="${VSB_REDIS_LOG:-/var/log/redis/redis-server.log}"
PASSWORD_FILE="$VSB_SECRETS_DIR/redis-password"
CONF="$VSB_SECRETS_DIR/redis.conf"

python3 "$ROOT/config/keyfiles.py" "$PASSWORD_FILE"
PASSWORD="$(cat "$PASSWORD_FILE")"
# redis-cli reads the password from its environment (REDISCLI_AUTH), never from its argv.
ask() { REDISCLI_AUTH="$PASSWORD" redis-cli --no-auth-warning -h 127.0.0.1 -p "$PORT" "$@" 2>/dev/null || true; }
ask_anonymous() { redis-cli -h 127.0.0.1 -p "$PORT" "$@" 2>/dev/null || true; }
expect_ok() { [ "$(cat)" = OK ] || die "redis on 127.0.0.1:$PORT refused $1 (is CONFIG disabled?)"; }

case "$(ask_anonymous ping)" in
  PONG)
    say "redis on 127.0.0.1:$PORT has no password: setting the generated one, and binding it to loopback"
    # The password goes on stdin: a command-line argument would show in `ps`.
    printf 'CONFIG SET requirepass %s\n' "$PASSWORD" | ask_anonymous | expect_ok requirepass
    ask CONFIG SET bind "127.0.0.1 -::1" | expect_ok bind
    ask CONFIG SET protected-mode yes | expect_ok protected-mode
    if [ "$(ask CONFIG REWRITE)" != OK ]; then
      say "  it has no config file: the password holds until it stops; this script starts the next one with $CONF"
    fi
    ;;
  "")
    say "starting redis-server on 127.0.0.1:$PORT (loopback, password in $PASSWORD_FILE)"
    mkdir -p "$DIR" "$(dirname "$LOG")"
    (
      umask 077
      cat >"$CONF" <<EOF
# Written by scripts/start-redis.sh at each start (0600: it holds the password).
bind 127.0.0.1 -::1
protected-mode yes
port $PORT
requirepass $PASSWORD
daemonize yes
pidfile $DIR/redis-server-$PORT.pid
logfile $LOG
dir $DIR
save ""
appendonly yes
appendfsync everysec
EOF
    )
    redis-server "$CONF" >/dev/null
    for _ in $(seq 1 50); do [ "$(ask ping)" = PONG ] && break; sleep 0.1; done
    ;;
esac
[ "$(ask ping)" = PONG ] || die "redis on 127.0.0.1:$PORT does not accept the password in $PASSWORD_FILE. \
If it is another install's Redis, stop it or point this one elsewhere (VSB_REDIS_PORT, or REDIS_URL with its password)."
[ "$(ask_anonymous ping)" != PONG ] || die "redis on 127.0.0.1:$PORT still answers without a password"
if [ "$(ask CONFIG GET appendonly | tail -n 1)" != yes ]; then
  say "redis on 127.0.0.1:$PORT: turning on its append-only file (queued tasks survive a restart)"
  ask CONFIG SET appendfsync everysec | expect_ok appendfsync
  ask CONFIG SET appendonly yes | expect_ok appendonly
  ask CONFIG REWRITE >/dev/null
fi
