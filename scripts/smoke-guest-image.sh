#!/usr/bin/env bash
# Smoke-test the virsh-sandbox guest image on this host: boot one linked clone
# the way the orchestrator does and prove certificate SSH works.
#
#   scripts/smoke-guest-image.sh [--systemd] [--shutdown-mode acpi|agent] [--debug] [IMAGE_DIR]
#
# IMAGE_DIR defaults to the output of scripts/build-guest-image.sh (cached, so
# normally instant). Checks, in order: the vsb-hostkey line on the serial
# console; the sshd banner; root SSH with a CA certificate for principal "smoke"; the presented
# host key equals the console line; a certificate for principal "other" is
# refused; SFTP works; guest-ping over the guest agent; "virsh shutdown"
# (ACPI power button by default) powers the guest off. Prints timings. The
# domain, clone and temp files are removed on any exit. --debug adds vsb.debug
# to the cmdline (fast mode prints per-step uptimes) and prints the serial
# console at the end. Needs root and a
# running libvirtd (qemu:///system). Traffic goes to 127.0.0.1 only.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODE=fast
SHUTDOWN_MODE=acpi
DEBUG=0
IMAGE_DIR=
URI=qemu:///system

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-0}"
}
while [[ $# -gt 0 ]]; do
	case "$1" in
	--systemd) MODE=systemd ;;
	--fast) MODE=fast ;;
	--debug) DEBUG=1 ;;
	--shutdown-mode)
		[[ $# -ge 2 ]] || usage 2
		SHUTDOWN_MODE=$2
		shift
		;;
	-h | --help) usage 0 ;;
	-*)
		echo "unknown option: $1" >&2
		usage 2
		;;
	*) IMAGE_DIR=$1 ;;
	esac
	shift
done
case "$SHUTDOWN_MODE" in acpi | agent) ;; *) usage 2 ;; esac

T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }
log() { printf '%s [%6ss] %s\n' "$(date +%H:%M:%S)" "$(since "$T0")" "$*" >&2; }
die() {
	log "FAIL: $*"
	exit 1
}
virsh_() { virsh -q -c "$URI" "$@"; }

[[ $EUID -eq 0 ]] || die "run as root"
virsh_ version >/dev/null 2>&1 || die "libvirtd not reachable at $URI (start: libvirtd -d; virtlogd -d)"

if [[ -z $IMAGE_DIR ]]; then
	IMAGE_DIR=$("$SCRIPT_DIR/build-guest-image.sh" | tail -n 1)
fi
IMAGE_DIR=$(cd "$IMAGE_DIR" && pwd -P)
for f in base.qcow2 vmlinuz initrd.img manifest.json; do
	[[ -s $IMAGE_DIR/$f ]] || die "$IMAGE_DIR/$f missing"
done
CMDLINE=$(sed -n "s/.*\"${MODE}_cmdline\": *\"\([^\"]*\)\".*/\1/p" "$IMAGE_DIR/manifest.json")
[[ -n $CMDLINE ]] || die "no ${MODE}_cmdline in manifest.json"

NAME=vsb-smoke-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d /tmp/vsb-smoke.XXXXXX)
chmod 0755 "$TMP" # the qemu user must reach the clone
CONSOLE=$TMP/console.log
DEFINED=0

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ $DEFINED == 1 ]]; then
		virsh_ destroy "$NAME" >/dev/null 2>&1 || true
		virsh_ undefine "$NAME" >/dev/null 2>&1 || log "WARNING: could not undefine $NAME"
	fi
	if [[ ($rc -ne 0 || $DEBUG == 1) && -f $CONSOLE ]]; then
		echo "----- serial console (last 60 lines) -----" >&2
		tail -n 60 "$CONSOLE" | tr -d '\r' >&2
		echo "--------------------------------------------" >&2
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# --- keys and certificates ---------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C vsb-smoke-ca -f "$TMP/ca"
ssh-keygen -q -t ed25519 -N '' -C vsb-smoke -f "$TMP/id"
ssh-keygen -q -t ed25519 -N '' -C vsb-smoke-other -f "$TMP/other"
ssh-keygen -q -s "$TMP/ca" -I smoke -n smoke -V -1m:+5m "$TMP/id.pub"
ssh-keygen -q -s "$TMP/ca" -I other -n other -V -1m:+5m "$TMP/other.pub"
read -r CA_TYPE CA_B64 _ <"$TMP/ca.pub"

# --- clone + domain ------------------------------------------------------------
qemu-img create -q -f qcow2 -b "$IMAGE_DIR/base.qcow2" -F qcow2 "$TMP/clone.qcow2"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MAC=52:54:00:$(od -An -N3 -tx1 /dev/urandom | sed 's/^ //; s/ /:/g')
FULL_CMDLINE="$CMDLINE vsb.ca=$CA_TYPE:$CA_B64 vsb.principals=smoke vsb.hostname=smoke"
[[ $DEBUG == 1 ]] && FULL_CMDLINE="$FULL_CMDLINE vsb.debug"

cat >"$TMP/domain.xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$NAME</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$IMAGE_DIR/vmlinuz</kernel>
    <initrd>$IMAGE_DIR/initrd.img</initrd>
    <cmdline>$FULL_CMDLINE</cmdline>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>128</tb-cache></tcg>
  </features>
  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe' discard='unmap'/>
      <source file='$TMP/clone.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$CONSOLE'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=vmnet0,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=vmnet0,bus=pcie.0,addr=0x10,mac=$MAC'/>
  </qemu:commandline>
