"""Fixtures for the driver tests: a private libvirt test:/// host per test, and a real (tiny)
qcow2 base image, because LibvirtDriver runs qemu-img for real even against test:///."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from sandboxes.drivers.base import CloneSpec, PortForward


def unique_name(prefix: str = "vsbtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_qcow2(path: Path, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    # A node file of our own: test:///default shares its state across the whole process.
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    return f"test://{node}"


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    return make_qcow2(images / "base.qcow2")


@pytest.fixture
def make_spec(tmp_path: Path, base_image: Path):
    def make(name: str | None = None, **overrides) -> CloneSpec:
        name = name or unique_name()
        fields = dict(
            name=name,
            source_disk=str(base_image),
            workdir=str(tmp_path / "sandboxes" / name),
            network=PortForward(host_port=22022),
            tags={"sandbox": name},
        )
        fields.update(overrides)
        return CloneSpec(**fields)

    return make
