#!/usr/bin/env bash
# Build the virsh-sandbox guest image: a small Debian 12 (bookworm) root
# filesystem made with debootstrap, the Debian cloud kernel, a tiny busybox
# initramfs, and a qcow2 with ext4 directly on /dev/vda (no partition table).
#
#   scripts/build-guest-image.sh [--cache-dir DIR] [--print-key]
#
# Output: $CACHE_DIR/debian-12-<KEY>/{base.qcow2,vmlinuz,initrd.img,
# initrd-debian.img,manifest.json}. KEY is the first 16 hex digits of the
# sha256 of the `sha256sum` listing of this script, every file under
# scripts/guest/ and the guest's apt sources.list (see image_key). A directory
# with a manifest.json is complete: it is created under a temporary name and
# renamed into place at the very end.
# The last line on stdout is the absolute output directory; progress goes to
# stderr. See docs/guest-image.md.
#
# The Debian mirror is the KVM host's own: debootstrap uses the first Debian
# mirror of the host's apt sources (VSB_DEBIAN_MIRROR overrides it) and the
# guest's /etc/apt/sources.list gets the host's Debian entries, both read by
# core/hostapt.py (vendors' repositories on the host are left out).
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_DIR=$SCRIPT_DIR/guest
SUITE=bookworm
IMAGE_SIZE_MB=2048
# ca-certificates: the guest's egress is an HTTP proxy without TLS interception,
# so https (apt, pip, git, curl) verifies the origin's certificate in the guest.
PACKAGES=systemd-sysv,udev,kmod,openssh-server,qemu-guest-agent,iproute2,busybox-static,python3,python3-apt,ca-certificates
FAST_CMDLINE="root=/dev/vda rw console=ttyS0 quiet init=/usr/local/lib/vmfast/init"
SYSTEMD_CMDLINE="root=/dev/vda rw console=ttyS0 quiet"
# Modules the tiny initramfs insmods (plus their dependencies, minus built-ins).
INITRD_MODULES="virtio_pci virtio_blk virtio_net virtio_console virtio_rng ext4 button evdev"

CACHE_DIR=${VSB_IMAGE_CACHE:-/var/cache/virsh-sandbox/images}
PRINT_KEY=0

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
	case "$1" in
	--cache-dir)
		[[ $# -ge 2 ]] || usage 2
		CACHE_DIR=$2
		shift 2
		;;
	--cache-dir=*)
		CACHE_DIR=${1#*=}
		shift
		;;
	--print-key)
		PRINT_KEY=1
		shift
		;;
	-h | --help) usage 0 ;;
	*)
		echo "unknown argument: $1" >&2
		usage 2
		;;
	esac
done

# fd 8 = the real stderr, also while a trap fires inside a redirected call.
exec 8>&2
T0=$(date +%s.%N)
STEP=start
STEP_T0=$T0
STEP_TIMES=()

log() { printf '%s [%6.1fs] %-10s %s\n' "$(date +%H:%M:%S)" "$(elapsed "$T0")" "$STEP" "$*" >&8; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
step() {
	if [[ $STEP != start ]]; then
		STEP_TIMES+=("\"$STEP\": $(elapsed "$STEP_T0")")
	fi
	STEP=$1
	STEP_T0=$(date +%s.%N)
	shift
	log "$@"
}
die() {
	log "ERROR: $*"
	exit 1
}

# The guest's /etc/apt/sources.list: the host's Debian entries, or the override
# mirror alone when the host has none.
hostapt() { python3 -I "$SCRIPT_DIR/../core/hostapt.py" "$@"; }
GUEST_SOURCES=$(hostapt sources-list "$SUITE") || GUEST_SOURCES=
if [[ -z $GUEST_SOURCES && -n ${VSB_DEBIAN_MIRROR:-} ]]; then
	GUEST_SOURCES="deb $VSB_DEBIAN_MIRROR $SUITE main"
fi

# The `sha256sum` listing of the script and scripts/guest/** (paths relative to
# scripts/, sorted bytewise), then a line for the guest's sources.list; KEY =
# its sha256, first 16 hex digits. Python:
#   files = ["build-guest-image.sh"] + sorted(p.relative_to(scripts).as_posix()
#            for p in (scripts / "guest").rglob("*") if p.is_file())
#   listing = "".join(f"{sha256(read(f))}  {f}\n" for f in files)
#   listing += f"{sha256((guest_sources + '\n').encode())}  -\n"
#   key = sha256(listing.encode()).hexdigest()[:16]
image_key() {
	local files
	cd "$SCRIPT_DIR"
	mapfile -t files < <(find guest -type f | LC_ALL=C sort)
	{
		sha256sum build-guest-image.sh "${files[@]}"
		printf '%s\n' "$GUEST_SOURCES" | sha256sum
	} | sha256sum | cut -c1-16
}

KEY=$(image_key)
if [[ $PRINT_KEY == 1 ]]; then
	echo "$KEY"
	exit 0
fi

mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd -P)
OUT=$CACHE_DIR/debian-12-$KEY