</domain>
EOF

virsh_ define "$TMP/domain.xml" >/dev/null
DEFINED=1
log "mode=$MODE domain=$NAME port=127.0.0.1:$PORT image=$IMAGE_DIR"
START=$(now)
virsh_ start "$NAME" >/dev/null
log "started in $(since "$START") s"

running() { [[ $(virsh_ domstate "$NAME" 2>/dev/null) == running ]]; }

# --- wait for the host key line -----------------------------------------------
HOSTKEY=
deadline=$((SECONDS + 180))
while [[ $SECONDS -lt $deadline ]]; do
	HOSTKEY=$(tr -d '\r' <"$CONSOLE" 2>/dev/null | sed -n 's/^vsb-hostkey: \(ssh-ed25519 [A-Za-z0-9+/=]*\)$/\1/p' | head -n 1)
	[[ -n $HOSTKEY ]] && break
	running || die "domain stopped before printing vsb-hostkey"
	sleep 0.1
done
[[ -n $HOSTKEY ]] || die "no vsb-hostkey line on the console after 180 s"
T_HOSTKEY=$(since "$START")
log "console: vsb-hostkey: $HOSTKEY (${T_HOSTKEY} s)"

SSH_OPTS=(-p "$PORT" -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout=10
	-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
ssh_as() { # $1 = key basename; rest = ssh args
	local k=$1
	shift
	timeout 60 ssh "${SSH_OPTS[@]}" -i "$TMP/$k" -o CertificateFile="$TMP/$k-cert.pub" "$@"
}

# --- first SSH command -------------------------------------------------------------
# Gate on the sshd banner with short-lived probes: an ssh attempt made before the
# guest has its address hangs in slirp's SYN back-off for seconds. Probe every
# 0.5 s, not faster (half-open connections pile up in slirp).
banner() {
	timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -c 4 <&3' _ "$PORT" 2>/dev/null |
		grep -q '^SSH-'
}
deadline=$((SECONDS + 180))
until banner; do
	[[ $SECONDS -lt $deadline ]] || die "no sshd banner after 180 s"
	running || die "domain stopped while waiting for the sshd banner"
	sleep 0.5
done
T_BANNER=$(since "$START")
log "sshd banner (${T_BANNER} s)"
OUT=
deadline=$((SECONDS + 180))
while [[ $SECONDS -lt $deadline ]]; do
	if OUT=$(ssh_as id root@127.0.0.1 'uname -a; python3 --version' 2>"$TMP/ssh.err"); then
		break
	fi
	OUT=
	running || die "domain stopped while waiting for SSH"
	sleep 0.25
done
[[ -n $OUT ]] || die "SSH never succeeded: $(tail -n 3 "$TMP/ssh.err")"
T_SSH=$(since "$START")
log "ssh ok (${T_SSH} s): $(echo "$OUT" | tr '\n' '|')"
grep -q '^Linux smoke ' <<<"$OUT" || die "hostname is not 'smoke' (vsb.hostname)"
grep -q '^Python 3' <<<"$OUT" || die "python3 missing"

# --- the presented host key is the one printed on the console -----------------------
echo "[127.0.0.1]:$PORT $HOSTKEY" >"$TMP/known_hosts"
ssh_as id -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$TMP/known_hosts" \
	root@127.0.0.1 true 2>"$TMP/pin.err" ||
	die "host key presented by sshd differs from the console line: $(tail -n 3 "$TMP/pin.err")"
log "host key pinned from the console matches"

# --- a certificate for another principal is refused ---------------------------------
if ssh_as other root@127.0.0.1 true 2>"$TMP/other.err"; then
	die "certificate for principal 'other' was accepted"
fi
grep -q 'Permission denied' "$TMP/other.err" ||
	die "principal 'other' failed for the wrong reason: $(tail -n 3 "$TMP/other.err")"
log "certificate for principal 'other' refused"

# --- SFTP subsystem ------------------------------------------------------------------
echo 'ls /etc/hostname' >"$TMP/sftp.batch"
timeout 60 sftp -q -b "$TMP/sftp.batch" -P "$PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
	-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
	-i "$TMP/id" -o CertificateFile="$TMP/id-cert.pub" root@127.0.0.1 >/dev/null ||
	die "sftp failed"
log "sftp ok"

# --- guest agent ---------------------------------------------------------------------
PING=
deadline=$((SECONDS + 60))
while [[ $SECONDS -lt $deadline ]]; do
	PING=$(virsh_ qemu-agent-command "$NAME" '{"execute":"guest-ping"}' 2>/dev/null) && break
	PING=
	sleep 0.5
done
[[ $PING == *'"return"'* ]] || die "guest-ping failed"
log "guest-ping: $PING"

# --- shutdown ------------------------------------------------------------------------
SD_START=$(now)
virsh_ shutdown "$NAME" --mode "$SHUTDOWN_MODE" >/dev/null
deadline=$((SECONDS + 60))
while running && [[ $SECONDS -lt $deadline ]]; do sleep 0.2; done
running && die "guest still running 60 s after virsh shutdown --mode $SHUTDOWN_MODE"
T_SHUTDOWN=$(since "$SD_START")
log "powered off by virsh shutdown --mode $SHUTDOWN_MODE in ${T_SHUTDOWN} s"

echo "PASS mode=$MODE start->hostkey=${T_HOSTKEY}s start->banner=${T_BANNER}s start->first-ssh=${T_SSH}s shutdown(${SHUTDOWN_MODE})=${T_SHUTDOWN}s"
