"""Does KVM really run guests on this host? If not, sandboxes use TCG (domain type "qemu").

/dev/kvm existing proves little: under broken nested virtualisation QEMU opens it happily and
the guest dies later with "KVM internal error ... emulation failure", or QEMU aborts while
setting up the host-passthrough CPU. So the probe does what a sandbox would do, in miniature:

1. /dev/kvm must exist and open read-write for us,
2. the user libvirt runs QEMU as must be able to open it too (libvirt fails to start a
   kvm domain otherwise: "Could not access KVM kernel module: Permission denied"),
3. a 348-byte guest (STUB_SOURCE below) must boot under `-accel kvm -cpu host` (the CPU mode
   of our kvm domains): multiboot entry, switch to long mode with paging, SSE, emulated MMIO
   (IOAPIC, LAPIC), port I/O, then print a marker to COM1 and power off via isa-debug-exit.
4. optionally (`kernel=`, e.g. the guest image's vmlinuz) the real kernel must boot under KVM
   as far as looking for its root filesystem. Worth it: here a Debian kernel under
   `-accel kvm -cpu qemu64` hung silently although the stub passed with that CPU.

The verdict is cached in a JSON file keyed on the kernel release, the QEMU version and the
/dev/kvm owner and mode, so a worker pays for it once per host (and again after an upgrade
or a permission fix).
"""

from __future__ import annotations

import base64
import grp
import json
import logging
import os
import pwd
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)

SETTINGS = ("auto", "kvm", "qemu")
MARKER = "VSB-KVM-OK"
# With no root= and no initrd the kernel ends here, after all of early boot has run.
KERNEL_MARKER = "VFS: Unable to mount root"
# Bumped when the probe changes meaning, so old cached verdicts are not trusted.
PROBE_VERSION = 1

# Build: as --32 -o s.o s.S && ld -m elf_i386 -Ttext=0x100000 -o s.elf s.o &&
#        objcopy -O binary -j .text s.elf s.bin
# tests/sandboxes/drivers/test_kvm_probe.py checks that STUB_BASE64 matches this source.
STUB_SOURCE = r"""/* Multiboot (v1, address-kludge) flat binary loaded at 1 MiB by QEMU's -kernel. */
.code32
.text
.globl _start
mb_header:
    .long 0x1BADB002
    .long 0x00010000
    .long -(0x1BADB002 + 0x00010000)
    .long mb_header          /* header_addr */
    .long mb_header          /* load_addr */
    .long load_end           /* load_end_addr */
    .long bss_end            /* bss_end_addr */
    .long _start             /* entry_addr */
_start:
    cli
    cld
    mov $tables, %edi
    xor %eax, %eax
    mov $(6*4096/4), %ecx
    rep stosl
    mov $tables, %edi
    lea 0x1003(%edi), %eax
    mov %eax, (%edi)
    lea 0x1000(%edi), %esi
    lea 0x2003(%edi), %eax
    mov $4, %ecx
1:  mov %eax, (%esi)
    add $8, %esi
    add $0x1000, %eax
    loop 1b
    lea 0x2000(%edi), %esi
    xor %ebx, %ebx
    mov $2048, %ecx
2:  mov %ebx, %eax
    or $0x83, %eax
    mov %eax, (%esi)
    add $8, %esi
    add $0x200000, %ebx
    loop 2b
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $tables, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    lgdt gdtr
    ljmp $0x08, $long_mode
.code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $stack_top, %esp
    /* SSE on: every x86-64 kernel uses it. */
    mov %cr0, %rax
    and $~0x4, %rax
    or $0x2, %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $0x600, %rax
    mov %rax, %cr4
    movdqu (%rsp), %xmm0
    /* MMIO that KVM must emulate: IOAPIC version, LAPIC spurious vector. */
    mov $0xfec00000, %rdi
    movl $1, (%rdi)
    mov 0x10(%rdi), %ebx
    mov $0xfee00000, %rdi
    movl $0x1ff, 0xf0(%rdi)
    mov 0x30(%rdi), %ebx
    rdtsc
    xor %eax, %eax
    cpuid
    /* String port I/O of the marker to COM1. */
    lea marker(%rip), %rsi
    mov $(marker_end - marker), %ecx
    mov $0x3f8, %dx
    rep outsb
    /* isa-debug-exit: QEMU exits with status (1 << 1) | 1 = 3. */
    mov $0xf4, %dx
    mov $1, %al
    out %al, %dx
3:  hlt
    jmp 3b
.align 8
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdtr:
    .word gdtr - gdt - 1
    .long gdt
marker:
    .ascii "VSB-KVM-OK\n"
marker_end:
.align 4
load_end:
.bss
.align 4096
    .skip 4096
stack_top:
tables:
    .skip 6*4096
bss_end:
"""

