#!/usr/bin/env bash
# Installs the Debian packages the service needs (with --test: also what its tests need). Safe to run again: when
# everything is present it only checks and returns.
source "$(dirname "$0")/lib.sh"

PACKAGES=(
  # hypervisor
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  tini
  # building libvirt-python, and the guest image
  libvirt-dev pkg-config gcc python3-dev debootstrap busybox-static e2fsprogs cpio gzip
  # services
  redis-server postgresql
  # SSH certificates (ssh-keygen), local sshd for fast SSH tests, tmux
  openssh-client openssh-server tmux
  # tests build tiny .deb packages
  dpkg-dev
  # the terminal page: xterm.js vendored from npm at set-up time
  nodejs
)
# --test: what only the test suite needs (a real browser for the terminal page's test).
if [ "${1:-}" = "--test" ]; then
  PACKAGES+=(chromium chromium-driver)
fi
[ "$(id -u)" = 0 ] || die "run as root (apt-get, libvirt and loop-free image builds need it)"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d: no systemd here, and package scripts must not try to start daemons.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
else
  say "Debian packages: all present"
fi
# npm: Debian ships it as its own package; NodeSource's nodejs bundles it (and conflicts).
if ! command -v npm >/dev/null; then
  say "installing npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
fi
# The unprivileged account ansible-playbook runs as (docs/playbooks.md "Who runs Ansible"): no
# password, no login shell, no home; it owns one run's private directory at a time.
ansible_user="${VSB_ANSIBLE_USER:-vsb-ansible}"
if ! getent passwd "$ansible_user" >/dev/null; then
  say "creating system user $ansible_user (runs ansible-playbook)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$ansible_user"
else
  say "system user $ansible_user: present"
fi
