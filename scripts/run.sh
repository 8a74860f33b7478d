#!/usr/bin/env bash
# README command 1: set up everything on a fresh Debian 12 machine and start the service
# (daphne on :8080, the three worker pools of this KVM host and its egress proxy), then print
# the URL and an agent API key. Run it again to restart. Stop with scripts/stop.sh.
# Production settings (config/settings/production.py): DEBUG off; SECRET_KEY and the
# inventory credentials key from the environment or generated once into $VSB_SECRETS_DIR,
# Redis's password likewise (scripts/start-redis.sh).
#   --foreground   keep the processes attached to this terminal (Ctrl-C stops them)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/install-system.sh"
"$ROOT/scripts/start-services.sh"
"$ROOT/scripts/bootstrap.sh" requirements.txt

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.production}"
PY="$VENV/bin/python"
# Exported: the settings add the bound address to ALLOWED_HOSTS.
export VSB_BIND="${VSB_BIND:-127.0.0.1}" VSB_PORT="${VSB_PORT:-8080}"
HOST_NAME="$("$PY" -c 'import django; django.setup(); from django.conf import settings; print(settings.VSB["HOST_NAME"])')"
LOG="$VSB_DATA_DIR/log"
# The sandboxes' forwarded SSH ports must never be handed out as the ephemeral port of some
# outgoing connection: a hibernated or stopped sandbox's port is free while its QEMU is gone,
# and its restore would fail on it (docs/architecture.md "Idle"). Reserved, kept across boots.
PORT_RANGE="$("$PY" -c 'import django; django.setup(); from django.conf import settings; print("%d-%d" % settings.VSB["PORT_RANGE"])')"
reserved=/proc/sys/net/ipv4/ip_local_reserved_ports
if [ -w "$reserved" ] && ! grep -q "$PORT_RANGE" "$reserved"; then
  current="$(cat "$reserved")"
  echo "${current:+$current,}$PORT_RANGE" > "$reserved"
  echo "net.ipv4.ip_local_reserved_ports = $(cat "$reserved")" > /etc/sysctl.d/60-virsh-sandbox.conf
fi

"$PY" manage.py migrate --noinput -v0
# The default SQLite database holds API key hashes, the audit trail and encrypted
# credentials: owner only (SQLite gives its journal files the same mode).
for f in "$VSB_DATA_DIR"/db.sqlite3*; do [ -e "$f" ] && chmod 0600 "$f"; done
"$PY" manage.py collectstatic --noinput -v0
say "guest image (cached by recipe; the first build takes 1-2 minutes)"
"$PY" manage.py build_guest_image
"$PY" manage.py ensure_host
if ! "$PY" -c 'import django; django.setup(); from django.contrib.auth.models import User; raise SystemExit(0 if User.objects.filter(username="admin").exists() else 1)'; then
  pw=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')
  DJANGO_SUPERUSER_PASSWORD="$pw" "$PY" manage.py createsuperuser --noinput --username admin --email admin@localhost -v0
  (umask 077; echo "$pw" > "$VSB_DATA_DIR/admin-password")
fi
KEY=$("$PY" manage.py create_agent demo-agent --key-name quickstart --revoke-others)

"$ROOT/scripts/stop.sh" >/dev/null 2>&1 || true
DAPHNE=("$VENV/bin/daphne" -b "$VSB_BIND" -p "$VSB_PORT" config.asgi:application)
# One worker process per pool (docs/architecture.md "Queues and pools"), each with its own
# threads (VSB_WORKER_<POOL>_THREADS), so hour-long commands never hold up a destroy:
#   lifecycle  kvm.<host> + control: sandbox operations, the periodic sweeps (beat), heartbeat
#   commands   kvm.<host>.commands + control.commands: commands, playbook runs, diffs
#   terminals  kvm.<host>.terminals: terminal and file operations, the terminal relay
POOLS=(lifecycle commands terminals)
worker_argv() {  # sets WORKER to the command line of pool $1; only the lifecycle pool runs beat
  WORKER=("$PY" manage.py worker "$1")
  if [ "$1" = lifecycle ]; then WORKER+=(--beat); fi
}
# The guests' one way out, on the policy's terms (docs/egress.md): one per KVM host.
EGRESS=("$PY" manage.py egress_proxy)

if [ "${1:-}" = "--foreground" ]; then
  trap 'kill 0' EXIT
  for pool in "${POOLS[@]}"; do worker_argv "$pool"; "${WORKER[@]}" & done
  "${DAPHNE[@]}" &
  "${EGRESS[@]}" &
  wait
  exit
fi
nohup "${DAPHNE[@]}" >"$LOG/daphne.log" 2>&1 & echo $! > "$VSB_DATA_DIR/daphne.pid"
for pool in "${POOLS[@]}"; do
  worker_argv "$pool"
  nohup "${WORKER[@]}" >"$LOG/worker-$pool.log" 2>&1 & echo $! > "$VSB_DATA_DIR/worker-$pool.pid"
done
nohup "${EGRESS[@]}" >"$LOG/egress.log" 2>&1 & echo $! > "$VSB_DATA_DIR/egress.pid"

URL="http://$VSB_BIND:$VSB_PORT"
for _ in $(seq 1 100); do
  curl -fsS "$URL/v1/health" 2>/dev/null | grep -q '"alive":true' && break
  sleep 0.3
done
curl -fsS "$URL/v1/health" | grep -q '"alive":true' || die "service did not become healthy; see $LOG/daphne.log and $LOG/worker-lifecycle.log"
cat <<MSG

  virsh-sandbox is running.
    API        $URL/v1/   (docs: $URL/api/docs/)
    admin      $URL/admin/  user admin, password in $VSB_DATA_DIR/admin-password
    logs       $LOG/daphne.log  $LOG/egress.log
               $LOG/worker-lifecycle.log  $LOG/worker-commands.log  $LOG/worker-terminals.log
    stop       scripts/stop.sh

  Agent API key (demo-agent):
    export VSB_API_KEY=$KEY

MSG