STUB_BASE64 = (
    "ArCtGwAAAQD+T1HkAAAQAAAAEABcARAAAIAQACAAEAD6/L8AIBAAMcC5ABgAAPOrvwAgEACNhwMQ"
    "AACJB423ABAAAI2HAyAAALkEAAAAiQaDxggFABAAAOL0jbcAIAAAMdu5AAgAAInYDYMAAACJBoPG"
    "CIHDAAAgAOLsDyDgg8ggDyLguAAgEAAPIti5gAAAwA8yDQABAAAPMA8gwA0BAACADyLADwEVSAEQ"
    "AOqzABAACABmuBAAjtiOwI7QvAAgEAAPIMBIg+D7SIPIAg8iwA8g4EgNAAYAAA8i4PMPbwQkSL8A"
    "AMD+AAAAAMcHAQAAAItfEEi/AADg/gAAAADHh/AAAAD/AQAAi18wDzExwA+iSI01NgAAALkLAAAA"
    "Zrr4A/NuZrr0ALAB7vTr/Y12AAAAAAAAAAAA//8AAACarwD//wAAAJLPABcAMAEQAFZTQi1LVk0t"
    "T0sKjXYA"
)


@dataclass(frozen=True)
class KvmVerdict:
    """Which domain type to use, and why: log `reason` once when falling back to TCG."""

    domain_type: str  # "kvm" or "qemu"
    reason: str
    probed: bool = False  # False when the setting forced the type
    from_cache: bool = False
    seconds: float = 0.0  # time the probe itself took (0 when cached or forced)

    @property
    def fell_back(self) -> bool:
        return self.probed and self.domain_type == "qemu"