complete() {
	[[ -s $OUT/manifest.json && -s $OUT/base.qcow2 && -s $OUT/vmlinuz && -s $OUT/initrd.img ]] &&
		grep -q "\"key\": \"$KEY\"" "$OUT/manifest.json"
}

if complete; then
	echo "$OUT"
	exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot, mknod)"
MIRROR=${VSB_DEBIAN_MIRROR:-$(hostapt mirror "$SUITE")} ||
	die "no Debian mirror in the host's apt sources: set VSB_DEBIAN_MIRROR"
[[ -n $GUEST_SOURCES ]] || die "no Debian entry in the host's apt sources for the guest"
for tool in debootstrap chroot mke2fs qemu-img cpio gzip flock sha256sum; do
	command -v "$tool" >/dev/null || die "missing tool: $tool"
done

# One build at a time per cache directory (they share the .deb cache, and two
# builds of the same key would race for the final rename).
exec 9>"$CACHE_DIR/.build.lock"
if ! flock -n 9; then
	log "another build holds $CACHE_DIR/.build.lock, waiting"
	flock 9
	log "got the lock"
	T0=$(date +%s.%N) # build_seconds counts the build, not the wait
fi
if complete; then
	echo "$OUT"
	exit 0
fi

# Only the lock holder builds, so any .tmp-* left now is from a killed build.
for stale in "$CACHE_DIR"/.tmp-debian-12-*; do
	[[ -d $stale ]] || continue
	if [[ -z $(awk -v p="$stale/" 'index($2, p) == 1' /proc/self/mounts) ]]; then
		log "removing stale $stale"
		rm -rf "$stale"
	else
		log "WARNING: $stale still has mounts, leaving it alone"
	fi
done

WORK=
mounts_under() { awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r; }

