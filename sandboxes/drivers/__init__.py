"""Hypervisor drivers. Import LibvirtDriver from .libvirt_driver (it needs libvirt-python);
everything here is importable without libvirt."""

from .base import (
    CRASHED,
    OTHER,
    PAUSED,
    RUNNING,
    SHUTOFF,
    CloneSpec,
    DomainInfo,
    DomainNotFound,
    DriverError,
    HypervisorDriver,
    LibvirtNetwork,
    PermanentDriverError,
    PortForward,
    SourceNotUsable,
    TransientDriverError,
)
from .fake import FakeDriver
from .kvm_probe import KvmProbe, KvmVerdict, resolve_domain_type

__all__ = [
    "CRASHED",
    "OTHER",
    "PAUSED",
    "RUNNING",
    "SHUTOFF",
    "CloneSpec",
    "DomainInfo",
    "DomainNotFound",
    "DriverError",
    "FakeDriver",
    "HypervisorDriver",
    "KvmProbe",
    "KvmVerdict",
    "LibvirtNetwork",
    "PermanentDriverError",
    "PortForward",
    "SourceNotUsable",
    "TransientDriverError",
    "resolve_domain_type",
]
