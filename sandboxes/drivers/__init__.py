"""Hypervisor drivers: the interface and its errors in .base, the in-memory FakeDriver in .fake,
LibvirtDriver in .libvirt_driver (it needs libvirt-python). Import each name from the module
it lives in."""