cleanup() {
	local rc=$? m left
	trap - EXIT INT TERM
	[[ -n $WORK ]] || exit "$rc"
	for m in $(mounts_under "$WORK"); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
	left=$(mounts_under "$WORK")
	if [[ -n $left ]]; then
		# Never rm -rf through a live bind mount of the host's /dev or cache.
		echo "build-guest-image: still mounted, NOT removing $WORK: $left" >&8
	elif [[ -d $WORK ]]; then
		rm -rf "$WORK"
	fi
	if [[ $rc -ne 0 ]]; then
		echo "build-guest-image: FAILED (exit $rc) in step '$STEP'" >&8
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DEBCACHE=$CACHE_DIR/debcache
mkdir -p "$DEBCACHE/debootstrap" "$DEBCACHE/apt/partial"
WORK=$(mktemp -d "$CACHE_DIR/.tmp-debian-12-$KEY.XXXXXX")
ROOTFS=$WORK/rootfs
STAGE=$WORK/image
mkdir -p "$ROOTFS" "$STAGE"
# dpkg fsyncs every file; on tmpfs that costs nothing. Needs ~0.5 GB of RAM
# while building. VSB_BUILD_TMPFS=no builds on disk.
ROOTFS_TMPFS=0
if [[ ${VSB_BUILD_TMPFS:-auto} != no ]] &&
	[[ $(awk '/^MemAvailable:/{print $2}' /proc/meminfo) -gt $((3 * 1024 * 1024)) ]]; then
	mount -t tmpfs -o size=2g,mode=0755 vsb-rootfs "$ROOTFS"
	ROOTFS_TMPFS=1
fi

in_chroot() {
	chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root "$@"
}

run_logged() { # $1 = log name, rest = command; show the tail on failure
	local logf=$WORK/$1.log
	shift
	if ! "$@" >"$logf" 2>&1; then
		tail -n 40 "$logf" >&8
		die "command failed: $* (log above)"
	fi
}

# ---------------------------------------------------------------------------
step debootstrap "key $KEY, $SUITE minbase from $MIRROR into $WORK (tmpfs: $ROOTFS_TMPFS)"
run_logged debootstrap debootstrap --variant=minbase --components=main \
	--cache-dir="$DEBCACHE/debootstrap" --include="$PACKAGES" \
	"$SUITE" "$ROOTFS" "$MIRROR"
log "$(in_chroot dpkg-query -f '.' -W | wc -c) packages"

# ---------------------------------------------------------------------------
step kernel "linux-image-cloud-amd64"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
mkdir -p "$ROOTFS/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' >"$ROOTFS/etc/initramfs-tools/conf.d/vsb.conf"
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_console ext4 \
	>>"$ROOTFS/etc/initramfs-tools/modules"
mount -t proc proc "$ROOTFS/proc"
mount -t sysfs sysfs "$ROOTFS/sys"
mount --bind /dev "$ROOTFS/dev"
mount --bind "$DEBCACHE/apt" "$ROOTFS/var/cache/apt/archives"
if ! in_chroot apt-get install -y --no-install-recommends linux-image-cloud-amd64 \
	>"$WORK/kernel.log" 2>&1; then
	log "apt-get install failed, refreshing package lists"
	run_logged apt-update in_chroot apt-get update
	run_logged kernel in_chroot apt-get install -y --no-install-recommends linux-image-cloud-amd64
fi
for m in $(mounts_under "$ROOTFS"); do umount "$m"; done
KVER=$(cd "$ROOTFS/lib/modules" && ls | sort -V | tail -n 1)
[[ -n $KVER && -f $ROOTFS/boot/vmlinuz-$KVER ]] || die "kernel not installed"
log "kernel $KVER"

# ---------------------------------------------------------------------------
step config "files, units, masks"
R=$ROOTFS
# tar, not cp -a: existing directories (etc/, usr/...) keep their metadata, and
# the checkout's owner and umask do not leak into the image.
tar -C "$GUEST_DIR/rootfs" --owner=0 --group=0 --mode=go-w -cf - . |
	tar -C "$R" --no-overwrite-dir -xf -
chmod 0755 "$R/usr/local/lib/vmfast/rc" "$R/usr/local/lib/vmfast/dhcp-hook" \
	"$R/usr/local/lib/vsb/firstboot" "$R/usr/local/lib/vsb/power" "$R/etc/acpi/PWRF/00000080"
ln -sfn /bin/busybox "$R/usr/local/lib/vmfast/init"
# shutdown/reboot/poweroff/halt work under systemd and under busybox init.
for verb in shutdown reboot poweroff halt; do
	ln -sfn /usr/local/lib/vsb/power "$R/usr/sbin/$verb"
done

echo sandbox >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n' >"$R/etc/hosts"
printf '/dev/vda\t/\text4\trw,relatime\t0\t0\n' >"$R/etc/fstab"
rm -f "$R/etc/resolv.conf" && : >"$R/etc/resolv.conf"
printf '%s\n' "$GUEST_SOURCES" >"$R/etc/apt/sources.list"
rm -f "$R/etc/apt/sources.list.d/"*
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -f "$R/etc/ssh/ssh_host_"*
mkdir -p -m 0755 "$R/etc/ssh/principals"

in_chroot systemctl enable systemd-networkd.service ssh.service \
	vsb-firstboot.service vsb-acpid.service >"$WORK/enable.log" 2>&1 ||
	{ cat "$WORK/enable.log" >&8; die "systemctl enable failed"; }
# qemu-guest-agent.service is started by udev when its virtio port appears.
if grep -q '^WantedBy=' "$R/lib/systemd/system/qemu-guest-agent.service"; then
	in_chroot systemctl enable qemu-guest-agent.service >>"$WORK/enable.log" 2>&1
fi
MASKS=(
	apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
	e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer fstrim.service
	systemd-timesyncd.service systemd-networkd-wait-online.service
	getty@.service serial-getty@.service console-getty.service getty.target
	getty-static.service
	modprobe@.service systemd-modules-load.service kmod-static-nodes.service
	sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount dev-mqueue.mount
	sys-kernel-config.mount sys-fs-fuse-connections.mount
	systemd-network-generator.service systemd-remount-fs.service systemd-sysusers.service
	systemd-pstore.service systemd-firstboot.service systemd-update-utmp-runlevel.service
	dpkg-db-backup.timer
	# measured under TCG: 1-2.5 s of CPU each at boot, nothing a sandbox needs
	systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
	systemd-random-seed.service systemd-update-utmp.service systemd-journal-flush.service
)
for unit in "${MASKS[@]}"; do
	ln -sfn /dev/null "$R/etc/systemd/system/$unit"
done
echo "$KVER" >"$R/usr/local/lib/vsb/kernel-version"
# firstboot grows the filesystem when a clone's disk has more sectors than this.
echo $((IMAGE_SIZE_MB * 2048)) >"$R/usr/local/lib/vsb/image-sectors"

# ---------------------------------------------------------------------------
step modules "strip drivers udev would load for nothing under QEMU"
MODDIR=/lib/modules/$KVER
cat >"$R/tmp/vsb-modules.py" <<'PY'
"""Module helper run with the guest's python3 (chroot).

prune KVER: delete drivers/ modules not needed in a virtio guest (keeping the
dependency closure of what is kept) and arch/x86/kvm.
order KVER MOD...: print the wanted modules and their dependencies in load
order as relative paths, skipping built-ins and modules that do not exist.
"""
import os, re, shutil, sys

cmd, kver, *want = sys.argv[1:]
base = f"/lib/modules/{kver}"
deps = {}
with open(f"{base}/modules.dep") as f:
    for line in f:
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()

def name(path):
    return os.path.basename(path).split(".ko")[0].replace("-", "_")

by_name = {name(m): m for m in deps}
with open(f"{base}/modules.builtin") as f:
    builtin = {name(line.strip()) for line in f}

def closure(mods):
    out, seen = [], set()
    def visit(m):
        if m in seen:
            return
        seen.add(m)
        for d in deps.get(m, []):
            visit(d)
        out.append(m)
    for m in mods:
        visit(m)
    return out

if cmd == "order":
    mods = []
    for w in want:
        w = w.replace("-", "_")
        if w in builtin:
            continue
        if w not in by_name:
            print(f"module {w}: not found, skipped", file=sys.stderr)
            continue
        mods.append(by_name[w])
    print("\n".join(closure(mods)))
elif cmd == "prune":
    keep_re = re.compile(
        r"^kernel/drivers/("
        r"virtio/|vhost/|md/|block/(virtio_blk|loop|nbd)\.|block/zram/|"
        r"net/(virtio_net|net_failover|tun|tap|veth|dummy|macvlan|macvtap|ifb|"
        r"vxlan|geneve|nlmon|vrf|wireguard|ipvlan|bonding|team)|"
        r"scsi/virtio_scsi\.|char/virtio_console\.|char/hw_random/virtio-rng\.|"
        r"acpi/button\.|input/evdev\.)"
    )
    keep = set(closure([m for m in deps if not m.startswith("kernel/drivers/")
                        or keep_re.match(m)]))
    removed = 0
    for m in deps:
        if m.startswith("kernel/drivers/") and m not in keep:
            os.remove(f"{base}/{m}")
            removed += 1
    shutil.rmtree(f"{base}/kernel/arch/x86/kvm", ignore_errors=True)
    shutil.rmtree(f"{base}/kernel/sound", ignore_errors=True)
    for root, dirs, files in os.walk(f"{base}/kernel", topdown=False):
        if not dirs and not files:
            os.rmdir(root)
    print(f"removed {removed} driver modules, kept {len(keep)} modules")
PY
log "$(in_chroot python3 -I -B /tmp/vsb-modules.py prune "$KVER")"
in_chroot depmod -a "$KVER"
log "modules now $(du -sh "$R$MODDIR" | cut -f1)"

# ---------------------------------------------------------------------------
step initrd "tiny busybox initramfs"
cp "$R/boot/vmlinuz-$KVER" "$STAGE/vmlinuz"
if [[ -f $R/boot/initrd.img-$KVER ]]; then
	cp "$R/boot/initrd.img-$KVER" "$STAGE/initrd-debian.img"
fi
IRD=$WORK/initrd
mkdir -p "$IRD"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$R/bin/busybox" "$IRD/bin/busybox"
for applet in $("$IRD/bin/busybox" --list); do
	[[ $applet == busybox ]] || ln -s busybox "$IRD/bin/$applet"
done
mknod -m 0600 "$IRD/dev/console" c 5 1
mknod -m 0666 "$IRD/dev/null" c 1 3
install -m 0755 "$GUEST_DIR/initramfs/init" "$IRD/init"
: >"$IRD/lib/modules/order"
# shellcheck disable=SC2086
for rel in $(in_chroot python3 -I -B /tmp/vsb-modules.py order "$KVER" $INITRD_MODULES); do
	src=$R$MODDIR/$rel
	mod=$(basename "$rel")
	mod=${mod%%.ko*}
	case "$src" in
	*.ko) cp "$src" "$IRD/lib/modules/$mod.ko" ;;
	*.ko.xz) xz -dc "$src" >"$IRD/lib/modules/$mod.ko" ;;
	*.ko.zst) zstd -qdc "$src" >"$IRD/lib/modules/$mod.ko" ;;
	*.ko.gz) gzip -dc "$src" >"$IRD/lib/modules/$mod.ko" ;;
	*) die "unknown module format: $src" ;;
	esac
	echo "$mod" >>"$IRD/lib/modules/order"