class KvmProbe:
    """Probes this host once and remembers the verdict in `cache_path` (None: no cache)."""

    def __init__(
        self,
        cache_path: str | None = "/run/virsh-sandbox/kvm-probe.json",
        qemu_binary: str = "qemu-system-x86_64",
        kvm_device: str = "/dev/kvm",
        timeout: float = 15.0,
        qemu_user: str | None = None,
        qemu_conf: str = "/etc/libvirt/qemu.conf",
        kernel: str | None = None,
    ) -> None:
        self.cache_path = cache_path
        # What the probe boots, on which device, for how long at most.
        self.qemu_binary, self.kernel = qemu_binary, kernel
        self.kvm_device, self.timeout = kvm_device, timeout
        # The user libvirt starts QEMU as: given, else read from qemu.conf (see qemu_user()).
        self._qemu_user, self.qemu_conf = qemu_user, qemu_conf

    def verdict(self) -> KvmVerdict:
        """The cached verdict if its key still matches this host, else a fresh probe."""
        key = self._cache_key()
        cached = self._read_cache(key)
        if cached is not None:
            return cached
        started = time.monotonic()
        domain_type, reason = self._probe()
        result = KvmVerdict(domain_type, reason, probed=True, seconds=time.monotonic() - started)
        self._write_cache(key, result)
        return result

    # ---- the checks ---------------------------------------------------------------------

    def _probe(self) -> tuple[str, str]:
        try:
            fd = os.open(self.kvm_device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return "qemu", f"{self.kvm_device} does not exist (no KVM in this kernel or VM)"
        except OSError as exc:
            return "qemu", f"cannot open {self.kvm_device}: {exc.strerror}"
        os.close(fd)

        user = self.qemu_user()
        if user is not None and not _can_read_write(self.kvm_device, user):
            st = os.stat(self.kvm_device)
            return "qemu", (
                f"libvirt runs QEMU as {user!r}, which cannot open {self.kvm_device} "
                f"(mode {st.st_mode & 0o777:04o}, owner {st.st_uid}:{st.st_gid}); "
                f"give group kvm rw access to use KVM"
            )
        domain_type, reason = self._boot_stub()
        if domain_type == "kvm" and self.kernel:
            return self._boot_kernel(self.kernel)
        return domain_type, reason

    def _boot_stub(self) -> tuple[str, str]:
        with tempfile.TemporaryDirectory(prefix="vsb-kvm-probe-") as tmp:
            stub = os.path.join(tmp, "stub.bin")
            with open(stub, "wb") as f:
                f.write(base64.b64decode("".join(STUB_BASE64)))
            return self._run_guest(
                "a tiny test guest",
                ["-m", "32", "-kernel", stub, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                MARKER,
            )

    def _boot_kernel(self, kernel: str) -> tuple[str, str]:
        if not os.path.isfile(kernel):
            return "qemu", f"probe kernel {kernel} does not exist"
        return self._run_guest(
            f"kernel {kernel}",
            ["-m", "128", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 quiet"],
            KERNEL_MARKER,
        )

    def _run_guest(self, what: str, args: list[str], marker: str) -> tuple[str, str]:
        cmd = [
            self.qemu_binary, "-accel", "kvm", "-cpu", "host", "-machine", "q35",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-no-reboot", *args,
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
            )
        except FileNotFoundError:
            return "qemu", f"{self.qemu_binary} not found, cannot probe KVM"
        except subprocess.TimeoutExpired:
            return "qemu", f"{what} did not finish within {self.timeout:g} s under KVM"
        output = proc.stdout.decode("utf-8", "replace")
        if marker in output:
            return "kvm", f"{what} booted under KVM with -cpu host"
        return "qemu", f"{what} failed under KVM: " + _failure_summary(output, proc.returncode)

    def qemu_user(self) -> str | None:
        """The user libvirt starts QEMU as: from qemu.conf, else the distribution default."""
        if self._qemu_user is not None:
            return self._qemu_user
        try:
            with open(self.qemu_conf) as f:
                for line in f:
                    m = re.match(r'\s*user\s*=\s*"([^"]+)"', line)
                    if m:
                        return m.group(1)
        except OSError:
            pass
        for candidate in ("libvirt-qemu", "qemu"):
            try:
                pwd.getpwnam(candidate)
                return candidate
            except KeyError:
                continue
        return None

    # ---- cache --------------------------------------------------------------------------

    def _cache_key(self) -> dict:
        try:
            st = os.stat(self.kvm_device)
            device = [st.st_mode, st.st_uid, st.st_gid]
        except OSError:
            device = None
        return {
            "probe_version": PROBE_VERSION,
            "kernel": os.uname().release,
            "qemu": _qemu_version(self.qemu_binary),
            "kvm_device": device,
            "qemu_user": self.qemu_user(),
            "kernel_image": self.kernel,
        }

    def _read_cache(self, key: dict) -> KvmVerdict | None:
        if not self.cache_path:
            return None
        try:
            with open(self.cache_path) as f:
                data = json.load(f)
            if data.get("key") != key:
                return None
            v = data["verdict"]
            return KvmVerdict(v["domain_type"], v["reason"], probed=True, from_cache=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cache(self, key: dict, verdict: KvmVerdict) -> None:
        if not self.cache_path:
            return
        try:
            os.makedirs(os.path.dirname(self.cache_path) or ".", mode=0o755, exist_ok=True)
            tmp = f"{self.cache_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"key": key, "verdict": asdict(verdict)}, f, indent=1)
            os.replace(tmp, self.cache_path)  # atomic: concurrent workers never read half a file
        except OSError as exc:
            logger.warning("cannot cache the KVM probe verdict in %s: %s", self.cache_path, exc)


def resolve_domain_type(setting: str, probe: KvmProbe | None = None) -> KvmVerdict:
    """Map the "auto"|"kvm"|"qemu" setting to a domain type; "auto" probes (cached)."""
    if setting not in SETTINGS:
        raise ValueError(f"domain type setting must be one of {SETTINGS}, not {setting!r}")
    if setting != "auto":
        return KvmVerdict(setting, f"domain type {setting!r} set explicitly")
    return (probe or KvmProbe()).verdict()


def _qemu_version(binary: str) -> str | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def _can_read_write(path: str, user: str) -> bool:
    name = user.lstrip("+")  # qemu.conf allows "+64055" for a numeric uid
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return True  # unknown user: let the boot test decide rather than guess
    if pw.pw_uid == 0:
        return True
    st = os.stat(path)
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    if st.st_uid == pw.pw_uid:
        bits = (st.st_mode >> 6) & 0o7
    elif st.st_gid in groups:
        bits = (st.st_mode >> 3) & 0o7
    else:
        bits = st.st_mode & 0o7
    return bits & 0o6 == 0o6


def _failure_summary(output: str, returncode: int) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "KVM internal error" in line or "emulation failure" in line.lower():
            return line
    for line in lines:
        if "Assertion" in line or "failed" in line.lower() or "error" in line.lower():
            return line[:300]
    if returncode < 0:
        return f"QEMU was killed by signal {-returncode}"
    return f"QEMU exited with status {returncode} without printing the marker"
