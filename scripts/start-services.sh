#!/usr/bin/env bash
# Starts what the service needs when it is not already running: libvirtd + virtlogd (no
# systemd here), Redis (scripts/start-redis.sh), and with --postgres the PostgreSQL cluster
# the tests use.
source "$(dirname "$0")/lib.sh"

want_pg=0
[ "${1:-}" = "--postgres" ] && want_pg=1

# What udev does on a normal Debian host: /dev/kvm rw for group kvm (libvirt-qemu is in it).
# Without it libvirt finds KVM usable when it probes QEMU but not when it checks its cache,
# and re-probes QEMU on every call: a define then takes seconds instead of milliseconds.
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
# The egress relay (docs/egress.md "Why QEMU runs without its seccomp filter"): QEMU spawns it
# for each guest connection to the proxy address, and libvirt's default seccomp filter for
# QEMU (spawn=deny) kills QEMU when it does. VSB_EGRESS=off keeps the filter (and no egress).
qemu_conf=/etc/libvirt/qemu.conf
case "${VSB_EGRESS:-on}" in off | false | 0) egress=0 ;; *) egress=1 ;; esac
if [ "$egress" = 1 ] && [ -f "$qemu_conf" ] && ! grep -qx 'seccomp_sandbox = 0' "$qemu_conf"; then
  say "qemu.conf: seccomp_sandbox = 0 (QEMU spawns the egress relay; docs/egress.md)"
  printf '\n# virsh-sandbox: QEMU spawns the egress relay per guest connection (docs/egress.md).\nseccomp_sandbox = 0\n' >>"$qemu_conf"
  if pgrep -x libvirtd >/dev/null; then
    say "restarting libvirtd to read qemu.conf (running domains keep running)"
    pkill -x libvirtd
    for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
  fi
fi
if ! pgrep -x virtlogd >/dev/null; then
  say "starting virtlogd"; virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  # Under tini as a child subreaper: QEMU processes libvirt daemonizes are reaped at once.
  # Where PID 1 does not reap (containers, microVMs) libvirt otherwise waits ~15 s for each
  # exited QEMU to disappear, on every capability probe and every domain stop.
  say "starting libvirtd"
  rm -f /run/libvirtd.pid
  setsid nohup tini -s -- libvirtd >>/var/log/libvirt/libvirtd-stdout.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null 2>&1 || die "libvirtd did not come up (see /var/log/libvirt)"

# Loopback only, with a password generated once into $VSB_SECRETS_DIR (see the script).
"$ROOT/scripts/start-redis.sh"

if [ "$want_pg" = 1 ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
    say "starting PostgreSQL $ver"
    pg_lsclusters -h | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
    pg_ctlcluster "$ver" main start
  fi
  for _ in $(seq 1 50); do su postgres -c "psql -Atqc 'select 1'" >/dev/null 2>&1 && break; sleep 0.2; done
  su postgres -c "psql -Atqc \"select 1 from pg_roles where rolname='virsh_sandbox'\"" | grep -q 1 || \
    su postgres -c "psql -qc \"create role virsh_sandbox login createdb password 'virsh_sandbox'\""
  su postgres -c "psql -Atqc \"select 1 from pg_database where datname='virsh_sandbox'\"" | grep -q 1 || \
    su postgres -c "createdb -O virsh_sandbox virsh_sandbox"
fi
say "services up: libvirtd, virtlogd, redis$([ $want_pg = 1 ] && echo ', postgresql')"