done
rm -f "$R/tmp/vsb-modules.py"
(cd "$IRD" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) >"$STAGE/initrd.img"
log "$(wc -l <"$IRD/lib/modules/order") modules ($(tr '\n' ' ' <"$IRD/lib/modules/order")), $(stat -c %s "$STAGE/initrd.img") bytes"

# ---------------------------------------------------------------------------
step slim "drop caches, docs, man pages, translations, /boot"
rm -f "$R/usr/sbin/policy-rc.d"
rm -rf "$R/var/cache/apt/"*.bin "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"* "$R/var/cache/debconf/"*-old \
	"$R/var/lib/dpkg/"*-old "$R/usr/share/man" "$R/usr/share/info" "$R/usr/share/locale" \
	"$R/usr/share/lintian" "$R/usr/share/linda" "$R/boot/"* "$R/tmp/"* "$R/var/tmp/"*
mkdir -p "$R/var/lib/apt/lists/partial"
find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$R/var/log" -type f -exec truncate -s 0 {} +
# Every clone must create its own host key and machine-id.
rm -f "$R/etc/ssh/ssh_host_"*
: >"$R/etc/machine-id"
ROOTFS_MB=$(du -sm "$R" | cut -f1)
log "rootfs ${ROOTFS_MB} MB"

# ---------------------------------------------------------------------------
step image "mke2fs -d + qemu-img convert"
mke2fs -q -t ext4 -L vmroot -m 0 -E lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0 \
	-d "$R" "$WORK/base.raw" "${IMAGE_SIZE_MB}M" >&8 # stdout is only for the final path
qemu-img convert -f raw -O qcow2 "$WORK/base.raw" "$STAGE/base.qcow2" >&8
rm -f "$WORK/base.raw"
chmod 0444 "$STAGE/base.qcow2"
chmod 0644 "$STAGE/vmlinuz" "$STAGE/initrd.img"
[[ -f $STAGE/initrd-debian.img ]] && chmod 0644 "$STAGE/initrd-debian.img"
SIZE=$(stat -c %s "$STAGE/base.qcow2")
VSIZE=$(qemu-img info --output=json "$STAGE/base.qcow2" | awk -F'[:,]' '/"virtual-size"/{gsub(/ /,"",$2); print $2; exit}')
log "base.qcow2 $SIZE bytes"

# ---------------------------------------------------------------------------
step finish "manifest + atomic rename"
STEP_TIMES+=("\"$STEP\": 0.0")
{
	printf '{\n'
	printf '  "key": "%s",\n' "$KEY"
	printf '  "distribution": "debian",\n  "suite": "%s",\n' "$SUITE"
	printf '  "kernel_version": "%s",\n' "$KVER"
	printf '  "built_at": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf '  "size_bytes": %s,\n' "$SIZE"
	printf '  "virtual_size_bytes": %s,\n' "${VSIZE:-0}"
	printf '  "rootfs_mb": %s,\n' "$ROOTFS_MB"
	printf '  "kernel": "vmlinuz",\n  "initrd": "initrd.img",\n  "disk": "base.qcow2",\n'
	printf '  "fast_cmdline": "%s",\n' "$FAST_CMDLINE"
	printf '  "systemd_cmdline": "%s",\n' "$SYSTEMD_CMDLINE"
	printf '  "build_seconds": %s,\n' "$(elapsed "$T0")"
	printf '  "step_seconds": {%s}\n' "$(
		IFS=,
		echo "${STEP_TIMES[*]}"
	)"
	printf '}\n'
} >"$STAGE/manifest.json"
chmod 0644 "$STAGE/manifest.json"
chmod 0755 "$STAGE"
[[ $ROOTFS_TMPFS == 1 ]] && umount "$ROOTFS"
[[ -z $(mounts_under "$WORK") ]] || die "something is still mounted under $WORK"
rm -rf "$ROOTFS" "$IRD"
if [[ -e $OUT ]]; then
	# Left over from an interrupted or older run without a valid manifest.
	rm -rf "$OUT"
fi
mv "$STAGE" "$OUT"
log "done: $OUT"
echo "$OUT"
